//! The hardening rules, one module per setting or family of settings.
//!
//! Rules read the shape-checked [`PodView`] and record edits in [`Edits`];
//! none of them touches the input. Each rule is skipped when its setting is
//! switched off in the policy, opted out by annotation, or Linux-only on a
//! Windows pod.

mod capabilities;
mod identity;
mod privilege_escalation;
mod read_only_root;
mod run_as_non_root;
mod seccomp;
mod warnings;

pub use privilege_escalation::SYS_ADMIN_SPELLINGS;
pub use run_as_non_root::WINDOWS_ROOT_USER;
pub(crate) use seccomp::LegacySeccomp;

use std::borrow::Cow;

use serde_json::Value;

use crate::patch::{PatchBuilder, Token};
use crate::setting::SettingSet;
use crate::shape::clip;
use crate::view::{ContainerView, PodView};
use crate::writable::VolumeNamer;
use crate::{Policy, Setting, Warning, WarningKind};

/// What the rules read: the policy, the opt-outs and the pod.
#[derive(Debug)]
pub(crate) struct RuleInput<'a, 'v> {
    pub policy: &'a Policy,
    pub skipped: SettingSet,
    pub pod: &'a PodView<'v>,
    /// Pointer tokens of the pod spec.
    pub spec: Vec<Token>,
    /// Validated writable paths for this pod.
    pub writable_paths: &'a [&'a str],
    /// The pod's legacy seccomp annotations: explicit choices at their scope.
    pub legacy_seccomp: LegacySeccomp<'v>,
    /// What the pod's images run as, when resolved (see `crate::image`).
    pub images: Option<&'a crate::ImageFacts>,
}

impl RuleInput<'_, '_> {
    /// Whether `setting` may be injected into this pod at all.
    pub(crate) fn enabled(&self, setting: Setting) -> bool {
        // The API server rejects every Linux-only field on Windows pods.
        let platform_ok = !self.pod.windows || setting == Setting::RunAsNonRoot;
        self.policy.enables(setting) && platform_ok && !self.skipped.contains(setting)
    }

    /// Pointer tokens of the pod-level `securityContext`.
    pub(crate) fn pod_security_context(&self) -> Vec<Token> {
        self.child(&self.spec, "securityContext")
    }

    pub(crate) fn child(&self, parent: &[Token], key: &'static str) -> Vec<Token> {
        let mut tokens = parent.to_vec();
        tokens.push(Token::Key(key));
        tokens
    }
}

/// Rendered warnings (`field: message`) stay below this many characters; the
/// API server truncates long admission warnings.
pub(crate) const MAX_WARNING_CHARS: usize = 200;

/// What the rules produce.
#[derive(Debug)]
pub(crate) struct Edits<'v> {
    pub patch: PatchBuilder<'v>,
    pub applied: SettingSet,
    pub warnings: Vec<Warning>,
    namer: Option<VolumeNamer<'v>>,
}

impl<'v> Edits<'v> {
    pub(crate) fn new(root: &'v Value) -> Self {
        Edits {
            patch: PatchBuilder::new(root),
            applied: SettingSet::default(),
            warnings: Vec::new(),
            namer: None,
        }
    }

    /// Records a warning, cut so that `field: message` stays under
    /// [`MAX_WARNING_CHARS`] whatever names the object uses.
    pub(crate) fn warn(&mut self, kind: WarningKind, field: String, message: impl Into<String>) {
        let message = message.into();
        let field = match clip(&field, MAX_WARNING_CHARS / 2) {
            Cow::Borrowed(_) => field,
            Cow::Owned(cut) => cut,
        };
        // `clip` may add one character (the ellipsis), and ": " joins the two.
        let budget = MAX_WARNING_CHARS - 4 - field.chars().count();
        let message = match clip(&message, budget) {
            Cow::Borrowed(_) => message,
            Cow::Owned(cut) => cut,
        };
        self.warnings.push(Warning {
            kind,
            field,
            message,
        });
    }

    /// Sets `key` in the object at `parent` and records `setting` as applied.
    pub(crate) fn inject(
        &mut self,
        setting: Setting,
        parent: &[Token],
        key: &'static str,
        value: Value,
    ) {
        self.patch.set(parent, key, value);
        self.applied.insert(setting);
    }

