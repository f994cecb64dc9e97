//! [`MaasService`]: the per-request path around an inner inference service.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::RequestPartsExt;
use axum::body::Body;
use axum::extract::RawPathParams;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::Body as HttpBody;
use http_body_util::LengthLimitError;
use maas_core::gateway::{
    ACCESS_DENIED, Admission, Admitted, Completion, Gateway, InferenceRequest,
};
use maas_core::model::{Model, ModelApi};
use tower::{BoxError, Service};

use super::body::Metered;
use super::error::{GatewayError, insert_rate_headers};
use super::future::ResponseFuture;
use super::layer::LayerConfig;
use super::request::{Endpoint, inspect_read, read, read_whole, rewrite};
use crate::metrics::{Meters, ModelMeters};
use crate::openai::OpenAiError;

/// Marks responses of models with a response cache: `hit` or `miss`.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-maas-cache");

/// Names the model that served an admitted request: the one asked for, or
/// the fallback that served it instead.
pub const SERVED_MODEL_HEADER: HeaderName = HeaderName::from_static("x-maas-served-model");

fn served_model(headers: &mut axum::http::HeaderMap, model: &Model) {
    if let Ok(v) = HeaderValue::from_str(&model.id) {
        headers.insert(SERVED_MODEL_HEADER, v);
    }
}

/// The model an admitted request is for — the fallback, when one serves it
/// — in the request extensions the inner service sees: forward to an
/// upstream of its pool (`Gateway::upstreams().pool(&model).pick()`, as the
/// gateway router does), or to its first one, `upstream_url`.
#[derive(Debug, Clone)]
pub struct AdmittedModel(pub Arc<Model>);

/// The path to call on the model's upstream, in the request extensions
/// the inner service sees when it is not the request's own (a Messages
/// request forwarded natively: `/v1/messages`).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamPath(pub &'static str);

/// Marks an answer that is already in the dialect its client asked for (a
/// Messages answer of an upstream that speaks Anthropic's API).
#[derive(Debug, Clone, Copy)]
pub struct NativeAnswer;

/// The service of [`MaasLayer`](super::MaasLayer).
#[derive(Debug, Clone)]
pub struct MaasService<S> {
    inner: S,
    gateway: Gateway,
    config: LayerConfig,
    meters: Meters,
    /// Where a model named in the path comes from: axum's path parameters
    /// (`{model}` of the route), or, for the gateway's own routes served
    /// without axum's router, the path's shape (`/{model}/v1/...`).
    models_in_path: bool,
}

impl<S> MaasService<S> {
    pub(crate) fn new(inner: S, gateway: Gateway, config: LayerConfig, meters: Meters) -> Self {
        MaasService {
            inner,
            gateway,
            config,
            meters,
            models_in_path: false,
        }
    }

    /// The service reading the model of `/{model}/v1/...` from the path
    /// itself (no router put it in the path parameters).
    pub(crate) fn models_in_path(mut self) -> Self {
        self.models_in_path = true;
        self
    }
}

impl<S, B> Service<Request<Body>> for MaasService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The ready service serves this request; the clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let gateway = self.gateway.clone();
        let config = self.config;
        let meters = self.meters.clone();
        let models_in_path = self.models_in_path;
        ResponseFuture::new(Box::pin(serve(
            gateway,
            config,
            meters,
            models_in_path,
            inner,
            req,
        )))
    }
}

/// What admission decided.
enum Step {
    /// Forward this body; complete `admitted` when the answer ends.
    Forward {
        admitted: Box<Admitted>,
        body: Vec<u8>,
        stream: bool,
        strip_usage: bool,
        /// Anthropic's Messages forwarded as they are.
        native: bool,
    },
    /// Answered already (from the cache).
    Answered(Response<Body>),
}

fn count_request(gateway: &Gateway, model: &ModelMeters, status: StatusCode) {
    gateway.record_answer(status.as_u16());
    model.answered(status.as_u16());
}

