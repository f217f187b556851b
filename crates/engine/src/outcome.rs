use crate::Setting;

/// The result of hardening one object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// What happened to the object as a whole.
    pub disposition: Disposition,
    /// RFC 6902 operations against the object as received; empty when nothing changes.
    pub patch: json_patch::Patch,
    /// Settings injected somewhere in the object, canonical order, no duplicates.
    pub applied: Vec<Setting>,
    /// Risky explicit values left as set, ignored annotations, skipped injections.
    pub warnings: Vec<Warning>,
}

impl Outcome {
    pub fn is_empty(&self) -> bool {
        self.patch.0.is_empty()
    }
}

/// Why an object was (or was not) looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Disposition {
    /// The object's pod spec was examined (the patch may still be empty).
    #[default]
    Hardened,
    /// The namespace is in the configured exclusions.
    ExcludedNamespace(String),
    /// `kube-hardener.io/skip: all` on the namespace (or pod, where allowed).
    SkippedAll,
    /// Not a Pod or a supported workload kind.
    UnsupportedKind(String),
}

impl Disposition {
    /// The disposition as one stable word, for machine-readable output.
    pub const fn label(&self) -> &'static str {
        match self {
            Disposition::Hardened => "hardened",
            Disposition::ExcludedNamespace(_) => "excluded-namespace",
            Disposition::SkippedAll => "skipped-all",
            Disposition::UnsupportedKind(_) => "unsupported-kind",
        }
    }

    /// Why an object is left as it is, in words; `None` for an object that
    /// was looked at (whatever its patch).
    pub fn reason(&self) -> Option<String> {
        match self {
            Disposition::Hardened => None,
            Disposition::ExcludedNamespace(namespace) => Some(format!(
                "namespace {namespace} is excluded by the configuration"
            )),
            Disposition::SkippedAll => {
                Some(format!("opted out with {}: all", crate::ANNOTATION_SKIP))
            }
            Disposition::UnsupportedKind(kind) => Some(format!("{kind} is not a Pod or workload")),
        }
    }
}

impl Outcome {
    /// The injected settings by name, canonical order, comma-separated: the
    /// value of `kube-hardener.io/applied` and of every "applied" output.
    pub fn applied_names(&self) -> String {
        self.applied
            .iter()
            .map(|setting| setting.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Something an operator should know about the object. Rendered as an admission
/// warning, so `message` stays short (the API server truncates long ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub kind: WarningKind,
    /// Where in the object, in Kubernetes' field-path style
    /// (`spec.containers[0].securityContext.privileged`).
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Stable categories of warnings (used as a metrics label, so keep them few).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WarningKind {
    Privileged,
    ProcMountUnmasked,
    SeLinuxType,
    UnsafeSysctl,
    AddedCapabilities,
    SeccompUnconfined,
    HostPath,
    HostNamespace,
    /// An explicit insecure value of a setting the engine would have injected
    /// (runAsNonRoot false, runAsUser 0, allowPrivilegeEscalation true, …).
    ExplicitInsecure,
    /// A setting was not injected because doing so would be rejected or break
    /// the container (e.g. allowPrivilegeEscalation with privileged).
    NotInjected,
    /// A malformed or unknown opt-out / writable-paths annotation value.
    Annotation,
    /// What the container's image runs as changed the `runAsNonRoot`
    /// decision (skipped, a `runAsUser` added, or the user was unknown).
    Image,
}

impl WarningKind {
    pub const fn label(self) -> &'static str {
        match self {
            WarningKind::Privileged => "privileged",
            WarningKind::ProcMountUnmasked => "proc_mount_unmasked",
            WarningKind::SeLinuxType => "selinux_type",
            WarningKind::UnsafeSysctl => "unsafe_sysctl",
            WarningKind::AddedCapabilities => "added_capabilities",
            WarningKind::SeccompUnconfined => "seccomp_unconfined",
            WarningKind::HostPath => "host_path",
            WarningKind::HostNamespace => "host_namespace",
            WarningKind::ExplicitInsecure => "explicit_insecure",
            WarningKind::Image => "image",
            WarningKind::NotInjected => "not_injected",
            WarningKind::Annotation => "annotation",
        }
    }
}
