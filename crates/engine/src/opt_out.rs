//! The `kube-hardener.io/skip` opt-out annotation and the set of settings it names.

use crate::setting::SettingSet;
use crate::shape::clip;
use crate::{Setting, Warning, WarningKind};

/// What a `skip` annotation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Skip {
    All,
    Some(SettingSet),
}

/// Parses a `skip` value: `all` (anywhere in the list, any case) or a comma
/// list of setting names. Unknown names become warnings on `field`, never
/// errors: a typo in an annotation must not block pod creation.
pub(crate) fn parse_skip(value: &str, field: &str, warnings: &mut Vec<Warning>) -> Skip {
    let mut set = SettingSet::default();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.eq_ignore_ascii_case("all") {
            return Skip::All;
        }
        match name.parse::<Setting>() {
            Ok(setting) => set.insert(setting),
            Err(_) => warnings.push(Warning {
                kind: WarningKind::Annotation,
                field: field.to_owned(),
                message: format!("unknown setting `{}` ignored", clip(name, 40)),
            }),
        }
    }
    Skip::Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rules::test_support::set;

    #[test]
    fn parses_skip_values() {
        use Setting::*;
        let cases: Vec<(&str, Skip, Vec<&str>)> = vec![
            ("all", Skip::All, vec![]),
            (" ALL ", Skip::All, vec![]),
            ("capabilities,all", Skip::All, vec![]),
            ("", Skip::Some(set(&[])), vec![]),
            (" , ,", Skip::Some(set(&[])), vec![]),
            ("capabilities", Skip::Some(set(&[Capabilities])), vec![]),
            (
                "readOnlyRootFilesystem, CAPABILITIES ,seccompprofile",
                Skip::Some(set(&[ReadOnlyRootFilesystem, Capabilities, SeccompProfile])),
                vec![],
            ),
            (
                "runAsNonRoot,bogus,readonly",
                Skip::Some(set(&[RunAsNonRoot])),
                vec![
                    "unknown setting `bogus` ignored",
                    "unknown setting `readonly` ignored",
                ],
            ),
        ];
        for (value, expected, messages) in cases {
            let mut warnings = Vec::new();
            assert_eq!(parse_skip(value, "f", &mut warnings), expected, "{value:?}");
            let got: Vec<_> = warnings.iter().map(|w| w.message.as_str()).collect();
            assert_eq!(got, messages, "{value:?}");
            assert!(
                warnings
                    .iter()
                    .all(|w| w.kind == WarningKind::Annotation && w.field == "f")
            );
        }
    }

    #[test]
    fn unknown_names_are_clipped_in_messages() {
        let mut warnings = Vec::new();
        parse_skip(&"x".repeat(5000), "f", &mut warnings);
        assert!(warnings[0].to_string().len() < 200);
    }

    #[test]
    fn setting_set_iterates_in_canonical_order() {
        let s = set(&[
            Setting::FsGroup,
            Setting::RunAsNonRoot,
            Setting::Capabilities,
        ]);
        assert_eq!(
            s.to_vec(),
            vec![
                Setting::RunAsNonRoot,
                Setting::Capabilities,
                Setting::FsGroup
            ]
        );
        assert!(!s.is_empty() && SettingSet::default().is_empty());
        assert_eq!(s.union(set(&[Setting::RunAsUser])).to_vec().len(), 4);
        for setting in Setting::ALL {
            assert!(set(&[setting]).contains(setting));
        }
    }
}
