//! Checks beyond what the types express. Each check returns the dotted key
//! and a message; the loader adds where the value came from.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use kube_hardener_engine::{MAX_WRITABLE_PATHS, check_writable_path, is_dns_label};

use crate::{Config, Policy, ServerConfig};

/// Largest UID/GID Kubernetes accepts (validation of `runAsUser` & co.).
pub const MAX_ID: i64 = 2_147_483_647;
/// Upper bound for `server.max_body_bytes`: far above any object etcd stores
/// (1.5 MiB), low enough that a hostile client cannot make us buffer gigabytes.
pub const MAX_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Upper bound for the millisecond timeouts: the API server gives a webhook
/// 30 s at most, so anything longer is a unit mistake.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// Upper bound for `server.shutdown_timeout_secs` (a pod's grace period is
/// typically 30 s; ten minutes is already generous).
pub const MAX_SHUTDOWN_SECS: u64 = 600;
/// Upper bound for `server.workers` on any realistic node.
pub const MAX_WORKERS: usize = 1024;

type Problems = Vec<(String, String)>;

impl Config {
    /// Every problem with values that parsed but make no sense, as
    /// `(dotted key, message)`; empty when the configuration is usable.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Problems::new();
        validate_policy(&self.hardening, &mut problems);
        validate_server(&self.server, &mut problems);
        validate_images(&self.images, &mut problems);
        problems
    }
}

fn validate_policy(policy: &Policy, problems: &mut Problems) {
    for (key, value) in [
        ("hardening.run_as_user", policy.run_as_user),
        ("hardening.run_as_group", policy.run_as_group),
        ("hardening.fs_group", policy.fs_group),
    ] {
        if let Some(id) = value
            && !(1..=MAX_ID).contains(&id)
        {
            let why = if id == 0 {
                " (0 is root: injecting it would defeat the purpose)"
            } else {
                ""
            };
            problems.push((
                key.to_owned(),
                format!("must be between 1 and {MAX_ID}, got {id}{why}"),
            ));
        }
    }

    let mut seen = BTreeSet::new();
    for (index, path) in policy.writable_paths.iter().enumerate() {
        let key = format!("hardening.writable_paths[{index}]");
        match check_writable_path(path) {
            Err(message) => problems.push((key, format!("`{path}` {message}"))),
            Ok(normalised) if !seen.insert(normalised) => {
                problems.push((key, format!("`{path}` is listed twice")));
            }
            Ok(_) => {}
        }
    }

    if policy.writable_paths.len() > MAX_WRITABLE_PATHS {
        problems.push((
            "hardening.writable_paths".to_owned(),
            format!(
                "lists {} paths; at most {MAX_WRITABLE_PATHS} are allowed (each is a volume per container)",
                policy.writable_paths.len()
            ),
        ));
    }

    let mut seen = BTreeSet::new();
    for (index, namespace) in policy.excluded_namespaces.iter().enumerate() {
        let key = format!("hardening.excluded_namespaces[{index}]");
        if let Err(message) = check_dns_label(namespace) {
            problems.push((key, format!("`{namespace}` {message}")));
        } else if !seen.insert(namespace.as_str()) {
            problems.push((key, format!("`{namespace}` is listed twice")));
        }
    }
}

fn validate_images(images: &crate::ImagesConfig, problems: &mut Problems) {
    if !(1..=MAX_ID).contains(&images.run_as_user) {
        problems.push((
            "images.run_as_user".to_owned(),
            format!("must be between 1 and {MAX_ID}, got {}", images.run_as_user),
        ));
    }
    let ranges: [(&str, u64, u64, u64); 5] = [
        ("images.budget_ms", images.budget_ms, 1, 30_000),
        (
            "images.lookup_timeout_ms",
            images.lookup_timeout_ms,
            1,
            600_000,
        ),
        ("images.tag_ttl_seconds", images.tag_ttl_seconds, 0, 86_400),
        (
            "images.unknown_ttl_seconds",
            images.unknown_ttl_seconds,
            0,
            86_400,
        ),
        (
            "images.max_config_bytes",
            images.max_config_bytes,
            1024,
            64 << 20,
        ),
    ];
    for (key, value, low, high) in ranges {
        if !(low..=high).contains(&value) {
            problems.push((
                key.to_owned(),
                format!("must be between {low} and {high}, got {value}"),
            ));
        }
    }
    for (key, value, low, high) in [
        ("images.cache_entries", images.cache_entries, 1, 1_000_000),
        (
            "images.concurrent_lookups",
            images.concurrent_lookups,
            1,
            64,
        ),
        ("images.max_layers", images.max_layers, 0, 128),
        ("images.warm_up_pods", images.warm_up_pods, 0, 100_000),
    ] {
        if !(low..=high).contains(&value) {
            problems.push((
                key.to_owned(),
                format!("must be between {low} and {high}, got {value}"),
            ));
        }
    }
    for (key, value) in [
        ("images.max_layer_bytes", images.max_layer_bytes),
        ("images.max_unpacked_bytes", images.max_unpacked_bytes),
    ] {
        if !(1024..=(4u64 << 30)).contains(&value) {
            problems.push((
                key.to_owned(),
                format!("must be between 1024 and 4 GiB, got {value}"),
            ));
        }
    }
    if images.redirect_hosts.len() > MAX_REDIRECT_HOSTS {
        problems.push((
            "images.redirect_hosts".to_owned(),
            format!(
                "at most {MAX_REDIRECT_HOSTS} hosts, got {}",
                images.redirect_hosts.len()
            ),
        ));
    }
    for (index, host) in images.redirect_hosts.iter().enumerate() {
        if let Err(why) = redirect_host(host) {
            problems.push((format!("images.redirect_hosts[{index}]"), why));
        }
    }
    if images.lookup_timeout_ms < images.budget_ms {
        problems.push((
            "images.lookup_timeout_ms".to_owned(),
            "must be at least images.budget_ms".to_owned(),
        ));
    }
}

