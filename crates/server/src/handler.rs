//! `POST /mutate`: body → review → decision → AdmissionReview response.
//!
//! Small reviews (nearly all of them) are decided right on the HTTP worker:
//! a thread hop would cost more than the engine. A body of
//! [`HEAVY_BODY_BYTES`] or more is parsed and computed on a blocking thread,
//! at most `heavy_reviews` at once, so a pod with tens of thousands of
//! containers cannot keep the workers from answering everyone else.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::admission::{self, Review};
use crate::body::{Rejection, read_body};
use crate::decision::{Decision, Prepared};
use crate::state::State;
use crate::telemetry::{MAX_ECHOED_CHARS, MAX_LOGGED_CHARS, printable};

/// Bodies from this size on are handled off the HTTP workers. An ordinary
/// pod is 2–20 KiB; 64 KiB takes the engine well under a millisecond.
pub(crate) const HEAVY_BODY_BYTES: usize = 64 * 1024;

pub(crate) async fn mutate(
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
        Err(rejection) => return reject(&state, &rejection),
    };
    let started = Instant::now();
    let heavy = body.len() >= HEAVY_BODY_BYTES;
    let parsed = if heavy {
        let body = body.freeze();
        offload(&state, move || admission::parse(&body)).await
    } else {
        Ok(admission::parse(&body))
    };
    let review = match parsed {
        Ok(Ok(review)) => Arc::new(review),
        Ok(Err(error)) => {
            let message = printable(&error.to_string(), MAX_ECHOED_CHARS).into_owned();
            return reject(&state, &Rejection::Malformed(message));
        }
        Err(busy) => return reject(&state, &Rejection::Malformed(busy)),
    };
    let decision = match state.prepare(&review).await {
        Err(decision) => decision,
        Ok(prepared) if heavy => decide_offloaded(&state, &review, prepared).await,
        Ok(prepared) => state.decide(&review, prepared).await,
    };
    let rendered = admission::render(&review.uid, &decision.answer);
    state.record(&review, &decision, started.elapsed());
    respond(&review, rendered)
}

/// A large review: its image query and its engine run each go to a
/// blocking thread, and the images are resolved in between.
async fn decide_offloaded(
    state: &web::Data<State>,
    review: &Arc<Review>,
    prepared: Prepared,
) -> Decision {
    let (prepared, images) = if state.images.is_some() {
        let (state_for_work, review_for_work) = (state.clone(), Arc::clone(review));
        let queried = offload(state, move || {
            let query = state_for_work.image_query(&review_for_work, &prepared);
            (prepared, query)
        })
        .await;
        match queried {
            Ok((prepared, query)) => (prepared, state.resolve(review, query).await),
            Err(error) => return Decision::error(error),
        }
    } else {
        (prepared, None)
    };
    let (state_for_work, review_for_work) = (state.clone(), Arc::clone(review));
    offload(state, move || {
        prepared.compute(
            &review_for_work,
            images.as_ref(),
            &state_for_work.policy,
            state_for_work.audit,
        )
    })
    .await
    .unwrap_or_else(Decision::error)
}

fn respond(review: &Review, rendered: Result<Vec<u8>, serde_json::Error>) -> HttpResponse {
    match rendered {
        Ok(body) => HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(body),
        // Serializing strings and a byte buffer cannot fail in practice; if it
        // ever does, the API server applies its failure policy.
        Err(error) => {
            tracing::error!(
                uid = %printable(&review.uid, MAX_LOGGED_CHARS),
                %error,
                "cannot render the AdmissionReview response"
            );
            HttpResponse::InternalServerError().body("cannot render the response\n")
        }
    }
}

/// Runs `work` on a blocking thread once one of the heavy-review slots is
/// free. `Err` carries why it could not run (it never panics through).
async fn offload<T: Send + 'static>(
    state: &State,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let _slot = state
        .heavy_reviews
        .acquire()
        .await
        .map_err(|_| "the server is shutting down".to_owned())?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| format!("internal error while reviewing a large object: {error}"))
}

fn reject(state: &State, rejection: &Rejection) -> HttpResponse {
    state.count_rejection(
        rejection.reason(),
        rejection.status().as_u16(),
        &rejection.to_string(),
    );
    HttpResponse::build(rejection.status())
        .content_type(ContentType::plaintext())
        .body(format!("{rejection}\n"))
}
