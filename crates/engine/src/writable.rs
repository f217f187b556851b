//! Writable paths for containers whose root filesystem becomes read-only, and
//! the names of the emptyDir volumes mounted there.

use crate::shape::clip;
use crate::view::trim_path;
use crate::{Warning, WarningKind};

/// Why a writable path is refused.
pub(crate) fn invalid_reason(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("is not an absolute path")
    } else if path.contains("..") {
        Some("contains `..`")
    } else if path.contains(':') {
        Some("contains `:`")
    } else if path.chars().any(char::is_control) {
        Some("contains control characters")
    } else if trim_path(path) == "/" {
        Some("is the root directory")
    } else if trim_path(path).contains("//") {
        Some("contains `//`")
    } else {
        None
    }
}

/// Valid, de-duplicated paths (trailing slashes trimmed) from a list; invalid
/// entries become warnings on `field` and are skipped.
pub(crate) fn collect<'a>(
    entries: impl IntoIterator<Item = &'a str>,
    field: &str,
    warnings: &mut Vec<Warning>,
) -> Vec<&'a str> {
    let mut paths: Vec<&'a str> = Vec::new();
    for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
        if let Some(reason) = invalid_reason(entry) {
            warnings.push(Warning {
                kind: WarningKind::Annotation,
                field: field.to_owned(),
                message: format!("writable path `{}` {reason}; ignored", clip(entry, 60)),
            });
            continue;
        }
        let path = trim_path(entry);
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// FNV-1a, 32 bits: a stable hash (unlike `std`'s, which is seeded per process)
/// so volume names are the same on every replica and every run.
pub(crate) fn fnv1a32(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in *part {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

const MAX_LABEL: usize = 63;
const HASH_SUFFIX: usize = 9; // "-" + 8 hex digits

/// `kh-<container>-<path segments>` as a DNS-1123 label (may exceed 63 chars).
fn base_name(container: &str, path: &str) -> String {
    let mut name = String::with_capacity(4 + container.len() + path.len());
    let mut last_dash = false;
    for c in "kh-"
        .chars()
        .chain(container.chars())
        .chain(std::iter::once('-'))
        .chain(path.chars())
    {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
            last_dash = false;
        } else if !last_dash {
            name.push('-');
            last_dash = true;
        }
    }
    name.trim_end_matches('-').to_owned()
}

/// Hands out volume names that clash with nothing in the pod.
#[derive(Debug)]
pub(crate) struct VolumeNamer<'v> {
    taken: Vec<std::borrow::Cow<'v, str>>,
}

impl<'v> VolumeNamer<'v> {
    pub(crate) fn new(taken: impl IntoIterator<Item = &'v str>) -> Self {
        VolumeNamer {
            taken: taken.into_iter().map(std::borrow::Cow::Borrowed).collect(),
        }
    }

    fn is_free(&self, name: &str) -> bool {
        !self.taken.iter().any(|t| t == name)
    }

    /// The name for the volume of `container` at `path`, reserved on return.
    pub(crate) fn name(&mut self, container: &str, path: &str) -> String {
        let base = base_name(container, path);
        let name = if base.len() <= MAX_LABEL && self.is_free(&base) {
            base
        } else {
            self.hashed(&base, container, path)
        };
        self.taken.push(std::borrow::Cow::Owned(name.clone()));
        name
    }

