use std::fmt;
use std::str::FromStr;

/// A setting the engine can inject. Names are the Kubernetes API field names;
/// they are used in the configuration, the opt-out annotation and all output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setting {
    RunAsNonRoot,
    RunAsUser,
    RunAsGroup,
    SeccompProfile,
    AllowPrivilegeEscalation,
    Capabilities,
    ReadOnlyRootFilesystem,
    FsGroup,
    FsGroupChangePolicy,
}

impl Setting {
    /// Every setting, in the canonical order used for output.
    pub const ALL: [Setting; 9] = [
        Setting::RunAsNonRoot,
        Setting::RunAsUser,
        Setting::RunAsGroup,
        Setting::SeccompProfile,
        Setting::AllowPrivilegeEscalation,
        Setting::Capabilities,
        Setting::ReadOnlyRootFilesystem,
        Setting::FsGroup,
        Setting::FsGroupChangePolicy,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Setting::RunAsNonRoot => "runAsNonRoot",
            Setting::RunAsUser => "runAsUser",
            Setting::RunAsGroup => "runAsGroup",
            Setting::SeccompProfile => "seccompProfile",
            Setting::AllowPrivilegeEscalation => "allowPrivilegeEscalation",
            Setting::Capabilities => "capabilities",
            Setting::ReadOnlyRootFilesystem => "readOnlyRootFilesystem",
            Setting::FsGroup => "fsGroup",
            Setting::FsGroupChangePolicy => "fsGroupChangePolicy",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown setting `{0}`")]
pub struct UnknownSetting(pub String);

impl FromStr for Setting {
    type Err = UnknownSetting;

    /// Case-insensitive, surrounding white space ignored: annotations are typed
    /// by hand and `readonlyRootFilesystem` (the cheat sheet's spelling) is common.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Setting::ALL
            .into_iter()
            .find(|setting| setting.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownSetting(wanted.to_owned()))
    }
}
