//! [`JwksAuthenticator`]: JWTs of an external OIDC issuer, verified with the
//! keys of its JWKS document.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::{Authenticator, Identity};
use crate::catalog::millis;
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::token::TokenRejection;
use crate::token::jwt::{self, Audience, Expect, Registered, VerifyKey};

/// The largest JWKS document read.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// Where the JWKS document comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A file, read again at every refresh (e.g. a mounted secret).
    File(PathBuf),
    /// An `http(s)` URL, fetched at every refresh (feature `jwks-url`).
    Url(String),
    /// A fixed document (tests, air-gapped deployments).
    Inline(String),
}

/// How a [`JwksAuthenticator`] trusts its issuer.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// Where the keys come from.
    pub source: JwksSource,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The audience every token's `aud` must include.
    pub audience: String,
    /// How long fetched keys are used before fetching again. Default 10
    /// minutes. A token with an unknown `kid` fetches sooner, at most once
    /// per [`Self::min_refresh`].
    pub refresh: Duration,
    /// The least time between two fetches. Default 30 seconds.
    pub min_refresh: Duration,
    /// Clock skew tolerated on `exp` and `nbf`. Default 30 seconds.
    pub leeway: Duration,
    /// The claim holding the user name. Default `"sub"`.
    pub user_claim: String,
    /// The claim holding the groups (a list of strings). Default `"groups"`.
    pub groups_claim: String,
}

impl JwksConfig {
    /// The configuration with defaults for `source`, `issuer` and `audience`.
    pub fn new(source: JwksSource, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        JwksConfig {
            source,
            issuer: issuer.into(),
            audience: audience.into(),
            refresh: Duration::from_secs(600),
            min_refresh: Duration::from_secs(30),
            leeway: Duration::from_secs(30),
            user_claim: "sub".into(),
            groups_claim: "groups".into(),
        }
    }
}

struct Inner {
    config: JwksConfig,
    clock: SharedClock,
    keys: RwLock<Arc<HashMap<String, VerifyKey>>>,
    fetched_at: AtomicI64,
    #[cfg(feature = "jwks-url")]
    http: reqwest::Client,
}

/// Verifies JWTs of an external issuer (RS256, ES256 or EdDSA) with the keys
/// of its JWKS document, checking issuer, audience and time, and maps them to
/// an [`Identity`] (user and groups from configurable claims).
///
/// Each key's algorithm is pinned when the document is read (from its `alg`,
/// else from its type and curve); keys of other algorithms, encryption keys
/// and keys without `kid` are ignored. If a refresh fails, the keys already
/// held stay in use.
#[derive(Clone)]
pub struct JwksAuthenticator {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwksAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksAuthenticator")
            .field("issuer", &self.inner.config.issuer)
            .field("source", &self.inner.config.source)
            .field("keys", &self.keys().len())
            .finish()
    }
}