    fn hashed(&self, base: &str, container: &str, path: &str) -> String {
        let prefix = base[..base.len().min(MAX_LABEL - HASH_SUFFIX)].trim_end_matches('-');
        // A hash collision with a name already in the pod is astronomically
        // unlikely; salting a few times and then counting keeps it impossible.
        for salt in 0u8..4 {
            let (container, path) = (container.as_bytes(), path.as_bytes());
            let hash = if salt == 0 {
                fnv1a32(&[container, b"\0", path])
            } else {
                fnv1a32(&[container, b"\0", path, &[salt]])
            };
            let candidate = format!("{prefix}-{hash:08x}");
            if self.is_free(&candidate) {
                return candidate;
            }
        }
        let short = &prefix[..prefix.len().min(MAX_LABEL - 12)];
        (0..=self.taken.len())
            .map(|n| format!("{}-{n}", short.trim_end_matches('-')))
            .find(|candidate| self.is_free(candidate))
            .unwrap_or_else(|| format!("kh-{}", self.taken.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns1123_label(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    }

    #[test]
    fn validates_paths() {
        let cases = [
            ("/tmp", None),
            ("/var/cache/nginx/", None),
            ("tmp", Some("is not an absolute path")),
            ("/var/../etc", Some("contains `..`")),
            ("/a..b", Some("contains `..`")),
            ("C:/temp", Some("is not an absolute path")),
            ("/c:/temp", Some("contains `:`")),
            ("/", Some("is the root directory")),
            ("///", Some("is the root directory")),
            ("/a//b", Some("contains `//`")),
            ("/a/b//", None),
            ("/tmp\n/x", Some("contains control characters")),
        ];
        for (path, reason) in cases {
            assert_eq!(invalid_reason(path), reason, "{path}");
        }
    }

    #[test]
    fn collect_trims_dedupes_and_warns() {
        let mut warnings = Vec::new();
        let paths = collect(
            " /tmp/ ,/tmp,, relative ,/var/cache".split(','),
            "metadata.annotations[kube-hardener.io/writable-paths]",
            &mut warnings,
        );
        assert_eq!(paths, vec!["/tmp", "/var/cache"]);
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            warnings[0].to_string(),
            "metadata.annotations[kube-hardener.io/writable-paths]: writable path `relative` is not an absolute path; ignored"
        );
    }

    #[test]
    fn fnv1a32_matches_reference_vectors() {
        assert_eq!(fnv1a32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a32(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a32(&[b"foobar"]), 0xbf9c_f968);
        assert_eq!(fnv1a32(&[b"foo", b"bar"]), 0xbf9c_f968);
    }

    #[test]
    fn names_volumes_after_container_and_path() {
        let cases = [
            ("app", "/tmp", "kh-app-tmp"),
            ("nginx", "/var/cache/nginx", "kh-nginx-var-cache-nginx"),
            ("My_App.v2", "/Data//X", "kh-my-app-v2-data-x"),
            ("containers-1", "/tmp", "kh-containers-1-tmp"),
            ("-", "/tmp", "kh-tmp"),
        ];
        for (container, path, expected) in cases {
            let mut namer = VolumeNamer::new([]);
            assert_eq!(namer.name(container, path), expected);
        }
    }

    #[test]
    fn long_or_clashing_names_get_a_stable_hash_suffix() {
        let long = "c".repeat(80);
        let mut namer = VolumeNamer::new([]);
        let name = namer.name(&long, "/tmp");
        let hash = fnv1a32(&[long.as_bytes(), b"\0", b"/tmp"]);
        assert_eq!(name, format!("kh-{}-{hash:08x}", "c".repeat(51)));
        assert!(is_dns1123_label(&name));

        let mut namer = VolumeNamer::new(["kh-app-tmp"]);
        let name = namer.name("app", "/tmp");
        let hash = fnv1a32(&[b"app", b"\0", b"/tmp"]);
        assert_eq!(name, format!("kh-app-tmp-{hash:08x}"));

        // "a-b" + "/tmp" and "a" + "/b/tmp" share a base name; both get one.
        let mut namer = VolumeNamer::new([]);
        let first = namer.name("a-b", "/tmp");
        let second = namer.name("a", "/b/tmp");
        assert_eq!(first, "kh-a-b-tmp");
        assert_ne!(first, second);
        assert!(is_dns1123_label(&second));
    }

    #[test]
    fn never_hands_out_a_taken_name_even_when_hashes_are_taken_too() {
        let hash = fnv1a32(&[b"app", b"\0", b"/tmp"]);
        let taken_hash = format!("kh-app-tmp-{hash:08x}");
        let salted: Vec<String> = (1u8..4)
            .map(|s| {
                format!(
                    "kh-app-tmp-{:08x}",
                    fnv1a32(&[b"app", b"\0", b"/tmp", &[s]])
                )
            })
            .collect();
        let mut taken = vec!["kh-app-tmp", taken_hash.as_str(), "kh-app-tmp-0"];
        taken.extend(salted.iter().map(String::as_str));
        let mut namer = VolumeNamer::new(taken.clone());
        let name = namer.name("app", "/tmp");
        assert!(!taken.contains(&name.as_str()));
        assert_eq!(name, "kh-app-tmp-1");
        let again = namer.name("app", "/tmp");
        assert_ne!(again, name);
    }

    #[test]
    fn generated_names_are_always_dns1123_labels() {
        let containers = ["x", "Ünïcödé", "a.b.c", &"z".repeat(200), "-", "9"];
        let paths = [
            "/tmp",
            "/a/b/c/d/e/f/g",
            &format!("/{}", "p".repeat(100)),
            "/__",
        ];
        let mut namer = VolumeNamer::new([]);
        for c in containers {
            for p in paths {
                let name = namer.name(c, p);
                assert!(is_dns1123_label(&name), "{name}");
            }
        }
    }
}
