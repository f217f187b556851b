//! The pull secrets a pod names (`images.pod_pull_secrets`, off by default):
//! an image in a private registry is looked up with the pod's own login
//! rather than only with the credentials mounted into the webhook. Needs
//! `get secrets` in every namespace, which is why it is a switch with its own
//! RBAC. Secret contents are never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube_hardener_images::Credentials;
use serde_json::Value;

/// Pull secrets read per pod; more are ignored.
pub(crate) const MAX_SECRETS_PER_POD: usize = 8;
/// A secret (or its absence) is trusted this long.
const TTL: Duration = Duration::from_secs(60);
/// Secrets remembered.
const MAX_ENTRIES: usize = 4096;
/// The largest `.dockerconfigjson` read.
const MAX_SECRET_BYTES: usize = 1 << 20;

type Entry = (Option<Credentials>, Instant);

pub(crate) struct PullSecrets {
    client: kube::Client,
    /// How long reading one pod's secrets may take in all.
    timeout: Duration,
    /// (namespace, name) → its logins (none: absent or unusable), until when.
    cache: Mutex<HashMap<(String, String), Entry>>,
}

impl std::fmt::Debug for PullSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullSecrets")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PullSecrets {
    pub(crate) fn new(client: kube::Client, timeout: Duration) -> Self {
        PullSecrets {
            client,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The logins of the pull secrets `pod` names in `namespace`, the first
    /// secret naming a registry winning; `None` when it names none that can
    /// be read in time.
    pub(crate) async fn for_pod(&self, namespace: &str, pod: &Value) -> Option<Credentials> {
        let names = secret_names(pod);
        if names.is_empty() || namespace.is_empty() {
            return None;
        }
        let read = async {
            let mut merged = Credentials::default();
            for name in names {
                if let Some(credentials) = self.secret(namespace, name).await {
                    merged.merge(credentials);
                }
            }
            merged
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(merged) if !merged.is_empty() => Some(merged),
            Ok(_) => None,
            Err(_) => {
                tracing::debug!(namespace, "pull secrets not read in time");
                None
            }
        }
    }

    async fn secret(&self, namespace: &str, name: &str) -> Option<Credentials> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Ok(cache) = self.cache.lock()
            && let Some((credentials, until)) = cache.get(&key)
            && Instant::now() < *until
        {
            return credentials.clone();
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let credentials = match api.get_opt(name).await {
            Ok(Some(secret)) => match logins(&secret, namespace, name) {
                Ok(credentials) => Some(credentials),
                Err(why) => {
                    tracing::debug!(namespace, secret = name, %why, "pull secret not usable");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                // Not remembered: the next review asks again.
                tracing::debug!(namespace, secret = name, %error, "cannot read pull secret");
                return None;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_ENTRIES {
                let now = Instant::now();
                cache.retain(|_, (_, until)| now < *until);
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, (credentials.clone(), Instant::now() + TTL));
        }
        credentials
    }
}

/// `spec.imagePullSecrets[*].name`, distinct, at most [`MAX_SECRETS_PER_POD`].
pub(crate) fn secret_names(pod: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    let listed = pod
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for name in listed
        .iter()
        .filter_map(|entry| entry.get("name")?.as_str())
    {
        if names.len() == MAX_SECRETS_PER_POD {
            break;
        }
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The logins of a `kubernetes.io/dockerconfigjson` (or legacy
/// `kubernetes.io/dockercfg`) secret; errors name the secret, never a value.
pub(crate) fn logins(secret: &Secret, namespace: &str, name: &str) -> Result<Credentials, String> {
    let shown = format!("secret {namespace}/{name}");
    let (key, legacy) = match secret.type_.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => (".dockerconfigjson", false),
        Some("kubernetes.io/dockercfg") => (".dockercfg", true),
        other => {
            return Err(format!(
                "{shown}: type {} is not a registry secret",
                other.unwrap_or("(none)")
            ));
        }
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|bytes| bytes.0.as_slice())
        .ok_or_else(|| format!("{shown}: no `{key}`"))?;
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "{shown}: `{key}` is larger than {MAX_SECRET_BYTES} bytes"
        ));
    }
    let result = if legacy {
        // `.dockercfg` is the `auths` map alone.
        let auths: Value =
            serde_json::from_slice(bytes).map_err(|_| format!("{shown}: `{key}` is not JSON"))?;
        Credentials::from_json(
            serde_json::json!({ "auths": auths }).to_string().as_bytes(),
            &shown,
        )
    } else {
        Credentials::from_json(bytes, &shown)
    };
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn secret(type_: &str, key: &str, value: &str) -> Secret {
        Secret {
            type_: Some(type_.to_owned()),
            data: Some([(key.to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[test]
    fn names_are_distinct_bounded_and_malformed_lists_are_ignored() {
        let many: Vec<Value> = (0..20).map(|i| json!({"name": format!("s{i}")})).collect();
        let pod = json!({"spec": {"imagePullSecrets": many}});
        assert_eq!(secret_names(&pod).len(), MAX_SECRETS_PER_POD);
        let pod = json!({"spec": {"imagePullSecrets": [
            {"name": "a"}, {"name": "a"}, {"name": ""}, {"name": 5}, "b", {}, {"name": "c"}
        ]}});
        assert_eq!(secret_names(&pod), vec!["a", "c"]);
        for pod in [
            json!({}),
            json!({"spec": {"imagePullSecrets": "x"}}),
            json!([1]),
        ] {
            assert!(secret_names(&pod).is_empty(), "{pod}");
        }
    }

    #[test]
    fn both_registry_secret_types_are_read_and_others_named_in_errors() {
        let modern = secret(
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            r#"{"auths": {"reg.example": {"username": "u", "password": "p"}}}"#,
        );
        let logins = logins(&modern, "team", "pull").unwrap();
        assert_eq!(logins.for_registry("reg.example"), Some(("u", "p")));
        let legacy = secret(
            "kubernetes.io/dockercfg",
            ".dockercfg",
            r#"{"reg.example": {"auth": "dTpw"}}"#,
        );
        let logins = super::logins(&legacy, "team", "old").unwrap();
        assert_eq!(logins.for_registry("reg.example"), Some(("u", "p")));
        let opaque = secret("Opaque", "password", "hunter2");
        let error = super::logins(&opaque, "team", "db").unwrap_err();
        assert_eq!(
            error,
            "secret team/db: type Opaque is not a registry secret"
        );
        let garbage = secret(
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            "hunter2{",
        );
        let error = super::logins(&garbage, "team", "bad").unwrap_err();
        assert!(
            error.contains("secret team/bad") && !error.contains("hunter2"),
            "{error}"
        );
        let empty = secret("kubernetes.io/dockerconfigjson", "other", "{}");
        assert_eq!(
            super::logins(&empty, "team", "e").unwrap_err(),
            "secret team/e: no `.dockerconfigjson`"
        );
    }
}
