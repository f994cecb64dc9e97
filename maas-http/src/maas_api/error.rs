//! Goa's error shape, the MaaS API's dialect:
//! `{"name","id","message","temporary","timeout","fault"}` with content
//! type `application/vnd.goa.error`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maas_core::Error;
use serde::Serialize;
use utoipa::ToSchema;

use crate::common::{Dialect, RequestId, json_response};

/// The content type of Goa errors.
pub const GOA_ERROR: &str = "application/vnd.goa.error";

/// The MaaS API's error dialect.
#[derive(Debug, Clone, Copy)]
pub struct Goa;

/// A Goa error about to be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoaError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The class of error: `bad_request`, `unauthorized`, `not_found`, ...
    pub name: &'static str,
    /// What happened.
    pub message: String,
    /// The request id.
    pub id: String,
    /// Whether retrying may help.
    pub temporary: bool,
    /// Whether it was a timeout.
    pub timeout: bool,
    /// Whether it is the server's fault.
    pub fault: bool,
}

impl GoaError {
    /// The Goa error for `err`.
    pub fn from_core(err: &Error, id: &RequestId) -> Self {
        let (status, name, message, temporary, fault) = match err {
            Error::InvalidInput { field, reason } => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                if reason.starts_with("parameter '") {
                    reason.to_string()
                } else {
                    format!("parameter '{field}' {reason}")
                },
                false,
                false,
            ),
            e if e.is_not_found() => (
                StatusCode::NOT_FOUND,
                "not_found",
                e.to_string(),
                false,
                false,
            ),
            Error::Conflict { .. } => (
                StatusCode::CONFLICT,
                "conflict",
                err.to_string(),
                false,
                false,
            ),
            Error::Unauthenticated { reason } => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                reason.to_string(),
                false,
                false,
            ),
            Error::Forbidden { reason } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                reason.to_string(),
                false,
                false,
            ),
            Error::RateLimited { .. } | Error::QuotaExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                err.to_string(),
                true,
                false,
            ),
            Error::Unavailable { transient, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                err.to_string(),
                *transient,
                true,
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error".to_owned(),
                false,
                true,
            ),
        };
        if status.is_server_error() {
            tracing::error!(request_id = %id.as_str(), error = %err, "request failed");
        }
        GoaError {
            status,
            name,
            message,
            id: id.as_str().to_owned(),
            temporary,
            timeout: false,
            fault,
        }
    }

    fn body(&self) -> GoaErrorBody<'_> {
        GoaErrorBody {
            name: self.name,
            id: &self.id,
            message: &self.message,
            temporary: self.temporary,
            timeout: self.timeout,
            fault: self.fault,
        }
    }
}

/// The body of a Goa error (seed 000's `Error` schema).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = GoaError)]
pub struct GoaErrorBody<'a> {
    /// The class of error: `bad_request`, `unauthorized`, `not_found`,
    /// `conflict`, `forbidden`, `rate_limited`, `unavailable`, `internal`,
    /// `request_too_large`, `unsupported_media_type`.
    #[schema(example = "bad_request")]
    pub name: &'a str,
    /// The request id (also in the `x-request-id` header).
    pub id: &'a str,
    /// What happened.
    pub message: &'a str,
    /// Whether retrying may help.
    pub temporary: bool,
    /// Whether it was a timeout.
    pub timeout: bool,
    /// Whether it is the server's fault.
    pub fault: bool,
}

impl IntoResponse for GoaError {
    fn into_response(self) -> Response {
        let body = serde_json::to_value(self.body()).unwrap_or_default();
        json_response(self.status, GOA_ERROR, &body)
    }
}

impl Dialect for Goa {
    fn render(err: &Error, id: &RequestId) -> Response {
        GoaError::from_core(err, id).into_response()
    }

    fn too_large(limit_message: &str, id: &RequestId) -> Response {
        GoaError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            name: "request_too_large",
            message: limit_message.to_owned(),
            id: id.as_str().to_owned(),
            temporary: false,
            timeout: false,
            fault: false,
        }
        .into_response()
    }

    fn unsupported_media_type(id: &RequestId) -> Response {
        GoaError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            name: "unsupported_media_type",
            message: "the body must be JSON (Content-Type: application/json)".to_owned(),
            id: id.as_str().to_owned(),
            temporary: false,
            timeout: false,
            fault: false,
        }
        .into_response()
    }
}
