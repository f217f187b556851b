//! `allowPrivilegeEscalation: false` on every container.
//!
//! API validation rejects it together with `privileged: true` or an added
//! `SYS_ADMIN` capability, so such containers are left alone with a warning.

use serde_json::Value;

use super::{Edits, RuleInput};
use crate::view::ContainerView;
use crate::{Setting, WarningKind};

/// The spellings of SYS_ADMIN in `capabilities.add`: with it, the API server
/// rejects `allowPrivilegeEscalation: false`.
pub const SYS_ADMIN_SPELLINGS: [&str; 2] = ["SYS_ADMIN", "CAP_SYS_ADMIN"];

/// Whether the capability list adds SYS_ADMIN under either spelling. Case is
/// ignored to stay on the safe side of the API server's check.
pub(crate) fn adds_sys_admin(added: &[&str]) -> bool {
    added.iter().any(|cap| {
        let cap = cap.trim();
        SYS_ADMIN_SPELLINGS
            .iter()
            .any(|spelling| cap.eq_ignore_ascii_case(spelling))
    })
}

pub(super) fn container<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    if !rules.enabled(Setting::AllowPrivilegeEscalation) {
        return;
    }
    let field = || {
        format!(
            "{}.securityContext.allowPrivilegeEscalation",
            container.field()
        )
    };
    match container.security_context.allow_privilege_escalation {
        Some(false) => {}
        Some(true) => edits.warn(
            WarningKind::ExplicitInsecure,
            field(),
            "is true; left as set",
        ),
        None if container.security_context.privileged == Some(true) => edits.warn(
            WarningKind::NotInjected,
            field(),
            "not set to false: the container is privileged",
        ),
        None if adds_sys_admin(&container.security_context.add) => edits.warn(
            WarningKind::NotInjected,
            field(),
            "not set to false: the container adds SYS_ADMIN",
        ),
        None => edits.inject(
            Setting::AllowPrivilegeEscalation,
            &container.security_context_tokens(&rules.spec),
            "allowPrivilegeEscalation",
            Value::Bool(false),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::adds_sys_admin;
    use crate::setting::SettingSet;
    use crate::{Setting, WarningKind};
    use serde_json::{Value, json};

    #[test]
    fn false_everywhere_except_where_the_api_would_reject_it() {
        let policy = only(Setting::AllowPrivilegeEscalation);
        let cases = [
            (json!(null), json!(false), vec![]),
            (json!({}), json!(false), vec![]),
            (
                json!({"allowPrivilegeEscalation": false}),
                json!(false),
                vec![],
            ),
            (
                json!({"allowPrivilegeEscalation": true}),
                json!(true),
                vec![WarningKind::ExplicitInsecure],
            ),
            (
                json!({"privileged": true}),
                Value::Null,
                vec![WarningKind::Privileged, WarningKind::NotInjected],
            ),
            (json!({"privileged": false}), json!(false), vec![]),
            (
                json!({"capabilities": {"add": ["SYS_ADMIN"]}}),
                Value::Null,
                vec![WarningKind::AddedCapabilities, WarningKind::NotInjected],
            ),
            (
                json!({"capabilities": {"add": ["CAP_SYS_ADMIN"]}}),
                Value::Null,
                vec![WarningKind::AddedCapabilities, WarningKind::NotInjected],
            ),
            (
                json!({"capabilities": {"add": ["NET_BIND_SERVICE"]}}),
                json!(false),
                vec![],
            ),
            (
                json!({"capabilities": {"add": ["NET_ADMIN"]}}),
                json!(false),
                vec![WarningKind::AddedCapabilities],
            ),
        ];
        for (security_context, expected, warnings) in cases {
            for list in ["containers", "initContainers", "ephemeralContainers"] {
                let spec = json!({ list: [{"name": "c", "securityContext": security_context}] });
                let run = run_with(spec, &policy, SettingSet::default(), None);
                assert_eq!(
                    run.output[list][0]["securityContext"]["allowPrivilegeEscalation"], expected,
                    "{list} {security_context}"
                );
                assert_eq!(kinds(&run), warnings, "{list} {security_context}");
            }
        }
    }

    #[test]
    fn sys_admin_spellings() {
        assert!(adds_sys_admin(&["SYS_ADMIN"]));
        assert!(adds_sys_admin(&["NET_RAW", "cap_sys_admin"]));
        assert!(!adds_sys_admin(&["SYS_PTRACE", "NET_ADMIN"]));
        assert!(!adds_sys_admin(&[]));
    }
}
