//! The settings the engine can inject, in one table: adding a setting means
//! its rule file, one row of [`TABLE`] and its key in `config/default.toml`.
//! Everything else (the canonical order, names, the `[hardening.settings]`
//! switches, the enabled check, the opt-out names) is derived from it.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Policy;

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

/// How the configuration turns a setting on.
#[derive(Debug, Clone, Copy)]
pub enum Switch {
    /// A boolean under `[hardening.settings]` with this key, on by default.
    Flag(&'static str),
    /// On when the policy carries a value for it (`hardening.run_as_user`…).
    Value(fn(&Policy) -> bool),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub setting: Setting,
    /// The Kubernetes API field name.
    pub name: &'static str,
    pub switch: Switch,
}

/// Every setting, in the canonical order used for output.
pub const TABLE: [Row; 9] = [
    Row {
        setting: Setting::RunAsNonRoot,
        name: "runAsNonRoot",
        switch: Switch::Flag("run_as_non_root"),
    },
    Row {
        setting: Setting::RunAsUser,
        name: "runAsUser",
        switch: Switch::Value(|policy| policy.run_as_user.is_some()),
    },
    Row {
        setting: Setting::RunAsGroup,
        name: "runAsGroup",
        switch: Switch::Value(|policy| policy.run_as_group.is_some()),
    },
    Row {
        setting: Setting::SeccompProfile,
        name: "seccompProfile",
        switch: Switch::Flag("seccomp_profile"),
    },
    Row {
        setting: Setting::AllowPrivilegeEscalation,
        name: "allowPrivilegeEscalation",
        switch: Switch::Flag("allow_privilege_escalation"),
    },
    Row {
        setting: Setting::Capabilities,
        name: "capabilities",
        switch: Switch::Flag("capabilities"),
    },
    Row {
        setting: Setting::ReadOnlyRootFilesystem,
        name: "readOnlyRootFilesystem",
        switch: Switch::Flag("read_only_root_filesystem"),
    },
    Row {
        setting: Setting::FsGroup,
        name: "fsGroup",
        switch: Switch::Value(|policy| policy.fs_group.is_some()),
    },
    Row {
        setting: Setting::FsGroupChangePolicy,
        name: "fsGroupChangePolicy",
        switch: Switch::Flag("fs_group_change_policy"),
    },
];

const fn all() -> [Setting; TABLE.len()] {
    let mut out = [Setting::RunAsNonRoot; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        out[i] = TABLE[i].setting;
        i += 1;
    }
    out
}

const fn flag_count() -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < TABLE.len() {
        if matches!(TABLE[i].switch, Switch::Flag(_)) {
            count += 1;
        }
        i += 1;
    }
    count
}

/// The `[hardening.settings]` keys, in table order.
pub const FLAG_KEYS: [&str; flag_count()] = {
    let mut out = [""; flag_count()];
    let (mut i, mut j) = (0, 0);
    while i < TABLE.len() {
        if let Switch::Flag(key) = TABLE[i].switch {
            out[j] = key;
            j += 1;
        }
        i += 1;
    }
    out
};

impl Setting {
    /// Every setting, in the canonical order used for output.
    pub const ALL: [Setting; TABLE.len()] = all();

    /// Its row of [`TABLE`]. The table lists the variants in declaration
    /// order (checked by a test), so the discriminant is the index.
    pub const fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    pub const fn name(self) -> &'static str {
        self.row().name
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

/// A small set of [`Setting`]s, iterated in canonical order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SettingSet(u16);

impl FromIterator<Setting> for SettingSet {
    fn from_iter<I: IntoIterator<Item = Setting>>(settings: I) -> Self {
        let mut set = SettingSet::default();
        for setting in settings {
            set.insert(setting);
        }
        set
    }
}

impl SettingSet {
    const fn bit(setting: Setting) -> u16 {
        1 << (setting as u16)
    }

    pub(crate) fn insert(&mut self, setting: Setting) {
        self.0 |= Self::bit(setting);
    }

    pub(crate) fn remove(&mut self, setting: Setting) {
        self.0 &= !Self::bit(setting);
    }

    pub(crate) fn contains(self, setting: Setting) -> bool {
        self.0 & Self::bit(setting) != 0
    }

