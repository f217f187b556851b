//! The configuration file: `[hardening]` (the engine's [`Policy`]) and `[server]`.
//!
//! Layers, later wins: the embedded `config/default.toml`, then a file
//! (`--config` or `KUBE_HARDENER_CONFIG`), then `KUBE_HARDENER_*` variables
//! (`__` separates tables: `KUBE_HARDENER_HARDENING__FS_GROUP=2000`; lists use
//! brackets: `KUBE_HARDENER_HARDENING__WRITABLE_PATHS=[/tmp,/var/cache]`).
//! Load with [`Config::load`]; problems name the key and the layer it came from.

mod load;
mod validate;

use std::path::PathBuf;

pub use kube_hardener_engine::Policy;
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
    /// PEM certificate chain and private key, reloaded when they change.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
    /// Largest AdmissionReview body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// A client must send its request within this time.
    pub client_timeout_ms: u64,
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
            tls_cert: PathBuf::from("/etc/kube-hardener/tls/tls.crt"),
            tls_key: PathBuf::from("/etc/kube-hardener/tls/tls.key"),
            workers: 0,
            max_body_bytes: 4 * 1024 * 1024,
            client_timeout_ms: 5_000,
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
