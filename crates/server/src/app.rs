//! The two HTTP servers (HTTPS webhook, plain-HTTP health/metrics), the
//! review pipeline between them and the engine, and graceful shutdown.

use std::net::{SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures::StreamExt as _;
use kube_hardener_config::Config;
use kube_hardener_engine::{Context, Disposition, Outcome, Policy, WarningKind};

use crate::admission::{self, Answer, Mode, Review, Target};
use crate::metrics::{
    KindLabels, Metrics, ReasonLabels, ResultLabels, ReviewLabels, SettingLabels,
};
use crate::namespaces::{Lookup, NamespaceSource};
use crate::tls::{CertReloader, TlsError};

/// Certificate files are re-read this often; a rotation is served within it.
const CERT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longer than the API server's idle-connection timeout, so the client side
/// closes idle connections first and never sends on one we just closed.
const KEEP_ALIVE: Duration = Duration::from_secs(120);

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
    shutdown: Arc<tokio::sync::Notify>,
    shutting_down: Arc<AtomicBool>,
}

#[derive(Debug)]
struct ServerTask {
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Webhook {
    /// Loads the certificate, binds both listeners and starts serving.
    /// Must run inside an actix (or Tokio) runtime.
    pub async fn start(config: Config, namespaces: NamespaceSource) -> Result<Webhook, ServeError> {
        let server = &config.server;
        let metrics = Arc::new(Metrics::new(namespaces.watch_errors()));
        let (reloader, tls) =
            CertReloader::start(&server.tls_cert, &server.tls_key, Arc::clone(&metrics))?;

        let webhook_listener = bind("listen", &server.listen)?;
        let health_listener = bind("health_listen", &server.health_listen)?;
        let webhook_addr = local_addr("listen", &webhook_listener)?;
        let health_addr = local_addr("health_listen", &health_listener)?;

        let mut excluded = config.hardening.excluded_namespaces.clone();
        excluded.extend(
            server
                .own_namespace
                .iter()
                .filter(|ns| !ns.is_empty())
                .cloned(),
        );
        let shutting_down = Arc::new(AtomicBool::new(false));
        let client_timeout = Duration::from_millis(server.client_timeout_ms);
        let state = web::Data::new(State {
            policy: config.hardening.clone(),
            excluded,
            audit: server.audit,
            max_body_bytes: server.max_body_bytes,
            client_timeout,
            namespaces: namespaces.clone(),
            metrics: Arc::clone(&metrics),
            shutting_down: Arc::clone(&shutting_down),
        });

        let webhook_state = state.clone();
        let mut webhook = HttpServer::new(move || {
            App::new()
                .app_data(webhook_state.clone())
                .service(web::resource("/mutate").route(web::post().to(mutate)))
        })
        .disable_signals()
        .shutdown_timeout(server.shutdown_timeout_secs)
        .client_request_timeout(client_timeout)
        .tls_handshake_timeout(client_timeout)
        .keep_alive(KEEP_ALIVE)
        // A TLS response goes out as several records; with Nagle on, the last
        // one waits for the client's delayed ACK (~40 ms) on a keep-alive
        // connection.
        .tcp_nodelay(true);
        if server.workers > 0 {
            webhook = webhook.workers(server.workers);
        }
        let webhook = webhook
            .listen_rustls_0_23(webhook_listener, tls)
            .map_err(|source| ServeError::Bind {
                key: "listen",
                addr: server.listen.clone(),
                source,
            })?
            .run();

        let health_state = state;
        let health = HttpServer::new(move || {
            App::new()
                .app_data(health_state.clone())
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics_endpoint))
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
            "serving"
        );
        Ok(Webhook {
            webhook_addr,
            health_addr,
            webhook: ServerTask {
                handle: webhook.handle(),
                task: tokio::spawn(webhook),
            },
            health: ServerTask {
                handle: health.handle(),
                task: tokio::spawn(health),
            },
            reloader,
            shutdown: Arc::new(tokio::sync::Notify::new()),
            shutting_down,
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
    /// lets in-flight reviews finish (up to `shutdown_timeout_secs`) and
    /// returns.
    pub async fn wait(self) -> Result<(), ServeError> {
        let Webhook {
            webhook,
            health,
            reloader,
            shutdown,
            shutting_down,
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
        webhook.handle.stop(true).await;
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

fn bind(key: &'static str, addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).map_err(|source| ServeError::Bind {
        key,
        addr: addr.to_owned(),
        source,
    })
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Bind {
        key,
        addr: "?".to_owned(),
        source,
    })
}

/// Everything a review needs, shared by all HTTP workers.
#[derive(Debug)]
struct State {
    policy: Policy,
    excluded: Vec<String>,
    audit: bool,
    max_body_bytes: usize,
    client_timeout: Duration,
    namespaces: NamespaceSource,
    metrics: Arc<Metrics>,
    shutting_down: Arc<AtomicBool>,
}

/// A request to /mutate that is not answered with an AdmissionReview.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body not received within {0} ms")]
    Timeout(u128),
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("{0}")]
    Malformed(String),
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::Body(_) | Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Timeout(_) => "timeout",
            Rejection::Body(_) => "body",
            Rejection::Malformed(_) => "malformed",
        }
    }
}

