//! Writable paths for containers whose root filesystem becomes read-only, and
//! the names of the emptyDir volumes mounted there.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::shape::clip;
use crate::{Warning, WarningKind};

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// Whether two absolute paths name the same directory (without following
/// symlinks or `..`, which writable paths may not contain).
pub(crate) fn same_path(a: &str, b: &str) -> bool {
    a.starts_with('/') == b.starts_with('/') && components(a).eq(components(b))
}

/// `path` without trailing slashes, except that the root stays `/`.
pub(crate) fn trim_path(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() && path.starts_with('/') {
        "/"
    } else {
        trimmed
    }
}

/// Most writable paths one pod gets. Each becomes a volume per container,
/// so an annotation listing thousands would make the patch (and the pod)
/// grow with their product.
pub const MAX_WRITABLE_PATHS: usize = 16;

/// Directories the kubelet and runc set up themselves: an emptyDir over them
/// fails the container or hides what it needs. Paths below them are refused
/// too, except these.
pub const RUNTIME_MANAGED: [&str; 3] = ["/proc", "/sys", "/dev"];
/// Paths below [`RUNTIME_MANAGED`] that may still be writable paths.
pub const SAFE_BELOW_RUNTIME_MANAGED: [&str; 1] = ["/dev/shm"];

/// The one rule for a writable path, wherever it comes from (configuration,
/// annotation): absolute, no `.`/`..` components, no `:`, no `//`, no
/// control characters, not `/`, and not a directory the runtime manages.
/// A trailing `/` is allowed and dropped. Returns the path to mount.
pub fn check_writable_path(path: &str) -> Result<&str, &'static str> {
    let trimmed = trim_path(path);
    if !path.starts_with('/') {
        return Err("must be an absolute path");
    }
    if trimmed == "/" {
        return Err("must not be the root directory");
    }
    if path.contains(':') {
        return Err("must not contain `:`");
    }
    if trimmed.split('/').skip(1).any(str::is_empty) {
        return Err("must not contain `//`");
    }
    if trimmed.split('/').any(|part| part == ".." || part == ".") {
        return Err("must not contain `.` or `..` components");
    }
    if path.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    let below = |root: &str| trimmed == root || trimmed.starts_with(&format!("{root}/"));
    if RUNTIME_MANAGED.iter().any(|root| below(root))
        && !SAFE_BELOW_RUNTIME_MANAGED.iter().any(|safe| below(safe))
    {
        return Err("must not be in /proc, /sys or /dev, which the container runtime sets up");
    }
    Ok(trimmed)
}

/// Valid, de-duplicated paths (trailing slashes trimmed) from a list, at most
/// [`MAX_WRITABLE_PATHS`]; invalid entries become warnings on `field` and
/// are skipped.
pub fn collect<'a>(
    entries: impl IntoIterator<Item = &'a str>,
    field: &str,
    warnings: &mut Vec<Warning>,
) -> Vec<&'a str> {
    let mut paths: Vec<&'a str> = Vec::new();
    let mut seen: HashSet<&'a str> = HashSet::new();
    let mut dropped = 0usize;
    for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
        let path = match check_writable_path(entry) {
            Ok(path) => path,
            Err(reason) => {
                // One warning per problem is plenty; the count says the rest.
                if warnings.len() < MAX_WRITABLE_PATHS {
                    warnings.push(Warning {
                        kind: WarningKind::Annotation,
                        field: field.to_owned(),
                        message: format!("writable path `{}` {reason}; ignored", clip(entry, 60)),
                    });
                }
                continue;
            }
        };
        if !seen.insert(path) {
            continue;
        }
        if paths.len() == MAX_WRITABLE_PATHS {
            dropped += 1;
            continue;
        }
        paths.push(path);
    }
    if dropped > 0 {
        warnings.push(Warning {
            kind: WarningKind::Annotation,
            field: field.to_owned(),
            message: format!(
                "more than {MAX_WRITABLE_PATHS} writable paths; the last {dropped} are ignored"
            ),
        });
    }
    paths
}

/// An RFC 1123 label, as Kubernetes requires for volume, namespace and
/// Service names: 1 to 63 lower-case letters, digits and `-`, alphanumeric
/// at both ends. The one check of it in the project.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
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

/// The longest volume name Kubernetes accepts (a DNS-1123 label).
pub const MAX_LABEL: usize = 63;
const HASH_SUFFIX: usize = 9; // "-" + 8 hex digits

/// `kh-<container>-<path segments>` as a DNS-1123 label (may exceed 63 chars):
/// the name a writable path's volume gets unless it is too long or taken.
pub fn base_name(container: &str, path: &str) -> String {
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
    /// A set, not a list: every container of a large pod asks for a name,
    /// and each question must cost the same whatever the pod's size.
    taken: HashSet<Cow<'v, str>>,
    /// Where counting resumes for each prefix, so that many clashing names
    /// (duplicate container names before the API server rejects them) do
    /// not rescan the numbers already handed out.
    next_number: HashMap<String, usize>,
}

