//! Reading an image config's `User`, an image's `/etc/passwd`, and merging
//! what several platforms of one image say. Pure functions.

use kube_hardener_engine::ImageUser;

/// What an image config's `User` field says, before any `/etc/passwd` lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigUser {
    Uid(i64),
    Root(String),
    /// A user name the image's `/etc/passwd` must resolve.
    Name(String),
    /// Not a user the kubelet could run as.
    Invalid(String),
}

/// The largest UID the kubelet accepts (`runAsUser` is a 32-bit value).
const MAX_UID: i64 = i32::MAX as i64;

/// Parses `User` (`""`, `1000`, `1000:1000`, `app`, `app:app`, `0:0`, `root`).
/// Only the part before `:` decides; the group does not make a user root.
pub fn parse_config_user(user: &str) -> ConfigUser {
    let user = user.trim();
    if user.is_empty() {
        return ConfigUser::Root("USER unset".to_owned());
    }
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return ConfigUser::Invalid(format!("USER `{}` has no user part", clip(user)));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return match name.parse::<i64>() {
            Ok(0) => ConfigUser::Root(format!("USER {}", clip(user))),
            Ok(uid) if uid <= MAX_UID => ConfigUser::Uid(uid),
            _ => ConfigUser::Invalid(format!("USER `{}` is out of range", clip(user))),
        };
    }
    if name == "root" {
        return ConfigUser::Root(format!("USER {}", clip(user)));
    }
    let valid = name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
    if valid {
        ConfigUser::Name(name.to_owned())
    } else {
        ConfigUser::Invalid(format!("USER `{}` is not a user name", clip(user)))
    }
}

/// The UID of `name` in the text of an `/etc/passwd`, if listed.
pub fn passwd_uid(passwd: &str, name: &str) -> Option<i64> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.trim().parse::<i64>().ok())
            .flatten()
            .filter(|uid| (0..=MAX_UID).contains(uid))
    })
}

/// What a named user means, given the passwd text found in the image
/// (`None`: the image has no `/etc/passwd`).
pub fn resolve_name(name: &str, passwd: Option<&str>) -> ImageUser {
    let shown = clip(name);
    match passwd.map(|text| passwd_uid(text, name)) {
        None => ImageUser::Root {
            why: format!("user {shown} cannot be resolved: the image has no /etc/passwd"),
        },
        Some(None) => ImageUser::Root {
            why: format!("user {shown} is not in the image's /etc/passwd"),
        },
        Some(Some(0)) => ImageUser::Root {
            why: format!("user {shown} is UID 0 in the image's /etc/passwd"),
        },
        Some(Some(uid)) => ImageUser::Named {
            name: name.to_owned(),
            uid,
        },
    }
}

