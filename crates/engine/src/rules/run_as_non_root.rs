//! `runAsNonRoot`: pod level when every container can run as non-root,
//! otherwise per container on those that can.
//!
//! The kubelet refuses to start a container with `runAsNonRoot: true` whose
//! effective UID is 0, or (on Windows) whose effective `runAsUserName` is
//! `ContainerAdministrator`, so such a container never gets it.

use serde_json::Value;

use super::{Edits, RuleInput};
use crate::image::{ImageDecision, decide};
use crate::view::ContainerView;
use crate::{Setting, WarningKind};

/// Why a container cannot get `runAsNonRoot: true`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conflict {
    ExplicitFalse,
    RootUid,
    WindowsAdministrator,
    /// Its image runs as root (or as an unknown user) and the policy says skip.
    Image(String),
}

/// The user the Windows kubelet treats as root (compared case-insensitively,
/// as Windows user names are).
/// The Windows user that is root: `runAsNonRoot` refuses it.
pub const WINDOWS_ROOT_USER: &str = "ContainerAdministrator";

/// What decides a container's user besides its own securityContext.
#[derive(Debug, Clone, Copy)]
struct PodUser<'v> {
    /// The pod's explicit `runAsUser` or the one injected from the configuration.
    uid: Option<i64>,
    /// The pod's `windowsOptions.runAsUserName`.
    user_name: Option<&'v str>,
}

fn conflict(
    container: &ContainerView<'_>,
    pod: PodUser<'_>,
    image: &ImageDecision,
) -> Option<Conflict> {
    let user_name = container
        .security_context
        .run_as_user_name
        .or(pod.user_name);
    if container.security_context.run_as_non_root == Some(false) {
        Some(Conflict::ExplicitFalse)
    } else if container.security_context.run_as_user.or(pod.uid) == Some(0) {
        Some(Conflict::RootUid)
    } else if user_name.is_some_and(|name| name.trim().eq_ignore_ascii_case(WINDOWS_ROOT_USER)) {
        Some(Conflict::WindowsAdministrator)
    } else if let ImageDecision::Skip(why) = image {
        Some(Conflict::Image(why.clone()))
    } else {
        None
    }
}

/// What the container's image means for it. Only a container whose user is
/// decided by its image asks: no `runAsUser` of its own or from the pod, no
/// `runAsNonRoot` of its own, not on Windows.
fn image_decision(
    rules: &RuleInput<'_, '_>,
    container: &ContainerView<'_>,
    pod: PodUser<'_>,
) -> ImageDecision {
    if !user_from_image(rules, container, pod) {
        return ImageDecision::Inject;
    }
    match decide(container.image, rules.images, &rules.policy.images) {
        // A namespace that opts out of runAsUser gets no UID from the image
        // either; without one the kubelet would refuse the container.
        ImageDecision::WithUser { why, .. } if rules.skipped.contains(Setting::RunAsUser) => {
            ImageDecision::Skip(format!("not set: {why}, but the namespace skips runAsUser"))
        }
        decision => decision,
    }
}

/// Whether the container's user is left to its image: the one test both for
/// what to resolve ([`images_to_resolve`]) and for what the facts decide.
fn user_from_image(
    rules: &RuleInput<'_, '_>,
    container: &ContainerView<'_>,
    pod: PodUser<'_>,
) -> bool {
    let context = &container.security_context;
    !(rules.pod.windows
        || context.run_as_user.or(pod.uid).is_some()
        || context.run_as_non_root.is_some())
}

/// The distinct images whose user would decide `runAsNonRoot` in this pod,
/// in container order: none when the setting is off or skipped, or the pod
/// sets `runAsNonRoot: false` itself.
pub(super) fn images_to_resolve<'v>(
    rules: &RuleInput<'_, 'v>,
    injected_uid: Option<i64>,
) -> Vec<&'v str> {
    if !rules.enabled(Setting::RunAsNonRoot)
        || rules.pod.security_context.run_as_non_root == Some(false)
    {
        return Vec::new();
    }
    let pod_user = PodUser {
        uid: rules.pod.security_context.run_as_user.or(injected_uid),
        user_name: rules.pod.security_context.run_as_user_name,
    };
    let mut images: Vec<&'v str> = Vec::new();
    for container in &rules.pod.containers {
        if let (true, Some(image)) = (user_from_image(rules, container, pod_user), container.image)
            && !images.contains(&image)
        {
            images.push(image);
        }
    }
    images
}

