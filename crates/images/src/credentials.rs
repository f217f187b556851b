//! Registry credentials from a `dockerconfigjson` file (a mounted Secret of
//! type `kubernetes.io/dockerconfigjson`). Credentials are never logged, and
//! errors name the file and the registry, never a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

/// The largest credentials file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// User name and password per registry host.
#[derive(Clone, Default)]
pub struct Credentials {
    by_registry: BTreeMap<String, (String, String)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Registries only: the secrets stay out of every log line.
        f.debug_struct("Credentials")
            .field("registries", &self.by_registry.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("credentials file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("credentials file {path}: registry `{registry}`: {reason}")]
    Entry {
        path: String,
        registry: String,
        reason: &'static str,
    },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Credentials {
    /// Reads a `dockerconfigjson` file.
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let shown = path.display().to_string();
        let text = read_bounded(path, MAX_FILE_BYTES).map_err(|reason| CredentialsError::File {
            path: shown.clone(),
            reason,
        })?;
        Self::from_json(&text, &shown)
    }

    /// Parses the JSON of a `dockerconfigjson`; `path` names it in errors.
    pub fn from_json(text: &[u8], path: &str) -> Result<Self, CredentialsError> {
        // serde_json's message would quote the input: keep only the position.
        let config: DockerConfig =
            serde_json::from_slice(text).map_err(|e| CredentialsError::File {
                path: path.to_owned(),
                reason: format!(
                    "not a dockerconfigjson (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            })?;
        let mut by_registry = BTreeMap::new();
        for (key, entry) in config.auths {
            let registry = registry_host(&key);
            let entry_error = |reason| CredentialsError::Entry {
                path: path.to_owned(),
                registry: registry.clone(),
                reason,
            };
            let pair = match (entry.username, entry.password, entry.auth) {
                (Some(user), Some(password), _) => (user, password),
                (_, _, Some(auth)) => {
                    let decoded = BASE64
                        .decode(auth.trim())
                        .map_err(|_| entry_error("`auth` is not base64"))?;
                    let decoded = String::from_utf8(decoded)
                        .map_err(|_| entry_error("`auth` is not UTF-8"))?;
                    let (user, password) = decoded
                        .split_once(':')
                        .ok_or_else(|| entry_error("`auth` is not user:password"))?;
                    (user.to_owned(), password.to_owned())
                }
                _ => return Err(entry_error("needs `auth` or `username` and `password`")),
            };
            by_registry.insert(registry, pair);
        }
        Ok(Credentials { by_registry })
    }

    /// The login for `registry`, for one lookup (a pod's pull secret).
    pub fn login_for(&self, registry: &str) -> Option<Login> {
        self.for_registry(registry).map(|(user, password)| Login {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Adds `other`'s registries that this one lacks (the first pull secret
    /// naming a registry wins, as the order of `imagePullSecrets` says).
    pub fn merge(&mut self, other: Credentials) {
        for (registry, pair) in other.by_registry {
            self.by_registry.entry(registry).or_insert(pair);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty()
    }

    /// The user name and password for `registry` (a host, with port if any).
    pub fn for_registry(&self, registry: &str) -> Option<(&str, &str)> {
        self.by_registry
            .get(registry)
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

/// One registry login taken from a pod's pull secret. Its fingerprint (a
/// hash keyed per process, never the secret itself) keeps the caches of
/// different logins apart, so what one login may read is never answered to
/// a lookup without it, and a refusal without it never hides what it reads.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Login(..)")
    }
}

impl Login {
    pub(crate) fn fingerprint(&self) -> u64 {
        use std::hash::BuildHasher;
        static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        KEY.get_or_init(Default::default)
            .hash_one((&self.user, &self.password))
    }
}

/// The whole of a small file the operator mounts (credentials, a CA), refusing
/// one larger than `max` bytes; the error is the reason, for the caller to
/// name the file and key.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    // One byte past the bound tells "too large" from "exactly the bound".
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(bytes)
}

/// `https://index.docker.io/v1/` and `docker.io` are one registry; keys may
/// be URLs or hosts.
fn registry_host(key: &str) -> String {
    let host = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "index.docker.io".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_and_url_keys() {
        let auth = BASE64.encode("robot:s3cret");
        let json = format!(
            r#"{{"auths": {{"https://registry.local:5000/v2/": {{"auth": "{auth}"}},
                           "other.local": {{"username": "u", "password": "p"}},
                           "https://index.docker.io/v1/": {{"auth": "{auth}"}}}}}}"#
        );
        let credentials = Credentials::from_json(json.as_bytes(), "creds.json").unwrap();
        assert_eq!(
            credentials.for_registry("registry.local:5000"),
            Some(("robot", "s3cret"))
        );
        assert_eq!(credentials.for_registry("other.local"), Some(("u", "p")));
        assert_eq!(
            credentials.for_registry("index.docker.io"),
            Some(("robot", "s3cret"))
        );
        assert_eq!(credentials.for_registry("nowhere"), None);
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("registry.local:5000"),
            "{shown}"
        );
    }

    #[test]
    fn errors_name_the_file_and_registry_but_no_secret() {
        let cases = [
            (
                r#"{"auths": {"r.local": {"auth": "%%%"}}}"#,
                "registry `r.local`: `auth` is not base64",
            ),
            (r#"{"auths": {"r.local": {}}}"#, "needs `auth`"),
            (r#"{"auths": "s3cret-token"}"#, "not a dockerconfigjson"),
        ];
        for (json, expected) in cases {
            let error = Credentials::from_json(json.as_bytes(), "/etc/creds.json")
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("credentials file /etc/creds.json"),
                "{error}"
            );
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
        let missing = Credentials::from_file(Path::new("/nonexistent/creds.json")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/creds.json"),
            "{missing}"
        );
    }
}
