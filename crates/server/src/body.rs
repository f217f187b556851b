//! Reading a request body within the size and time limits, and the requests
//! that are answered with a plain HTTP error instead of an AdmissionReview.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures::StreamExt as _;

/// A request to /mutate that is not answered with an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejection {
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
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::Body(_) | Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The metrics label (`kube_hardener_rejected_requests_total{reason}`).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Timeout(_) => "timeout",
            Rejection::Body(_) => "body",
            Rejection::Malformed(_) => "malformed",
        }
    }
}

pub(crate) async fn read_body(
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

#[cfg(test)]
mod tests {
    use super::*;

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
