//! RFC 9457 problem details, the management API's error dialect:
//! `{type, title, status, detail, instance, errors[]}` as
//! `application/problem+json`; validation problems list each field at
//! fault with a JSON-pointer location.

use axum::http::StatusCode;
use axum::response::Response;
use maas_core::Error;
use serde_json::json;

use crate::common::{Dialect, RequestId, json_response};

/// The content type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The management API's error dialect.
#[derive(Debug, Clone, Copy)]
pub struct Problem;

fn pointer(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 1);
    for part in field.split('.') {
        out.push('/');
        out.push_str(&part.replace('~', "~0").replace('/', "~1"));
    }
    out
}

/// The problem response of `status` (with `slug` naming its type).
pub(super) fn problem(
    status: StatusCode,
    slug: &str,
    detail: &str,
    id: &RequestId,
    errors: Vec<serde_json::Value>,
) -> Response {
    let mut body = json!({
        "type": format!("https://maas.dev/problems/{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "instance": format!("urn:maas:request:{}", id.as_str()),
    });
    if !errors.is_empty() {
        body["errors"] = json!(errors);
    }
    json_response(status, PROBLEM_JSON, &body)
}

impl Dialect for Problem {
    fn render(err: &Error, id: &RequestId) -> Response {
        match err {
            Error::InvalidInput { field, reason } => problem(
                StatusCode::BAD_REQUEST,
                "invalid-input",
                &format!("{field} {reason}"),
                id,
                vec![json!({
                    "code": "invalid",
                    "message": reason,
                    "location": pointer(field),
                })],
            ),
            e if e.is_not_found() => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                &e.to_string(),
                id,
                vec![],
            ),
            Error::Conflict { .. } => problem(
                StatusCode::CONFLICT,
                "conflict",
                &err.to_string(),
                id,
                vec![],
            ),
            Error::Unauthenticated { .. } => problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin token is required",
                id,
                vec![],
            ),
            Error::Forbidden { reason } => {
                problem(StatusCode::FORBIDDEN, "forbidden", reason, id, vec![])
            }
            Error::RateLimited { .. } | Error::QuotaExceeded { .. } => problem(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                &err.to_string(),
                id,
                vec![],
            ),
            Error::Unavailable { .. } => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &err.to_string(),
                id,
                vec![],
            ),
            _ => {
                tracing::error!(request_id = %id.as_str(), error = %err, "request failed");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal server error",
                    id,
                    vec![],
                )
            }
        }
    }

    fn too_large(limit_message: &str, id: &RequestId) -> Response {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            limit_message,
            id,
            vec![],
        )
    }

    fn unsupported_media_type(id: &RequestId) -> Response {
        problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the body must be JSON (Content-Type: application/json)",
            id,
            vec![],
        )
    }
}

/// Renders `err` as a problem.
pub(super) fn render(err: &Error, id: &RequestId) -> Response {
    Problem::render(err, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_json_pointers() {
        assert_eq!(pointer("weight"), "/weight");
        assert_eq!(pointer("pricing.currency"), "/pricing/currency");
        assert_eq!(pointer("a/b~c"), "/a~1b~0c");
    }
}