impl<'v> VolumeNamer<'v> {
    pub(crate) fn new(taken: impl IntoIterator<Item = &'v str>) -> Self {
        VolumeNamer {
            taken: taken.into_iter().map(Cow::Borrowed).collect(),
            next_number: HashMap::new(),
        }
    }

    fn is_free(&self, name: &str) -> bool {
        !self.taken.contains(name)
    }

    /// The name for the volume of `container` at `path`, reserved on return.
    pub(crate) fn name(&mut self, container: &str, path: &str) -> String {
        let base = base_name(container, path);
        let name = if base.len() <= MAX_LABEL && self.is_free(&base) {
            base
        } else {
            self.hashed(&base, container, path)
        };
        self.taken.insert(Cow::Owned(name.clone()));
        name
    }

    fn hashed(&mut self, base: &str, container: &str, path: &str) -> String {
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
        let short = prefix[..prefix.len().min(MAX_LABEL - 12)].trim_end_matches('-');
        let start = self.next_number.get(short).copied().unwrap_or(0);
        // At most `taken.len() + 1` numbers from `start` are tried before one
        // is free (each taken name blocks one number).
        let (number, name) = (start..=start + self.taken.len())
            .map(|n| (n, format!("{short}-{n}")))
            .find(|(_, candidate)| self.is_free(candidate))
            .unwrap_or_else(|| (start, format!("kh-{}", self.taken.len())));
        self.next_number.insert(short.to_owned(), number + 1);
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_path_keeps_root() {
        assert_eq!(trim_path("/tmp///"), "/tmp");
        assert_eq!(trim_path("/"), "/");
        assert_eq!(trim_path("//"), "/");
        assert_eq!(trim_path("rel/"), "rel");
    }

    #[test]
    fn validates_paths() {
        let runtime = "must not be in /proc, /sys or /dev, which the container runtime sets up";
        let cases = [
            ("/tmp", Ok("/tmp")),
            ("/var/cache/nginx/", Ok("/var/cache/nginx")),
            ("/a/b//", Ok("/a/b")),
            ("/a..b", Ok("/a..b")),
            ("tmp", Err("must be an absolute path")),
            (
                "/var/../etc",
                Err("must not contain `.` or `..` components"),
            ),
            ("/var/./etc", Err("must not contain `.` or `..` components")),
            ("C:/temp", Err("must be an absolute path")),
            ("/c:/temp", Err("must not contain `:`")),
            ("/", Err("must not be the root directory")),
            ("///", Err("must not be the root directory")),
            ("/a//b", Err("must not contain `//`")),
            ("/tmp\n/x", Err("must not contain control characters")),
            ("/proc", Err(runtime)),
            ("/proc/", Err(runtime)),
            ("/proc/sys/net", Err(runtime)),
            ("/sys", Err(runtime)),
            ("/sys/fs/cgroup", Err(runtime)),
            ("/dev", Err(runtime)),
            ("/dev/pts", Err(runtime)),
            ("/dev/shm", Ok("/dev/shm")),
            ("/dev/shm/app", Ok("/dev/shm/app")),
            ("/devices", Ok("/devices")),
            ("/process", Ok("/process")),
            ("/system", Ok("/system")),
        ];
        for (path, expected) in cases {
            assert_eq!(check_writable_path(path), expected, "{path}");
        }
    }

    #[test]
    fn collect_caps_the_number_of_paths_and_says_so() {
        let entries: Vec<String> = (0..10_000).map(|i| format!("/data/{i}")).collect();
        let mut warnings = Vec::new();
        let paths = collect(entries.iter().map(String::as_str), "f", &mut warnings);
        assert_eq!(paths.len(), MAX_WRITABLE_PATHS);
        assert_eq!(paths[0], "/data/0");
        assert_eq!(
            warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![format!(
                "f: more than {MAX_WRITABLE_PATHS} writable paths; the last {} are ignored",
                10_000 - MAX_WRITABLE_PATHS
            )]
        );
        // Many invalid entries warn a bounded number of times.
        let bad: Vec<String> = (0..10_000).map(|i| format!("rel/{i}")).collect();
        let mut warnings = Vec::new();
        assert!(collect(bad.iter().map(String::as_str), "f", &mut warnings).is_empty());
        assert_eq!(warnings.len(), MAX_WRITABLE_PATHS);
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
            "metadata.annotations[kube-hardener.io/writable-paths]: writable path `relative` must be an absolute path; ignored"
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
        assert!(is_dns_label(&name));

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
        assert!(is_dns_label(&second));
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
                assert!(is_dns_label(&name), "{name}");
            }
        }
    }
}
