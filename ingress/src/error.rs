//! The ingress's one error type. Every error answers `{"error":{"code","message"}}`; messages are
//! written here, never taken from a dependency, so no secret, token, expected signature or
//! internal detail reaches a client. Internal causes are logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub enum AppError {
    BadRequest(&'static str, &'static str),
    Unauthorized(&'static str),
    NotFound(&'static str),
    PayloadTooLarge,
    /// A dependency (Redis, Postgres) is down: the client should retry.
    Unavailable(&'static str, String),
    Internal(String),
}

impl AppError {
    pub fn redis(e: impl std::fmt::Display) -> Self {
        metrics::counter!(crate::metrics::DEPENDENCY_ERRORS, "dependency" => "redis").increment(1);
        AppError::Unavailable("redis", e.to_string())
    }

    pub fn db(e: &igsales_schema::DbError) -> Self {
        metrics::counter!(crate::metrics::DEPENDENCY_ERRORS, "dependency" => "postgres")
            .increment(1);
        if e.is_unavailable() {
            AppError::Unavailable("postgres", e.to_string())
        } else {
            AppError::Internal(e.to_string())
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            AppError::BadRequest(code, message) => (StatusCode::BAD_REQUEST, code, message),
            AppError::Unauthorized(message) => (StatusCode::UNAUTHORIZED, "unauthorized", message),
            AppError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message),
            AppError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than allowed",
            ),
            AppError::Unavailable(dependency, cause) => {
                tracing::warn!(dependency, error = %cause, "dependency unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a dependency is unavailable; retry later",
                )
            }
            AppError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        };
        (
            status,
            Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    }
}
