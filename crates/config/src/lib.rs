//! The configuration file: `[hardening]` (the engine's [`Policy`]), `[server]`
//! and `[images]`.
//!
//! Layers, later wins: the embedded `config/default.toml`, then a file
//! (`--config` or `KUBE_HARDENER_CONFIG`), then `KUBE_HARDENER_*` variables
//! (`__` separates tables: `KUBE_HARDENER_HARDENING__FS_GROUP=2000`; lists use
//! brackets: `KUBE_HARDENER_HARDENING__WRITABLE_PATHS=[/tmp,/var/cache]`).
//! Load with [`Config::load`]; problems name the key and the layer it came from.

mod load;
mod validate;

use std::path::PathBuf;

pub use kube_hardener_engine::{ImagePolicy, Policy, RootImages, UnknownImages};
pub use load::{ConfigError, ENV_CONFIG_FILE, ENV_PREFIX, MAX_FILE_BYTES, Origin, Problem};
use serde::{Deserialize, Serialize};
pub use validate::{check_dns_label, check_mount_path};

/// The embedded default configuration, shipped in the binary.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hardening: Policy,
    pub server: ServerConfig,
    pub images: ImagesConfig,
}

/// The `[images]` table: learning what each image runs as from its registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Look images up at all (the webhook; `preview --resolve-images`).
    pub resolve: bool,
    /// What to do for an image that runs as root.
    pub root: RootImages,
    /// What to do when the image's user cannot be learned.
    pub unknown: UnknownImages,
    /// The UID `root = "run-as-user"` injects.
    pub run_as_user: i64,
    /// How long one review may wait for lookups, in milliseconds.
    pub budget_ms: u64,
    /// How long one lookup may run in all (it goes on after the budget).
    pub lookup_timeout_ms: u64,
    /// How long a tag's digest is trusted.
    pub tag_ttl_seconds: u64,
    /// How long an image whose user could not be learned is not asked again.
    pub unknown_ttl_seconds: u64,
    /// Images and digests kept in memory (each cache).
    pub cache_entries: usize,
    /// Lookups running at once; more wait.
    pub concurrent_lookups: usize,
    /// The largest image manifest or config blob read.
    pub max_config_bytes: u64,
    /// The largest layer downloaded when looking for /etc/passwd.
    pub max_layer_bytes: u64,
    /// The most bytes a layer may unpack to.
    pub max_unpacked_bytes: u64,
    /// The most layers searched for /etc/passwd, from the top.
    pub max_layers: usize,
    /// A `dockerconfigjson` file (a mounted Secret) with registry credentials.
    pub credentials_file: Option<PathBuf>,
    /// Extra PEM CA certificates trusted for registries (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// Hosts other than the registry's own that a lookup follows a redirect
    /// to (over https): host names, or `*.` and a domain.
    pub redirect_hosts: Vec<String>,
    /// At start-up, look up the images of this many existing pods (0: off).
    pub warm_up_pods: usize,
    /// Look images up with the logins of the pod's own `imagePullSecrets`.
    pub pod_pull_secrets: bool,
}

/// Where public registries send their blobs (and, for registry.k8s.io, its
/// manifests too): storage and CDN hosts, none of them inside a cluster.
pub const DEFAULT_REDIRECT_HOSTS: [&str; 5] = [
    // Docker Hub's blob CDN.
    "production.cloudflare.docker.com",
    // GitHub's container registry's blob storage.
    "pkg-containers.githubusercontent.com",
    // Quay's CDN hosts (cdn01.quay.io, …).
    "*.quay.io",
    // Artifact Registry, where registry.k8s.io sends manifests and blobs.
    "*.pkg.dev",
    // S3, behind ECR and registry.k8s.io's blob mirrors.
    "*.amazonaws.com",
];

impl Default for ImagesConfig {
    fn default() -> Self {
        let policy = ImagePolicy::default();
        ImagesConfig {
            resolve: false,
            root: policy.root,
            unknown: policy.unknown,
            run_as_user: policy.run_as_user,
            budget_ms: 2000,
            lookup_timeout_ms: 30_000,
            tag_ttl_seconds: 300,
            unknown_ttl_seconds: 30,
            cache_entries: 10_000,
            concurrent_lookups: 4,
            max_config_bytes: 4 << 20,
            max_layer_bytes: 64 << 20,
            max_unpacked_bytes: 256 << 20,
            max_layers: 16,
            credentials_file: None,
            ca_file: None,
            redirect_hosts: DEFAULT_REDIRECT_HOSTS
                .iter()
                .map(|host| (*host).to_owned())
                .collect(),
            warm_up_pods: 0,
            pod_pull_secrets: false,
        }
    }
}

