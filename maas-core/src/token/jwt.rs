//! The JWT checks shared by maas' own tokens and external OIDC tokens.
//!
//! The order is fixed and each failure has its own [`TokenRejection`]:
//! shape and header -> `alg: none` -> key by `kid` -> the algorithm pinned to
//! that key -> signature -> claims (issuer, audience, expiry, not-before).
//! Nothing of the payload is trusted before the signature is checked.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::TokenRejection;

/// The longest token considered; longer ones are malformed unread.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A verification key with its algorithm pinned.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The protected header fields maas looks at.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A token split into its parts, header decoded.
pub(crate) struct Parts<'a> {
    /// `header.payload`, the signed bytes.
    pub(crate) signed: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
    pub(crate) alg: String,
    pub(crate) kid: Option<String>,
}

/// Splits `token` and decodes its header; refuses `alg: none` and critical
/// extensions maas does not understand.
pub(crate) fn split(token: &str) -> Result<Parts<'_>, TokenRejection> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenRejection::Malformed);
    }
    let mut it = token.splitn(3, '.');
    let (Some(header), Some(payload), Some(signature)) = (it.next(), it.next(), it.next()) else {
        return Err(TokenRejection::Malformed);
    };
    if signature.contains('.') {
        return Err(TokenRejection::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenRejection::Malformed)?;
    let h: RawHeader = serde_json::from_slice(&raw).map_err(|_| TokenRejection::Malformed)?;
    if h.alg.eq_ignore_ascii_case("none") {
        return Err(TokenRejection::AlgorithmNone);
    }
    if h.crit.is_some() {
        return Err(TokenRejection::Malformed);
    }
    if signature.is_empty() {
        return Err(TokenRejection::BadSignature);
    }
    Ok(Parts {
        signed: &token[..header.len() + 1 + payload.len()],
        payload,
        signature,
        alg: h.alg,
        kid: h.kid,
    })
}

/// The algorithm named in a header, if it is one maas knows.
pub(crate) fn algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}

/// Checks that the header's algorithm is the one pinned to `key`, then the
/// signature.
pub(crate) fn check_signature(parts: &Parts<'_>, key: &VerifyKey) -> Result<(), TokenRejection> {
    if algorithm(&parts.alg) != Some(key.alg) {
        return Err(TokenRejection::AlgorithmMismatch);
    }
    match jsonwebtoken::crypto::verify(parts.signature, parts.signed.as_bytes(), &key.key, key.alg)
    {
        Ok(true) => Ok(()),
        _ => Err(TokenRejection::BadSignature),
    }
}

/// Decodes the payload (only call after [`check_signature`]).
pub(crate) fn claims<T: DeserializeOwned>(parts: &Parts<'_>) -> Result<T, TokenRejection> {
    let raw = URL_SAFE_NO_PAD
        .decode(parts.payload)
        .map_err(|_| TokenRejection::Malformed)?;
    serde_json::from_slice(&raw).map_err(|_| TokenRejection::Malformed)
}

/// `aud` as a string or a list of strings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

/// The registered claims every accepted token must satisfy.
pub(crate) struct Registered<'a> {
    pub(crate) iss: Option<&'a str>,
    pub(crate) aud: Option<&'a Audience>,
    pub(crate) exp: Option<i64>,
    pub(crate) nbf: Option<i64>,
}

/// What the verifier expects.
pub(crate) struct Expect<'a> {
    pub(crate) issuer: &'a str,
    /// `None` skips the audience check.
    pub(crate) audience: Option<&'a str>,
    pub(crate) now_ms: i64,
    pub(crate) leeway_ms: i64,
}

/// Issuer, audience, then time. `exp` is required; `nbf` checked if present.
pub(crate) fn check_registered(r: &Registered<'_>, e: &Expect<'_>) -> Result<(), TokenRejection> {
    if r.iss != Some(e.issuer) {
        return Err(TokenRejection::WrongIssuer);
    }
    if let Some(want) = e.audience
        && !r.aud.is_some_and(|a| a.contains(want))
    {
        return Err(TokenRejection::WrongAudience);
    }
    let Some(exp) = r.exp else {
        return Err(TokenRejection::MissingClaim);
    };
    if e.now_ms >= exp.saturating_mul(1000).saturating_add(e.leeway_ms) {
        return Err(TokenRejection::Expired);
    }
    if let Some(nbf) = r.nbf
        && e.now_ms.saturating_add(e.leeway_ms) < nbf.saturating_mul(1000)
    {
        return Err(TokenRejection::NotYetValid);
    }
    Ok(())
}