    /// The volume namer for the pod, built on first use (most pods on a
    /// second pass never need one).
    pub(crate) fn namer(&mut self, pod: &PodView<'v>) -> &mut VolumeNamer<'v> {
        self.namer.get_or_insert_with(|| {
            let volumes = pod.volumes.iter().filter_map(|v| v.name);
            let mounts = pod
                .containers
                .iter()
                .flat_map(|c| c.mount_names.iter().copied());
            VolumeNamer::new(volumes.chain(mounts))
        })
    }
}

/// Hardens a whole pod spec (Pod CREATE, workload templates, preview).
pub(crate) fn harden_pod<'v>(rules: &RuleInput<'_, 'v>, edits: &mut Edits<'v>) {
    warnings::pod(rules.pod, edits);
    let uid = identity::uid_to_inject(rules);
    let gid = identity::gid_to_inject(rules);
    run_as_non_root::pod(rules, edits, uid);
    identity::inject_ids(rules, edits, uid, gid);
    seccomp::pod(rules, edits);
    identity::fs_group(rules, edits);
    for container in &rules.pod.containers {
        container_level(rules, edits, container);
        read_only_root::container(rules, edits, container);
    }
}

/// The images whose user decides `runAsNonRoot` for this pod (what a caller
/// should resolve into `ImageFacts`), by the same tests the rule applies.
pub(crate) fn images_to_resolve<'v>(rules: &RuleInput<'_, 'v>) -> Vec<&'v str> {
    run_as_non_root::images_to_resolve(rules, identity::uid_to_inject(rules))
}

/// Hardens the ephemeral containers of `new_names` in an existing pod, whose
/// spec is otherwise immutable: container-level fields only.
pub(crate) fn harden_new_ephemeral<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    is_new: impl Fn(&ContainerView<'v>) -> bool,
) {
    for container in rules.pod.containers.iter().filter(|c| is_new(c)) {
        run_as_non_root::new_container(rules, edits, container);
        seccomp::new_container(rules, edits, container);
        container_level(rules, edits, container);
        read_only_root::new_container(rules, edits, container);
    }
}

