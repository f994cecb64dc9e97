//! The model catalog: each model's upstream, owner, readiness, the tiers
//! that may use it, its pricing and its response-cache settings.
//!
//! [`ModelService`] keeps models as catalog records (kind [`MODEL_KIND`],
//! id = the model id), audits every change, and serves the reads of the
//! inference path ([`ModelService::get_cached`],
//! [`ModelService::check_access`]) from an in-memory snapshot.
//!
//! # Who may use a model
//!
//! A tier may use a model when both agree ([`Model::usable_by`]):
//! - the tier's [`ModelAccess`] allows the model id, and
//! - the model's `tiers` is empty (no restriction of its own) or names the
//!   tier.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::catalog::{self, SnapshotCell};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::patch::Patch;
use crate::storage::Storage;
use crate::tier::{MAX_TIER_NAME, ModelAccess, Tier};
use crate::validate;

/// The record kind of models.
pub const MODEL_KIND: &str = "model";
/// The longest model id, in bytes.
pub const MAX_MODEL_ID: usize = 128;
/// The longest upstream URL, in bytes.
pub const MAX_URL: usize = 2048;
/// The owner of models created without one.
pub const DEFAULT_OWNER: &str = "maas";
/// The currency of prices that name none.
pub const DEFAULT_CURRENCY: &str = "USD";
const MAX_TEXT: usize = 256;

/// Checks a model id: a label of at most [`MAX_MODEL_ID`] bytes without `/`
/// or whitespace (it is a path segment: `/{model}/v1/chat/completions`).
pub(crate) fn check_model_id(field: &'static str, id: &str) -> Result<()> {
    validate::label(field, id, MAX_MODEL_ID)?;
    if id.contains('/') || id.chars().any(char::is_whitespace) {
        return Err(Error::invalid(field, "must not contain '/' or whitespace"));
    }
    if id == "." || id == ".." {
        return Err(Error::invalid(field, "must not be '.' or '..'"));
    }
    Ok(())
}

/// Checks an upstream URL by hand: `http://`, `https://` or `h2c://`
/// (HTTP/2 over cleartext, prior knowledge, as Caddy names it), a host (name,
/// IPv4 or bracketed IPv6) with an optional port, no credentials, no
/// whitespace or control characters.
pub(crate) fn check_url(field: &'static str, url: &str) -> Result<()> {
    let bad = |why: &'static str| Err(Error::invalid(field, why));
    if url.len() > MAX_URL {
        return bad("must be at most 2048 bytes");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain whitespace or control characters");
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        url.get(8..)
    } else if lower.starts_with("http://") {
        url.get(7..)
    } else if lower.starts_with("h2c://") {
        url.get(6..)
    } else {
        None
    };
    let Some(rest) = rest else {
        return bad("must be an http://, https:// or h2c:// URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return bad("must not contain credentials");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("has an unclosed IPv6 address");
        };
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return bad("has an invalid IPv6 address");
        }
        match after {
            "" => (addr, None),
            p => match p.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None => return bad("has an invalid port"),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("must have a host");
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return bad("has an invalid host");
    }
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return bad("has an invalid port");
        }
        if !matches!(p.parse::<u32>(), Ok(1..=65535)) {
            return bad("has an invalid port");
        }
    }
    Ok(())
}

/// What a model costs, per million tokens, in `currency`.
///
/// Prices are `f64` as they travel in JSON; they must be finite and not
/// negative. Cost reports should round once, at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pricing {
    /// Price of one million input (prompt) tokens.
    pub input_per_million: f64,
    /// Price of one million output (completion) tokens.
    pub output_per_million: f64,
    /// Price of one million cached input tokens (those of
    /// `usage.prompt_tokens_details.cached_tokens`, which are part of the
    /// prompt tokens and billed once, at this price); absent: the input
    /// price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<f64>,
    /// ISO 4217 currency code; default `USD`.
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_currency() -> String {
    DEFAULT_CURRENCY.to_owned()
}

impl Pricing {
    /// A price in [`DEFAULT_CURRENCY`].
    pub fn usd(input_per_million: f64, output_per_million: f64) -> Self {
        Pricing {
            input_per_million,
            output_per_million,
            cached_input_per_million: None,
            currency: default_currency(),
        }
    }

    /// The price of one million cached input tokens.
    pub fn cached_input_price(&self) -> f64 {
        self.cached_input_per_million
            .unwrap_or(self.input_per_million)
    }

