//! `capabilities.drop` gains the exact string `ALL`.
//!
//! Pod Security Admission's restricted check compares case-sensitively, so a
//! lower-case `all` does not count and `ALL` is appended next to it. `add` is
//! the user's and is never changed.

use serde_json::Value;

use super::{Edits, RuleInput};
use crate::Setting;
use crate::patch::Token;
use crate::view::ContainerView;

pub(super) fn container<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    if !rules.enabled(Setting::Capabilities) {
        return;
    }
    let drops_all = container
        .security_context
        .drop
        .as_ref()
        .is_some_and(|drop| drop.contains(&"ALL"));
    if drops_all {
        return;
    }
    let mut drop = container.security_context_tokens(&rules.spec);
    drop.push(Token::Key("capabilities"));
    drop.push(Token::Key("drop"));
    edits.patch.push(&drop, Value::from("ALL"));
    edits.applied.insert(Setting::Capabilities);
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::Setting;
    use crate::setting::SettingSet;
    use serde_json::json;

    #[test]
    fn drop_all_is_appended_or_created() {
        let policy = only(Setting::Capabilities);
        let cases = [
            (json!(null), json!({"drop": ["ALL"]}), 1),
            (json!({}), json!({"drop": ["ALL"]}), 1),
            (json!({"capabilities": null}), json!({"drop": ["ALL"]}), 1),
            (json!({"capabilities": {}}), json!({"drop": ["ALL"]}), 1),
            (
                json!({"capabilities": {"drop": []}}),
                json!({"drop": ["ALL"]}),
                1,
            ),
            (
                json!({"capabilities": {"drop": ["all"]}}),
                json!({"drop": ["all", "ALL"]}),
                1,
            ),
            (
                json!({"capabilities": {"drop": ["NET_RAW", "All"]}}),
                json!({"drop": ["NET_RAW", "All", "ALL"]}),
                1,
            ),
            (
                json!({"capabilities": {"drop": ["ALL"]}}),
                json!({"drop": ["ALL"]}),
                0,
            ),
            (
                json!({"capabilities": {"drop": ["NET_RAW", "ALL"]}}),
                json!({"drop": ["NET_RAW", "ALL"]}),
                0,
            ),
            (
                json!({"capabilities": {"add": ["NET_BIND_SERVICE"]}}),
                json!({"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}),
                1,
            ),
        ];
        for (security_context, expected, ops) in cases {
            let spec = json!({"containers": [{"name": "c", "securityContext": security_context}]});
            let run = run_with(spec, &policy, SettingSet::default(), None);
            assert_eq!(
                run.output["containers"][0]["securityContext"]["capabilities"], expected,
                "{security_context}"
            );
            assert_eq!(run.ops, ops, "{security_context}");
            assert_eq!(run.applied.is_empty(), ops == 0, "{security_context}");
        }
    }
}