/// Settings that are the same for every container, new or not.
fn container_level<'v>(
    rules: &RuleInput<'_, 'v>,
    edits: &mut Edits<'v>,
    container: &ContainerView<'v>,
) {
    warnings::container(container, edits);
    privilege_escalation::container(rules, edits, container);
    capabilities::container(rules, edits, container);
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Runs rules over a JSON pod spec and returns the patched spec, so rule
    //! tests assert on the result rather than on operation lists.

    use super::*;
    use crate::view::PodView;
    use serde_json::json;

    pub(crate) struct Run {
        pub output: Value,
        pub applied: Vec<Setting>,
        pub warnings: Vec<(WarningKind, String, String)>,
        pub ops: usize,
    }

    pub(crate) fn run_with(
        spec: Value,
        policy: &Policy,
        skipped: SettingSet,
        ephemeral_new: Option<&[&str]>,
    ) -> Run {
        run_with_images(spec, policy, skipped, ephemeral_new, None)
    }

    pub(crate) fn run_with_images(
        spec: Value,
        policy: &Policy,
        skipped: SettingSet,
        ephemeral_new: Option<&[&str]>,
        images: Option<&crate::ImageFacts>,
    ) -> Run {
        let root = json!({ "spec": spec });
        let pod = PodView::parse(root["spec"].as_object().unwrap(), "spec").unwrap();
        let writable_paths: Vec<&str> = policy.writable_paths.iter().map(String::as_str).collect();
        let rules = RuleInput {
            policy,
            skipped,
            pod: &pod,
            spec: vec![Token::Key("spec")],
            writable_paths: &writable_paths,
            legacy_seccomp: LegacySeccomp::default(),
            images,
        };
        let mut edits = Edits::new(&root);
        match ephemeral_new {
            None => harden_pod(&rules, &mut edits),
            Some(names) => harden_new_ephemeral(&rules, &mut edits, |c| {
                c.list == crate::view::ListKind::EphemeralContainers
                    && c.name.is_some_and(|n| names.contains(&n))
            }),
        }
        let patch = edits.patch.finish();
        let mut output = root.clone();
        json_patch::patch(&mut output, &patch).unwrap();
        Run {
            output: output["spec"].clone(),
            applied: edits.applied.to_vec(),
            warnings: edits
                .warnings
                .into_iter()
                .map(|w| (w.kind, w.field, w.message))
                .collect(),
            ops: patch.0.len(),
        }
    }

    pub(crate) fn run(spec: Value) -> Run {
        run_with(spec, &Policy::default(), SettingSet::default(), None)
    }

    /// Only the named setting switched on (plus optional ids).
    pub(crate) fn only(setting: Setting) -> Policy {
        Policy {
            settings: crate::SettingSwitches::only(setting),
            ..Policy::default()
        }
    }

    /// A set of settings, for tests that list them.
    pub(crate) fn set(settings: &[Setting]) -> SettingSet {
        settings.iter().copied().collect()
    }

    /// The map inside a JSON object (empty for anything else).
    pub(crate) fn object(value: Value) -> crate::shape::Object {
        match value {
            Value::Object(map) => map,
            _ => crate::shape::Object::new(),
        }
    }

    pub(crate) fn kinds(run: &Run) -> Vec<WarningKind> {
        run.warnings.iter().map(|w| w.0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn windows_pods_get_run_as_non_root_only() {
        let policy = Policy {
            run_as_user: Some(1000),
            run_as_group: Some(1000),
            fs_group: Some(2000),
            ..Policy::default()
        };
        let spec = json!({"os": {"name": "windows"}, "containers": [{"name": "w"}]});
        let run = run_with(spec, &policy, SettingSet::default(), None);
        assert_eq!(
            run.output,
            json!({"os": {"name": "windows"}, "containers": [{"name": "w"}],
                   "securityContext": {"runAsNonRoot": true}})
        );
        assert_eq!(run.applied, vec![Setting::RunAsNonRoot]);
    }

    #[test]
    fn host_process_pods_are_windows_pods_even_without_os_name() {
        let host_process = json!({"windowsOptions": {"hostProcess": true}});
        let specs = [
            json!({"hostNetwork": true, "securityContext": host_process,
                   "containers": [{"name": "w"}]}),
            json!({"hostNetwork": true,
                   "containers": [{"name": "w", "securityContext": host_process}]}),
            json!({"hostNetwork": true, "os": {"name": "windows"},
                   "initContainers": [{"name": "i", "securityContext": host_process}],
                   "containers": [{"name": "w", "securityContext": host_process}]}),
        ];
        let policy = Policy {
            run_as_user: Some(1000),
            fs_group: Some(2000),
            ..Policy::default()
        };
        for spec in specs {
            let run = run_with(spec.clone(), &policy, SettingSet::default(), None);
            assert_eq!(run.applied, vec![Setting::RunAsNonRoot], "{spec}");
            let mut expected = spec.clone();
            expected["securityContext"]["runAsNonRoot"] = json!(true);
            assert_eq!(run.output, expected, "{spec}");
        }
        // hostProcess: false is an ordinary pod.
        let run = run(
            json!({"securityContext": {"windowsOptions": {"hostProcess": false}},
                             "containers": [{"name": "w"}]}),
        );
        assert!(run.applied.contains(&Setting::Capabilities));
    }

    #[test]
    fn linux_pods_get_every_default() {
        let run = run(json!({"os": {"name": "linux"}, "containers": [{"name": "app"}]}));
        assert_eq!(
            run.output,
            json!({"os": {"name": "linux"},
                "containers": [{"name": "app",
                    "securityContext": {"allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true},
                    "volumeMounts": [{"name": "kh-app-tmp", "mountPath": "/tmp"}]}],
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "volumes": [{"name": "kh-app-tmp", "emptyDir": {}}]})
        );
        assert_eq!(
            run.applied,
            vec![
                Setting::RunAsNonRoot,
                Setting::SeccompProfile,
                Setting::AllowPrivilegeEscalation,
                Setting::Capabilities,
                Setting::ReadOnlyRootFilesystem
            ]
        );
        assert!(run.warnings.is_empty());
    }

    #[test]
    fn skipped_and_switched_off_settings_are_not_injected() {
        for setting in Setting::ALL {
            let mut skipped = SettingSet::default();
            skipped.insert(setting);
            let policy = Policy {
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                fs_group: Some(2000),
                ..Policy::default()
            };
            let run = run_with(
                json!({"containers": [{"name": "a"}]}),
                &policy,
                skipped,
                None,
            );
            assert!(!run.applied.contains(&setting), "{setting}");
            // Without an fsGroup there is no fsGroupChangePolicy either.
            let also_gone = usize::from(setting == Setting::FsGroup);
            assert_eq!(
                run.applied.len(),
                Setting::ALL.len() - 1 - also_gone,
                "{setting}"
            );
        }
    }

    #[test]
    fn second_pass_is_empty() {
        let policy = Policy {
            fs_group: Some(1),
            ..Policy::default()
        };
        let first = run_with(
            json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsUser": 0}}],
                   "initContainers": [{"name": "i", "restartPolicy": "Always"}]}),
            &policy,
            SettingSet::default(),
            None,
        );
        let second = run_with(first.output.clone(), &policy, SettingSet::default(), None);
        assert_eq!(second.ops, 0);
        assert!(second.applied.is_empty());
    }
}