    /// The cost of a request of `input` and `output` tokens.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_per_million + output as f64 * self.output_per_million)
            / 1_000_000.0
    }

    fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("pricing.input_per_million", self.input_per_million),
            ("pricing.output_per_million", self.output_per_million),
            (
                "pricing.cached_input_per_million",
                self.cached_input_price(),
            ),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid(field, "must be a number of at least 0"));
            }
        }
        let c = &self.currency;
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::invalid(
                "pricing.currency",
                "must be a 3-letter upper-case currency code",
            ));
        }
        Ok(())
    }
}

/// Response-cache settings of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CacheSettings {
    /// Whether responses are cached.
    #[serde(default)]
    pub enabled: bool,
    /// How long a cached response is served, in seconds (≥ 1 when enabled).
    #[serde(default = "default_cache_ttl")]
    pub ttl_seconds: u64,
    /// The most responses kept (≥ 1 when enabled).
    #[serde(default = "default_cache_entries")]
    pub max_entries: u64,
}

fn default_cache_ttl() -> u64 {
    300
}

fn default_cache_entries() -> u64 {
    1000
}

impl Default for CacheSettings {
    /// Disabled, 300 s, 1000 entries.
    fn default() -> Self {
        CacheSettings {
            enabled: false,
            ttl_seconds: default_cache_ttl(),
            max_entries: default_cache_entries(),
        }
    }
}