/// Carries out the parts of an image decision that do not depend on where
/// `runAsNonRoot` goes: the container's `runAsUser`, and the warning.
fn apply_image_decision<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
    decision: &ImageDecision,
) {
    match decision {
        ImageDecision::Inject | ImageDecision::Skip(_) => {}
        ImageDecision::InjectUnknown(why) => edits.warn(
            WarningKind::Image,
            format!("{}.securityContext.runAsNonRoot", container.field()),
            why.clone(),
        ),
        ImageDecision::WithUser { uid, why } => {
            edits.inject(
                Setting::RunAsUser,
                &container.security_context_tokens(&rules.spec),
                "runAsUser",
                Value::from(*uid),
            );
            edits.warn(
                WarningKind::Image,
                format!("{}.securityContext.runAsUser", container.field()),
                format!("set to {uid}: {why}"),
            );
        }
    }
}

fn warn_conflict(edits: &mut Edits<'_>, container: &ContainerView<'_>, conflict: Conflict) {
    match conflict {
        Conflict::ExplicitFalse => edits.warn(
            WarningKind::ExplicitInsecure,
            format!("{}.securityContext.runAsNonRoot", container.field()),
            "is false; left as set, the container may run as root",
        ),
        Conflict::RootUid => edits.warn(
            WarningKind::NotInjected,
            format!("{}.securityContext.runAsNonRoot", container.field()),
            "not set: the container runs as UID 0",
        ),
        Conflict::WindowsAdministrator => edits.warn(
            WarningKind::NotInjected,
            format!("{}.securityContext.runAsNonRoot", container.field()),
            "not set: the container runs as ContainerAdministrator",
        ),
        Conflict::Image(why) => edits.warn(
            WarningKind::Image,
            format!("{}.securityContext.runAsNonRoot", container.field()),
            why,
        ),
    }
}

/// A container under an explicit pod-level `runAsNonRoot: true`: nothing to
/// inject, but a root user there means the kubelet will not start it (for
/// instance a container another webhook added after this one ran).
fn under_pod_level_true<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
    pod: PodUser<'_>,
) {
    let image = image_decision(rules, container, pod);
    let (key, what) = match conflict(container, pod, &image) {
        None => {
            // A named user or a root image under run-as-user gets its UID,
            // so the kubelet can check it.
            if matches!(image, ImageDecision::WithUser { .. }) {
                apply_image_decision(rules, edits, container, &image);
            }
            return;
        }
        Some(Conflict::ExplicitFalse) => {
            warn_conflict(edits, container, Conflict::ExplicitFalse);
            return;
        }
        Some(Conflict::RootUid) => ("runAsUser", "UID 0".to_owned()),
        Some(Conflict::WindowsAdministrator) => (
            "windowsOptions.runAsUserName",
            "ContainerAdministrator".to_owned(),
        ),
        Some(Conflict::Image(why)) => {
            edits.warn(
                WarningKind::Image,
                format!("{}.securityContext.runAsNonRoot", container.field()),
                format!("{why}; the pod sets runAsNonRoot: true, so the kubelet will not start it"),
            );
            return;
        }
    };
    edits.warn(
        WarningKind::ExplicitInsecure,
        format!("{}.securityContext.{key}", container.field()),
        format!("runs as {what} under runAsNonRoot: true; the kubelet will not start it"),
    );
}

