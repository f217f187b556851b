//! The hardening engine: the raw JSON of a Pod (or a workload's pod template) in,
//! an RFC 6902 patch, warnings and the list of injected settings out.
//!
//! No I/O, no async, no Kubernetes client: the webhook server and the `preview`
//! CLI are thin shells around [`harden`] and [`harden_new_ephemeral_containers`].
//! Patches are computed against the object exactly as received, so fields this
//! crate does not know about are never touched.

// Where things live: the entry points (`harden`), where each kind keeps its
// pod spec (`layout`), the checked view of a pod spec the rules read
// (`view`), one module per rule under `rules/`, and the patch they build.
mod harden;
mod image;
mod layout;
mod opt_out;
mod outcome;
mod patch;
mod policy;
mod rules;
mod setting;
mod shape;
mod view;
mod writable;

pub use harden::Parsed;
pub use image::{ImageFacts, ImagePolicy, ImageQuery, ImageUser, RootImages, UnknownImages};
pub use outcome::{Disposition, Outcome, Warning, WarningKind};
pub use policy::Policy;
pub use rules::{SYS_ADMIN_SPELLINGS, WINDOWS_ROOT_USER};
pub use setting::{FLAG_KEYS, Row, Setting, SettingSwitches, Switch, TABLE, UnknownSetting};
pub use writable::{
    MAX_LABEL, MAX_WRITABLE_PATHS, RUNTIME_MANAGED, SAFE_BELOW_RUNTIME_MANAGED,
    base_name as volume_base_name, check_writable_path, collect as collect_writable_paths,
    is_dns_label,
};

use std::collections::BTreeMap;

/// Annotation (Namespace, or Pod/pod template when allowed) that opts out of
/// all (`"all"`) or some (comma-separated setting names) defaults.
pub const ANNOTATION_SKIP: &str = "kube-hardener.io/skip";
/// Pod / pod-template annotation replacing the configured writable paths.
pub const ANNOTATION_WRITABLE_PATHS: &str = "kube-hardener.io/writable-paths";
/// Provenance annotation written on every object the engine changes.
pub const ANNOTATION_APPLIED: &str = "kube-hardener.io/applied";

/// What the engine knows about the object's surroundings.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// Namespace of the object (from the admission request or the manifest);
    /// `None` when unknown, in which case `metadata.namespace` is used.
    pub namespace: Option<&'a str>,
    /// Annotations of that namespace (empty when it has none or is unknown).
    pub namespace_annotations: Option<&'a BTreeMap<String, String>>,
    /// What the pod's images run as, when the caller resolved them; `None`
    /// means image awareness is off and `runAsNonRoot` is decided as without it.
    pub images: Option<&'a ImageFacts>,
}

/// The object could not be processed at all; nothing is changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("the object is not a JSON object")]
    NotAnObject,
    #[error("field `{path}` must be {expected}")]
    WrongType {
        path: String,
        expected: &'static str,
    },
}

/// Computes the hardening patch for a Pod or for the pod template of a
/// Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob. Any other kind
/// yields an empty outcome with [`Disposition::UnsupportedKind`].
///
/// Whether workload templates should be mutated at all is the caller's
/// decision (see [`Policy::mutate_workloads`]); this function always handles them.
pub fn harden(
    object: &serde_json::Value,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Outcome, EngineError> {
    harden::harden(object, ctx, policy)
}

/// Checks `object` and parses its pod spec once, for a caller that asks
/// [`Parsed::image_query`] and then [`Parsed::harden`] with the facts it
/// resolved: one walk over the pod instead of one per question. `ctx.images`
/// is not read here; the facts go to [`Parsed::harden`].
pub fn parse<'v>(
    object: &'v serde_json::Value,
    ctx: &Context<'_>,
    policy: &'v Policy,
) -> Result<Parsed<'v>, EngineError> {
    harden::parse(object, ctx, policy)
}

/// The images of `object` whose user decides `runAsNonRoot`, and the CPU
/// architecture its pod pins, if any: what a caller should resolve into
/// [`ImageFacts`] before [`harden`]. Decided by the same opt-outs, switches and
/// tests as the hardening itself, so nothing is asked that would not be used;
/// cheap (no patch is kept).
pub fn image_query(
    object: &serde_json::Value,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<ImageQuery, EngineError> {
    harden::image_query(object, ctx, policy)
}

/// Computes the patch for an UPDATE of the `pods/ephemeralcontainers`
/// subresource: only ephemeral containers present in `new_pod` and absent (by
/// name) from `old_pod` are hardened, with container-level settings only, since
/// the rest of a pod spec is immutable after creation.
pub fn harden_new_ephemeral_containers(
    new_pod: &serde_json::Value,
    old_pod: &serde_json::Value,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Outcome, EngineError> {
    harden::harden_new_ephemeral_containers(new_pod, old_pod, ctx, policy)
}