async fn serve<S, B>(
    gateway: Gateway,
    config: LayerConfig,
    meters: Meters,
    models_in_path: bool,
    mut inner: S,
    req: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let mut model_label = String::new();
    let step = match admit(
        &gateway,
        config,
        &meters,
        models_in_path,
        &mut parts,
        body,
        &mut model_label,
    )
    .await
    {
        Ok(step) => step,
        Err(e) => {
            let res = e.into_response();
            count_request(&gateway, &meters.model(&model_label), res.status());
            return Ok(res);
        }
    };
    let (admitted, body, stream, strip_usage, native) = match step {
        Step::Answered(res) => {
            count_request(&gateway, &meters.model(&model_label), res.status());
            return Ok(res);
        }
        Step::Forward {
            admitted,
            body,
            stream,
            strip_usage,
            native,
        } => (admitted, body, stream, strip_usage, native),
    };
    parts
        .extensions
        .insert(AdmittedModel(Arc::clone(admitted.model())));
    if native {
        parts.extensions.insert(UpstreamPath("/v1/messages"));
    }
    // The caller's credential is for maas, not for the upstream.
    parts.headers.remove(AUTHORIZATION);
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let res = match inner
        .call(Request::from_parts(parts, Body::from(body)))
        .await
    {
        Ok(res) => res,
        Err(e) => {
            let gw = admitted.gateway().clone();
            let _ = admitted.complete(Completion::failed()).await;
            meters.load().set(gw.fair_share().counts());
            return Err(e);
        }
    };
    let (mut rp, rb) = res.into_parts();
    insert_rate_headers(&mut rp.headers, admitted.headers(), gateway.now());
    let model_meters = meters.model(&admitted.model().id);
    if let Some(v) = &model_meters.served {
        rp.headers.insert(SERVED_MODEL_HEADER, v.clone());
    }
    count_request(&gateway, &model_meters, rp.status);
    if !rp.status.is_success() {
        // The upstream (or the inner service) refused or failed: nothing
        // was produced, nothing is charged.
        let _ = admitted.complete(Completion::failed()).await;
        model_meters.load.set(gateway.fair_share().counts());
        return Ok(Response::from_parts(rp, Body::new(rb)));
    }
    if admitted.cacheable() {
        rp.headers
            .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
    }
    let is_sse = rp
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let body = Body::new(rb);
    let metered = if is_sse || stream {
        Metered::sse(body, admitted, strip_usage, model_meters)
    } else {
        Metered::json(body, admitted, model_meters)
    };
    let metered = if native {
        rp.extensions.insert(NativeAnswer);
        metered.anthropic()
    } else {
        metered
    };
    Ok(Response::from_parts(rp, Body::new(metered)))
}

