//! `kube-hardener serve`: the mutating admission webhook around the engine.
//!
//! The webhook listens on HTTPS (`POST /mutate`, `admission.k8s.io/v1`
//! AdmissionReview) and, on a separate plain-HTTP listener, serves `/healthz`,
//! `/readyz` and `/metrics`. Namespace annotations come from an in-memory
//! cache fed by a watch, so a review never waits for the API server in the common case.

// The review path, in the order a request takes it.
mod admission; //       AdmissionReview in and out
mod body; //            body limits and plain-HTTP rejections
mod deadlines; //       per-request and write deadlines on each connection
mod decision; //        namespace context, engine run, answer
mod handler; //         POST /mutate
mod listener; //        TCP → TLS → deadlines → HTTP
mod telemetry; //       log line, metrics, printable request strings
// Around it.
mod health; //          /healthz, /readyz, /metrics
mod lifecycle; //       start, drain, stop
mod logging;
mod metrics;
mod namespaces;
mod pull_secrets;
mod state;
mod tls;
mod warm_up;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kube_hardener_config::{Config, ServerConfig};

pub use admission::ANNOTATION_MODE;
pub use lifecycle::{ServeError, ShutdownTrigger, Webhook};
pub use namespaces::{NamespaceCache, NamespaceMeta, NamespaceSource};
pub use tls::TlsError;

/// Command-line arguments of `kube-hardener serve`; each one given overrides
/// the matching `[server]` key of the configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// HTTPS listen address of the webhook, e.g. `0.0.0.0:8443`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Plain-HTTP listen address for /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<String>,
    /// PEM certificate chain served by the webhook (reloaded when it changes).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `--tls-cert`.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Kubeconfig used to watch namespaces; without it the in-cluster
    /// configuration or `KUBECONFIG` is used.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Audit mode: compute and warn, never patch.
    #[arg(long)]
    pub audit: bool,
}

impl ServeArgs {
    /// Layers the flags given on the command line over `server`.
    pub fn apply(&self, server: &mut ServerConfig) {
        if let Some(listen) = &self.listen {
            server.listen.clone_from(listen);
        }
        if let Some(listen) = &self.health_listen {
            server.health_listen.clone_from(listen);
        }
        if let Some(path) = &self.tls_cert {
            server.tls_cert.clone_from(path);
        }
        if let Some(path) = &self.tls_key {
            server.tls_key.clone_from(path);
        }
        if let Some(path) = &self.kubeconfig {
            server.kubeconfig = Some(path.clone());
        }
        if self.audit {
            server.audit = true;
        }
    }
}

/// Runs the webhook until SIGTERM/SIGINT, then drains in-flight reviews
/// (bounded by `shutdown_timeout_secs`) and returns.
pub fn run(args: &ServeArgs, config: Config) -> anyhow::Result<()> {
    let mut config = config;
    args.apply(&mut config.server);
    logging::init(&config.server)?;
    tls::check_files(&config.server.tls_cert, &config.server.tls_key)?;

    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let client = kube_client(config.server.kubeconfig.as_deref()).await?;
        let lookup_timeout = Duration::from_millis(config.server.namespace_lookup_timeout_ms);
        let namespaces = NamespaceSource::watch(client, lookup_timeout);
        let webhook = Webhook::start(config, namespaces).await?;
        let trigger = webhook.shutdown_trigger();
        actix_web::rt::spawn(async move {
            match wait_for_signal().await {
                Ok(signal) => tracing::info!(signal, "shutting down: draining in-flight reviews"),
                Err(error) => {
                    tracing::error!(%error, "cannot listen for termination signals; shutting down")
                }
            }
            trigger.shutdown();
        });
        webhook.wait().await?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes client configuration (not in a cluster, no KUBECONFIG; pass --kubeconfig)",
        )?,
    };
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_override_only_what_they_name() {
        let cli = Cli::parse_from([
            "serve",
            "--listen",
            "127.0.0.1:9443",
            "--tls-cert",
            "/certs/tls.crt",
            "--audit",
        ]);
        let mut server = ServerConfig {
            health_listen: "127.0.0.1:9090".to_owned(),
            ..ServerConfig::default()
        };
        cli.serve.apply(&mut server);
        assert_eq!(server.listen, "127.0.0.1:9443");
        assert_eq!(server.health_listen, "127.0.0.1:9090");
        assert_eq!(server.tls_cert, PathBuf::from("/certs/tls.crt"));
        assert_eq!(server.tls_key, ServerConfig::default().tls_key);
        assert!(server.audit);
        assert_eq!(server.kubeconfig, None);
    }

    #[test]
    fn no_flags_change_nothing() {
        let cli = Cli::parse_from(["serve"]);
        let mut server = ServerConfig::default();
        cli.serve.apply(&mut server);
        assert_eq!(server, ServerConfig::default());
    }

    #[test]
    fn kubeconfig_flag_is_kept() {
        let cli = Cli::parse_from(["serve", "--kubeconfig", "/tmp/kc"]);
        let mut server = ServerConfig::default();
        cli.serve.apply(&mut server);
        assert_eq!(server.kubeconfig, Some(PathBuf::from("/tmp/kc")));
    }
}