impl CacheSettings {
    fn validate(&self) -> Result<()> {
        if self.enabled {
            if self.ttl_seconds == 0 {
                return Err(Error::invalid("cache.ttl_seconds", "must be at least 1"));
            }
            if self.max_entries == 0 {
                return Err(Error::invalid("cache.max_entries", "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// An API a model's upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ModelApi {
    /// OpenAI's (`/v1/chat/completions`, `/v1/completions`,
    /// `/v1/embeddings`); Anthropic's Messages and OpenAI's Responses are
    /// translated to chat completions for it.
    Openai,
    /// Anthropic's Messages (`/v1/messages`), served natively.
    Anthropic,
}

/// What a model's upstream speaks when nothing says: OpenAI's API.
fn openai_only() -> Vec<ModelApi> {
    vec![ModelApi::Openai]
}

/// `api` as given: one API or a list.
fn one_or_more<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<ModelApi>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(ModelApi),
        More(Vec<ModelApi>),
    }
    Ok(match OneOrMore::deserialize(d)? {
        OneOrMore::One(a) => vec![a],
        OneOrMore::More(v) => v,
    })
}

/// [`one_or_more`] of an optional field.
fn maybe_one_or_more<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<ModelApi>>, D::Error> {
    one_or_more(d).map(Some)
}

/// The most upstreams one model may have.
pub const MAX_UPSTREAMS: usize = 64;
/// The most fallbacks one model may name.
pub const MAX_FALLBACKS: usize = 8;
/// The largest upstream weight.
pub const MAX_UPSTREAM_WEIGHT: u32 = 1_000;
/// The largest `max_in_flight` of a model or an upstream.
pub const MAX_MODEL_IN_FLIGHT: u32 = 1_000_000;

/// One server of a model's pool of upstreams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Upstream {
    /// Where requests are sent (`http://`, `https://`, or `h2c://` for an
    /// upstream that speaks HTTP/2 over cleartext), as `upstream_url`.
    pub url: String,
    /// Its share of the requests relative to its siblings (1..=1,000;
    /// default 1).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub weight: u32,
    /// The most requests it serves at once, if it has a limit. When every
    /// upstream of a model has one, their sum is the model's fair-share
    /// capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_in_flight: Option<u32>,
}

fn one() -> u32 {
    1
}

impl Upstream {
    /// The upstream at `url`, weight 1, no limit of its own.
    pub fn new(url: impl Into<String>) -> Self {
        Upstream {
            url: url.into(),
            weight: 1,
            max_in_flight: None,
        }
    }
}

fn check_in_flight(field: &'static str, n: Option<u32>) -> Result<()> {
    match n {
        Some(0) => Err(Error::invalid(field, "must be at least 1")),
        Some(n) if n > MAX_MODEL_IN_FLIGHT => Err(Error::invalid(field, "must be at most 1000000")),
        _ => Ok(()),
    }
}

/// Checks and normalizes a model's pool: `upstreams` wins when given
/// (`upstream_url` must then be absent or its first URL); otherwise
/// `upstream_url` is a pool of one. Afterwards `upstream_url` is the first
/// upstream's URL.
fn normalize_pool(upstream_url: &mut String, upstreams: &mut Vec<Upstream>) -> Result<()> {
    if upstreams.is_empty() {
        if upstream_url.is_empty() {
            return Err(Error::invalid(
                "upstreams",
                "a model needs 'url' (or 'upstream_url') or 'upstreams'",
            ));
        }
        check_url("upstream_url", upstream_url)?;
        upstreams.push(Upstream::new(upstream_url.clone()));
        return Ok(());
    }
    if upstreams.len() > MAX_UPSTREAMS {
        return Err(Error::invalid(
            "upstreams",
            "must list at most 64 upstreams",
        ));
    }
    for (i, u) in upstreams.iter().enumerate() {
        check_url("upstreams.url", &u.url)?;
        if u.weight == 0 || u.weight > MAX_UPSTREAM_WEIGHT {
            return Err(Error::invalid(
                "upstreams.weight",
                "must be between 1 and 1000",
            ));
        }
        check_in_flight("upstreams.max_in_flight", u.max_in_flight)?;
        if upstreams[..i].iter().any(|o| o.url == u.url) {
            return Err(Error::invalid(
                "upstreams.url",
                format!("'{}' is listed twice", u.url),
            ));
        }
    }
    let first = &upstreams[0].url;
    if !upstream_url.is_empty() && upstream_url != first {
        return Err(Error::invalid(
            "upstream_url",
            "give either 'url' or 'upstreams', or a 'url' equal to the first upstream's",
        ));
    }
    upstream_url.clone_from(first);
    Ok(())
}

/// A model of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Unique id, as clients name it (`"model": "…"`, `/{id}/v1/…`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where requests for it are sent (http, https or h2c): the first of
    /// [`Self::upstreams`].
    pub upstream_url: String,
    /// The servers requests are balanced over (at least one; a model stored
    /// before pools existed reads as a pool of its `upstream_url`).
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Its fair-share capacity, if set here (else the sum of its upstreams'
    /// `max_in_flight` when all have one, else the global capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Models to serve the request instead when this one cannot (every
    /// upstream failing, its queue full or timed out), first usable first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// The APIs its upstream speaks (at least one; default OpenAI's).
    #[serde(default = "openai_only", deserialize_with = "one_or_more")]
    pub api: Vec<ModelApi>,
    /// Who owns it (OpenAI's `owned_by`).
    pub owned_by: String,
    /// When it was published (OpenAI's `created`).
    pub created: Timestamp,
    /// Whether it is ready to serve.
    pub ready: bool,
    /// The tiers allowed to use it; empty for every tier whose model access
    /// allows it (see the [module](self) docs).
    pub tiers: Vec<String>,
    /// Its price, if it has one.
    pub pricing: Option<Pricing>,
    /// Response-cache settings.
    pub cache: CacheSettings,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Optimistic-concurrency version, 1 at creation.
    pub version: u64,
}

impl Model {
    /// Whether `tier` may use this model: the tier's model access allows its
    /// id, and its own `tiers` is empty or names the tier.
    pub fn usable_by(&self, tier: &Tier) -> bool {
        tier.models.allows(&self.id) && (self.tiers.is_empty() || self.tiers.contains(&tier.name))
    }

    /// Whether its upstream speaks `api`.
    pub fn speaks(&self, api: ModelApi) -> bool {
        self.api.contains(&api)
    }

    /// Its upstreams: [`Self::upstreams`], or for a record stored before
    /// pools existed, its `upstream_url` alone.
    pub fn pool(&self) -> std::borrow::Cow<'_, [Upstream]> {
        if self.upstreams.is_empty() {
            std::borrow::Cow::Owned(vec![Upstream::new(self.upstream_url.clone())])
        } else {
            std::borrow::Cow::Borrowed(&self.upstreams)
        }
    }

    /// Its fair-share capacity: `max_in_flight` if set, else the sum of its
    /// upstreams' `max_in_flight` when every one has one, else `None` (the
    /// global capacity, as this model's own).
    pub fn capacity(&self) -> Option<usize> {
        if let Some(m) = self.max_in_flight {
            return usize::try_from(m).ok();
        }
        if self.upstreams.is_empty() {
            return None;
        }
        self.upstreams
            .iter()
            .map(|u| u.max_in_flight.and_then(|m| usize::try_from(m).ok()))
            .sum()
    }

    fn validate(&mut self) -> Result<()> {
        check_model_id("id", &self.id)?;
        if self.api.is_empty() {
            return Err(Error::invalid("api", "must name at least one API"));
        }
        let mut seen = Vec::with_capacity(self.api.len());
        self.api.retain(|a| {
            let first = !seen.contains(a);
            seen.push(*a);
            first
        });
        validate::label("name", &self.name, MAX_TEXT)?;
        normalize_pool(&mut self.upstream_url, &mut self.upstreams)?;
        check_in_flight("max_in_flight", self.max_in_flight)?;
        if self.fallbacks.len() > MAX_FALLBACKS {
            return Err(Error::invalid("fallbacks", "must name at most 8 models"));
        }
        for (i, f) in self.fallbacks.iter().enumerate() {
            check_model_id("fallbacks", f)?;
            if *f == self.id {
                return Err(Error::invalid(
                    "fallbacks",
                    "must not name the model itself",
                ));
            }
            if self.fallbacks[..i].contains(f) {
                return Err(Error::invalid("fallbacks", format!("'{f}' is named twice")));
            }
        }
        validate::label("owned_by", &self.owned_by, MAX_TEXT)?;
        self.tiers = validate::labels(
            "tiers",
            std::mem::take(&mut self.tiers),
            MAX_TIER_NAME,
            crate::tier::MAX_TIER_GROUPS,
        )?;
        if let Some(p) = &self.pricing {
            p.validate()?;
        }
        self.cache.validate()
    }
}

/// What to create a model with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewModel {
    /// Unique id (see [`Model::id`]; no `/` or whitespace).
    pub id: String,
    /// Display name; default the id.
    #[serde(default)]
    pub name: Option<String>,
    /// Upstream URL (`http://`, `https://`, or `h2c://` for an upstream
    /// that speaks HTTP/2 over cleartext); `url` in the management API. Required
    /// unless `upstreams` is given (then, if given, its first URL).
    #[serde(default, alias = "url")]
    #[cfg_attr(feature = "openapi", schema(rename = "url"))]
    pub upstream_url: String,
    /// The servers to balance requests over (default: `url` alone).
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Its fair-share capacity (see [`Model::capacity`]).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Models to fall back to, in order (see [`Model::fallbacks`]).
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// The APIs its upstream speaks: `"openai"`, `"anthropic"` or a list of
    /// both; default `openai`.
    #[serde(default = "openai_only", deserialize_with = "one_or_more")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<ModelApi>))]
    pub api: Vec<ModelApi>,
    /// Owner; default [`DEFAULT_OWNER`].
    #[serde(default)]
    pub owned_by: Option<String>,
    /// Publication time; default now.
    #[serde(default)]
    pub created: Option<Timestamp>,
    /// Ready; default true.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Tiers allowed (empty: no restriction of its own).
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Price.
    #[serde(default)]
    pub pricing: Option<Pricing>,
    /// Response cache; default disabled.
    #[serde(default)]
    pub cache: CacheSettings,
}