async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::BytesMut, Rejection> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    // Refuse before reading a byte when the client announces too much.
    if declared.is_some_and(|length| length > limit) {
        return Err(Rejection::TooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|error| Rejection::Body(error.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(Rejection::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok(body),
        Ok(Err(rejection)) => Err(rejection),
        Err(_) => Err(Rejection::Timeout(timeout.as_millis())),
    }
}

async fn mutate(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let body = match read_body(
        &request,
        payload,
        state.max_body_bytes,
        state.client_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(rejection) => return state.reject(&rejection),
    };
    let started = Instant::now();
    let review = match admission::parse(&body) {
        Ok(review) => review,
        Err(error) => return state.reject(&Rejection::Malformed(error.to_string())),
    };
    let decision = state.decide(&review).await;
    let rendered = admission::render(&review.uid, &decision.answer);
    let elapsed = started.elapsed();
    state.record(&review, &decision, elapsed);
    match rendered {
        Ok(body) => HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(body),
        // Serializing strings and a byte buffer cannot fail in practice; if it
        // ever does, the API server applies its failure policy.
        Err(error) => {
            tracing::error!(uid = %review.uid, %error, "cannot render the AdmissionReview response");
            HttpResponse::InternalServerError().body("cannot render the response\n")
        }
    }
}

/// What was decided for one review, for the response, metrics and logs.
#[derive(Debug)]
struct Decision {
    answer: Answer,
    outcome: &'static str,
    mode: Option<Mode>,
    applied: Vec<kube_hardener_engine::Setting>,
    warning_kinds: Vec<WarningKind>,
    detail: Option<String>,
}

impl Decision {
    fn unchanged(outcome: &'static str, detail: impl Into<String>) -> Self {
        Decision {
            answer: Answer::default(),
            outcome,
            mode: None,
            applied: Vec::new(),
            warning_kinds: Vec::new(),
            detail: Some(detail.into()),
        }
    }

    fn skipped(outcome: &'static str, reason: &str) -> Self {
        let mut decision = Decision::unchanged(outcome, reason);
        decision
            .answer
            .audit_annotations
            .insert("skipped", reason.to_owned());
        decision
    }

    /// The webhook's own trouble never blocks a pod: admit it unchanged and
    /// tell the user why nothing was filled in.
    fn error(detail: String) -> Self {
        let mut decision = Decision::unchanged("error", detail);
        decision.answer.warnings.push(
            "kube-hardener could not process this object; it was admitted without security defaults"
                .to_owned(),
        );
        decision
    }
}

impl State {
    fn reject(&self, rejection: &Rejection) -> HttpResponse {
        self.metrics
            .rejected
            .get_or_create(&ReasonLabels {
                reason: rejection.reason(),
            })
            .inc();
        tracing::info!(status = rejection.status().as_u16(), error = %rejection, "rejected request");
        HttpResponse::build(rejection.status())
            .content_type(ContentType::plaintext())
            .body(format!("{rejection}\n"))
    }

    async fn decide(&self, review: &Review) -> Decision {
        let target = admission::classify(review, self.policy.mutate_workloads);
        if let Target::Ignore(reason) = target {
            return Decision::unchanged("ignored", reason);
        }
        if self.excluded.contains(&review.namespace) {
            return Decision::skipped("excluded", "excluded namespace");
        }
        let lookup = if review.namespace.is_empty() {
            None
        } else {
            Some(self.namespaces.lookup(&review.namespace).await)
        };
        if let Some(lookup) = &lookup {
            self.count_lookup(review, lookup);
        }
        let annotations = lookup.as_ref().and_then(Lookup::annotations);
        let (mode, mode_warning) = admission::effective_mode(self.audit, annotations);

        let Some(object) = &review.object else {
            return Decision::error("the request has no `object`".to_owned());
        };
        let ctx = Context {
            namespace: (!review.namespace.is_empty()).then_some(review.namespace.as_str()),
            namespace_annotations: annotations,
        };
        let computed = match target {
            Target::EphemeralContainers => {
                let Some(old) = &review.old_object else {
                    return Decision::error(
                        "an ephemeralcontainers update without `oldObject`".to_owned(),
                    );
                };
                guarded(|| {
                    kube_hardener_engine::harden_new_ephemeral_containers(
                        object,
                        old,
                        &ctx,
                        &self.policy,
                    )
                })
            }
            Target::Pod | Target::Workload | Target::Ignore(_) => {
                guarded(|| kube_hardener_engine::harden(object, &ctx, &self.policy))
            }
        };
        let outcome = match computed {
            Ok(outcome) => outcome,
            Err(detail) => return Decision::error(detail),
        };
        self.answer(outcome, mode, mode_warning)
    }

    fn answer(&self, outcome: Outcome, mode: Mode, mode_warning: Option<String>) -> Decision {
        let mut warnings: Vec<String> = outcome.warnings.iter().map(ToString::to_string).collect();
        let mut warning_kinds: Vec<WarningKind> = outcome.warnings.iter().map(|w| w.kind).collect();
        if let Some(message) = mode_warning {
            warnings.push(message);
            warning_kinds.push(WarningKind::Annotation);
        }
        let mut answer = Answer {
            patch: None,
            warnings,
            audit_annotations: Default::default(),
        };
        let (outcome_label, detail) = match &outcome.disposition {
            Disposition::Hardened => ("hardened", None),
            Disposition::ExcludedNamespace(ns) => {
                ("excluded", Some(format!("excluded namespace {ns}")))
            }
            Disposition::SkippedAll => ("skipped", Some("opted out of all settings".to_owned())),
            Disposition::UnsupportedKind(kind) => {
                ("ignored", Some(format!("unsupported kind {kind}")))
            }
        };
        match outcome_label {
            "excluded" => {
                answer
                    .audit_annotations
                    .insert("skipped", "excluded namespace".to_owned());
            }
            "skipped" => {
                answer
                    .audit_annotations
                    .insert("skipped", "opted out of all settings".to_owned());
            }
            _ => {}
        }
        let applied_list = outcome
            .applied
            .iter()
            .map(|setting| setting.name())
            .collect::<Vec<_>>()
            .join(",");
        let outcome_label = if outcome.is_empty() {
            if outcome_label == "hardened" {
                "unchanged"
            } else {
                outcome_label
            }
        } else {
            match mode {
                Mode::Enforce => match serde_json::to_vec(&outcome.patch) {
                    Ok(patch) => {
                        answer.patch = Some(patch);
                        answer.audit_annotations.insert("applied", applied_list);
                        "patched"
                    }
                    Err(error) => {
                        return Decision::error(format!("cannot serialize the patch: {error}"));
                    }
                },
                Mode::Audit => {
                    answer.warnings.push(format!(
                        "kube-hardener audit mode: would set {}",
                        if applied_list.is_empty() {
                            "security defaults"
                        } else {
                            &applied_list
                        }
                    ));
                    answer.audit_annotations.insert("would-apply", applied_list);
                    "audited"
                }
            }
        };
        answer
            .audit_annotations
            .insert("mode", mode.label().to_owned());
        Decision {
            answer,
            outcome: outcome_label,
            mode: Some(mode),
            applied: outcome.applied,
            warning_kinds,
            detail,
        }
    }

    fn count_lookup(&self, review: &Review, lookup: &Lookup) {
        let result = match lookup {
            Lookup::Cached(_) => return,
            Lookup::Fetched(_) => "ok",
            Lookup::NotFound => "not_found",
            Lookup::Failed(error) => {
                tracing::warn!(
                    uid = %review.uid,
                    namespace = %review.namespace,
                    %error,
                    "namespace lookup failed; reviewing without namespace annotations"
                );
                "failed"
            }
        };
        self.metrics
            .namespace_lookups
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn record(&self, review: &Review, decision: &Decision, elapsed: Duration) {
        let metrics = &self.metrics;
        metrics
            .reviews
            .get_or_create(&ReviewLabels {
                outcome: decision.outcome,
                operation: review.operation_label(),
            })
            .inc();
        metrics.latency.observe(elapsed.as_secs_f64());
        if let Some(mode) = decision.mode {
            for setting in &decision.applied {
                metrics
                    .settings
                    .get_or_create(&SettingLabels {
                        setting: setting.name(),
                        mode: mode.label(),
                    })
                    .inc();
            }
        }
        for kind in &decision.warning_kinds {
            metrics
                .warnings
                .get_or_create(&KindLabels { kind: kind.label() })
                .inc();
        }
        let applied = decision
            .applied
            .iter()
            .map(|setting| setting.name())
            .collect::<Vec<_>>()
            .join(",");
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if decision.outcome == "error" {
            tracing::error!(
                uid = %review.uid,
                namespace = %review.namespace,
                name = %review.display_name(),
                operation = %review.operation,
                dry_run = review.dry_run,
                error = decision.detail.as_deref().unwrap_or_default(),
                latency_us,
                "review failed; admitted unchanged"
            );
        } else {
            tracing::info!(
                uid = %review.uid,
                namespace = %review.namespace,
                name = %review.display_name(),
                kind = %review.kind.kind,
                operation = %review.operation,
                dry_run = review.dry_run,
                outcome = decision.outcome,
                mode = decision.mode.map(Mode::label).unwrap_or("-"),
                applied = %applied,
                warnings = decision.answer.warnings.len(),
                detail = decision.detail.as_deref().unwrap_or_default(),
                latency_us,
                "review"
            );
        }
    }
}

/// Runs the engine, turning both its errors and a panic into an error
/// outcome: a bug in one rule must not turn into a failed pod creation.
fn guarded<F>(compute: F) -> Result<Outcome, String>
where
    F: FnOnce() -> Result<Outcome, kube_hardener_engine::EngineError>,
{
    match std::panic::catch_unwind(AssertUnwindSafe(compute)) {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(error)) => Err(format!("the object cannot be hardened: {error}")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(format!("internal error in the engine: {message}"))
        }
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok\n")
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    if state.shutting_down.load(Ordering::Acquire) {
        return HttpResponse::ServiceUnavailable()
            .content_type(ContentType::plaintext())
            .body("shutting down\n");
    }
    if !state.namespaces.is_synced() {
        return HttpResponse::ServiceUnavailable()
            .content_type(ContentType::plaintext())
            .body("namespace cache not synced yet\n");
    }
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok\n")
}

async fn metrics_endpoint(state: web::Data<State>) -> HttpResponse {
    let metrics = &state.metrics;
    metrics
        .namespace_cache_size
        .set(i64::try_from(state.namespaces.len()).unwrap_or(i64::MAX));
    metrics
        .namespace_synced
        .set(i64::from(state.namespaces.is_synced()));
    match metrics.encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            HttpResponse::InternalServerError().body("cannot encode metrics\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_panics_become_error_outcomes() {
        let result = guarded(|| panic!("boom"));
        assert_eq!(result.unwrap_err(), "internal error in the engine: boom");
        let result = guarded(|| Err(kube_hardener_engine::EngineError::NotAnObject));
        assert_eq!(
            result.unwrap_err(),
            "the object cannot be hardened: the object is not a JSON object"
        );
    }

    #[test]
    fn rejections_map_to_status_codes() {
        let cases = [
            (Rejection::TooLarge { limit: 1 }, 413),
            (Rejection::Timeout(5), 408),
            (Rejection::Body("x".to_owned()), 400),
            (Rejection::Malformed("x".to_owned()), 400),
        ];
        for (rejection, status) in cases {
            assert_eq!(rejection.status().as_u16(), status, "{rejection}");
        }
    }
}