/// Authenticates, reads the body, admits.
async fn admit(
    gateway: &Gateway,
    config: LayerConfig,
    meters: &Meters,
    models_in_path: bool,
    parts: &mut Parts,
    body: Body,
    model_label: &mut String,
) -> Result<Step, GatewayError> {
    let Some(credential) = crate::common::bearer(parts) else {
        return Err(OpenAiError::unauthenticated("Invalid authentication token").into());
    };
    let caller = gateway
        .authenticate(credential)
        .await
        .map_err(|e| GatewayError::from_core(&e))?;
    let bytes = match read_whole(body, config.body_limit).await {
        Ok(b) => b,
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(OpenAiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                format!("the body is larger than {} bytes", config.body_limit),
            )
            .into());
        }
        Err(e) => {
            return Err(GatewayError::invalid(
                "body",
                format!("cannot read the body: {e}"),
            ));
        }
    };
    let endpoint = Endpoint::of_path(parts.uri.path());
    // One borrowed pass where the body is forwarded as sent; a JSON object
    // only where it is translated.
    let body = read(&bytes, endpoint)?;
    let path_model = if models_in_path {
        crate::gateway::model_in_path(parts.uri.path())
    } else {
        parts.extract::<RawPathParams>().await.ok().and_then(|p| {
            p.iter()
                .find(|(k, _)| *k == "model")
                .map(|(_, v)| v.to_owned())
        })
    };
    // Which API the model's upstream speaks decides how the request is read:
    // Messages go natively to an upstream that speaks Anthropic's API, and
    // are translated for one that speaks OpenAI's.
    let named = path_model.as_deref().or_else(|| body.model());
    let catalog = match named {
        Some(n) => gateway.services().models.get_cached(n).await.ok(),
        None => None,
    };
    let native = endpoint == Endpoint::Messages
        && catalog
            .as_ref()
            .is_some_and(|m| m.speaks(ModelApi::Anthropic));
    if !native
        && let Some(m) = &catalog
        && !m.speaks(ModelApi::Openai)
    {
        return Err(GatewayError::invalid(
            "model",
            format!(
                "model '{}' speaks only Anthropic's Messages API: call /v1/messages",
                m.id
            ),
        ));
    }
    let inspected = inspect_read(body, endpoint, native)?;
    let model: Cow<'_, str> = match (path_model, inspected.model.clone()) {
        (Some(p), Some(b)) if p != *b => {
            return Err(GatewayError::invalid(
                "model",
                format!("the body names model '{b}' but the URL is model '{p}'"),
            ));
        }
        (Some(m), _) => Cow::Owned(m),
        (None, Some(m)) => m,
        (None, None) => return Err(GatewayError::invalid("model", "'model' is required")),
    };
    let cacheable = !inspected.stream && catalog.as_ref().is_some_and(|m| m.cache.enabled);
    let ask = InferenceRequest {
        model: &model,
        prompt_tokens: inspected.prompt_tokens,
        max_tokens: inspected.max_tokens,
        cache_key: if cacheable {
            inspected.cache_key()
        } else {
            None
        },
        api: if native {
            ModelApi::Anthropic
        } else {
            ModelApi::Openai
        },
    };
    let result = gateway.admit(&caller, &ask).await;
    // Metrics are labelled with catalog models only (a model name from the
    // body that does not exist must not become a series of its own), the
    // one that served.
    match &result {
        Err(e) if e.is_not_found() => {}
        // Labelled by the admitted model itself once answered (no copy).
        Ok(Ok(Admission::Admitted(_))) => {}
        Ok(Ok(Admission::Cached(hit))) => model_label.clone_from(&hit.model.id),
        _ => model.as_ref().clone_into(model_label),
    }
    let admission = match result {
        Ok(Ok(a)) => a,
        Ok(Err(refused)) => return Err(GatewayError::refused(&refused, gateway.now())),
        Err(maas_core::Error::Forbidden { .. }) => {
            return Err(OpenAiError::access_denied(ACCESS_DENIED).into());
        }
        Err(e) => return Err(GatewayError::from_core(&e)),
    };
    match admission {
        Admission::Cached(hit) => {
            let mut res = (
                [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                Bytes::copy_from_slice(&hit.body),
            )
                .into_response();
            insert_rate_headers(res.headers_mut(), &hit.headers, gateway.now());
            res.headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static("hit"));
            served_model(res.headers_mut(), &hit.model);
            if inspected.native {
                // Cached as the upstream answered: in Anthropic's shape.
                res.extensions_mut().insert(NativeAnswer);
            }
            Ok(Step::Answered(res))
        }
        Admission::Admitted(admitted) => {
            let load = meters.load();
            load.waited(admitted.queue_wait().as_secs_f64());
            load.set(gateway.fair_share().counts());
            let stream = inspected.stream;
            let strip_usage = stream && !inspected.wants_usage;
            let native = inspected.native;
            // A fallback is asked for by its own id.
            let body = rewrite(
                inspected,
                &admitted.model().id,
                admitted.max_output_tokens(),
            );
            Ok(Step::Forward {
                admitted,
                body,
                stream,
                strip_usage,
                native,
            })
        }
    }
}