/// The most entries in `images.redirect_hosts`.
const MAX_REDIRECT_HOSTS: usize = 64;

/// A lower-case host name, or `*.` and one with at least two labels (`*.com`
/// would allow half the internet).
fn redirect_host(pattern: &str) -> Result<(), String> {
    let (host, wildcard) = match pattern.strip_prefix("*.") {
        Some(domain) => (domain, true),
        None => (pattern, false),
    };
    let labels: Vec<&str> = host.split('.').collect();
    let well_formed = !host.is_empty()
        && host.len() <= 253
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !well_formed {
        return Err(format!(
            "`{pattern}` is not a lower-case host name or `*.` and a domain (no scheme, port or path)"
        ));
    }
    if wildcard && labels.len() < 2 {
        return Err(format!(
            "`{pattern}`: a wildcard needs a domain of at least two labels"
        ));
    }
    Ok(())
}

fn validate_server(server: &ServerConfig, problems: &mut Problems) {
    for (key, value) in [
        ("server.listen", &server.listen),
        ("server.health_listen", &server.health_listen),
    ] {
        if value.parse::<SocketAddr>().is_err() {
            problems.push((
                key.to_owned(),
                format!("`{value}` is not an IP:port address (e.g. 0.0.0.0:8443 or [::]:8443)"),
            ));
        }
    }
    if server.listen == server.health_listen {
        problems.push((
            "server.health_listen".to_owned(),
            "must differ from server.listen".to_owned(),
        ));
    }
    for (key, path) in [
        ("server.tls_cert", &server.tls_cert),
        ("server.tls_key", &server.tls_key),
    ] {
        if path.as_os_str().is_empty() {
            problems.push((key.to_owned(), "must not be empty".to_owned()));
        }
    }
    if server.workers > MAX_WORKERS {
        problems.push((
            "server.workers".to_owned(),
            format!(
                "must be at most {MAX_WORKERS} (0 = one per CPU), got {}",
                server.workers
            ),
        ));
    }
    if !(1..=MAX_BODY_LIMIT).contains(&server.max_body_bytes) {
        problems.push((
            "server.max_body_bytes".to_owned(),
            format!(
                "must be between 1 and {MAX_BODY_LIMIT}, got {}",
                server.max_body_bytes
            ),
        ));
    }
    for (key, value) in [
        ("server.client_timeout_ms", server.client_timeout_ms),
        ("server.write_timeout_ms", server.write_timeout_ms),
        (
            "server.namespace_lookup_timeout_ms",
            server.namespace_lookup_timeout_ms,
        ),
    ] {
        if !(1..=MAX_TIMEOUT_MS).contains(&value) {
            problems.push((
                key.to_owned(),
                format!("must be between 1 and {MAX_TIMEOUT_MS} milliseconds, got {value}"),
            ));
        }
    }
    if server
        .client_ca
        .as_ref()
        .is_some_and(|path| path.as_os_str().is_empty())
    {
        problems.push((
            "server.client_ca".to_owned(),
            "must not be empty (leave it unset to accept any caller)".to_owned(),
        ));
    }
    if !server.client_names.is_empty() && server.client_ca.is_none() {
        problems.push((
            "server.client_names".to_owned(),
            "needs server.client_ca: names are read from verified client certificates".to_owned(),
        ));
    }
    for (index, name) in server.client_names.iter().enumerate() {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            problems.push((
                format!("server.client_names[{index}]"),
                "must be a non-empty name without control characters".to_owned(),
            ));
        }
    }
    if server.shutdown_timeout_secs > MAX_SHUTDOWN_SECS {
        problems.push((
            "server.shutdown_timeout_secs".to_owned(),
            format!(
                "must be at most {MAX_SHUTDOWN_SECS} seconds, got {}",
                server.shutdown_timeout_secs
            ),
        ));
    }
    if let Some(namespace) = &server.own_namespace
        && let Err(message) = check_dns_label(namespace)
    {
        problems.push((
            "server.own_namespace".to_owned(),
            format!("`{namespace}` {message}"),
        ));
    }
    if let Some(path) = &server.kubeconfig
        && path.as_os_str().is_empty()
    {
        problems.push((
            "server.kubeconfig".to_owned(),
            "must not be empty (leave it unset for the in-cluster configuration)".to_owned(),
        ));
    }
    if server.log_level.trim().is_empty() {
        problems.push((
            "server.log_level".to_owned(),
            "must not be empty (e.g. `info`)".to_owned(),
        ));
    }
}

/// A writable path: the engine's one rule ([`check_writable_path`]), so the
/// configuration refuses exactly what an annotation would have ignored.
pub fn check_mount_path(path: &str) -> Result<(), &'static str> {
    check_writable_path(path).map(|_| ())
}

/// A namespace name (RFC 1123 label).
pub fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("is not a namespace name (1 to 63 characters)");
    }
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(
            "is not a namespace name (lower-case letters, digits and `-`, alphanumeric at both ends)",
        )
    }
}
