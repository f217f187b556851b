//! `readOnlyRootFilesystem: true`, with a writable emptyDir at each writable
//! path the container does not already mount.
//!
//! Applications that write to `/tmp` or a cache directory crash on a
//! read-only root, so the writable paths come with it. Each container gets its
//! own volume per path: containers keep private `/tmp`s as they had before.

use serde_json::{Map, Value};

use super::{Edits, RuleInput};
use crate::view::ContainerView;
use crate::{Setting, WarningKind};

fn field(container: &ContainerView<'_>) -> String {
    format!(
        "{}.securityContext.readOnlyRootFilesystem",
        container.field()
    )
}

/// Returns `true` when the rule should inject (unset and enabled).
fn wants(rules: &RuleInput<'_, '_>, edits: &mut Edits<'_>, container: &ContainerView<'_>) -> bool {
    if !rules.enabled(Setting::ReadOnlyRootFilesystem) {
        return false;
    }
    match container.security_context.read_only_root_filesystem {
        None => true,
        Some(true) => false,
        Some(false) => {
            edits.warn(
                WarningKind::ExplicitInsecure,
                field(container),
                "is false; left as set",
            );
            false
        }
    }
}

fn set_read_only<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    edits.inject(
        Setting::ReadOnlyRootFilesystem,
        &container.security_context_tokens(&rules.spec),
        "readOnlyRootFilesystem",
        Value::Bool(true),
    );
}

fn named(name: &str, key: &str, value: Value) -> Value {
    let mut object = Map::new();
    object.insert("name".to_owned(), Value::from(name));
    object.insert(key.to_owned(), value);
    Value::Object(object)
}

pub(super) fn container<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    if !wants(rules, edits, container) {
        return;
    }
    set_read_only(rules, edits, container);
    let key = container.key();
    let volumes = rules.child(&rules.spec, "volumes");
    let mounts = rules.child(&container.tokens(&rules.spec), "volumeMounts");
    for path in rules.writable_paths {
        if container.mounts(path) {
            continue;
        }
        let name = edits.namer(rules.pod).name(&key, path);
        edits.patch.push(
            &volumes,
            named(&name, "emptyDir", Value::Object(Map::new())),
        );
        edits
            .patch
            .push(&mounts, named(&name, "mountPath", Value::from(*path)));
    }
}

