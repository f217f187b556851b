//! Starting and stopping the webhook: both listeners, the certificate
//! reloader, and a graceful drain on shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use kube_hardener_config::{Config, EntryPoint};
use socket2::{Domain, Protocol, Socket, Type};

use crate::deadlines::{Limits, Missed};
use crate::metrics::{Metrics, ReasonLabels};
use crate::namespaces::NamespaceSource;
use crate::state::State;
use crate::tls::{CertReloader, TlsError};
use crate::warm_up::WarmUp;
use crate::{health, listener};

/// Certificate files are re-read this often; a rotation is served within it.
const CERT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The webhook could not start or stopped unexpectedly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} (server.{key}): {source}")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("the {0} server failed: {1}")]
    Server(&'static str, std::io::Error),
    #[error("image lookups: {0}")]
    Images(String),
}

/// Starts a graceful shutdown of a running [`Webhook`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(Arc<tokio::sync::Notify>);

impl ShutdownTrigger {
    pub fn shutdown(&self) {
        // `notify_one` keeps a permit when nobody waits yet, so a trigger
        // fired before `Webhook::wait` is not lost.
        self.0.notify_one();
    }
}

/// A running webhook: both listeners are bound and serving.
#[derive(Debug)]
pub struct Webhook {
    webhook_addr: SocketAddr,
    health_addr: SocketAddr,
    webhook: ServerTask,
    health: ServerTask,
    reloader: tokio::task::JoinHandle<()>,
    drain: listener::Drain,
    shutdown: Arc<tokio::sync::Notify>,
    shutting_down: Arc<AtomicBool>,
}

#[derive(Debug)]
struct ServerTask {
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerTask {
    fn spawn(server: actix_web::dev::Server) -> Self {
        ServerTask {
            handle: server.handle(),
            task: tokio::spawn(server),
        }
    }
}

impl Webhook {
    /// Loads the certificate, binds both listeners and starts serving.
    /// Must run inside an actix (or Tokio) runtime.
    pub async fn start(config: Config, namespaces: NamespaceSource) -> Result<Webhook, ServeError> {
        let server = &config.server;
        let metrics = Arc::new(Metrics::new(namespaces.watch_errors()));
        let (reloader, tls) = CertReloader::start(
            &server.tls_cert,
            &server.tls_key,
            server.client_ca.as_deref(),
            Arc::clone(&metrics),
        )?;

        let webhook_listener = bind("listen", &server.listen, server.reuse_port)?;
        let health_listener = bind("health_listen", &server.health_listen, server.reuse_port)?;
        let webhook_addr = local_addr("listen", &webhook_listener)?;
        let health_addr = local_addr("health_listen", &health_listener)?;

        let shutting_down = Arc::new(AtomicBool::new(false));
        let client_timeout = Duration::from_millis(server.client_timeout_ms);
        let heavy_slots = std::thread::available_parallelism().map_or(1, usize::from);
        let images = if config.images.resolve {
            let resolver_config = kube_hardener_images::ResolverConfig::from_config(&config.images)
                .map_err(|e| ServeError::Images(e.to_string()))?;
            let observer: Arc<dyn kube_hardener_images::Observer> =
                Arc::new(metrics.images.clone());
            Some(
                kube_hardener_images::Resolver::new(resolver_config, observer)
                    .map_err(|e| ServeError::Images(e.to_string()))?,
            )
        } else {
            None
        };
        let policy = config.effective_policy(EntryPoint::Webhook);
        // The namespace cache's API client also reads pods and pull secrets.
        let client = namespaces.client();
        let warm_up = match (&images, &client) {
            (Some(resolver), Some(client)) if config.images.warm_up_pods > 0 => Some(WarmUp {
                client: client.clone(),
                resolver: resolver.clone(),
                policy: policy.clone(),
                namespaces: namespaces.clone(),
                max_pods: config.images.warm_up_pods,
            }),
            _ => None,
        };
        let pull_secrets = match (&images, client) {
            (Some(_), Some(client)) if config.images.pod_pull_secrets => {
                let timeout = Duration::from_millis(
                    server
                        .namespace_lookup_timeout_ms
                        .min(config.images.budget_ms),
                );
                Some(crate::pull_secrets::PullSecrets::new(client, timeout))
            }
            _ => None,
        };
        let state = web::Data::new(State {
            policy,
            audit: server.audit,
            max_body_bytes: server.max_body_bytes,
            client_timeout,
            namespaces: namespaces.clone(),
            metrics: Arc::clone(&metrics),
            shutting_down: Arc::clone(&shutting_down),
            heavy_reviews: tokio::sync::Semaphore::new(heavy_slots),
            images,
            pull_secrets,
        });

        let missed_metrics = Arc::clone(&metrics);
        let options = listener::Options {
            workers: server.workers,
            shutdown_timeout_secs: server.shutdown_timeout_secs,
            handshake_timeout: client_timeout,
            limits: Limits {
                request_timeout: client_timeout,
                write_timeout: Duration::from_millis(server.write_timeout_ms),
                on_missed: Arc::new(move |missed: Missed| {
                    missed_metrics
                        .rejected
                        .get_or_create(&ReasonLabels {
                            reason: missed.reason(),
                        })
                        .inc();
                }),
            },
            client_names: server.client_names.clone().into(),
        };
        let drain = listener::Drain::new(Arc::clone(&shutting_down));
        let webhook = listener::webhook(webhook_listener, tls, state.clone(), options, &drain)
            .map_err(|source| ServeError::Bind {
                key: "listen",
                addr: server.listen.clone(),
                source,
            })?;

        let health_state = state;
        let health = HttpServer::new(move || {
            App::new()
                .app_data(health_state.clone())
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(health::readyz))
                .route("/metrics", web::get().to(health::metrics))
        })
        .disable_signals()
        .workers(1)
        .shutdown_timeout(1)
        .client_request_timeout(client_timeout)
        .listen(health_listener)
        .map_err(|source| ServeError::Bind {
            key: "health_listen",
            addr: server.health_listen.clone(),
            source,
        })?
        .run();