fn yes() -> bool {
    true
}

impl NewModel {
    /// A ready model `id` served at `upstream_url`, every option at its
    /// default.
    pub fn new(id: impl Into<String>, upstream_url: impl Into<String>) -> Self {
        NewModel {
            id: id.into(),
            name: None,
            upstream_url: upstream_url.into(),
            upstreams: Vec::new(),
            max_in_flight: None,
            fallbacks: Vec::new(),
            api: openai_only(),
            owned_by: None,
            created: None,
            ready: true,
            tiers: Vec::new(),
            pricing: None,
            cache: CacheSettings::default(),
        }
    }
}

/// A partial update of a model; absent fields are kept. The id cannot
/// change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelUpdate {
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New upstream URL: the model becomes a pool of this one upstream
    /// (unless `upstreams` is given too).
    #[serde(default, alias = "url", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(rename = "url"))]
    pub upstream_url: Option<String>,
    /// New upstreams (replaced as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<Upstream>>,
    /// New fair-share capacity, or `null` for none of its own.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u32>))]
    pub max_in_flight: Patch<u32>,
    /// New fallbacks (replaced as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<Vec<String>>,
    /// The APIs its upstream speaks (one or a list; replaced as a whole).
    #[serde(
        default,
        deserialize_with = "maybe_one_or_more",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<ModelApi>>))]
    pub api: Option<Vec<ModelApi>>,
    /// New owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<String>,
    /// New readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// New tiers (replaced as a whole; empty for no restriction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<String>>,
    /// New price, or `null` for none.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Pricing>))]
    pub pricing: Patch<Pricing>,
    /// New cache settings (replaced as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSettings>,
}