/// One decision for an image whose platforms may disagree: the most cautious
/// one, so that no platform's pod is stopped by the kubelet.
/// Unknown beats everything (nothing can be promised), then root (skip
/// `runAsNonRoot`), then a named user (only when every named platform
/// resolves to the same UID), then a numeric UID.
pub fn merge_platforms(users: Vec<(String, ImageUser)>) -> ImageUser {
    if users.len() <= 1 {
        return users
            .into_iter()
            .next()
            .map(|(_, u)| u)
            .unwrap_or(ImageUser::Unknown {
                why: "the image index lists no linux platform".to_owned(),
            });
    }
    let platforms = |pred: &dyn Fn(&ImageUser) -> bool| {
        users
            .iter()
            .filter(|(_, u)| pred(u))
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some((platform, ImageUser::Unknown { why })) = users
        .iter()
        .find(|(_, u)| matches!(u, ImageUser::Unknown { .. }))
    {
        return ImageUser::Unknown {
            why: format!("{why} (platform {platform})"),
        };
    }
    if let Some((_, ImageUser::Root { why })) = users
        .iter()
        .find(|(_, u)| matches!(u, ImageUser::Root { .. }))
    {
        let which = platforms(&|u| matches!(u, ImageUser::Root { .. }));
        return ImageUser::Root {
            why: format!("{why} on {which}; platforms disagree, so treated as root"),
        };
    }
    let named: Vec<(&str, i64)> = users
        .iter()
        .filter_map(|(_, u)| match u {
            ImageUser::Named { name, uid } => Some((name.as_str(), *uid)),
            _ => None,
        })
        .collect();
    let uids: Vec<i64> = users
        .iter()
        .filter_map(|(_, u)| match u {
            ImageUser::Named { uid, .. } | ImageUser::Uid(uid) => Some(*uid),
            _ => None,
        })
        .collect();
    match named.first() {
        None => ImageUser::Uid(uids.first().copied().unwrap_or(1)),
        Some((name, uid)) if uids.iter().all(|u| u == uid) => ImageUser::Named {
            name: (*name).to_owned(),
            uid: *uid,
        },
        Some(_) => ImageUser::Root {
            why: format!(
                "the platforms run as different UIDs ({}), so no one runAsUser fits",
                platforms(&|_| true)
            ),
        },
    }
}

/// Bounded text for messages (image configs are attacker-controlled).
pub(crate) fn clip(text: &str) -> String {
    let cut: String = text
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > 64 {
        format!("{cut}…")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_users() {
        let cases = [
            ("", ConfigUser::Root("USER unset".into())),
            ("  ", ConfigUser::Root("USER unset".into())),
            ("0", ConfigUser::Root("USER 0".into())),
            ("0:0", ConfigUser::Root("USER 0:0".into())),
            ("root", ConfigUser::Root("USER root".into())),
            ("root:wheel", ConfigUser::Root("USER root:wheel".into())),
            ("1000", ConfigUser::Uid(1000)),
            ("1000:1000", ConfigUser::Uid(1000)),
            ("65532:0", ConfigUser::Uid(65532)),
            ("app", ConfigUser::Name("app".into())),
            ("nginx:nginx", ConfigUser::Name("nginx".into())),
            (
                "99999999999",
                ConfigUser::Invalid("USER `99999999999` is out of range".into()),
            ),
            (
                ":1000",
                ConfigUser::Invalid("USER `:1000` has no user part".into()),
            ),
            (
                "a b",
                ConfigUser::Invalid("USER `a b` is not a user name".into()),
            ),
        ];
        for (user, expected) in cases {
            assert_eq!(parse_config_user(user), expected, "{user:?}");
        }
    }

    #[test]
    fn passwd_lookups() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:10001:10001::/app:/bin/sh\n\
                      broken\nweird:x:-5:0::/:/bin/sh\nzero:x:0:0::/:/bin/sh\n";
        assert_eq!(passwd_uid(passwd, "app"), Some(10001));
        assert_eq!(passwd_uid(passwd, "root"), Some(0));
        assert_eq!(passwd_uid(passwd, "weird"), None);
        assert_eq!(passwd_uid(passwd, "nobody"), None);
        assert_eq!(
            resolve_name("app", Some(passwd)),
            ImageUser::Named {
                name: "app".into(),
                uid: 10001
            }
        );
        assert!(
            matches!(resolve_name("zero", Some(passwd)), ImageUser::Root { why } if why.contains("UID 0"))
        );
        assert!(
            matches!(resolve_name("nobody", Some(passwd)), ImageUser::Root { why } if why.contains("not in"))
        );
        assert!(
            matches!(resolve_name("app", None), ImageUser::Root { why } if why.contains("no /etc/passwd"))
        );
    }

    #[test]
    fn platforms_merge_to_the_most_cautious() {
        let p = |name: &str, user: ImageUser| (name.to_owned(), user);
        let named = |uid| ImageUser::Named {
            name: "app".into(),
            uid,
        };
        assert_eq!(
            merge_platforms(vec![p("amd64", ImageUser::Uid(1000))]),
            ImageUser::Uid(1000)
        );
        assert_eq!(
            merge_platforms(vec![
                p("amd64", ImageUser::Uid(1000)),
                p("arm64", ImageUser::Uid(2000))
            ]),
            ImageUser::Uid(1000)
        );
        assert_eq!(
            merge_platforms(vec![p("amd64", named(10)), p("arm64", ImageUser::Uid(10))]),
            named(10)
        );
        assert!(matches!(
            merge_platforms(vec![p("amd64", named(10)), p("arm64", named(11))]),
            ImageUser::Root { why } if why.contains("different UIDs")
        ));
        assert!(matches!(
            merge_platforms(vec![p("amd64", ImageUser::Uid(1)), p("arm64", ImageUser::Root { why: "USER unset".into() })]),
            ImageUser::Root { why } if why.contains("arm64") && why.contains("disagree")
        ));
        assert!(matches!(
            merge_platforms(vec![p("amd64", ImageUser::Root { why: "x".into() }), p("arm64", ImageUser::Unknown { why: "404".into() })]),
            ImageUser::Unknown { why } if why.contains("arm64")
        ));
        assert!(matches!(merge_platforms(vec![]), ImageUser::Unknown { .. }));
    }
}
