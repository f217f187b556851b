//! `seccompProfile: {type: RuntimeDefault}`: pod level on create; container
//! level for a new ephemeral container, since the pod spec is immutable then.

use serde_json::{Map, Value};

use super::{Edits, Rules};
use crate::Setting;
use crate::view::ContainerView;

fn runtime_default() -> Value {
    let mut profile = Map::new();
    profile.insert("type".to_owned(), Value::from("RuntimeDefault"));
    Value::Object(profile)
}

pub(super) fn pod<'v>(rules: &Rules<'_, 'v>, edits: &mut Edits<'v>) {
    if rules.enabled(Setting::SeccompProfile) && rules.pod.sc.seccomp.is_none() {
        edits.inject(
            Setting::SeccompProfile,
            &rules.pod_sc(),
            "seccompProfile",
            runtime_default(),
        );
    }
}

pub(super) fn new_container<'v>(
    rules: &Rules<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    if rules.enabled(Setting::SeccompProfile)
        && rules.pod.sc.seccomp.is_none()
        && container.sc.seccomp.is_none()
    {
        edits.inject(
            Setting::SeccompProfile,
            &container.sc_tokens(&rules.spec),
            "seccompProfile",
            runtime_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::opt_out::SettingSet;
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
}
