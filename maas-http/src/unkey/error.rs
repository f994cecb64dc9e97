//! Unkey's error envelope, the key API's dialect:
//! `{"error":{"code","docs","message","requestId"}}` with content type
//! `application/json`.

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use maas_core::Error;
use serde::Serialize;
use utoipa::ToSchema;

use crate::common::{Dialect, RequestId};

/// Where the `docs` link of an error points, followed by its code.
pub const DOCS_BASE: &str = "https://unkey.dev/docs/api-reference/errors/code/";

/// The key API's error dialect.
#[derive(Debug, Clone, Copy)]
pub struct Unkey;

/// Unkey's error codes (seed 004's `Err*` schemas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnkeyCode {
    /// 400, and 413/415 (the closest code).
    BadRequest,
    /// 401: no valid root key.
    Unauthorized,
    /// 403: the root key lacks a permission.
    Forbidden,
    /// 404.
    NotFound,
    /// 409.
    Conflict,
    /// 429.
    TooManyRequests,
    /// 500, and 503 (storage unavailable).
    InternalServerError,
}

impl UnkeyCode {
    /// The wire name: `BAD_REQUEST`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            UnkeyCode::BadRequest => "BAD_REQUEST",
            UnkeyCode::Unauthorized => "UNAUTHORIZED",
            UnkeyCode::Forbidden => "FORBIDDEN",
            UnkeyCode::NotFound => "NOT_FOUND",
            UnkeyCode::Conflict => "CONFLICT",
            UnkeyCode::TooManyRequests => "TOO_MANY_REQUESTS",
            UnkeyCode::InternalServerError => "INTERNAL_SERVER_ERROR",
        }
    }
}

/// An Unkey error about to be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnkeyError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The code.
    pub code: UnkeyCode,
    /// What happened.
    pub message: String,
    /// The request id.
    pub request_id: String,
}

/// Unkey's error envelope (seed 004's `Err*` schemas).
#[derive(Serialize, ToSchema)]
#[schema(as = UnkeyError)]
pub(crate) struct UnkeyErrorBody<'a> {
    /// The error.
    error: UnkeyErrorDetail<'a>,
}

/// The error in Unkey's envelope.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UnkeyErrorDetail<'a> {
    /// The error code.
    #[schema(value_type = UnkeyCode)]
    code: &'static str,
    /// A link to the code's documentation.
    docs: String,
    /// What happened.
    message: &'a str,
    /// The request id (also in the `x-request-id` header).
    request_id: &'a str,
}

impl UnkeyError {
    /// An error of `status` and `code`.
    pub fn new(
        status: StatusCode,
        code: UnkeyCode,
        message: impl Into<String>,
        id: &RequestId,
    ) -> Self {
        UnkeyError {
            status,
            code,
            message: message.into(),
            request_id: id.as_str().to_owned(),
        }
    }

    /// The Unkey error for `err`.
    pub fn from_core(err: &Error, id: &RequestId) -> Self {
        let (status, code, message) = match err {
            Error::InvalidInput { .. } => (
                StatusCode::BAD_REQUEST,
                UnkeyCode::BadRequest,
                err.to_string(),
            ),
            // A keyspace is what Unkey calls an api.
            Error::NotFound { kind, id } => (
                StatusCode::NOT_FOUND,
                UnkeyCode::NotFound,
                match *kind {
                    "keyspace" => format!("api '{id}' not found"),
                    _ => err.to_string(),
                },
            ),
            e if e.is_not_found() => (StatusCode::NOT_FOUND, UnkeyCode::NotFound, e.to_string()),
            Error::Conflict { .. } => (StatusCode::CONFLICT, UnkeyCode::Conflict, err.to_string()),
            Error::Unauthenticated { reason } => (
                StatusCode::UNAUTHORIZED,
                UnkeyCode::Unauthorized,
                reason.to_string(),
            ),
            Error::Forbidden { reason } => (
                StatusCode::FORBIDDEN,
                UnkeyCode::Forbidden,
                reason.to_string(),
            ),
            Error::RateLimited { .. } | Error::QuotaExceeded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                UnkeyCode::TooManyRequests,
                err.to_string(),
            ),
            Error::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                UnkeyCode::InternalServerError,
                "the service is unavailable, retry later".to_owned(),
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                UnkeyCode::InternalServerError,
                "internal server error".to_owned(),
            ),
        };
        if status.is_server_error() {
            tracing::error!(request_id = %id.as_str(), error = %err, "request failed");
        }
        UnkeyError::new(status, code, message, id)
    }
}

impl IntoResponse for UnkeyError {
    fn into_response(self) -> Response {
        let code = self.code.as_str();
        let envelope = UnkeyErrorBody {
            error: UnkeyErrorDetail {
                code,
                docs: format!("{DOCS_BASE}{code}"),
                message: &self.message,
                request_id: &self.request_id,
            },
        };
        let bytes = serde_json::to_vec(&envelope).unwrap_or_else(|_| b"{}".to_vec());
        (self.status, [(CONTENT_TYPE, "application/json")], bytes).into_response()
    }
}

impl Dialect for Unkey {
    fn render(err: &Error, id: &RequestId) -> Response {
        UnkeyError::from_core(err, id).into_response()
    }

    fn too_large(limit_message: &str, id: &RequestId) -> Response {
        UnkeyError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            UnkeyCode::BadRequest,
            limit_message,
            id,
        )
        .into_response()
    }

    fn unsupported_media_type(id: &RequestId) -> Response {
        UnkeyError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UnkeyCode::BadRequest,
            "the body must be JSON (Content-Type: application/json)",
            id,
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in [
            UnkeyCode::BadRequest,
            UnkeyCode::Unauthorized,
            UnkeyCode::Forbidden,
            UnkeyCode::NotFound,
            UnkeyCode::Conflict,
            UnkeyCode::TooManyRequests,
            UnkeyCode::InternalServerError,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
