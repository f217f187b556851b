//! Configured IDs: `runAsUser`, `runAsGroup`, `fsGroup`, and the
//! `fsGroupChangePolicy` that goes with any `fsGroup`.

use serde_json::Value;

use super::{Edits, RuleInput};
use crate::{Setting, WarningKind};

/// The configured UID, when it will be injected: only if no container and
/// not the pod chose one (a per-container choice means the images differ).
pub(super) fn uid_to_inject(rules: &RuleInput<'_, '_>) -> Option<i64> {
    let unset = uid_unset_everywhere(rules);
    rules
        .policy
        .run_as_user
        .filter(|uid| unset && rules.enabled(Setting::RunAsUser) && !root_refused(rules, *uid))
}

fn uid_unset_everywhere(rules: &RuleInput<'_, '_>) -> bool {
    let pod = rules.pod;
    pod.security_context.run_as_user.is_none()
        && pod
            .containers
            .iter()
            .all(|c| c.security_context.run_as_user.is_none())
}

/// Whether `uid` is root and the user already asked for `runAsNonRoot: true`
/// somewhere: the kubelet would then refuse to start the container.
fn root_refused(rules: &RuleInput<'_, '_>, uid: i64) -> bool {
    let pod = rules.pod;
    uid == 0
        && (pod.security_context.run_as_non_root == Some(true)
            || pod
                .containers
                .iter()
                .any(|c| c.security_context.run_as_non_root == Some(true)))
}

pub(super) fn gid_to_inject(rules: &RuleInput<'_, '_>) -> Option<i64> {
    let pod = rules.pod;
    let unset = pod.security_context.run_as_group.is_none()
        && pod
            .containers
            .iter()
            .all(|c| c.security_context.run_as_group.is_none());
    rules
        .policy
        .run_as_group
        .filter(|_| unset && rules.enabled(Setting::RunAsGroup))
}

pub(super) fn inject_ids<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    uid: Option<i64>,
    gid: Option<i64>,
) {
    let security_context = rules.pod_security_context();
    if let Some(uid) = uid {
        edits.inject(
            Setting::RunAsUser,
            &security_context,
            "runAsUser",
            Value::from(uid),
        );
    } else if rules
        .policy
        .run_as_user
        .is_some_and(|u| root_refused(rules, u))
        && uid_unset_everywhere(rules)
        && rules.enabled(Setting::RunAsUser)
    {
        edits.warn(
            WarningKind::NotInjected,
            format!("{}.securityContext.runAsUser", rules.pod.field),
            "not set: the configured UID 0 contradicts runAsNonRoot: true",
        );
    }
    if let Some(gid) = gid {
        edits.inject(
            Setting::RunAsGroup,
            &security_context,
            "runAsGroup",
            Value::from(gid),
        );
    }
}

