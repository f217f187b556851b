//! What an image runs as, as facts handed to the engine, and what the engine
//! then does with `runAsNonRoot` for a container of that image.
//!
//! The kubelet refuses `runAsNonRoot: true` for an image whose USER is root
//! (unset, `0`, `root`) and for a USER that is a name, which it cannot check.
//! The engine never looks anything up: a caller that can read registries
//! (the server, `preview --resolve-images`) passes [`ImageFacts`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one image runs as, learned from its registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUser {
    /// A numeric non-zero UID (`USER 1000`, `USER 1000:1000`).
    Uid(i64),
    /// A user name, found with this non-zero UID in the image's `/etc/passwd`.
    Named { name: String, uid: i64 },
    /// Root, or what must be treated as root: USER unset, `0`, `root`, `0:…`,
    /// or a name that maps to 0 or cannot be resolved. `why` says which.
    Root { why: String },
    /// Nothing could be learned (registry unreachable, refused, garbage, or
    /// past the time budget). `why` says what happened.
    Unknown { why: String },
}

/// Facts per image reference, exactly as containers spell `image`.
pub type ImageFacts = BTreeMap<String, ImageUser>;

/// `images.root`: what to do for a container whose image runs as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootImages {
    /// No `runAsNonRoot` for that container, and a warning.
    #[default]
    Skip,
    /// Container-level `runAsUser` = `images.run_as_user`, and `runAsNonRoot`
    /// (for images known to work as any user).
    RunAsUser,
}

/// `images.unknown`: what to do when the image's user could not be learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownImages {
    /// Inject `runAsNonRoot` as without image awareness, with a warning.
    #[default]
    Inject,
    /// No `runAsNonRoot` for that container, and a warning.
    Skip,
}

/// The engine's part of the `[images]` configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagePolicy {
    pub root: RootImages,
    pub unknown: UnknownImages,
    /// The UID `root = "run-as-user"` injects.
    pub run_as_user: i64,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        ImagePolicy {
            root: RootImages::Skip,
            unknown: UnknownImages::Inject,
            run_as_user: 65532,
        }
    }
}

/// The images of an object whose user decides `runAsNonRoot`, and the CPU
/// architecture the pod pins, if any: what a caller should resolve
/// (see [`crate::image_query`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageQuery {
    /// Distinct image references, in the order containers list them.
    pub images: Vec<String>,
    /// `spec.nodeSelector["kubernetes.io/arch"]` of the pod (template).
    pub arch: Option<String>,
}

/// What the `runAsNonRoot` rule does for one container, given its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageDecision {
    /// Inject as usual (a numeric non-root image, or no facts at all).
    Inject,
    /// Inject, and say why the image's user was not known.
    InjectUnknown(String),
    /// Set container-level `runAsUser` to this UID, then inject.
    WithUser { uid: i64, why: String },
    /// Leave `runAsNonRoot` out for this container.
    Skip(String),
}

/// Decides for an image with these facts (`None`: the caller resolved no
/// images at all, so behave as without image awareness).
pub(crate) fn decide(
    image: Option<&str>,
    facts: Option<&ImageFacts>,
    policy: &ImagePolicy,
) -> ImageDecision {
    let Some(facts) = facts else {
        return ImageDecision::Inject;
    };
    let shown = image.unwrap_or("(no image)");
    let unknown = |why: &str| match policy.unknown {
        UnknownImages::Inject => ImageDecision::InjectUnknown(format!(
            "what image {shown} runs as is unknown ({why}); runAsNonRoot injected (images.unknown = inject)"
        )),
        UnknownImages::Skip => ImageDecision::Skip(format!(
            "not set: what image {shown} runs as is unknown ({why}) and images.unknown = skip"
        )),
    };
    match image.and_then(|image| facts.get(image)) {
        None => unknown("not resolved"),
        Some(ImageUser::Uid(_)) => ImageDecision::Inject,
        Some(ImageUser::Named { name, uid }) => ImageDecision::WithUser {
            uid: *uid,
            why: format!("image {shown} runs as user {name}, UID {uid} in its /etc/passwd"),
        },
        Some(ImageUser::Root { why }) => match policy.root {
            RootImages::Skip => ImageDecision::Skip(format!(
                "not set: image {shown} runs as root ({why}); images.root = skip"
            )),
            RootImages::RunAsUser => ImageDecision::WithUser {
                uid: policy.run_as_user,
                why: format!(
                    "image {shown} runs as root ({why}); images.root = run-as-user sets UID {}",
                    policy.run_as_user
                ),
            },
        },
        Some(ImageUser::Unknown { why }) => unknown(why),
    }
}

/// Image facts for the engine's tests: `num` (UID 1000), `named` (`app`,
/// 10001), `root` (USER unset) and `gone` (unknown, 404).
#[cfg(test)]
pub(crate) fn test_facts() -> ImageFacts {
    [
        ("num", ImageUser::Uid(1000)),
        (
            "named",
            ImageUser::Named {
                name: "app".into(),
                uid: 10001,
            },
        ),
        (
            "root",
            ImageUser::Root {
                why: "USER unset".into(),
            },
        ),
        ("gone", ImageUser::Unknown { why: "404".into() }),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_and_policy_gives_its_decision() {
        let facts = test_facts();
        let skip_unknown = ImagePolicy {
            unknown: UnknownImages::Skip,
            ..ImagePolicy::default()
        };
        let run_as = ImagePolicy {
            root: RootImages::RunAsUser,
            run_as_user: 4242,
            ..ImagePolicy::default()
        };
        let d = ImagePolicy::default();
        assert_eq!(decide(Some("x"), None, &d), ImageDecision::Inject);
        assert_eq!(decide(Some("num"), Some(&facts), &d), ImageDecision::Inject);
        assert!(matches!(
            decide(Some("named"), Some(&facts), &d),
            ImageDecision::WithUser { uid: 10001, .. }
        ));
        assert!(
            matches!(decide(Some("root"), Some(&facts), &d), ImageDecision::Skip(why) if why.contains("USER unset"))
        );
        assert!(matches!(
            decide(Some("root"), Some(&facts), &run_as),
            ImageDecision::WithUser { uid: 4242, .. }
        ));
        assert!(
            matches!(decide(Some("gone"), Some(&facts), &d), ImageDecision::InjectUnknown(why) if why.contains("404"))
        );
        assert!(
            matches!(decide(Some("gone"), Some(&facts), &skip_unknown), ImageDecision::Skip(why) if why.contains("images.unknown = skip"))
        );
        assert!(
            matches!(decide(Some("other"), Some(&facts), &d), ImageDecision::InjectUnknown(why) if why.contains("not resolved"))
        );
        assert!(matches!(
            decide(None, Some(&facts), &skip_unknown),
            ImageDecision::Skip(_)
        ));
    }
}
