//! The HTTPS listener of the webhook, built connection by connection:
//! TCP → TLS (handshake bounded; with mutual TLS the caller's certificate is
//! verified and its name checked) → [`Deadlines`] → HTTP/1.1 → `/mutate`.
//!
//! actix-web's `HttpServer` would do the first and last steps, but offers no
//! place to put a stream wrapper between them, and the request and write
//! deadlines must sit exactly there (see `deadlines.rs`).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_http::error::DispatchError;
use actix_http::{ConnectionType, HttpService};
use actix_server::Server;
use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _, fn_service, map_config};
use actix_web::dev::{AppConfig, Service as _};
use actix_web::{App, web};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::deadlines::{Deadlines, Limits};
use crate::handler;
use crate::metrics::{Metrics, ReasonLabels};
use crate::state::State;
use crate::tls;

/// Longer than the API server's idle-connection timeout, so the client side
/// closes idle connections first and never sends on one we just closed.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(120);

/// How the webhook listener treats each connection.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// 0: one worker per CPU.
    pub workers: usize,
    pub shutdown_timeout_secs: u64,
    pub handshake_timeout: Duration,
    pub limits: Limits,
    /// With mutual TLS: names a client certificate must carry one of
    /// (empty: any certificate the configured CA signed).
    pub client_names: Arc<[String]>,
}

/// The webhook's connections while it shuts down.
///
/// Closing an idle keep-alive connection races with a client that has just
/// taken it from its pool, and the API server does not send a review again
/// once it met a closed connection: the pod goes in unhardened. So when the
/// shutdown starts, the listener closes at once (new connections go to the
/// other replicas, or to the replica sharing the port), but for
/// [`IDLE_DRAIN`] every connection stays open and each response closes its
/// own connection, so the client retires them one by one. Then the idle
/// ones are closed, and in-flight reviews finish within
/// `server.shutdown_timeout_secs`.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    shutting_down: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    close_idle: Arc<tokio::sync::watch::Sender<bool>>,
}

/// How long, at most, idle connections stay open once the shutdown started.
pub(crate) const IDLE_DRAIN: Duration = Duration::from_secs(2);

/// Held by each open connection (in its connection data).
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    pub(crate) fn new(shutting_down: Arc<AtomicBool>) -> Self {
        Drain {
            shutting_down,
            open: Arc::new(AtomicUsize::new(0)),
            close_idle: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    fn track(&self) -> OpenConnection {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(Arc::clone(&self.open))
    }

    /// Waits until no connection is open, at most [`IDLE_DRAIN`], then
    /// closes the idle ones. Call after the shutdown flag is set.
    pub(crate) async fn finish(&self) {
        let started = Instant::now();
        while self.open.load(Ordering::Acquire) > 0 && started.elapsed() < IDLE_DRAIN {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.close_idle.send_replace(true);
    }
}

/// Builds (but does not start) the webhook server on `listener`.
pub(crate) fn webhook(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    state: web::Data<State>,
    options: Options,
    drain: &Drain,
) -> std::io::Result<Server> {
    let mut builder = Server::build()
        .disable_signals()
        .shutdown_timeout(options.shutdown_timeout_secs);
    if options.workers > 0 {
        builder = builder.workers(options.workers);
    }
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let request_timeout = options.limits.request_timeout;
    let drain = drain.clone();
    builder
        .listen("kube-hardener-webhook", listener, move || {
            let accept = {
                let acceptor = acceptor.clone();
                let options = options.clone();
                let metrics = Arc::clone(&state.metrics);
                fn_service(move |stream: TcpStream| {
                    let acceptor = acceptor.clone();
                    let options = options.clone();
                    let metrics = Arc::clone(&metrics);
                    async move { accept(stream, &acceptor, &options, &metrics).await }
                })
            };
            let state = state.clone();
            let shutting_down = Arc::clone(&drain.shutting_down);
            let app = App::new()
                .app_data(state)
                .wrap_fn(move |request, service| {
                    let response = service.call(request);
                    let shutting_down = Arc::clone(&shutting_down);
                    async move {
                        let mut response = response.await?;
                        if shutting_down.load(Ordering::Acquire) {
                            response
                                .response_mut()
                                .head_mut()
                                .set_connection_type(ConnectionType::Close);
                        }
                        Ok(response)
                    }
                })
                .service(web::resource("/mutate").route(web::post().to(handler::mutate)));
            let (tracker, close_idle) = (drain.clone(), Arc::clone(&drain.close_idle));
            let http = HttpService::build()
                .keep_alive(KEEP_ALIVE)
                // The request deadline of `Deadlines` covers every request;
                // actix's own timer (first request only) stays as a backstop.
                .client_request_timeout(request_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                .on_connect_ext(move |_, data| {
                    data.insert(tracker.track());
                })
                .graceful_shutdown_signal(move || {
                    let mut closed = close_idle.subscribe();
                    async move {
                        let _ = closed.wait_for(|close| *close).await;
                    }
                })
                .h1(map_config(app.into_factory(), |()| AppConfig::default()));
            accept.and_then(http)
        })
        .map(actix_server::ServerBuilder::run)
}

type Stream = Deadlines<tokio_rustls::server::TlsStream<TcpStream>>;

/// One connection up to the point where HTTP starts.
async fn accept(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    options: &Options,
    metrics: &Metrics,
) -> Result<(Stream, Option<std::net::SocketAddr>), DispatchError> {
    let peer = stream.peer_addr().ok();
    // A TLS response goes out as several records; with Nagle on, the last
    // one waits for the client's delayed ACK (~40 ms) on a keep-alive
    // connection.
    stream.set_nodelay(true).map_err(DispatchError::Io)?;
    let refuse = |reason: &'static str, error: std::io::Error| {
        metrics
            .rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
        tracing::debug!(peer = ?peer, reason, %error, "connection refused");
        DispatchError::Io(error)
    };
    let tls = match tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return Err(refuse("tls", error)),
        Err(_) => {
            return Err(refuse(
                "tls_timeout",
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"),
            ));
        }
    };
    if !options.client_names.is_empty() {
        let names = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| tls::client_names(leaf.as_ref()))
            .unwrap_or_default();
        if !names.iter().any(|name| options.client_names.contains(name)) {
            return Err(refuse(
                "client_name",
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the client certificate names none of server.client_names",
                ),
            ));
        }
    }
    Ok((Deadlines::new(tls, options.limits.clone()), peer))
}