impl ImagesConfig {
    /// The engine's part of this table.
    pub fn policy(&self) -> ImagePolicy {
        ImagePolicy {
            root: self.root,
            unknown: self.unknown,
            run_as_user: self.run_as_user,
        }
    }
}

/// Where a policy is used; each gets the same policy but for what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// `kube-hardener serve`: mutates workload templates only when
    /// `hardening.mutate_workloads` says so.
    Webhook,
    /// `kube-hardener preview`: always shows workload templates hardened, so
    /// manifests can be checked before anything reaches a cluster.
    Preview,
}

impl Config {
    /// The one policy the engine runs with: `[hardening]`, with the webhook's
    /// own namespace (`server.own_namespace`) always excluded.
    pub fn effective_policy(&self, entry: EntryPoint) -> Policy {
        let mut policy = self.hardening.clone();
        if let Some(own) = self
            .server
            .own_namespace
            .as_ref()
            .filter(|ns| !ns.is_empty())
            && !policy.excluded_namespaces.contains(own)
        {
            policy.excluded_namespaces.push(own.clone());
        }
        if entry == EntryPoint::Preview {
            policy.mutate_workloads = true;
        }
        policy.images = self.images.policy();
        policy
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON inside a cluster (`KUBERNETES_SERVICE_HOST` set), text elsewhere.
    #[default]
    Auto,
    Json,
    Text,
}

/// The `[server]` table: everything `kube-hardener serve` needs beyond the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTPS listen address of the webhook.
    pub listen: String,
    /// Plain-HTTP listen address for /healthz, /readyz and /metrics.
    pub health_listen: String,
    /// Bind both listeners with `SO_REUSEPORT`, so that two processes of the
    /// same user can serve one port (host-network pods during a rolling update).
    pub reuse_port: bool,
    /// PEM certificate chain and private key, reloaded when they change.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
    /// Largest AdmissionReview body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// A client must send each request within this time (every request of a
    /// keep-alive connection, from its first byte to the start of its response).
    pub client_timeout_ms: u64,
    /// A response the client stops reading for this long closes the connection.
    pub write_timeout_ms: u64,
    /// PEM bundle of the CA(s) that sign the API server's client certificate;
    /// when set, a caller without such a certificate is refused (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: the client certificate's common name or a DNS name
    /// must be one of these (empty: any certificate the CA signed).
    pub client_names: Vec<String>,
    /// Compute and warn, but never patch (shadow run before enforcing).
    pub audit: bool,
    /// The webhook's own namespace, always excluded; usually from the downward
    /// API through `KUBE_HARDENER_SERVER__OWN_NAMESPACE`.
    pub own_namespace: Option<String>,
    /// Kubeconfig for the namespace watch; in-cluster config when unset.
    pub kubeconfig: Option<PathBuf>,
    /// Budget for the fallback GET of a namespace not yet in the cache.
    pub namespace_lookup_timeout_ms: u64,
    /// Seconds to finish in-flight reviews after SIGTERM.
    pub shutdown_timeout_secs: u64,
    /// tracing filter directive, e.g. `info` or `kube_hardener_server=debug`.
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8443".to_owned(),
            health_listen: "0.0.0.0:8080".to_owned(),
            reuse_port: false,
            tls_cert: PathBuf::from("/etc/kube-hardener/tls/tls.crt"),
            tls_key: PathBuf::from("/etc/kube-hardener/tls/tls.key"),
            workers: 0,
            max_body_bytes: 4 * 1024 * 1024,
            client_timeout_ms: 5_000,
            write_timeout_ms: 10_000,
            client_ca: None,
            client_names: Vec::new(),
            audit: false,
            own_namespace: None,
            kubeconfig: None,
            namespace_lookup_timeout_ms: 500,
            shutdown_timeout_secs: 25,
            log_level: "info".to_owned(),
            log_format: LogFormat::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_policy_excludes_the_own_namespace_once_for_every_entry_point() {
        for own in [None, Some(""), Some("kube-system"), Some("kube-hardener")] {
            let mut config = Config::default();
            config.server.own_namespace = own.map(str::to_owned);
            for entry in [EntryPoint::Webhook, EntryPoint::Preview] {
                let policy = config.effective_policy(entry);
                let mut expected = Policy::default().excluded_namespaces;
                if own == Some("kube-hardener") {
                    expected.push("kube-hardener".to_owned());
                }
                assert_eq!(policy.excluded_namespaces, expected, "{own:?} {entry:?}");
                assert_eq!(policy.mutate_workloads, entry == EntryPoint::Preview);
            }
        }
    }
}