pub(super) fn fs_group<'v>(rules: &RuleInput<'_, 'v>, edits: &mut Edits<'v>) {
    let security_context = rules.pod_security_context();
    let mut has_fs_group = rules.pod.security_context.fs_group.is_some();
    if let Some(gid) = rules.policy.fs_group
        && !has_fs_group
        && rules.enabled(Setting::FsGroup)
    {
        edits.inject(
            Setting::FsGroup,
            &security_context,
            "fsGroup",
            Value::from(gid),
        );
        has_fs_group = true;
    }
    // Without a policy the kubelet chowns every file of every volume on each
    // mount; OnRootMismatch does it only when the volume root is not right.
    if has_fs_group
        && rules.pod.security_context.fs_group_change_policy.is_none()
        && rules.enabled(Setting::FsGroupChangePolicy)
    {
        edits.inject(
            Setting::FsGroupChangePolicy,
            &security_context,
            "fsGroupChangePolicy",
            Value::from("OnRootMismatch"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::setting::SettingSet;
    use crate::{Policy, Setting, WarningKind};
    use serde_json::{Value, json};

    fn ids_policy() -> Policy {
        let mut policy = only(Setting::FsGroupChangePolicy);
        policy.run_as_user = Some(1000);
        policy.run_as_group = Some(3000);
        policy.fs_group = Some(2000);
        policy
    }

    #[test]
    fn configured_ids_fill_in_what_is_unset_everywhere() {
        let cases = [
            (
                json!({"containers": [{"name": "a"}]}),
                json!({"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"}),
            ),
            (
                json!({"securityContext": {"runAsUser": 7}, "containers": [{"name": "a"}]}),
                json!({"runAsUser": 7, "runAsGroup": 3000, "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"}),
            ),
            (
                json!({"containers": [{"name": "a", "securityContext": {"runAsUser": 7}}]}),
                json!({"runAsGroup": 3000, "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"}),
            ),
            (
                json!({"initContainers": [{"name": "i", "securityContext": {"runAsGroup": 7}}], "containers": [{"name": "a"}]}),
                json!({"runAsUser": 1000, "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"}),
            ),
            (
                json!({"securityContext": {"fsGroup": 5}, "containers": []}),
                json!({"fsGroup": 5, "runAsUser": 1000, "runAsGroup": 3000, "fsGroupChangePolicy": "OnRootMismatch"}),
            ),
            (
                json!({"securityContext": {"fsGroup": 5, "fsGroupChangePolicy": "Always"}, "containers": []}),
                json!({"fsGroup": 5, "fsGroupChangePolicy": "Always", "runAsUser": 1000, "runAsGroup": 3000}),
            ),
            (
                json!({"os": {"name": "windows"}, "containers": []}),
                Value::Null,
            ),
        ];
        for (spec, expected) in cases {
            let run = run_with(spec.clone(), &ids_policy(), SettingSet::default(), None);
            assert_eq!(run.output["securityContext"], expected, "{spec}");
        }
    }

    #[test]
    fn configured_root_uid_never_meets_an_explicit_run_as_non_root() {
        let mut policy = only(Setting::RunAsUser);
        policy.run_as_user = Some(0);
        // (spec, expected pod runAsUser, warnings)
        let cases = [
            (
                json!({"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "a"}]}),
                Value::Null,
                vec![WarningKind::NotInjected],
            ),
            (
                json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsNonRoot": true}}]}),
                Value::Null,
                vec![WarningKind::NotInjected],
            ),
            (
                json!({"securityContext": {"runAsNonRoot": false}, "containers": [{"name": "a"}]}),
                json!(0),
                vec![],
            ),
            (json!({"containers": [{"name": "a"}]}), json!(0), vec![]),
        ];
        for (spec, expected, warnings) in cases {
            let run = run_with(spec.clone(), &policy, SettingSet::default(), None);
            assert_eq!(
                run.output["securityContext"]["runAsUser"], expected,
                "{spec}"
            );
            assert_eq!(kinds(&run), warnings, "{spec}");
        }
        // A non-root configured UID is injected next to runAsNonRoot: true.
        policy.run_as_user = Some(1000);
        let run = run_with(
            json!({"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "a"}]}),
            &policy,
            SettingSet::default(),
            None,
        );
        assert_eq!(run.output["securityContext"]["runAsUser"], json!(1000));
    }

    #[test]
    fn change_policy_follows_a_user_fs_group_without_configured_ids() {
        let policy = only(Setting::FsGroupChangePolicy);
        let run = run_with(
            json!({"securityContext": {"fsGroup": 5}}),
            &policy,
            SettingSet::default(),
            None,
        );
        assert_eq!(
            run.output["securityContext"]["fsGroupChangePolicy"],
            json!("OnRootMismatch")
        );
        assert_eq!(run.applied, vec![Setting::FsGroupChangePolicy]);

        let run = run_with(
            json!({"containers": []}),
            &policy,
            SettingSet::default(),
            None,
        );
        assert_eq!(run.ops, 0, "no fsGroup, no policy");

        let mut skipped = SettingSet::default();
        skipped.insert(Setting::FsGroupChangePolicy);
        let run = run_with(
            json!({"securityContext": {"fsGroup": 5}}),
            &policy,
            skipped,
            None,
        );
        assert_eq!(run.ops, 0);
    }
}