    pub(crate) fn union(self, other: SettingSet) -> SettingSet {
        SettingSet(self.0 | other.0)
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn to_vec(self) -> Vec<Setting> {
        Setting::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .collect()
    }
}

/// The `[hardening.settings]` table: one switch per [`Switch::Flag`] row,
/// all on by default; `false` turns a setting off cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettingSwitches {
    off: SettingSet,
}

impl SettingSwitches {
    /// Whether the switch of a flag setting is on (settings switched by a
    /// value are never off here).
    pub fn is_on(&self, setting: Setting) -> bool {
        !self.off.contains(setting)
    }

    pub fn set(&mut self, setting: Setting, on: bool) {
        if on {
            self.off.remove(setting);
        } else {
            self.off.insert(setting);
        }
    }

    /// Only `setting`'s switch on (for tests of one rule at a time).
    pub fn only(setting: Setting) -> Self {
        let mut switches = SettingSwitches::default();
        for row in &TABLE {
            if matches!(row.switch, Switch::Flag(_)) {
                switches.set(row.setting, row.setting == setting);
            }
        }
        switches
    }
}

impl Serialize for SettingSwitches {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(FLAG_KEYS.len()))?;
        for row in &TABLE {
            if let Switch::Flag(key) = row.switch {
                map.serialize_entry(key, &self.is_on(row.setting))?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for SettingSwitches {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Switches;
        impl<'de> Visitor<'de> for Switches {
            type Value = SettingSwitches;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of setting switches")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut switches = SettingSwitches::default();
                while let Some(key) = map.next_key::<String>()? {
                    let row = TABLE
                        .iter()
                        .find(|row| matches!(row.switch, Switch::Flag(k) if k == key))
                        .ok_or_else(|| de::Error::unknown_field(&key, &FLAG_KEYS))?;
                    switches.set(row.setting, map.next_value::<bool>()?);
                }
                Ok(switches)
            }
        }
        deserializer.deserialize_map(Switches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_variant_in_declaration_order() {
        for (index, row) in TABLE.iter().enumerate() {
            assert_eq!(row.setting as usize, index, "{}", row.name);
            assert_eq!(row.setting.row().name, row.name);
        }
        let names: Vec<&str> = Setting::ALL.iter().map(|s| s.name()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "names are unique");
        assert!(TABLE.len() <= 16, "SettingSet holds 16 settings");
    }

    #[test]
    fn names_parse_back_case_insensitively() {
        for setting in Setting::ALL {
            assert_eq!(setting.name().parse::<Setting>(), Ok(setting));
            assert_eq!(
                format!(" {} ", setting.name().to_ascii_lowercase()).parse::<Setting>(),
                Ok(setting)
            );
        }
        assert_eq!(
            "nope".parse::<Setting>(),
            Err(UnknownSetting("nope".to_owned()))
        );
    }

    #[test]
    fn switches_round_trip_through_their_config_keys() {
        assert_eq!(
            FLAG_KEYS,
            [
                "run_as_non_root",
                "seccomp_profile",
                "allow_privilege_escalation",
                "capabilities",
                "read_only_root_filesystem",
                "fs_group_change_policy"
            ]
        );
        let mut switches = SettingSwitches::default();
        switches.set(Setting::Capabilities, false);
        let json = serde_json::to_value(switches).unwrap();
        assert_eq!(json["capabilities"], false);
        assert_eq!(json["run_as_non_root"], true);
        let back: SettingSwitches = serde_json::from_value(json).unwrap();
        assert_eq!(back, switches);
        let error = serde_json::from_str::<SettingSwitches>(r#"{"capabilties": false}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `capabilties`"), "{error}");
        assert!(error.contains("`read_only_root_filesystem`"), "{error}");
    }

    #[test]
    fn only_turns_every_other_flag_off() {
        let only = SettingSwitches::only(Setting::Capabilities);
        for setting in Setting::ALL {
            let flag = matches!(setting.row().switch, Switch::Flag(_));
            let expected = !flag || setting == Setting::Capabilities;
            assert_eq!(only.is_on(setting), expected, "{setting}");
        }
    }
}
