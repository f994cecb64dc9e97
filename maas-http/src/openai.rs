//! OpenAI's error shape, the dialect of the inference gateway and of the
//! simulator: `{"error":{"message","type","param","code"}}` as
//! `application/json`.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maas_core::Error;
use serde::Serialize;

use crate::common::{Dialect, RequestId, json_response};

/// The OpenAI error dialect.
#[derive(Debug, Clone, Copy)]
pub struct OpenAi;

/// An OpenAI-style error about to be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What happened, for people.
    pub message: String,
    /// The class: `invalid_request_error`, `permission_error`,
    /// `rate_limit_error`, `server_error`, ...
    pub kind: &'static str,
    /// The machine-readable code: `invalid_api_key`, `access_denied`,
    /// `model_not_found`, `rate_limit_exceeded`, ...
    pub code: Option<&'static str>,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl OpenAiError {
    /// An error of `status`, `kind` and `code` saying `message`.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        OpenAiError {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        );
        e.param = Some(param.into());
        e
    }

    /// 401 `invalid_api_key`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        OpenAiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    /// 403 `access_denied` (seed 002's message by default).
    pub fn access_denied(message: impl Into<String>) -> Self {
        OpenAiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("access_denied"),
            message,
        )
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = OpenAiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model '{model}' does not exist"),
        );
        e.param = Some("model".into());
        e
    }

    /// 429 `rate_limit_exceeded`, retry after `secs`.
    pub fn rate_limited(message: impl Into<String>, retry_after: Option<u64>) -> Self {
        let mut e = OpenAiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message,
        );
        e.retry_after = retry_after;
        e
    }

    /// The error for a core error.
    pub fn from_core(err: &Error) -> Self {
        match err {
            Error::InvalidInput { field, reason } => {
                OpenAiError::invalid(field.to_string(), format!("'{field}' {reason}"))
            }
            Error::Unauthenticated { reason } => {
                OpenAiError::unauthenticated(format!("Invalid authentication token: {reason}"))
            }
            Error::Forbidden { reason } => OpenAiError::access_denied(reason.to_string()),
            Error::NotFound { kind: "model", id } => OpenAiError::model_not_found(id),
            e if e.is_not_found() => OpenAiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("not_found"),
                e.to_string(),
            ),
            Error::RateLimited { reset, .. } => {
                use maas_core::clock::Clock;
                let wait = reset.as_millis() - maas_core::clock::SystemClock.now().as_millis();
                let secs = u64::try_from(wait.max(0))
                    .unwrap_or(0)
                    .div_ceil(1000)
                    .max(1);
                OpenAiError::rate_limited(err.to_string(), Some(secs))
            }
            Error::QuotaExceeded { message } => OpenAiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("insufficient_quota"),
                message.clone(),
            ),
            Error::Conflict { .. } => OpenAiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("conflict"),
                err.to_string(),
            ),
            Error::Unavailable { .. } => OpenAiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("service_unavailable"),
                err.to_string(),
            ),
            _ => OpenAiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                Some("internal_error"),
                "internal error",
            ),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Envelope {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut res = json_response(self.status, "application/json", &self.body());
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

impl Dialect for OpenAi {
    fn render(err: &Error, _id: &RequestId) -> Response {
        OpenAiError::from_core(err).into_response()
    }

    fn too_large(limit_message: &str, _id: &RequestId) -> Response {
        OpenAiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            limit_message,
        )
        .into_response()
    }

    fn unsupported_media_type(_id: &RequestId) -> Response {
        OpenAiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            Some("unsupported_media_type"),
            "the body must be JSON (Content-Type: application/json)",
        )
        .into_response()
    }
}