/// A new ephemeral container cannot get volumes (the pod spec is immutable),
/// so it only goes read-only when it already mounts every writable path.
pub(super) fn new_container<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    if !wants(rules, edits, container) {
        return;
    }
    match rules.writable_paths.iter().find(|p| !container.mounts(p)) {
        None => set_read_only(rules, edits, container),
        Some(path) => edits.warn(
            WarningKind::NotInjected,
            field(container),
            format!(
                "not set: {} is not mounted and a running pod cannot get new volumes",
                crate::shape::clip(path, 60)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::setting::SettingSet;
    use crate::{Policy, Setting, WarningKind};
    use serde_json::json;

    fn policy(paths: &[&str]) -> Policy {
        let mut policy = only(Setting::ReadOnlyRootFilesystem);
        policy.writable_paths = paths.iter().map(|p| (*p).to_owned()).collect();
        policy
    }

    #[test]
    fn read_only_with_one_volume_per_container_and_path() {
        let spec = json!({
            "containers": [{"name": "app"}, {"name": "web", "volumeMounts": [{"name": "c", "mountPath": "/var/cache/"}]}],
            "initContainers": [{"name": "init"}],
            "volumes": [{"name": "c", "emptyDir": {}}]
        });
        let run = run_with(
            spec,
            &policy(&["/tmp", "/var/cache"]),
            SettingSet::default(),
            None,
        );
        let out = &run.output;
        for (list, i) in [("containers", 0), ("containers", 1), ("initContainers", 0)] {
            assert_eq!(
                out[list][i]["securityContext"]["readOnlyRootFilesystem"],
                json!(true)
            );
        }
        assert_eq!(
            out["volumes"],
            json!([{"name": "c", "emptyDir": {}},
                   {"name": "kh-app-tmp", "emptyDir": {}},
                   {"name": "kh-app-var-cache", "emptyDir": {}},
                   {"name": "kh-web-tmp", "emptyDir": {}},
                   {"name": "kh-init-tmp", "emptyDir": {}},
                   {"name": "kh-init-var-cache", "emptyDir": {}}])
        );
        assert_eq!(
            out["containers"][1]["volumeMounts"],
            json!([{"name": "c", "mountPath": "/var/cache/"}, {"name": "kh-web-tmp", "mountPath": "/tmp"}])
        );
        assert_eq!(
            out["containers"][0]["volumeMounts"],
            json!([{"name": "kh-app-tmp", "mountPath": "/tmp"}, {"name": "kh-app-var-cache", "mountPath": "/var/cache"}])
        );
        assert_eq!(run.applied, vec![Setting::ReadOnlyRootFilesystem]);
    }

    #[test]
    fn explicit_values_and_empty_paths() {
        let cases = [
            (
                json!({"readOnlyRootFilesystem": true}),
                vec!["/tmp"],
                0,
                vec![],
            ),
            (
                json!({"readOnlyRootFilesystem": false}),
                vec!["/tmp"],
                0,
                vec![WarningKind::ExplicitInsecure],
            ),
            (json!({}), vec![], 1, vec![]),
        ];
        for (security_context, paths, ops, warnings) in cases {
            let spec = json!({"containers": [{"name": "a", "securityContext": security_context}]});
            let run = run_with(spec, &policy(&paths), SettingSet::default(), None);
            assert_eq!(run.ops, ops, "{security_context}");
            assert_eq!(run.output.get("volumes"), None);
            assert_eq!(kinds(&run), warnings);
        }
    }

    #[test]
    fn no_mount_where_a_block_device_sits() {
        // The API server rejects a volumeMount whose mountPath is also a
        // devicePath in the same container.
        let spec = json!({
            "containers": [
                {"name": "db", "volumeDevices": [{"name": "blk", "devicePath": "/tmp"}]},
                {"name": "app"}
            ],
            "volumes": [{"name": "blk", "persistentVolumeClaim": {"claimName": "raw"}}]
        });
        let run = run_with(spec, &policy(&["/tmp"]), SettingSet::default(), None);
        let out = &run.output;
        assert_eq!(out["containers"][0].get("volumeMounts"), None);
        assert_eq!(
            out["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
            json!(true)
        );
        assert_eq!(
            out["containers"][1]["volumeMounts"],
            json!([{"name": "kh-app-tmp", "mountPath": "/tmp"}])
        );
        assert_eq!(
            out["volumes"],
            json!([{"name": "blk", "persistentVolumeClaim": {"claimName": "raw"}},
                   {"name": "kh-app-tmp", "emptyDir": {}}])
        );
    }

    #[test]
    fn volume_name_clashes_get_a_hashed_name() {
        let spec = json!({
            "containers": [{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "kh-app-tmp", "configMap": {"name": "x"}}, {"name": "data", "emptyDir": {}}]
        });
        let run = run_with(spec, &policy(&["/tmp"]), SettingSet::default(), None);
        let added = run.output["volumes"][2]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            added.starts_with("kh-app-tmp-") && added.len() == "kh-app-tmp-".len() + 8,
            "{added}"
        );
        assert_eq!(
            run.output["containers"][0]["volumeMounts"][1],
            json!({"name": added, "mountPath": "/tmp"})
        );
    }

    #[test]
    fn unnamed_containers_get_distinct_volumes() {
        let spec = json!({"containers": [{}, {}], "initContainers": [{}]});
        let run = run_with(spec, &policy(&["/tmp"]), SettingSet::default(), None);
        let names: Vec<_> = run.output["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].clone())
            .collect();
        assert_eq!(
            names,
            vec![
                json!("kh-containers-0-tmp"),
                json!("kh-containers-1-tmp"),
                json!("kh-initcontainers-0-tmp")
            ]
        );
    }

    #[test]
    fn new_ephemeral_containers_only_when_already_mounted() {
        let spec = json!({
            "volumes": [{"name": "t", "emptyDir": {}}],
            "ephemeralContainers": [
                {"name": "with", "volumeMounts": [{"name": "t", "mountPath": "/tmp"}]},
                {"name": "without"}
            ]
        });
        let run = run_with(
            spec,
            &policy(&["/tmp"]),
            SettingSet::default(),
            Some(&["with", "without"]),
        );
        let eph = &run.output["ephemeralContainers"];
        assert_eq!(
            eph[0]["securityContext"]["readOnlyRootFilesystem"],
            json!(true)
        );
        assert_eq!(eph[1].get("securityContext"), None);
        assert_eq!(run.output["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(kinds(&run), vec![WarningKind::NotInjected]);
        assert_eq!(
            run.warnings[0].1,
            "spec.ephemeralContainers{without}.securityContext.readOnlyRootFilesystem"
        );
    }
}