        let reloader = tokio::spawn(reloader.run(CERT_POLL_INTERVAL));
        tracing::info!(
            %webhook_addr,
            %health_addr,
            audit = server.audit,
            mutate_workloads = config.hardening.mutate_workloads,
            mutual_tls = server.client_ca.is_some(),
            "serving"
        );
        // In the background: reviews are served meanwhile.
        if let Some(warm_up) = warm_up {
            tokio::spawn(warm_up.run());
        }
        Ok(Webhook {
            webhook_addr,
            health_addr,
            webhook: ServerTask::spawn(webhook),
            health: ServerTask::spawn(health),
            reloader,
            shutdown: Arc::new(tokio::sync::Notify::new()),
            shutting_down,
            drain,
        })
    }

    /// Bound address of the HTTPS webhook listener.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    /// Bound address of the health/metrics listener.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger(Arc::clone(&self.shutdown))
    }

    /// Serves until the trigger fires, then stops accepting connections,
    /// retires the open ones (see [`listener::Drain`]), lets in-flight
    /// reviews finish (up to `shutdown_timeout_secs`) and returns.
    pub async fn wait(self) -> Result<(), ServeError> {
        let Webhook {
            webhook,
            health,
            reloader,
            shutdown,
            shutting_down,
            drain,
            ..
        } = self;
        let mut webhook_task = webhook.task;
        let early = tokio::select! {
            () = shutdown.notified() => None,
            result = &mut webhook_task => Some(result),
        };
        shutting_down.store(true, Ordering::Release);
        reloader.abort();
        if let Some(result) = early {
            health.handle.stop(false).await;
            return match result {
                Ok(Ok(())) => Err(ServeError::Server(
                    "webhook",
                    std::io::Error::other("stopped on its own"),
                )),
                Ok(Err(error)) => Err(ServeError::Server("webhook", error)),
                Err(join) => Err(ServeError::Server("webhook", std::io::Error::other(join))),
            };
        }
        // Sent at once: the listener closes now, the workers wait for their
        // connections.
        let stopped = webhook.handle.stop(true);
        drain.finish().await;
        stopped.await;
        // Health keeps answering (readyz 503) until the webhook has drained.
        health.handle.stop(true).await;
        finish("webhook", webhook_task).await?;
        finish("health", health.task).await
    }
}

async fn finish(
    name: &'static str,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), ServeError> {
    match task.await {
        Ok(result) => result.map_err(|error| ServeError::Server(name, error)),
        Err(join) => Err(ServeError::Server(name, std::io::Error::other(join))),
    }
}

/// Connections a listener queues before the process accepts them (the
/// kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

fn bind(key: &'static str, addr: &str, reuse_port: bool) -> Result<TcpListener, ServeError> {
    let error = |source| ServeError::Bind {
        key,
        addr: addr.to_owned(),
        source,
    };
    if !reuse_port {
        return TcpListener::bind(addr).map_err(error);
    }
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an IP:port address",
        ))
    })?;
    let socket = Socket::new(
        Domain::for_address(parsed),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(error)?;
    // As std does for every listener: a restarted process can bind at once.
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_reuse_port(true).map_err(error)?;
    socket.bind(&parsed.into()).map_err(error)?;
    socket.listen(BACKLOG).map_err(error)?;
    Ok(socket.into())
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Bind {
        key,
        addr: "?".to_owned(),
        source,
    })
}