/// Returns `false` when the pod level decides for every container (an explicit
/// value there), after warning about insecure explicit values.
fn pod_level_open(rules: &RuleInput<'_, '_>, edits: &mut Edits<'_>) -> bool {
    match rules.pod.security_context.run_as_non_root {
        None => true,
        Some(false) => {
            edits.warn(
                WarningKind::ExplicitInsecure,
                format!("{}.securityContext.runAsNonRoot", rules.pod.field),
                "is false; left as set, containers may run as root",
            );
            false
        }
        Some(true) => false,
    }
}

pub(super) fn pod<'v>(rules: &RuleInput<'_, 'v>, edits: &mut Edits<'v>, injected_uid: Option<i64>) {
    if !rules.enabled(Setting::RunAsNonRoot) {
        return;
    }
    let containers = &rules.pod.containers;
    let pod_user = PodUser {
        uid: rules.pod.security_context.run_as_user.or(injected_uid),
        user_name: rules.pod.security_context.run_as_user_name,
    };
    if !pod_level_open(rules, edits) {
        if rules.pod.security_context.run_as_non_root == Some(true) {
            for c in containers {
                under_pod_level_true(rules, edits, c, pod_user);
            }
        }
        return;
    }
    let decisions: Vec<ImageDecision> = containers
        .iter()
        .map(|c| image_decision(rules, c, pod_user))
        .collect();
    let all_clear = containers
        .iter()
        .zip(&decisions)
        .all(|(c, d)| conflict(c, pod_user, d).is_none());
    if all_clear {
        for (container, decision) in containers.iter().zip(&decisions) {
            apply_image_decision(rules, edits, container, decision);
        }
        edits.inject(
            Setting::RunAsNonRoot,
            &rules.pod_security_context(),
            "runAsNonRoot",
            Value::Bool(true),
        );
        return;
    }
    for (container, decision) in containers.iter().zip(&decisions) {
        per_container(rules, edits, container, pod_user, decision);
    }
}

fn per_container<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
    pod_user: PodUser<'_>,
    decision: &ImageDecision,
) {
    match conflict(container, pod_user, decision) {
        Some(conflict) => warn_conflict(edits, container, conflict),
        None if container.security_context.run_as_non_root.is_none() => {
            apply_image_decision(rules, edits, container, decision);
            edits.inject(
                Setting::RunAsNonRoot,
                &container.security_context_tokens(&rules.spec),
                "runAsNonRoot",
                Value::Bool(true),
            );
        }
        None => {}
    }
}