/// One model in the OpenAI-compatible list (`GET /v1/models`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelEntry {
    /// Model id.
    pub id: String,
    /// Always `"model"`.
    pub object: String,
    /// Publication time, Unix seconds.
    pub created: i64,
    /// Owner.
    pub owned_by: String,
    /// Whether it is ready.
    pub ready: bool,
    /// Where clients send its requests (`{base}/{id}`).
    pub url: String,
}

/// The OpenAI-compatible model list (`GET /v1/models`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelList {
    /// Always `"list"`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelEntry>,
}

impl ModelList {
    /// The list of `models`, each with the URL `{base_url}/{id}` (a trailing
    /// `/` of `base_url` is dropped).
    pub fn new<'a>(models: impl IntoIterator<Item = &'a Model>, base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        ModelList {
            object: "list".to_owned(),
            data: models
                .into_iter()
                .map(|m| ModelEntry {
                    id: m.id.clone(),
                    object: "model".to_owned(),
                    created: m.created.as_millis().div_euclid(1000),
                    owned_by: m.owned_by.clone(),
                    ready: m.ready,
                    url: format!("{base}/{}", m.id),
                })
                .collect(),
        }
    }
}

/// Models indexed by id, in id order.
#[derive(Debug, Default)]
pub struct ModelIndex {
    sorted: Vec<Arc<Model>>,
    by_id: crate::FastMap<String, usize>,
}

impl ModelIndex {
    /// The index of `models`.
    pub fn new(models: impl IntoIterator<Item = Model>) -> Self {
        let mut sorted: Vec<Arc<Model>> = models.into_iter().map(Arc::new).collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let by_id = sorted
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i))
            .collect();
        ModelIndex { sorted, by_id }
    }

    /// The model `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<Model>> {
        self.by_id.get(id).and_then(|&i| self.sorted.get(i))
    }

    /// Every model, by id.
    pub fn models(&self) -> &[Arc<Model>] {
        &self.sorted
    }

    /// The models `tier` may use, by id.
    pub fn for_tier(&self, tier: &Tier) -> Vec<Arc<Model>> {
        match &tier.models {
            ModelAccess::All => self
                .sorted
                .iter()
                .filter(|m| m.usable_by(tier))
                .cloned()
                .collect(),
            ModelAccess::List(ids) => {
                let mut out: Vec<Arc<Model>> = ids
                    .iter()
                    .filter_map(|id| self.get(id))
                    .filter(|m| m.usable_by(tier))
                    .cloned()
                    .collect();
                out.sort_by(|a, b| a.id.cmp(&b.id));
                out
            }
        }
    }
}

/// Settings of a [`ModelService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelServiceConfig {
    /// How long the in-memory snapshot of the catalog answers reads before it
    /// is read from the store again. This bounds how long a change made on
    /// another node takes to reach this one; changes made through this
    /// service apply on this node at once. Default 30 s.
    pub snapshot_ttl: Duration,
}

impl Default for ModelServiceConfig {
    fn default() -> Self {
        ModelServiceConfig {
            snapshot_ttl: catalog::DEFAULT_SNAPSHOT_TTL,
        }
    }
}

/// Creates, reads, changes and removes models (each change audited), and
/// answers the inference path's catalog reads from memory.
///
/// Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct ModelService {
    inner: Arc<ModelInner>,
}

#[derive(Debug)]
struct ModelInner {
    storage: Storage,
    clock: SharedClock,
    snapshot: SnapshotCell<ModelIndex>,
}

impl ModelService {
    /// A service over `storage` using the system clock.
    pub fn new(storage: Storage) -> Self {
        Self::new_with_clock(storage, Arc::new(SystemClock))
    }

    /// A service over `storage` using `clock`.
    pub fn new_with_clock(storage: Storage, clock: Arc<dyn Clock>) -> Self {
        Self::new_with_config(storage, ModelServiceConfig::default(), clock)
    }

