//! `seccompProfile: {type: RuntimeDefault}`: pod level on create; container
//! level for a new ephemeral container, since the pod spec is immutable then.
//!
//! The legacy annotations (`seccomp.security.alpha.kubernetes.io/pod` and
//! `container.seccomp.security.alpha.kubernetes.io/NAME`) are explicit choices
//! at their scope: the API server still honours them, copies them into the
//! field, and rejects a pod whose annotation and field disagree.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{Edits, RuleInput};
use crate::shape::{Object, clip};
use crate::view::ContainerView;
use crate::{EngineError, Setting, WarningKind};

/// The legacy pod-level seccomp annotation.
pub(crate) const ANNOTATION_POD: &str = "seccomp.security.alpha.kubernetes.io/pod";
/// Prefix of the legacy per-container seccomp annotations (`…/NAME`).
pub(crate) const ANNOTATION_CONTAINER_PREFIX: &str =
    "container.seccomp.security.alpha.kubernetes.io/";
/// The annotation value that turns filtering off.
const UNCONFINED: &str = "unconfined";

/// The legacy seccomp annotations of one pod (or pod template).
#[derive(Debug, Clone, Default)]
pub(crate) struct LegacySeccomp<'v> {
    pub pod: Option<&'v str>,
    pub containers: HashMap<&'v str, &'v str>,
    /// Where the annotations live, for messages (`metadata`, …).
    metadata_field: &'static str,
}

impl<'v> LegacySeccomp<'v> {
    /// Reads them from the pod's `annotations`; a value that is not a string
    /// is a malformed object, as for every other annotation.
    pub(crate) fn read(
        annotations: &'v Object,
        metadata_field: &'static str,
    ) -> Result<Self, EngineError> {
        let mut legacy = LegacySeccomp {
            metadata_field,
            ..LegacySeccomp::default()
        };
        for (key, value) in annotations {
            let container = key.strip_prefix(ANNOTATION_CONTAINER_PREFIX);
            if key != ANNOTATION_POD && container.is_none() {
                continue;
            }
            let value = match value {
                Value::Null => continue,
                Value::String(value) => value,
                _ => {
                    return Err(EngineError::WrongType {
                        path: format!("{metadata_field}.annotations[{}]", clip(key, 120)),
                        expected: "a string",
                    });
                }
            };
            match container {
                Some(name) => {
                    legacy.containers.insert(name, value.as_str());
                }
                None => legacy.pod = Some(value.as_str()),
            }
        }
        Ok(legacy)
    }

    fn field(&self, key: &str) -> String {
        format!("{}.annotations[{}]", self.metadata_field, clip(key, 120))
    }
}

/// Warns about every `unconfined` legacy annotation of the pod.
pub(super) fn legacy_warnings(rules: &RuleInput<'_, '_>, edits: &mut Edits<'_>) {
    let legacy = &rules.legacy_seccomp;
    if legacy.pod.is_some_and(is_unconfined) {
        edits.warn(
            WarningKind::SeccompUnconfined,
            legacy.field(ANNOTATION_POD),
            "is unconfined; no system call filtering",
        );
    }
    // In container order, so the warnings are the same on every run.
    for container in &rules.pod.containers {
        let unconfined = container
            .name
            .and_then(|name| legacy.containers.get(name))
            .is_some_and(|value| is_unconfined(value));
        if let (true, Some(name)) = (unconfined, container.name) {
            edits.warn(
                WarningKind::SeccompUnconfined,
                legacy.field(&format!("{ANNOTATION_CONTAINER_PREFIX}{name}")),
                "is unconfined; no system call filtering",
            );
        }
    }
}

fn is_unconfined(value: &str) -> bool {
    value.trim() == UNCONFINED
}

fn runtime_default() -> Value {
    let mut profile = Map::new();
    profile.insert("type".to_owned(), Value::from("RuntimeDefault"));
    Value::Object(profile)
}

pub(super) fn pod<'v>(rules: &RuleInput<'_, 'v>, edits: &mut Edits<'v>) {
    legacy_warnings(rules, edits);
    if rules.enabled(Setting::SeccompProfile)
        && rules.pod.security_context.seccomp.is_none()
        && rules.legacy_seccomp.pod.is_none()
    {
        edits.inject(
            Setting::SeccompProfile,
            &rules.pod_security_context(),
            "seccompProfile",
            runtime_default(),
        );
    }
}

