//! The plain-HTTP side: `/healthz` (the process answers), `/readyz` (the
//! namespace cache is synced and no shutdown is under way) and `/metrics`.

use std::sync::atomic::Ordering;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};

use crate::state::State;

pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok\n")
}

pub(crate) async fn readyz(state: web::Data<State>) -> HttpResponse {
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

pub(crate) async fn metrics(state: web::Data<State>) -> HttpResponse {
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