/// A new ephemeral container: the pod-level value (if any) already covers it.
pub(super) fn new_container<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    if !rules.enabled(Setting::RunAsNonRoot) {
        return;
    }
    let pod_user = PodUser {
        uid: rules.pod.security_context.run_as_user,
        user_name: rules.pod.security_context.run_as_user_name,
    };
    match rules.pod.security_context.run_as_non_root {
        Some(true) => under_pod_level_true(rules, edits, container, pod_user),
        Some(false) => {}
        None => {
            let decision = image_decision(rules, container, pod_user);
            per_container(rules, edits, container, pod_user, &decision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::setting::SettingSet;
    use crate::{Policy, Setting, WarningKind};
    use serde_json::{Value, json};

    fn rnr(run: &Value, list: &str, i: usize) -> Value {
        run[list][i]["securityContext"]["runAsNonRoot"].clone()
    }

    #[test]
    fn pod_level_when_nothing_conflicts() {
        let cases = [
            json!({"containers": [{"name": "a"}]}),
            json!({"containers": [{"name": "a", "securityContext": {"runAsUser": 1000}}]}),
            json!({"securityContext": {"runAsUser": 1000}, "containers": [{"name": "a"}]}),
            json!({"containers": [{"name": "a", "securityContext": {"runAsNonRoot": true}}]}),
            json!({"containers": [{"name": "a"}], "initContainers": [{"name": "i"}],
                   "ephemeralContainers": [{"name": "e"}]}),
        ];
        for spec in cases {
            let run = run_with(
                spec.clone(),
                &only(Setting::RunAsNonRoot),
                SettingSet::default(),
                None,
            );
            assert_eq!(
                run.output["securityContext"]["runAsNonRoot"],
                json!(true),
                "{spec}"
            );
            assert_eq!(run.applied, vec![Setting::RunAsNonRoot]);
            assert!(run.warnings.is_empty(), "{spec}");
            assert_eq!(run.ops, 1);
        }
    }

    #[test]
    fn per_container_when_some_container_runs_as_root() {
        // (spec, expected runAsNonRoot per (list, index), warning kinds)
        let cases = [
            (
                json!({"containers": [{"name": "a"}, {"name": "root", "securityContext": {"runAsUser": 0}}]}),
                vec![
                    ("containers", 0, json!(true)),
                    ("containers", 1, Value::Null),
                ],
                vec![WarningKind::NotInjected],
            ),
            (
                json!({"securityContext": {"runAsUser": 0},
                       "containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsUser": 1000}}]}),
                vec![
                    ("containers", 0, Value::Null),
                    ("containers", 1, json!(true)),
                ],
                vec![WarningKind::NotInjected],
            ),
            (
                json!({"containers": [{"name": "a", "securityContext": {"runAsNonRoot": false}}],
                       "initContainers": [{"name": "i"}], "ephemeralContainers": [{"name": "e"}]}),
                vec![
                    ("containers", 0, json!(false)),
                    ("initContainers", 0, json!(true)),
                    ("ephemeralContainers", 0, json!(true)),
                ],
                vec![WarningKind::ExplicitInsecure],
            ),
            (
                json!({"containers": [{"name": "a", "securityContext": {"runAsNonRoot": true}},
                                      {"name": "e", "securityContext": {"runAsUser": 0}}]}),
                vec![
                    ("containers", 0, json!(true)),
                    ("containers", 1, Value::Null),
                ],
                vec![WarningKind::NotInjected],
            ),
        ];
        for (spec, expected, warnings) in cases {
            let run = run_with(
                spec.clone(),
                &only(Setting::RunAsNonRoot),
                SettingSet::default(),
                None,
            );
            assert_eq!(
                run.output["securityContext"].get("runAsNonRoot"),
                None,
                "{spec}"
            );
            for (list, i, value) in expected {
                assert_eq!(rnr(&run.output, list, i), value, "{spec} {list}[{i}]");
            }
            assert_eq!(kinds(&run), warnings, "{spec}");
        }
    }

    #[test]
    fn windows_administrator_is_root_for_the_kubelet() {
        // (spec, expected pod-level value, expected per-container values, warnings)
        let admin = json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}});
        let user = json!({"windowsOptions": {"runAsUserName": "ContainerUser"}});
        let cases = [
            (
                json!({"os": {"name": "windows"}, "securityContext": admin,
                       "containers": [{"name": "a"}]}),
                Value::Null,
                vec![Value::Null],
                vec![WarningKind::NotInjected],
            ),
            (
                json!({"os": {"name": "windows"},
                       "containers": [{"name": "a", "securityContext":
                           {"windowsOptions": {"runAsUserName": " containeradministrator "}}},
                                      {"name": "b"}]}),
                Value::Null,
                vec![Value::Null, json!(true)],
                vec![WarningKind::NotInjected],
            ),
            (
                // The container's own user name wins over the pod's.
                json!({"os": {"name": "windows"}, "securityContext": admin,
                       "containers": [{"name": "a", "securityContext": user}, {"name": "b"}]}),
                Value::Null,
                vec![json!(true), Value::Null],
                vec![WarningKind::NotInjected],
            ),
            (
                json!({"os": {"name": "windows"}, "securityContext": user,
                       "containers": [{"name": "a"}]}),
                json!(true),
                vec![Value::Null],
                vec![],
            ),
            (
                json!({"os": {"name": "windows"}, "securityContext": {"windowsOptions": {}},
                       "containers": [{"name": "a"}]}),
                json!(true),
                vec![Value::Null],
                vec![],
            ),
        ];
        for (spec, pod_level, per_container, warnings) in cases {
            let run = run(spec.clone());
            assert_eq!(
                run.output["securityContext"]["runAsNonRoot"], pod_level,
                "{spec}"
            );
            for (i, expected) in per_container.into_iter().enumerate() {
                assert_eq!(rnr(&run.output, "containers", i), expected, "{spec} [{i}]");
            }
            assert_eq!(kinds(&run), warnings, "{spec}");
            if let Some(w) = run.warnings.first() {
                assert_eq!(w.2, "not set: the container runs as ContainerAdministrator");
            }
        }
    }

    #[test]
    fn new_ephemeral_container_running_as_windows_administrator_is_left_alone() {
        let spec = json!({"os": {"name": "windows"}, "containers": [{"name": "a"}],
            "ephemeralContainers": [{"name": "dbg", "securityContext":
                {"windowsOptions": {"runAsUserName": "ContainerAdministrator"}}}]});
        let run = run_with(
            spec,
            &Policy::default(),
            SettingSet::default(),
            Some(&["dbg"]),
        );
        assert_eq!(run.ops, 0);
        assert_eq!(kinds(&run), vec![WarningKind::NotInjected]);
    }

    #[test]
    fn configured_uid_zero_counts_as_the_pods_uid() {
        let mut policy = only(Setting::RunAsNonRoot);
        policy.run_as_user = Some(0);
        let run = run_with(
            json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsUser": 5}}]}),
            &policy,
            SettingSet::default(),
            None,
        );
        // b sets its own runAsUser, so the configured UID is not injected and
        // does not count: both containers are clean.
        assert_eq!(run.output["securityContext"]["runAsNonRoot"], json!(true));

        let run = run_with(
            json!({"containers": [{"name": "a"}]}),
            &policy,
            SettingSet::default(),
            None,
        );
        assert_eq!(run.output["securityContext"], json!({"runAsUser": 0}));
        assert_eq!(kinds(&run), vec![WarningKind::NotInjected]);
    }

    #[test]
    fn explicit_pod_value_is_kept() {
        let run = run_with(
            json!({"securityContext": {"runAsNonRoot": false}, "containers": [{"name": "a"}]}),
            &only(Setting::RunAsNonRoot),
            SettingSet::default(),
            None,
        );
        assert_eq!(run.ops, 0);
        assert_eq!(run.warnings[0].1, "spec.securityContext.runAsNonRoot");
        assert_eq!(kinds(&run), vec![WarningKind::ExplicitInsecure]);

        let run = run_with(
            json!({"securityContext": {"runAsNonRoot": true},
                   "containers": [{"name": "a", "securityContext": {"runAsNonRoot": false}}]}),
            &only(Setting::RunAsNonRoot),
            SettingSet::default(),
            None,
        );
        assert_eq!(run.ops, 0);
        assert_eq!(
            run.warnings[0].1,
            "spec.containers{a}.securityContext.runAsNonRoot"
        );
    }

    #[test]
    fn root_users_under_an_explicit_pod_level_true_are_reported() {
        // (container securityContext, pod securityContext extra, warning field, message)
        let cases = [
            (
                json!({"runAsUser": 0}),
                json!({}),
                Some((
                    "spec.containers{late}.securityContext.runAsUser",
                    "runs as UID 0 under runAsNonRoot: true; the kubelet will not start it",
                )),
            ),
            (
                json!({}),
                json!({"runAsUser": 0}),
                Some((
                    "spec.containers{late}.securityContext.runAsUser",
                    "runs as UID 0 under runAsNonRoot: true; the kubelet will not start it",
                )),
            ),
            (
                json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}}),
                json!({}),
                Some((
                    "spec.containers{late}.securityContext.windowsOptions.runAsUserName",
                    "runs as ContainerAdministrator under runAsNonRoot: true; the kubelet will not start it",
                )),
            ),
            (
                json!({"runAsUser": 0, "runAsNonRoot": false}),
                json!({}),
                Some((
                    "spec.containers{late}.securityContext.runAsNonRoot",
                    "is false; left as set, the container may run as root",
                )),
            ),
            (json!({"runAsUser": 1000}), json!({"runAsUser": 0}), None),
        ];
        for (container_sc, pod_extra, expected) in cases {
            let mut pod_sc = json!({"runAsNonRoot": true});
            for (k, v) in pod_extra.as_object().unwrap() {
                pod_sc[k] = v.clone();
            }
            let spec = json!({"securityContext": pod_sc,
                "containers": [{"name": "late", "securityContext": container_sc}]});
            let run = run_with(
                spec.clone(),
                &only(Setting::RunAsNonRoot),
                SettingSet::default(),
                None,
            );
            assert_eq!(run.ops, 0, "{spec}");
            let got: Vec<_> = run
                .warnings
                .iter()
                .map(|w| (w.1.as_str(), w.2.as_str()))
                .collect();
            assert_eq!(got, expected.into_iter().collect::<Vec<_>>(), "{spec}");
            // The same for a new ephemeral container.
            let spec = json!({"securityContext": spec["securityContext"], "containers": [{"name": "a"}],
                "ephemeralContainers": [{"name": "late", "securityContext": spec["containers"][0]["securityContext"]}]});
            let run = run_with(
                spec.clone(),
                &only(Setting::RunAsNonRoot),
                SettingSet::default(),
                Some(&["late"]),
            );
            assert_eq!(run.ops, 0, "{spec}");
            assert_eq!(
                run.warnings.len(),
                usize::from(expected.is_some()),
                "{spec}"
            );
        }
    }

    #[test]
    fn new_ephemeral_containers_get_it_unless_the_pod_has_it() {
        let policy = Policy::default();
        let cases = [
            (json!({}), json!(true)),
            (json!({"runAsNonRoot": true}), Value::Null),
            (json!({"runAsNonRoot": false}), Value::Null),
            (json!({"runAsUser": 0}), Value::Null),
        ];
        for (pod_sc, expected) in cases {
            let spec = json!({"securityContext": pod_sc, "containers": [{"name": "a"}],
                              "ephemeralContainers": [{"name": "dbg"}]});
            let run = run_with(spec, &policy, SettingSet::default(), Some(&["dbg"]));
            assert_eq!(
                rnr(&run.output, "ephemeralContainers", 0),
                expected,
                "{pod_sc}"
            );
            assert_eq!(run.output["containers"][0], json!({"name": "a"}));
        }
    }

    fn images_run(spec: Value, images: crate::ImagePolicy) -> Run {
        let policy = Policy {
            images,
            ..only(Setting::RunAsNonRoot)
        };
        run_with_images(
            spec,
            &policy,
            SettingSet::default(),
            None,
            Some(&crate::image::test_facts()),
        )
    }

    #[test]
    fn image_facts_decide_per_container() {
        use crate::{ImagePolicy, RootImages, UnknownImages};
        let d = ImagePolicy::default();
        let run_as = ImagePolicy {
            root: RootImages::RunAsUser,
            run_as_user: 4242,
            ..d
        };
        let skip_unknown = ImagePolicy {
            unknown: UnknownImages::Skip,
            ..d
        };
        // (images of the containers, policy, expected pod-level runAsNonRoot,
        //  expected per-container (runAsNonRoot, runAsUser), warning count)
        type Case = (
            &'static [&'static str],
            ImagePolicy,
            Value,
            Vec<(Value, Value)>,
            usize,
        );
        let cases: [Case; 7] = [
            (
                &["num"],
                d,
                json!(true),
                vec![(Value::Null, Value::Null)],
                0,
            ),
            (
                &["named"],
                d,
                json!(true),
                vec![(Value::Null, json!(10001))],
                1,
            ),
            (
                &["root"],
                d,
                Value::Null,
                vec![(Value::Null, Value::Null)],
                1,
            ),
            (
                &["root"],
                run_as,
                json!(true),
                vec![(Value::Null, json!(4242))],
                1,
            ),
            (
                &["gone"],
                d,
                json!(true),
                vec![(Value::Null, Value::Null)],
                1,
            ),
            (
                &["gone"],
                skip_unknown,
                Value::Null,
                vec![(Value::Null, Value::Null)],
                1,
            ),
            // One root image: the others get it per container.
            (
                &["num", "root", "named"],
                d,
                Value::Null,
                vec![
                    (json!(true), Value::Null),
                    (Value::Null, Value::Null),
                    (json!(true), json!(10001)),
                ],
                2,
            ),
        ];
        for (images, policy, pod_level, per_container, warnings) in cases {
            let containers: Vec<Value> = images
                .iter()
                .enumerate()
                .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
                .collect();
            let run = images_run(json!({"containers": containers}), policy);
            let what = format!("{images:?} {policy:?}: {:#}", run.output);
            assert_eq!(
                run.output["securityContext"]["runAsNonRoot"], pod_level,
                "{what}"
            );
            for (i, (rnr_value, uid)) in per_container.iter().enumerate() {
                let context = &run.output["containers"][i]["securityContext"];
                assert_eq!(&context["runAsNonRoot"], rnr_value, "{what}");
                assert_eq!(&context["runAsUser"], uid, "{what}");
            }
            assert_eq!(run.warnings.len(), warnings, "{what} {:?}", run.warnings);
            assert!(
                run.warnings.iter().all(|w| w.0 == WarningKind::Image),
                "{:?}",
                run.warnings
            );
            let injected_uid = per_container.iter().any(|(_, uid)| !uid.is_null());
            assert_eq!(
                run.applied.contains(&Setting::RunAsUser),
                injected_uid,
                "{what}"
            );
        }
    }

    #[test]
    fn image_facts_never_override_a_user_the_pod_chose() {
        let specs = [
            json!({"containers": [{"name": "a", "image": "root", "securityContext": {"runAsUser": 1000}}]}),
            json!({"securityContext": {"runAsUser": 1000}, "containers": [{"name": "a", "image": "named"}]}),
        ];
        for spec in specs {
            let run = images_run(spec.clone(), crate::ImagePolicy::default());
            assert_eq!(
                run.output["securityContext"]["runAsNonRoot"],
                json!(true),
                "{spec}"
            );
            assert!(run.warnings.is_empty(), "{:?}", run.warnings);
            assert!(!run.applied.contains(&Setting::RunAsUser));
        }
        // An explicit runAsNonRoot: true on the container is the owner's call.
        let run = images_run(
            json!({"containers": [{"name": "a", "image": "root", "securityContext": {"runAsNonRoot": true}}]}),
            crate::ImagePolicy::default(),
        );
        assert_eq!(
            run.output["containers"][0]["securityContext"],
            json!({"runAsNonRoot": true})
        );
    }

    #[test]
    fn a_named_image_under_an_explicit_pod_level_true_gets_its_uid() {
        let run = images_run(
            json!({"securityContext": {"runAsNonRoot": true},
                   "containers": [{"name": "a", "image": "named"}, {"name": "b", "image": "root"}]}),
            crate::ImagePolicy::default(),
        );
        assert_eq!(
            run.output["containers"][0]["securityContext"]["runAsUser"],
            json!(10001)
        );
        assert_eq!(run.output["containers"][1].get("securityContext"), None);
        assert!(
            run.warnings
                .iter()
                .any(|w| w.2.contains("kubelet will not start it")),
            "{:?}",
            run.warnings
        );
    }

    #[test]
    fn a_namespace_skipping_run_as_user_turns_a_named_image_into_a_skip() {
        let policy = Policy {
            ..only(Setting::RunAsNonRoot)
        };
        let run = run_with_images(
            json!({"containers": [{"name": "a", "image": "named"}]}),
            &policy,
            set(&[Setting::RunAsUser]),
            None,
            Some(&crate::image::test_facts()),
        );
        assert_eq!(run.output["securityContext"]["runAsNonRoot"], Value::Null);
        assert_eq!(run.output["containers"][0].get("securityContext"), None);
        assert!(
            run.warnings[0].2.contains("skips runAsUser"),
            "{:?}",
            run.warnings
        );
    }
}