pub(super) fn new_container<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    let legacy = &rules.legacy_seccomp;
    let container_annotation = container
        .name
        .is_some_and(|name| legacy.containers.contains_key(name));
    if rules.enabled(Setting::SeccompProfile)
        && rules.pod.security_context.seccomp.is_none()
        && legacy.pod.is_none()
        && container.security_context.seccomp.is_none()
        && !container_annotation
    {
        edits.inject(
            Setting::SeccompProfile,
            &container.security_context_tokens(&rules.spec),
            "seccompProfile",
            runtime_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::setting::SettingSet;
    use crate::{Setting, WarningKind};
    use serde_json::{Value, json};

    #[test]
    fn pod_level_unless_set() {
        let policy = only(Setting::SeccompProfile);
        let cases = [
            (
                json!({}),
                json!({"seccompProfile": {"type": "RuntimeDefault"}}),
                vec![],
            ),
            (
                json!({"securityContext": {"fsGroup": 1}}),
                json!({"fsGroup": 1, "seccompProfile": {"type": "RuntimeDefault"}}),
                vec![],
            ),
            (
                json!({"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}}),
                json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
                vec![],
            ),
            (
                json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
                json!({"seccompProfile": {"type": "Unconfined"}}),
                vec![WarningKind::SeccompUnconfined],
            ),
            (
                json!({"containers": [{"name": "a", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]}),
                json!({"seccompProfile": {"type": "RuntimeDefault"}}),
                vec![WarningKind::SeccompUnconfined],
            ),
            (json!({"os": {"name": "windows"}}), Value::Null, vec![]),
        ];
        for (spec, expected, warnings) in cases {
            let run = run_with(spec.clone(), &policy, SettingSet::default(), None);
            assert_eq!(run.output["securityContext"], expected, "{spec}");
            assert_eq!(kinds(&run), warnings, "{spec}");
        }
    }

    #[test]
    fn new_ephemeral_container_level_when_pod_has_none() {
        let policy = only(Setting::SeccompProfile);
        let cases = [
            (json!({}), json!({"type": "RuntimeDefault"})),
            (
                json!({"seccompProfile": {"type": "RuntimeDefault"}}),
                Value::Null,
            ),
        ];
        for (pod_sc, expected) in cases {
            let spec = json!({"securityContext": pod_sc, "ephemeralContainers": [{"name": "old"}, {"name": "dbg"}]});
            let run = run_with(spec, &policy, SettingSet::default(), Some(&["dbg"]));
            assert_eq!(
                run.output["ephemeralContainers"][1]["securityContext"]["seccompProfile"],
                expected
            );
            assert_eq!(run.output["ephemeralContainers"][0], json!({"name": "old"}));
            assert_eq!(run.output["securityContext"], pod_sc);
        }
    }

    /// The legacy annotations through the public entry points, since they
    /// live in the pod's metadata rather than its spec.
    mod legacy_annotations {
        use crate::harden_new_ephemeral_containers as harden_ephemeral;
        use crate::{Context, EngineError, Policy, WarningKind, harden};
        use serde_json::{Value, json};

        fn pod(annotations: Value) -> Value {
            json!({"kind": "Pod", "metadata": {"name": "p", "annotations": annotations},
                   "spec": {"containers": [{"name": "app"}, {"name": "side"}]}})
        }

        fn seccomp_after(object: &Value, patch: &json_patch::Patch) -> Value {
            let mut out = object.clone();
            json_patch::patch(&mut out, patch).unwrap();
            out["spec"]["securityContext"]["seccompProfile"].clone()
        }

        #[test]
        fn the_pod_annotation_is_an_explicit_pod_level_choice() {
            let key = super::super::ANNOTATION_POD;
            // (annotation value, pod-level profile afterwards, warned)
            let cases = [
                (None, json!({"type": "RuntimeDefault"}), false),
                (Some("unconfined"), Value::Null, true),
                (Some("runtime/default"), Value::Null, false),
                (Some("docker/default"), Value::Null, false),
                (Some("localhost/profiles/audit.json"), Value::Null, false),
            ];
            for (value, expected, warned) in cases {
                let annotations = match value {
                    Some(v) => json!({ key: v }),
                    None => json!({}),
                };
                let object = pod(annotations);
                let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
                assert_eq!(
                    seccomp_after(&object, &outcome.patch),
                    expected,
                    "{value:?}"
                );
                let unconfined: Vec<_> = outcome
                    .warnings
                    .iter()
                    .filter(|w| w.kind == WarningKind::SeccompUnconfined)
                    .map(ToString::to_string)
                    .collect();
                let want: Vec<String> = if warned {
                    vec![format!(
                        "metadata.annotations[{key}]: is unconfined; no system call filtering"
                    )]
                } else {
                    vec![]
                };
                assert_eq!(unconfined, want, "{value:?}");
                // Everything else is still filled in.
                assert!(
                    outcome.applied.contains(&crate::Setting::Capabilities),
                    "{value:?}"
                );
            }
        }

        #[test]
        fn container_annotations_leave_the_pod_level_field_to_the_engine() {
            // The API server matches a container's annotation against that
            // container's field only, so the pod-level default is still safe.
            let prefix = super::super::ANNOTATION_CONTAINER_PREFIX;
            let object = pod(json!({ format!("{prefix}app"): "unconfined" }));
            let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
            assert_eq!(
                seccomp_after(&object, &outcome.patch),
                json!({"type": "RuntimeDefault"})
            );
            let warned: Vec<_> = outcome.warnings.iter().map(ToString::to_string).collect();
            assert_eq!(
                warned,
                vec![format!(
                    "metadata.annotations[{prefix}app]: is unconfined; no system call filtering"
                )]
            );
        }

        #[test]
        fn template_annotations_count_for_workloads() {
            let key = super::super::ANNOTATION_POD;
            let deployment = json!({"kind": "Deployment", "spec": {"template": {
                "metadata": {"annotations": { key: "localhost/p.json" }},
                "spec": {"containers": [{"name": "app"}]}}}});
            let outcome = harden(&deployment, &Context::default(), &Policy::default()).unwrap();
            let mut out = deployment.clone();
            json_patch::patch(&mut out, &outcome.patch).unwrap();
            assert_eq!(
                out["spec"]["template"]["spec"]["securityContext"]["seccompProfile"],
                Value::Null
            );
            assert!(!outcome.applied.contains(&crate::Setting::SeccompProfile));
        }

        #[test]
        fn new_ephemeral_containers_respect_both_scopes() {
            let prefix = super::super::ANNOTATION_CONTAINER_PREFIX;
            let pod_key = super::super::ANNOTATION_POD;
            // (annotations, does the new debug container get a profile)
            let cases = [
                (json!({}), true),
                (json!({ format!("{prefix}debug"): "unconfined" }), false),
                (json!({ format!("{prefix}other"): "unconfined" }), true),
                (json!({ pod_key: "runtime/default" }), false),
            ];
            for (annotations, injected) in cases {
                let old = json!({"kind": "Pod", "metadata": {"annotations": annotations.clone()},
                    "spec": {"containers": [{"name": "app"}]}});
                let mut new = old.clone();
                new["spec"]["ephemeralContainers"] = json!([{"name": "debug"}]);
                let outcome =
                    harden_ephemeral(&new, &old, &Context::default(), &Policy::default()).unwrap();
                let mut out = new.clone();
                json_patch::patch(&mut out, &outcome.patch).unwrap();
                let profile =
                    &out["spec"]["ephemeralContainers"][0]["securityContext"]["seccompProfile"];
                assert_eq!(!profile.is_null(), injected, "{annotations}");
            }
        }

        #[test]
        fn a_non_string_annotation_is_a_typed_error_naming_it() {
            let key = super::super::ANNOTATION_POD;
            let object = pod(json!({ key: 1 }));
            assert_eq!(
                harden(&object, &Context::default(), &Policy::default()).unwrap_err(),
                EngineError::WrongType {
                    path: format!("metadata.annotations[{key}]"),
                    expected: "a string"
                }
            );
        }
    }
}
