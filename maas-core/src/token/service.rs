//! [`TokenService`]: mint, verify and revoke maas tokens.

use std::collections::HashMap;

use crate::token::jwt::VerifyKey;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::jwt::{self, Audience, Expect, Registered};
use super::keys::{
    KEYRING_ID, KEYRING_KIND, KeyRing, SigningAlgorithm, SigningKeyInfo, StoredKey, StoredRing,
};
use super::ttl::parse_ttl;
use super::{TokenRejection, VerifiedToken};
use crate::audit::{Actor, AuditEvent};
use crate::catalog::{self, millis};
use crate::clock::{SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::identity::{Authenticator, Identity};
use crate::key::{KeyHash, KeyHasher};
use crate::storage::Storage;
use crate::validate;

pub(crate) const REVOCATION_KIND: &str = "token_revocation";
/// A kid unknown to this node reloads the ring at most this often.
const UNKNOWN_KID_RELOAD_MS: i64 = 1_000;
const MAX_GROUPS: usize = 256;
/// Revocation states kept even when the token cache is small or off.
const MIN_SUBJECTS: usize = 1024;
const MAX_LABEL: usize = 256;

/// How [`TokenService`] mints and verifies.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// `iss` of minted tokens, required of verified ones. Default `"maas"`.
    pub issuer: String,
    /// `aud` of minted tokens, required of verified ones. Default `"maas"`.
    pub audience: String,
    /// TTL when none is asked for. Default 4 hours (seed 000).
    pub default_ttl: Duration,
    /// The longest TTL that may be asked for. Default 30 days.
    pub max_ttl: Duration,
    /// Clock skew tolerated on `exp` and `nbf`. Default 30 seconds.
    pub leeway: Duration,
    /// The algorithm of a key generated on first start or by
    /// [`TokenService::rotate`] without one. Default EdDSA.
    pub algorithm: SigningAlgorithm,
    /// At most this many verified tokens are cached (and as many subjects'
    /// revocation states, at least 1024). 0 turns the token cache off.
    /// Default 100 000.
    pub cache_capacity: usize,
    /// How long what this node knows of the store (revocations, the key
    /// ring) is trusted before it is read again: the bound on how late a
    /// change made through another node applies here. Changes made through
    /// this node apply at once. Default 30 seconds.
    pub refresh: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            issuer: "maas".into(),
            audience: "maas".into(),
            default_ttl: Duration::from_secs(4 * 3600),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            leeway: Duration::from_secs(30),
            algorithm: SigningAlgorithm::EdDSA,
            cache_capacity: 100_000,
            refresh: Duration::from_secs(30),
        }
    }
}

/// The claims of a maas token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: the user name.
    pub sub: String,
    /// The user's groups when the token was minted.
    pub groups: Vec<String>,
    /// The tier the groups resolved to when the token was minted (for
    /// information: access is decided by the tier the groups resolve to at
    /// the time of each request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds).
    pub nbf: i64,
    /// Expires (unix seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// Issued at in unix milliseconds: what revocation compares, so a token
    /// minted right after a revocation in the same second stays valid.
    pub iat_ms: i64,
}

/// The incoming claims: lenient on `aud`'s shape, strict on the rest.
#[derive(Deserialize)]
struct InClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    iat_ms: Option<i64>,
}

/// A freshly minted token.
#[derive(Clone, PartialEq, Eq)]
pub struct MintedToken {
    /// The token (a bearer secret: shown to its owner once, never logged).
    pub token: String,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Its `jti`.
    pub jti: String,
    /// The key that signed it.
    pub kid: String,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("jti", &self.jti)
            .field("kid", &self.kid)
            .finish()
    }
}

/// A verified token in the cache: the signed part it must match exactly.
struct CachedToken {
    signed: Box<str>,
    verified: Arc<VerifiedToken>,
    exp_ms: i64,
    iat_ms: i64,
}

