//! The tower layer that puts maas in front of an OpenAI-compatible
//! inference service: [`MaasLayer`].
//!
//! Each request goes through [`Gateway`](maas_core::Gateway)'s path:
//!
//! 1. the bearer credential (maas token, identity token or API key) is
//!    authenticated and the caller's tier resolved (401 `invalid_api_key`,
//!    403 when no tier maps the caller's groups);
//! 2. the body (at most [`LayerConfig::body_limit`], else 413) is read: the
//!    model comes from a `{model}` path parameter or the body's `model`;
//!    the prompt is estimated;
//! 3. the model must exist (404 `model_not_found`) and be in the tier (403
//!    `access_denied`); the request's tokens are reserved against every
//!    limit (429 `rate_limit_exceeded` with `Retry-After`, or
//!    `insufficient_quota` for budgets); a repeated non-streaming request to
//!    a model with a response cache is answered from it (`x-maas-cache:
//!    hit`); otherwise the request waits for a fair-share slot of its model
//!    (429 `queue_full`, 503 `queue_timeout`); a model that cannot serve
//!    (every upstream ejected, its queue full or timed out) hands the
//!    request to its first usable fallback, which answers in its place
//!    (`x-maas-served-model` names the model that served, on every admitted
//!    answer);
//! 4. the inner service gets the request with the output capped at what was
//!    reserved (`max_tokens`), streams asked to report usage
//!    (`stream_options.include_usage`), the caller's `Authorization` removed,
//!    and an [`AdmittedModel`] extension naming the model (its upstream);
//! 5. the answer is passed back frame by frame with `x-ratelimit-*`
//!    headers; its tokens are counted as they pass (the usage chunk the
//!    client did not ask for is removed); when it ends the usage is
//!    recorded and the reservation reconciled, and if the client goes away
//!    first the request is completed as cancelled with what was counted.
//!    An answer that is not 2xx gives everything back.
//!
//! Errors are in OpenAI's shape ([`GatewayError`]).

mod body;
mod error;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod peek;
mod request;
mod scan;
mod service;

pub(crate) use body::event_end;
pub use error::{GatewayError, insert_rate_headers};
pub use future::ResponseFuture;
pub use layer::{DEFAULT_BODY_LIMIT, LayerConfig, MaasLayer};
pub use request::Endpoint;
pub(crate) use request::read_whole;

/// The model and the estimated input tokens of a Messages request (for
/// `count_tokens`; `native`: for an upstream that speaks Anthropic's API),
/// or why it cannot be served.
pub(crate) fn inspect_messages(
    body: &serde_json::Value,
    native: bool,
) -> Result<(Option<String>, u64), GatewayError> {
    let serde_json::Value::Object(map) = body else {
        return Err(GatewayError::invalid(
            "body",
            "the body must be a JSON object",
        ));
    };
    let i = if native {
        request::inspect_native(map.clone())?
    } else {
        request::inspect_object(map.clone(), Endpoint::Messages)?
    };
    Ok((i.model.map(std::borrow::Cow::into_owned), i.prompt_tokens))
}
pub use service::{
    AdmittedModel, CACHE_HEADER, MaasService, NativeAnswer, SERVED_MODEL_HEADER, UpstreamPath,
};