impl JwksAuthenticator {
    /// Loads the keys once (failing if they cannot be read) with the system
    /// clock.
    pub async fn new(config: JwksConfig) -> Result<Self> {
        Self::new_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`new`](Self::new), with `clock`.
    pub async fn new_with_clock(config: JwksConfig, clock: SharedClock) -> Result<Self> {
        if config.issuer.is_empty() {
            return Err(Error::invalid("issuer", "must not be empty"));
        }
        if config.audience.is_empty() {
            return Err(Error::invalid("audience", "must not be empty"));
        }
        let a = JwksAuthenticator {
            inner: Arc::new(Inner {
                config,
                clock,
                keys: RwLock::new(Arc::new(HashMap::new())),
                fetched_at: AtomicI64::new(i64::MIN),
                #[cfg(feature = "jwks-url")]
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| Error::internal(format!("building the JWKS client: {e}")))?,
            }),
        };
        a.refresh().await?;
        Ok(a)
    }

    fn keys(&self) -> Arc<HashMap<String, VerifyKey>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The kids of the keys in use, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.keys().keys().cloned().collect();
        v.sort();
        v
    }

    /// Fetches and parses the document now, replacing the keys in use.
    pub async fn refresh(&self) -> Result<()> {
        let now = self.inner.clock.now().as_millis();
        self.inner.fetched_at.store(now, Ordering::Relaxed);
        let text = self.fetch().await?;
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| Error::invalid("jwks", format!("not a JWKS document: {e}")))?;
        let keys = parse_keys(&set);
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    async fn fetch(&self) -> Result<String> {
        match &self.inner.config.source {
            JwksSource::Inline(s) => Ok(s.clone()),
            JwksSource::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path))
                    .await
                    .map_err(|e| Error::internal(format!("reading the JWKS file: {e}")))?
            }
            JwksSource::Url(url) => self.fetch_url(url).await,
        }
    }

    #[cfg(feature = "jwks-url")]
    async fn fetch_url(&self, url: &str) -> Result<String> {
        let unavailable = |e: reqwest::Error| {
            Error::unavailable(format!("fetching the JWKS document {url}: {e}"), true)
        };
        let mut resp = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(unavailable)?
            .error_for_status()
            .map_err(unavailable)?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unavailable)? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_JWKS_BYTES {
                return Err(Error::unavailable(
                    format!("the JWKS document {url} is larger than {MAX_JWKS_BYTES} bytes"),
                    false,
                ));
            }
        }
        String::from_utf8(body)
            .map_err(|_| Error::unavailable(format!("the JWKS document {url} is not UTF-8"), false))
    }

    #[cfg(not(feature = "jwks-url"))]
    async fn fetch_url(&self, url: &str) -> Result<String> {
        Err(Error::invalid(
            "jwks",
            format!("fetching {url} needs maas-core's feature `jwks-url`"),
        ))
    }

    /// Refreshes when the keys are older than the refresh interval, or when
    /// `kid` is unknown and the last fetch is older than the minimum
    /// interval. A failed refresh keeps the keys in use.
    async fn keys_for(&self, kid: &str, now: i64) -> Arc<HashMap<String, VerifyKey>> {
        let keys = self.keys();
        let since = now.saturating_sub(self.inner.fetched_at.load(Ordering::Relaxed));
        let cfg = &self.inner.config;
        let due = since >= millis(cfg.refresh)
            || (!keys.contains_key(kid) && since >= millis(cfg.min_refresh));
        if due && self.refresh().await.is_ok() {
            return self.keys();
        }
        keys
    }

    /// Verifies `token`, saying exactly why it is refused.
    pub async fn check(&self, token: &str) -> std::result::Result<Identity, TokenRejection> {
        let parts = jwt::split(token)?;
        let kid = parts.kid.as_deref().ok_or(TokenRejection::UnknownKey)?;
        let now = self.inner.clock.now().as_millis();
        let keys = self.keys_for(kid, now).await;
        let key = keys.get(kid).ok_or(TokenRejection::UnknownKey)?;
        jwt::check_signature(&parts, key)?;
        let claims: Map<String, Value> = jwt::claims(&parts)?;
        let aud: Option<Audience> = claims
            .get("aud")
            .and_then(|a| serde_json::from_value(a.clone()).ok());
        let cfg = &self.inner.config;
        jwt::check_registered(
            &Registered {
                iss: claims.get("iss").and_then(Value::as_str),
                aud: aud.as_ref(),
                exp: claims.get("exp").and_then(Value::as_i64),
                nbf: claims.get("nbf").and_then(Value::as_i64),
            },
            &Expect {
                issuer: &cfg.issuer,
                audience: Some(&cfg.audience),
                now_ms: now,
                leeway_ms: millis(cfg.leeway),
            },
        )?;
        let user = claims
            .get(&cfg.user_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or(TokenRejection::MissingClaim)?;
        let groups = match claims.get(&cfg.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(_) => return Err(TokenRejection::Malformed),
        };
        Ok(Identity {
            user: user.to_owned(),
            groups,
        })
    }
}

fn read_file(path: &std::path::Path) -> Result<String> {
    use std::io::Read as _;
    let unavailable =
        |e: std::io::Error| Error::unavailable(format!("reading {}: {e}", path.display()), false);
    let file = std::fs::File::open(path).map_err(unavailable)?;
    let mut text = String::new();
    file.take(MAX_JWKS_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(unavailable)?;
    if text.len() as u64 > MAX_JWKS_BYTES {
        return Err(Error::unavailable(
            format!("{} is larger than {MAX_JWKS_BYTES} bytes", path.display()),
            false,
        ));
    }
    Ok(text)
}

/// The algorithm a JWK is pinned to, if maas accepts it: its `alg`, else the
/// one its type and curve imply. RS256, ES256 and EdDSA only.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(implied),
        Some(_) => None,
    }
}

fn parse_keys(set: &JwkSet) -> HashMap<String, VerifyKey> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let (Some(kid), Some(alg)) = (jwk.common.key_id.as_ref(), pinned_algorithm(jwk)) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid.clone(), VerifyKey { alg, key });
        }
    }
    keys
}

#[async_trait]
impl Authenticator for JwksAuthenticator {
    /// Not a JWT, or a `kid` the issuer does not have: not recognized; any
    /// other refusal: unauthenticated with the reason.
    async fn authenticate(&self, credential: &str) -> Result<Option<Identity>> {
        match self.check(credential).await {
            Ok(identity) => Ok(Some(identity)),
            Err(TokenRejection::Malformed | TokenRejection::UnknownKey) => Ok(None),
            Err(r) => Err(Error::Unauthenticated {
                reason: r.message().into(),
            }),
        }
    }
}