/// What this node knows of a subject's revocation.
#[derive(Clone, Copy)]
struct SubjectState {
    revoked_at: Option<i64>,
    checked_at: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Revocation {
    revoked_at: Timestamp,
}

struct Inner {
    storage: Storage,
    clock: SharedClock,
    config: TokenConfig,
    ring: RwLock<Arc<KeyRing>>,
    ring_loaded_at: AtomicI64,
    cache_hasher: KeyHasher,
    cache: DashMap<KeyHash, CachedToken>,
    subjects: DashMap<String, SubjectState>,
    /// Public keys of another issuer of maas tokens this node also
    /// verifies (a data plane: its control plane's), by kid.
    trusted: RwLock<HashMap<String, VerifyKey>>,
}

/// Mints, verifies and revokes maas tokens (short-lived JWTs).
///
/// - Keys: one active signer and any number of verification keys, kept as
///   one record in the [`RecordStore`](crate::storage::RecordStore);
///   generated on first start, parsed once, rotated without invalidating live
///   tokens ([`rotate`](Self::rotate)), retired explicitly
///   ([`retire`](Self::retire)); the public keys as a JWKS document
///   ([`jwks`](Self::jwks)).
/// - Verification pins the algorithm to the key named by `kid` and fails with
///   a distinct [`TokenRejection`] per cause.
/// - [`revoke_all`](Self::revoke_all) stores a per-subject time; tokens
///   issued at or before it fail from the next verification on this node
///   (within [`TokenConfig::refresh`] on other nodes).
/// - Verified tokens are cached by a keyed hash of their signature until
///   they expire; revocation still applies to cached tokens.
#[derive(Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.inner.config.issuer)
            .field("cached", &self.inner.cache.len())
            .finish_non_exhaustive()
    }
}

impl TokenService {
    /// Opens the service on `storage` with the system clock: loads the key
    /// ring, generating it on first start.
    pub async fn open(storage: Storage, config: TokenConfig) -> Result<Self> {
        Self::open_with_clock(storage, config, Arc::new(SystemClock)).await
    }

