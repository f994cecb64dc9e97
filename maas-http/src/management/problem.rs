//! RFC 9457 problem details, the management API's error dialect:
//! `{type, title, status, detail, instance, errors[]}` as
//! `application/problem+json`; validation problems list each field at
//! fault with a JSON-pointer location.

use axum::http::StatusCode;
use axum::response::Response;
use maas_core::Error;
use serde::Serialize;
use utoipa::ToSchema;

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

/// An RFC 9457 problem.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ProblemDetails {
    /// A URI naming the kind of problem
    /// (`https://maas.dev/problems/{slug}`).
    #[serde(rename = "type")]
    #[schema(example = "https://maas.dev/problems/invalid-input")]
    pub kind: String,
    /// The HTTP status' reason phrase.
    #[schema(example = "Bad Request")]
    pub title: String,
    /// The HTTP status.
    #[schema(example = 400)]
    pub status: u16,
    /// What happened.
    pub detail: String,
    /// The request (`urn:maas:request:{x-request-id}`).
    pub instance: String,
    /// The fields at fault, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<FieldProblem>,
}

/// A field at fault in a validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldProblem {
    /// `invalid`.
    pub code: String,
    /// What is wrong with it.
    pub message: String,
    /// A JSON pointer to the field (`/pricing/currency`), or the
    /// parameter's name (`/limit`).
    #[schema(example = "/weight")]
    pub location: String,
}

/// The problem response of `status` (with `slug` naming its type).
pub(super) fn problem(
    status: StatusCode,
    slug: &str,
    detail: &str,
    id: &RequestId,
    errors: Vec<FieldProblem>,
) -> Response {
    let body = ProblemDetails {
        kind: format!("https://maas.dev/problems/{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.to_owned(),
        instance: format!("urn:maas:request:{}", id.as_str()),
        errors,
    };
    let body = serde_json::to_value(body).unwrap_or_default();
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
                vec![FieldProblem {
                    code: "invalid".to_owned(),
                    message: reason.to_string(),
                    location: pointer(field),
                }],
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
pub(crate) fn render(err: &Error, id: &RequestId) -> Response {
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
