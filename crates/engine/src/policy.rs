use serde::{Deserialize, Serialize};

use crate::image::ImagePolicy;
use crate::setting::{Setting, SettingSwitches, Switch};

/// The hardening policy: the `[hardening]` table of the configuration.
/// `Policy::default()` equals the embedded `config/default.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Switches for the settings injected by default.
    pub settings: SettingSwitches,
    /// UID injected at pod level when no container and not the pod sets one.
    pub run_as_user: Option<i64>,
    /// GID injected at pod level when no container and not the pod sets one.
    pub run_as_group: Option<i64>,
    /// GID injected as the pod's `fsGroup` when unset.
    pub fs_group: Option<i64>,
    /// Paths that get a writable emptyDir when the root filesystem goes read-only.
    pub writable_paths: Vec<String>,
    /// Namespaces whose objects are never touched.
    pub excluded_namespaces: Vec<String>,
    /// Honour `kube-hardener.io/skip` on Pods and pod templates (namespace
    /// owners decide by default).
    pub allow_pod_opt_out: bool,
    /// Also mutate the pod templates of workload objects (off: GitOps drift).
    pub mutate_workloads: bool,
    /// What to do with images that run as root or whose user is unknown; the
    /// configuration's `[images]` table, used only when image facts are given.
    #[serde(skip)]
    pub images: ImagePolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            settings: SettingSwitches::default(),
            run_as_user: None,
            run_as_group: None,
            fs_group: None,
            writable_paths: vec!["/tmp".to_owned()],
            excluded_namespaces: vec![
                "kube-system".to_owned(),
                "kube-public".to_owned(),
                "kube-node-lease".to_owned(),
            ],
            allow_pod_opt_out: false,
            mutate_workloads: false,
            images: ImagePolicy::default(),
        }
    }
}

impl Policy {
    /// Whether objects in `namespace` are never touched.
    pub fn excludes(&self, namespace: &str) -> bool {
        self.excluded_namespaces
            .iter()
            .any(|excluded| excluded == namespace)
    }

    /// Whether the configuration turns `setting` on at all (its switch, or
    /// the value it injects). Opt-outs and the platform come on top.
    pub fn enables(&self, setting: Setting) -> bool {
        match setting.row().switch {
            Switch::Flag(_) => self.settings.is_on(setting),
            Switch::Value(has_value) => has_value(self),
        }
    }
}