    /// As [`open`](Self::open), with `clock`.
    pub async fn open_with_clock(
        storage: Storage,
        config: TokenConfig,
        clock: SharedClock,
    ) -> Result<Self> {
        validate::label("issuer", &config.issuer, MAX_LABEL)?;
        validate::label("audience", &config.audience, MAX_LABEL)?;
        if config.default_ttl.is_zero() || config.default_ttl > config.max_ttl {
            return Err(Error::invalid(
                "default_ttl",
                "must be positive and at most max_ttl",
            ));
        }
        let now = clock.now();
        let (stored, version) = load_or_create_ring(&storage, config.algorithm, now).await?;
        let ring = KeyRing::parse(&stored, version)?;
        Ok(TokenService {
            inner: Arc::new(Inner {
                storage,
                clock,
                config,
                ring: RwLock::new(Arc::new(ring)),
                ring_loaded_at: AtomicI64::new(now.as_millis()),
                cache_hasher: KeyHasher::random(),
                cache: DashMap::new(),
                subjects: DashMap::new(),
                trusted: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TokenConfig {
        &self.inner.config
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.inner
            .ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Parses a TTL as the MaaS API takes it (`None` or empty: the default;
    /// more than the maximum: invalid input). See [`super::parse_duration`].
    pub fn ttl(&self, ttl: Option<&str>) -> Result<Duration> {
        parse_ttl(
            ttl,
            self.inner.config.default_ttl,
            self.inner.config.max_ttl,
        )
    }

    /// Mints a token for `identity` valid for `ttl`; `tier` is recorded as a
    /// claim. No I/O.
    pub fn mint(
        &self,
        identity: &Identity,
        tier: Option<&str>,
        ttl: Duration,
    ) -> Result<MintedToken> {
        validate::label("sub", &identity.user, MAX_LABEL)?;
        if identity.groups.len() > MAX_GROUPS {
            return Err(Error::invalid(
                "groups",
                format!("must have at most {MAX_GROUPS} entries"),
            ));
        }
        for g in &identity.groups {
            validate::label("groups", g, MAX_LABEL)?;
        }
        if let Some(t) = tier {
            validate::label("tier", t, MAX_LABEL)?;
        }
        let cfg = &self.inner.config;
        if ttl.is_zero() || ttl > cfg.max_ttl {
            return Err(Error::invalid(
                "ttl",
                "must be positive and at most the maximum",
            ));
        }
        let now = self.now().as_millis();
        // After a revocation known here, a new token must be issued after it.
        let revoked = self
            .inner
            .subjects
            .get(&identity.user)
            .and_then(|s| s.revoked_at);
        let iat_ms = match revoked {
            Some(r) if r >= now => r.saturating_add(1),
            _ => now,
        };
        let exp_ms = now.saturating_add(millis(ttl));
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let claims = Claims {
            iss: cfg.issuer.clone(),
            aud: cfg.audience.clone(),
            sub: identity.user.clone(),
            groups: identity.groups.clone(),
            tier: tier.map(str::to_owned),
            iat: now.div_euclid(1000),
            nbf: now.div_euclid(1000),
            // Rounded up: a token never expires before its TTL.
            exp: exp_ms.saturating_add(999).div_euclid(1000),
            jti: URL_SAFE_NO_PAD.encode(jti),
            iat_ms,
        };
        let ring = self.ring();
        let mut header = jsonwebtoken::Header::new(ring.signer.alg);
        header.kid = Some(ring.signer.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &ring.signer.key)
            .map_err(|e| Error::internal(format!("signing a token: {e}")))?;
        Ok(MintedToken {
            token,
            expires_at: Timestamp::from_millis(claims.exp.saturating_mul(1000)),
            jti: claims.jti,
            kid: ring.signer.kid.clone(),
        })
    }

    /// Verifies `token`: the identity it stands for, or
    /// [`Error::Unauthenticated`] whose reason is the
    /// [`TokenRejection`]'s message. Store failures are other errors.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>> {
        match self.check(token).await? {
            Ok(v) => Ok(v),
            Err(r) => Err(Error::Unauthenticated {
                reason: r.message().into(),
            }),
        }
    }

    /// Verifies `token`, saying exactly why it is refused. The outer error is
    /// for store failures only.
    pub async fn check(
        &self,
        token: &str,
    ) -> Result<std::result::Result<Arc<VerifiedToken>, TokenRejection>> {
        let now = self.now().as_millis();
        let leeway = millis(self.inner.config.leeway);
        if token.len() > jwt::MAX_TOKEN_LEN {
            return Ok(Err(TokenRejection::Malformed));
        }
        let Some(dot) = token.rfind('.') else {
            return Ok(Err(TokenRejection::Malformed));
        };
        let (signed, signature) = (&token[..dot], &token[dot + 1..]);
        let hash = self.inner.cache_hasher.hash(signature.as_bytes());
        let hit =
            self.inner.cache.get(&hash).and_then(|c| {
                (*c.signed == *signed).then(|| (c.verified.clone(), c.exp_ms, c.iat_ms))
            });
        if let Some((verified, exp_ms, iat_ms)) = hit {
            if now >= exp_ms.saturating_add(leeway) {
                self.inner.cache.remove(&hash);
                return Ok(Err(TokenRejection::Expired));
            }
            if self.revoked(&verified.identity.user, iat_ms, now).await? {
                return Ok(Err(TokenRejection::Revoked));
            }
            return Ok(Ok(verified));
        }
        let (verified, exp_ms, iat_ms) = match self.verify_uncached(token, now, leeway).await? {
            Ok(v) => v,
            Err(r) => return Ok(Err(r)),
        };
        if self.revoked(&verified.identity.user, iat_ms, now).await? {
            return Ok(Err(TokenRejection::Revoked));
        }
        let verified = Arc::new(verified);
        if self.inner.config.cache_capacity == 0 {
            return Ok(Ok(verified));
        }
        self.make_room();
        self.inner.cache.insert(
            hash,
            CachedToken {
                signed: signed.into(),
                verified: verified.clone(),
                exp_ms,
                iat_ms,
            },
        );
        Ok(Ok(verified))
    }

    /// How many verified tokens are cached.
    pub fn cached_tokens(&self) -> usize {
        self.inner.cache.len()
    }

    fn make_room(&self) {
        let cap = self.inner.config.cache_capacity;
        if self.inner.cache.len() < cap {
            return;
        }
        let now = self.now().as_millis();
        let leeway = millis(self.inner.config.leeway);
        self.inner
            .cache
            .retain(|_, c| now < c.exp_ms.saturating_add(leeway));
        if self.inner.cache.len() >= cap {
            // Still full of live tokens: start over rather than track
            // recency on every hit. They verify again on their next use.
            self.inner.cache.clear();
        }
    }

    async fn verify_uncached(
        &self,
        token: &str,
        now: i64,
        leeway: i64,
    ) -> Result<std::result::Result<(VerifiedToken, i64, i64), TokenRejection>> {
        let parts = match jwt::split(token) {
            Ok(p) => p,
            Err(r) => return Ok(Err(r)),
        };
        let Some(kid) = parts.kid.as_deref() else {
            return Ok(Err(TokenRejection::UnknownKey));
        };
        let mut ring = self.ring();
        let refresh = millis(self.inner.config.refresh);
        let loaded = self.inner.ring_loaded_at.load(Ordering::Relaxed);
        let stale = now.saturating_sub(loaded) >= refresh;
        let unknown =
            !ring.verify.contains_key(kid) && now.saturating_sub(loaded) >= UNKNOWN_KID_RELOAD_MS;
        if stale || unknown {
            ring = self.reload_ring(now).await?;
        }
        // This node's own keys without a copy; a trusted issuer's, cloned
        // out of its lock (only for tokens not in the verified cache).
        let trusted;
        let key = match ring.verify.get(kid) {
            Some(k) => k,
            None => match self.trusted_key(kid) {
                Some(k) => {
                    trusted = k;
                    &trusted
                }
                None => return Ok(Err(TokenRejection::UnknownKey)),
            },
        };
        if let Err(r) = jwt::check_signature(&parts, key) {
            return Ok(Err(r));
        }
        let c: InClaims = match jwt::claims(&parts) {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        let cfg = &self.inner.config;
        let registered = Registered {
            iss: c.iss.as_deref(),
            aud: c.aud.as_ref(),
            exp: c.exp,
            nbf: c.nbf,
        };
        let expect = Expect {
            issuer: &cfg.issuer,
            audience: Some(&cfg.audience),
            now_ms: now,
            leeway_ms: leeway,
        };
        if let Err(r) = jwt::check_registered(&registered, &expect) {
            return Ok(Err(r));
        }
        let (Some(sub), Some(iat), Some(exp), Some(jti)) = (c.sub, c.iat, c.exp, c.jti) else {
            return Ok(Err(TokenRejection::MissingClaim));
        };
        let iat_ms = c.iat_ms.unwrap_or(iat.saturating_mul(1000));
        let exp_ms = exp.saturating_mul(1000);
        Ok(Ok((
            VerifiedToken {
                identity: Identity {
                    user: sub,
                    groups: c.groups,
                },
                tier: c.tier,
                jti,
                kid: kid.to_owned(),
                issued_at: Timestamp::from_millis(iat_ms),
                expires_at: Timestamp::from_millis(exp_ms),
            },
            exp_ms,
            iat_ms,
        )))
    }

    /// Whether `subject`'s tokens issued at `iat_ms` are revoked, reading the
    /// store when what this node knows is older than the refresh interval.
    async fn revoked(&self, subject: &str, iat_ms: i64, now: i64) -> Result<bool> {
        let refresh = millis(self.inner.config.refresh);
        let known = self.inner.subjects.get(subject).map(|s| *s);
        let state = match known {
            Some(s) if now.saturating_sub(s.checked_at) < refresh => s,
            _ => {
                let revoked_at = self
                    .inner
                    .storage
                    .records
                    .get_record(REVOCATION_KIND, subject)
                    .await?
                    .map(|r| catalog::from_record::<Revocation>(&r))
                    .transpose()?
                    .map(|r| r.revoked_at.as_millis());
                // Never forget a newer revocation made here meanwhile.
                let revoked_at = revoked_at.max(known.and_then(|k| k.revoked_at));
                let s = SubjectState {
                    revoked_at,
                    checked_at: now,
                };
                self.remember(subject, s);
                s
            }
        };
        Ok(state.revoked_at.is_some_and(|r| iat_ms <= r))
    }

    fn remember(&self, subject: &str, s: SubjectState) {
        let subjects = &self.inner.subjects;
        let cap = self.inner.config.cache_capacity.max(MIN_SUBJECTS);
        if subjects.len() >= cap && !subjects.contains_key(subject) {
            // Forgetting is safe: a forgotten subject is read again.
            subjects.retain(|_, v| v.revoked_at.is_some());
            if subjects.len() >= cap {
                subjects.clear();
            }
        }
        subjects
            .entry(subject.to_owned())
            .and_modify(|cur| {
                cur.revoked_at = cur.revoked_at.max(s.revoked_at);
                cur.checked_at = cur.checked_at.max(s.checked_at);
            })
            .or_insert(s);
    }

    /// Revokes every token of `subject` issued until now; returns the stored
    /// revocation time. Applies on this node from the next verification.
    pub async fn revoke_all(&self, actor: &Actor, subject: &str) -> Result<Timestamp> {
        validate::label("sub", subject, MAX_LABEL)?;
        let records = &self.inner.storage.records;
        loop {
            let now = self.now();
            let body = catalog::to_body(REVOCATION_KIND, subject, &Revocation { revoked_at: now })?;
            let audit = |before: Option<serde_json::Value>| {
                AuditEvent::new(
                    now,
                    actor,
                    "token.revoke_all",
                    "subject",
                    subject,
                    before,
                    Some(body.clone()),
                )
            };
            let outcome = match records.get_record(REVOCATION_KIND, subject).await? {
                None => {
                    let revocation = Revocation { revoked_at: now };
                    let fresh =
                        catalog::to_record(REVOCATION_KIND, subject, &revocation, now, now, 1)?;
                    records.create_record(&fresh, audit(None)).await
                }
                Some(cur) => {
                    let old = catalog::from_record::<Revocation>(&cur)?;
                    if old.revoked_at >= now {
                        // Already revoked at or after now (another node's
                        // clock ran ahead): nothing newer to store.
                        self.note_revocation(subject, old.revoked_at, now);
                        return Ok(old.revoked_at);
                    }
                    let mut next = cur.clone();
                    next.body = body.clone();
                    next.updated_at = now;
                    records
                        .update_record(&next, cur.version, audit(Some(cur.body.clone())))
                        .await
                }
            };
            match outcome {
                Ok(()) => {
                    self.note_revocation(subject, now, now);
                    return Ok(now);
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn note_revocation(&self, subject: &str, at: Timestamp, now: Timestamp) {
        self.remember(
            subject,
            SubjectState {
                revoked_at: Some(at.as_millis()),
                checked_at: now.as_millis(),
            },
        );
    }

    /// The signing keys, without secret material.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyInfo>> {
        let (stored, _) = read_ring(&self.inner.storage)
            .await?
            .ok_or_else(|| Error::internal("the token key ring is missing from the store"))?;
        Ok(stored.info())
    }

    fn trusted_key(&self, kid: &str) -> Option<VerifyKey> {
        self.inner
            .trusted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    /// Also verifies tokens signed by the keys of `jwks` (a JWKS document:
    /// a data plane's control plane's public keys), replacing the ones
    /// trusted before (a retired key stops verifying). Issuer, audience,
    /// expiry and revocations are checked as for this node's own tokens.
    /// Returns how many keys are trusted.
    pub fn trust_jwks(&self, jwks: &serde_json::Value) -> Result<usize> {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone())
            .map_err(|e| Error::invalid("jwks", format!("not a JWKS document: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk.common.key_algorithm)
            else {
                continue;
            };
            let alg = match alg {
                jsonwebtoken::jwk::KeyAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
                jsonwebtoken::jwk::KeyAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::jwk::KeyAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
                _ => continue,
            };
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
                .map_err(|e| Error::invalid("jwks", format!("key {kid}: {e}")))?;
            keys.insert(kid, VerifyKey { alg, key });
        }
        let n = keys.len();
        *self
            .inner
            .trusted
            .write()
            .unwrap_or_else(PoisonError::into_inner) = keys;
        Ok(n)
    }

    /// The public keys as a JWKS document (`{"keys": [...]}`); HS256 keys
    /// are secret and never listed.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::to_value(&self.ring().jwks).unwrap_or_else(|_| serde_json::json!({"keys": []}))
    }

    /// Generates a new key with `alg` (the configured algorithm if `None`)
    /// and makes it the signer. Older keys keep verifying until retired.
    pub async fn rotate(
        &self,
        actor: &Actor,
        alg: Option<SigningAlgorithm>,
    ) -> Result<SigningKeyInfo> {
        let alg = alg.unwrap_or(self.inner.config.algorithm);
        let now = self.now();
        let key = StoredKey::generate(alg, now);
        let kid = key.kid.clone();
        self.change_ring(actor, "token_key.rotate", &kid, move |ring| {
            ring.keys.push(key.clone());
            ring.active = key.kid.clone();
            Ok(())
        })
        .await?;
        Ok(SigningKeyInfo {
            kid,
            alg,
            active: true,
            created_at: now,
        })
    }

    /// Removes the verification key `kid`: tokens it signed stop verifying.
    /// The active signer cannot be retired (rotate first).
    pub async fn retire(&self, actor: &Actor, kid: &str) -> Result<()> {
        let kid_owned = kid.to_owned();
        self.change_ring(actor, "token_key.retire", kid, move |ring| {
            if ring.active == kid_owned {
                return Err(Error::conflict(format!(
                    "signing key '{kid_owned}' is the active signer; rotate before retiring it"
                )));
            }
            let before = ring.keys.len();
            ring.keys.retain(|k| k.kid != kid_owned);
            if ring.keys.len() == before {
                return Err(Error::not_found("signing key", kid_owned.clone()));
            }
            Ok(())
        })
        .await
    }

    async fn change_ring(
        &self,
        actor: &Actor,
        action: &str,
        kid: &str,
        change: impl Fn(&mut StoredRing) -> Result<()>,
    ) -> Result<()> {
        let records = &self.inner.storage.records;
        loop {
            let Some(cur) = records.get_record(KEYRING_KIND, KEYRING_ID).await? else {
                return Err(Error::internal(
                    "the token key ring is missing from the store",
                ));
            };
            let before: StoredRing = catalog::from_record::<StoredRing>(&cur)?;
            let mut after = before.clone();
            change(&mut after)?;
            let now = self.now();
            let mut next = cur.clone();
            next.body = catalog::to_body(KEYRING_KIND, KEYRING_ID, &after)?;
            next.updated_at = now;
            let audit = AuditEvent::new(
                now,
                actor,
                action,
                "signing_key",
                kid,
                serde_json::to_value(before.info()).ok(),
                serde_json::to_value(after.info()).ok(),
            );
            // Parse before storing: a ring that cannot be used is never saved.
            let parsed = KeyRing::parse(&after, cur.version + 1)?;
            match records.update_record(&next, cur.version, audit).await {
                Ok(()) => {
                    self.install_ring(parsed, now.as_millis());
                    return Ok(());
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn install_ring(&self, ring: KeyRing, now: i64) {
        let mut slot = self
            .inner
            .ring
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.version != ring.version {
            // Tokens of a retired key must not live on in the cache.
            self.inner.cache.clear();
        }
        *slot = Arc::new(ring);
        drop(slot);
        self.inner.ring_loaded_at.store(now, Ordering::Relaxed);
    }

    async fn reload_ring(&self, now: i64) -> Result<Arc<KeyRing>> {
        // Mark first so concurrent verifications do not all reload.
        self.inner.ring_loaded_at.store(now, Ordering::Relaxed);
        if let Some((stored, version)) = read_ring(&self.inner.storage).await?
            && version != self.ring().version
        {
            self.install_ring(KeyRing::parse(&stored, version)?, now);
        }
        Ok(self.ring())
    }

    /// Reloads the key ring from the store now (rotations and retirements
    /// made through other nodes). Verification also does this by itself
    /// every [`TokenConfig::refresh`].
    pub async fn refresh(&self) -> Result<()> {
        self.reload_ring(self.now().as_millis()).await.map(|_| ())
    }
}

/// The public keys of the token ring stored in `storage`, as a JWKS
/// document (none: `None`), without a `TokenService`.
pub(crate) async fn public_jwks(storage: &Storage) -> Result<Option<serde_json::Value>> {
    let Some((stored, version)) = read_ring(storage).await? else {
        return Ok(None);
    };
    let ring = KeyRing::parse(&stored, version)?;
    Ok(serde_json::to_value(&ring.jwks).ok())
}

async fn read_ring(storage: &Storage) -> Result<Option<(StoredRing, u64)>> {
    match storage.records.get_record(KEYRING_KIND, KEYRING_ID).await? {
        Some(r) => Ok(Some((catalog::from_record::<StoredRing>(&r)?, r.version))),
        None => Ok(None),
    }
}

/// The stored ring, created with one key of `alg` if there is none. Two
/// nodes starting together agree: the loser of the create reads the winner's.
async fn load_or_create_ring(
    storage: &Storage,
    alg: SigningAlgorithm,
    now: Timestamp,
) -> Result<(StoredRing, u64)> {
    loop {
        if let Some(found) = read_ring(storage).await? {
            return Ok(found);
        }
        let key = StoredKey::generate(alg, now);
        let ring = StoredRing {
            active: key.kid.clone(),
            keys: vec![key],
        };
        let record = catalog::to_record(KEYRING_KIND, KEYRING_ID, &ring, now, now, 1)?;
        let audit = AuditEvent::new(
            now,
            &Actor::system(),
            "token_key.create",
            "signing_key",
            &ring.active,
            None,
            serde_json::to_value(ring.info()).ok(),
        );
        match storage.records.create_record(&record, audit).await {
            Ok(()) => return Ok((ring, 1)),
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[async_trait]
impl Authenticator for TokenService {
    /// A token this service signed: the identity; not a JWT or a `kid` this
    /// service does not know: not recognized (another authenticator may take
    /// it); any other refusal: unauthenticated with the reason.
    async fn authenticate(&self, credential: &str) -> Result<Option<Identity>> {
        match self.check(credential).await? {
            Ok(v) => Ok(Some(v.identity.clone())),
            Err(TokenRejection::Malformed | TokenRejection::UnknownKey) => Ok(None),
            Err(r) => Err(Error::Unauthenticated {
                reason: r.message().into(),
            }),
        }
    }
}