    /// A service with explicit settings, on `clock`.
    pub fn new_with_config(
        storage: Storage,
        config: ModelServiceConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ModelService {
            inner: Arc::new(ModelInner {
                storage,
                clock,
                snapshot: SnapshotCell::new(config.snapshot_ttl),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    async fn load_index(&self) -> Result<ModelIndex> {
        Ok(ModelIndex::new(self.list().await?))
    }

    /// The snapshot of the catalog, reloaded when older than the TTL.
    pub async fn snapshot(&self) -> Result<Arc<ModelIndex>> {
        self.inner
            .snapshot
            .get(self.now(), || self.load_index())
            .await
    }

    async fn refresh(&self) {
        self.inner
            .snapshot
            .refresh(self.now(), || self.load_index())
            .await;
    }

    /// Registers a model. [`Error::Conflict`] if the id is taken.
    pub async fn create(&self, actor: &Actor, new: NewModel) -> Result<Model> {
        let now = self.now();
        let mut model = Model {
            name: new.name.unwrap_or_else(|| new.id.clone()),
            id: new.id,
            upstream_url: new.upstream_url,
            upstreams: new.upstreams,
            max_in_flight: new.max_in_flight,
            fallbacks: new.fallbacks,
            api: new.api,
            owned_by: new.owned_by.unwrap_or_else(|| DEFAULT_OWNER.to_owned()),
            created: new.created.unwrap_or(now),
            ready: new.ready,
            tiers: new.tiers,
            pricing: new.pricing,
            cache: new.cache,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        model.validate()?;
        catalog::create_entry(&*self.inner.storage.records, actor, &model, now).await?;
        self.refresh().await;
        Ok(model)
    }

    /// The model `id`, read from the store.
    pub async fn get(&self, id: &str) -> Result<Model> {
        catalog::get_entry(&*self.inner.storage.records, id).await
    }

    /// The model `id` from the snapshot (no I/O unless it is stale).
    pub async fn get_cached(&self, id: &str) -> Result<Arc<Model>> {
        self.snapshot()
            .await?
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found("model", id))
    }

    /// The model `id` if `tier` may use it, from the snapshot:
    /// [`Error::NotFound`] if there is no such model, [`Error::Forbidden`] if
    /// the tier may not use it.
    pub async fn check_access(&self, tier: &Tier, id: &str) -> Result<Arc<Model>> {
        let model = self.get_cached(id).await?;
        if model.usable_by(tier) {
            Ok(model)
        } else {
            Err(Error::Forbidden {
                reason: format!("tier '{}' may not use model '{id}'", tier.name).into(),
            })
        }
    }

    /// Every model, by id, read from the store.
    pub async fn list(&self) -> Result<Vec<Model>> {
        catalog::list_entries(&*self.inner.storage.records).await
    }

    /// The models `tier` may use, by id, from the snapshot.
    pub async fn list_for_tier(&self, tier: &Tier) -> Result<Vec<Arc<Model>>> {
        Ok(self.snapshot().await?.for_tier(tier))
    }

    /// The OpenAI-compatible list of the models `tier` may use, each with
    /// the URL `{base_url}/{id}`.
    pub async fn openai_list(&self, tier: &Tier, base_url: &str) -> Result<ModelList> {
        let models = self.list_for_tier(tier).await?;
        Ok(ModelList::new(models.iter().map(|m| &**m), base_url))
    }

    async fn modify(
        &self,
        actor: &Actor,
        id: &str,
        action: &str,
        mut change: impl FnMut(&mut Model),
    ) -> Result<Model> {
        let now = self.now();
        let records = &*self.inner.storage.records;
        let after = catalog::update_entry(records, actor, id, action, now, |m: &mut Model| {
            change(m);
            m.updated_at = now;
            m.validate()
        })
        .await?;
        self.refresh().await;
        Ok(after)
    }

    /// Applies `update` to the model `id`; retried on concurrent changes.
    pub async fn update(&self, actor: &Actor, id: &str, update: ModelUpdate) -> Result<Model> {
        self.modify(actor, id, "model.update", |m| {
            if let Some(n) = &update.name {
                m.name = n.clone();
            }
            match (&update.upstream_url, &update.upstreams) {
                (_, Some(list)) => {
                    m.upstreams = list.clone();
                    m.upstream_url = update.upstream_url.clone().unwrap_or_default();
                }
                (Some(u), None) => {
                    m.upstream_url = u.clone();
                    m.upstreams.clear();
                }
                (None, None) => {}
            }
            update.max_in_flight.clone().apply_to(&mut m.max_in_flight);
            if let Some(f) = &update.fallbacks {
                m.fallbacks = f.clone();
            }
            if let Some(a) = &update.api {
                m.api = a.clone();
            }
            if let Some(o) = &update.owned_by {
                m.owned_by = o.clone();
            }
            if let Some(r) = update.ready {
                m.ready = r;
            }
            if let Some(t) = &update.tiers {
                m.tiers = t.clone();
            }
            update.pricing.clone().apply_to(&mut m.pricing);
            if let Some(c) = update.cache {
                m.cache = c;
            }
        })
        .await
    }

    /// Replaces the response-cache settings of the model `id`.
    pub async fn set_cache(&self, actor: &Actor, id: &str, cache: CacheSettings) -> Result<Model> {
        self.modify(actor, id, "model.cache", |m| m.cache = cache)
            .await
    }

    /// Removes the model `id`.
    pub async fn delete(&self, actor: &Actor, id: &str) -> Result<()> {
        catalog::delete_entry::<Model>(&*self.inner.storage.records, actor, id, self.now()).await?;
        self.refresh().await;
        Ok(())
    }
}

impl catalog::Entry for Model {
    const KIND: &'static str = MODEL_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn model(id: &str, tiers: &[&str]) -> Model {
        Model {
            id: id.into(),
            name: id.into(),
            upstream_url: "http://up".into(),
            upstreams: Vec::new(),
            max_in_flight: None,
            fallbacks: Vec::new(),
            api: openai_only(),
            owned_by: "o".into(),
            created: Timestamp::from_millis(1_672_531_200_999),
            ready: true,
            tiers: tiers.iter().map(|t| (*t).to_owned()).collect(),
            pricing: None,
            cache: CacheSettings::default(),
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
            version: 1,
        }
    }

    fn tier(name: &str, models: ModelAccess) -> Tier {
        Tier {
            name: name.into(),
            level: 0,
            groups: vec![],
            requests_per_minute: 1,
            tokens_per_minute: 1,
            max_tokens_per_request: None,
            models,
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
            version: 1,
        }
    }

    #[test]
    fn models_per_tier() {
        let index = ModelIndex::new(vec![
            model("c-open", &[]),
            model("a-premium", &["premium"]),
            model("b-both", &["free", "premium"]),
        ]);
        let ids =
            |t: &Tier| -> Vec<String> { index.for_tier(t).iter().map(|m| m.id.clone()).collect() };
        assert_eq!(ids(&tier("free", ModelAccess::All)), ["b-both", "c-open"]);
        assert_eq!(
            ids(&tier("premium", ModelAccess::All)),
            ["a-premium", "b-both", "c-open"]
        );
        assert_eq!(ids(&tier("other", ModelAccess::All)), ["c-open"]);
        let listed = ModelAccess::List(vec!["c-open".into(), "a-premium".into(), "zzz".into()]);
        assert_eq!(
            ids(&tier("premium", listed.clone())),
            ["a-premium", "c-open"]
        );
        assert_eq!(ids(&tier("free", listed)), ["c-open"]);
        assert!(ids(&tier("premium", ModelAccess::List(vec![]))).is_empty());
    }

    #[test]
    fn openai_list_matches_the_maas_api() {
        let m = model("llama-2-7b-chat", &[]);
        let list = ModelList::new([&m], "http://gw.example/");
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "object": "list",
                "data": [{
                    "id": "llama-2-7b-chat",
                    "object": "model",
                    "created": 1_672_531_200,
                    "owned_by": "o",
                    "ready": true,
                    "url": "http://gw.example/llama-2-7b-chat"
                }]
            })
        );
    }

