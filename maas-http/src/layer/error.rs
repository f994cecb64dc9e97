//! The gateway's answers when it refuses a request: OpenAI's error shape
//! ([`OpenAiError`]) with the caller's x-ratelimit headers when known.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use maas_core::admission::{LimitKind, RateHeaders};
use maas_core::fairshare::RejectReason;
use maas_core::gateway::Refused;
use maas_core::{Error, Timestamp};

use crate::openai::OpenAiError;

/// A refusal of the gateway, rendered in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayError {
    /// The error body, status and `Retry-After`.
    pub error: OpenAiError,
    /// The caller's x-ratelimit values, when admission got that far, and
    /// the time they were read at.
    pub rate: Option<Box<(RateHeaders, Timestamp)>>,
}

impl GatewayError {
    /// 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        OpenAiError::invalid(param, message).into()
    }

    /// The answer to a core error: 401 for credentials, 403 for access, 404
    /// for unknown models, 429 for key limits, 503 when a store is down.
    pub fn from_core(e: &Error) -> Self {
        OpenAiError::from_core(e).into()
    }

    /// The answer to a refusal at admission, at `now`.
    pub fn refused(r: &Refused, now: Timestamp) -> Self {
        match r {
            Refused::Limit(d) => {
                let which = match d.kind {
                    LimitKind::Requests => "requests per minute",
                    LimitKind::Tokens => "tokens per minute",
                    LimitKind::TenantTokens => "tenant tokens per minute",
                    LimitKind::TenantBudget => "tenant budget",
                    LimitKind::KeyBudget => "API key budget",
                };
                let message = if d.retryable {
                    format!(
                        "Rate limit exceeded: {which} ({} of {} left, {} needed); resets in {} s",
                        d.remaining, d.limit, d.requested, d.retry_after_secs
                    )
                } else {
                    format!(
                        "Rate limit exceeded: the request needs {} but the {which} limit is {}; ask for fewer tokens",
                        d.requested, d.limit
                    )
                };
                let mut error = OpenAiError::rate_limited(message, Some(d.retry_after_secs));
                if matches!(d.kind, LimitKind::TenantBudget | LimitKind::KeyBudget) {
                    error.kind = "insufficient_quota";
                    error.code = Some("insufficient_quota");
                }
                GatewayError {
                    error,
                    rate: Some(Box::new((d.headers, now))),
                }
            }
            Refused::Queue { rejected, headers } => {
                let secs = rejected.retry_after.as_secs().max(1);
                let error = match rejected.reason {
                    RejectReason::QueueFull => {
                        let mut e = OpenAiError::rate_limited(rejected.to_string(), Some(secs));
                        e.code = Some("queue_full");
                        e
                    }
                    RejectReason::QueueTimeout => {
                        let mut e = OpenAiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "server_error",
                            Some("queue_timeout"),
                            rejected.to_string(),
                        );
                        e.retry_after = Some(secs);
                        e
                    }
                };
                GatewayError {
                    error,
                    rate: Some(Box::new((*headers, now))),
                }
            }
            Refused::NoUpstream { model, retry_after } => {
                let mut e = OpenAiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("upstream_unavailable"),
                    format!(
                        "every upstream of model '{model}' is failing; retry after {} s",
                        retry_after.as_secs().max(1)
                    ),
                );
                e.retry_after = Some(retry_after.as_secs().max(1));
                e.into()
            }
        }
    }
}

impl From<OpenAiError> for GatewayError {
    fn from(error: OpenAiError) -> Self {
        GatewayError { error, rate: None }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.error.status.as_u16(), self.error.message)
    }
}

impl std::error::Error for GatewayError {}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut res = self.error.into_response();
        if let Some(rate) = self.rate {
            let (h, now) = *rate;
            insert_rate_headers(res.headers_mut(), &h, now);
        }
        res
    }
}

/// `1s`, `59s`, `6m0s`: OpenAI's way of writing a reset.
fn duration(now: Timestamp, reset: Timestamp) -> String {
    let ms = (reset.as_millis() - now.as_millis()).max(0);
    let secs = (ms + 999) / 1000;
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// The x-ratelimit header names: `[limit, remaining, reset]` of requests,
/// then of tokens.
const RATE_HEADERS: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// `0s` to `59s`, the resets of a per-minute window, written once.
const SECONDS: [&str; 60] = [
    "0s", "1s", "2s", "3s", "4s", "5s", "6s", "7s", "8s", "9s", "10s", "11s", "12s", "13s", "14s",
    "15s", "16s", "17s", "18s", "19s", "20s", "21s", "22s", "23s", "24s", "25s", "26s", "27s",
    "28s", "29s", "30s", "31s", "32s", "33s", "34s", "35s", "36s", "37s", "38s", "39s", "40s",
    "41s", "42s", "43s", "44s", "45s", "46s", "47s", "48s", "49s", "50s", "51s", "52s", "53s",
    "54s", "55s", "56s", "57s", "58s", "59s",
];

/// [`duration`] as a header value (under a minute: no allocation).
fn reset_value(now: Timestamp, reset: Timestamp) -> Option<HeaderValue> {
    let ms = (reset.as_millis() - now.as_millis()).max(0);
    let secs = (ms + 999) / 1000;
    match usize::try_from(secs).ok().and_then(|s| SECONDS.get(s)) {
        Some(s) => Some(HeaderValue::from_static(s)),
        None => HeaderValue::from_maybe_shared(Bytes::from(duration(now, reset))).ok(),
    }
}

/// Adds `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of `h`.
pub fn insert_rate_headers(headers: &mut HeaderMap, h: &RateHeaders, now: Timestamp) {
    headers.reserve(6);
    // The four numbers written into one buffer, each header value split
    // off it (two allocations in all, not one or two per value).
    let mut digits = bytes::BytesMut::with_capacity(4 * 20);
    let mut itoa = itoa::Buffer::new();
    let mut value = |n: u64| {
        digits.extend_from_slice(itoa.format(n).as_bytes());
        HeaderValue::from_maybe_shared(digits.split().freeze()).ok()
    };
    for ([limit, remaining, reset], d) in RATE_HEADERS.into_iter().zip([&h.requests, &h.tokens]) {
        if let Some(v) = value(d.limit) {
            headers.insert(limit, v);
        }
        if let Some(v) = value(d.remaining) {
            headers.insert(remaining, v);
        }
        if let Some(v) = reset_value(now, d.reset) {
            headers.insert(reset, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_read_like_openai() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!(duration(t, t), "0s");
        assert_eq!(duration(t, t.add_millis(1)), "1s");
        assert_eq!(duration(t, t.add_millis(59_000)), "59s");
        assert_eq!(duration(t, t.add_millis(360_000)), "6m0s");
        assert_eq!(duration(t, t.add_millis(-5)), "0s");
        for ms in [
            -5, 0, 1, 999, 1_000, 1_001, 59_000, 59_001, 60_000, 360_000, 86_400_000,
        ] {
            let v = reset_value(t, t.add_millis(ms)).unwrap();
            assert_eq!(v.to_str().unwrap(), duration(t, t.add_millis(ms)), "{ms}");
        }
    }
}