    #[test]
    fn model_ids() {
        for ok in ["llama-2-7b-chat", "qwen3", "a.b_c:d"] {
            assert!(check_model_id("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "a\tb", "..", &"x".repeat(129)] {
            assert!(check_model_id("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        for ok in [
            "http://llama.ns.svc.cluster.local",
            "https://api.example.com/v1",
            "HTTPS://Example.com:8443/x?y#z",
            "http://10.0.0.1:8000",
            "http://[::1]:8080/",
            "http://under_score",
            "h2c://10.0.0.2:8000/v1",
            "H2C://model-server",
        ] {
            assert!(check_url("u", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://x",
            "h2://x",
            "h2c://",
            "h2c://user@x",
            "http://",
            "http:///path",
            "http://a b",
            "http://user:pw@host",
            "http://host:",
            "http://host:0",
            "http://host:65536",
            "http://host:80x",
            "http://[::1",
            "http://[zz]",
            "http://[::1]x",
            "http://ho$t",
            "localhost:8080",
        ] {
            assert!(check_url("u", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let field = |m: &mut Model| match m.validate() {
            Err(Error::InvalidInput { field, .. }) => field.into_owned(),
            other => panic!("{other:?}"),
        };
        let mut m = model("a/b", &[]);
        assert_eq!(field(&mut m), "id");
        let mut m = model("a", &[]);
        m.upstream_url = "nope".into();
        assert_eq!(field(&mut m), "upstream_url");
        let mut m = model("a", &[""]);
        assert_eq!(field(&mut m), "tiers");
        let mut m = model("a", &[]);
        m.pricing = Some(Pricing::usd(-1.0, 0.0));
        assert_eq!(field(&mut m), "pricing.input_per_million");
        m.pricing = Some(Pricing::usd(0.0, f64::NAN));
        assert_eq!(field(&mut m), "pricing.output_per_million");
        m.pricing = Some(Pricing {
            currency: "usd".into(),
            ..Pricing::usd(1.0, 2.0)
        });
        assert_eq!(field(&mut m), "pricing.currency");
        m.pricing = None;
        m.cache = CacheSettings {
            enabled: true,
            ttl_seconds: 0,
            max_entries: 1,
        };
        assert_eq!(field(&mut m), "cache.ttl_seconds");
        m.cache.enabled = false;
        m.validate().unwrap();
        assert!((Pricing::usd(1.0, 2.0).cost(1_000_000, 500_000) - 2.0).abs() < 1e-9);
        let p: Pricing =
            serde_json::from_str(r#"{"input_per_million":1.5,"output_per_million":2}"#).unwrap();
        assert_eq!(p.currency, "USD");
    }
}

#[cfg(test)]
mod api_tests {
    use super::*;

    #[test]
    fn api_is_one_or_a_list_and_openai_by_default() {
        let m: NewModel = serde_json::from_value(serde_json::json!({"id": "m", "url": "http://u"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.api, [ModelApi::Openai]);
        let m: NewModel = serde_json::from_value(
            serde_json::json!({"id": "m", "url": "http://u", "api": "anthropic"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.api, [ModelApi::Anthropic]);
        let u: ModelUpdate =
            serde_json::from_value(serde_json::json!({"api": ["openai", "anthropic"]}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.api, Some(vec![ModelApi::Openai, ModelApi::Anthropic]));
        assert_eq!(
            serde_json::from_value::<ModelUpdate>(serde_json::json!({}))
                .map(|u| u.api)
                .ok(),
            Some(None)
        );
        assert!(
            serde_json::from_value::<NewModel>(
                serde_json::json!({"id": "m", "url": "http://u", "api": "grpc"})
            )
            .is_err()
        );
    }

    use super::tests::model;

    #[test]
    fn a_pool_is_normalized_and_checked() {
        let mut m = model("m", &[]);
        m.validate().unwrap();
        assert_eq!(m.upstreams, vec![Upstream::new("http://up")]);
        assert_eq!(m.capacity(), None);

        let mut m = model("m", &[]);
        m.upstream_url = String::new();
        m.upstreams = vec![
            Upstream {
                url: "http://a".into(),
                weight: 2,
                max_in_flight: Some(3),
            },
            Upstream {
                url: "http://b".into(),
                weight: 1,
                max_in_flight: Some(5),
            },
        ];
        m.validate().unwrap();
        assert_eq!(m.upstream_url, "http://a", "the first upstream");
        assert_eq!(m.capacity(), Some(8), "the sum of the limits");
        m.max_in_flight = Some(4);
        assert_eq!(m.capacity(), Some(4), "the model's own wins");
        m.max_in_flight = None;
        m.upstreams[1].max_in_flight = None;
        assert_eq!(m.capacity(), None, "one without a limit: global");

        let bad = |change: &dyn Fn(&mut Model), field: &str| {
            let mut m = model("m", &[]);
            m.upstreams = vec![Upstream::new("http://up"), Upstream::new("http://b")];
            change(&mut m);
            match m.validate() {
                Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        };
        bad(&|m| m.upstreams[1].url = "ftp://x".into(), "upstreams.url");
        bad(
            &|m| m.upstreams[1].url = "http://up".into(),
            "upstreams.url",
        );
        bad(&|m| m.upstreams[1].weight = 0, "upstreams.weight");
        bad(&|m| m.upstreams[1].weight = 1001, "upstreams.weight");
        bad(
            &|m| m.upstreams[1].max_in_flight = Some(0),
            "upstreams.max_in_flight",
        );
        bad(&|m| m.upstream_url = "http://other".into(), "upstream_url");
        bad(
            &|m| {
                m.upstreams.clear();
                m.upstream_url.clear();
            },
            "upstreams",
        );
        bad(&|m| m.max_in_flight = Some(0), "max_in_flight");
        bad(&|m| m.fallbacks = vec!["m".into()], "fallbacks");
        bad(&|m| m.fallbacks = vec!["a".into(), "a".into()], "fallbacks");
        bad(&|m| m.fallbacks = vec!["a/b".into()], "fallbacks");
        bad(
            &|m| m.upstreams = vec![Upstream::new("http://up"); 65],
            "upstreams",
        );
    }
}
