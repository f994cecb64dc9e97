//! maas tokens: short-lived JWTs minted for an [`Identity`], with TTLs in
//! Go's duration syntax, signing-key rotation, a JWKS document and
//! revoke-all per subject. [`TokenService`] does all of it.

pub(crate) mod jwt;
mod keys;
mod service;
mod ttl;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::identity::Identity;

pub use keys::{SigningAlgorithm, SigningKeyInfo};
pub use service::{Claims, MintedToken, TokenConfig, TokenService};
pub(crate) use service::{REVOCATION_KIND, public_jwks};
pub use ttl::{TTL_FORMAT_MESSAGE, format_duration, parse_duration, parse_ttl};

/// Why a token was refused. Each cause has its own variant, checked in this
/// order: shape, `alg: none`, key, algorithm, signature, claims, revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenRejection {
    /// Not three base64url parts with a JSON header and payload, or a header
    /// with critical extensions.
    Malformed,
    /// The header says `alg: none`.
    AlgorithmNone,
    /// No `kid`, or a `kid` no verification key has.
    UnknownKey,
    /// The header's `alg` is not the one pinned to the key (an HS/RS swap).
    AlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// A required claim (`exp`, `sub`, `iat`, `jti`) is missing.
    MissingClaim,
    /// `iss` is not the expected issuer.
    WrongIssuer,
    /// `aud` does not include the expected audience.
    WrongAudience,
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    NotYetValid,
    /// Every token of the subject issued at or before a revocation was revoked.
    Revoked,
}

impl TokenRejection {
    /// Every rejection.
    pub const ALL: [TokenRejection; 11] = [
        TokenRejection::Malformed,
        TokenRejection::AlgorithmNone,
        TokenRejection::UnknownKey,
        TokenRejection::AlgorithmMismatch,
        TokenRejection::BadSignature,
        TokenRejection::MissingClaim,
        TokenRejection::WrongIssuer,
        TokenRejection::WrongAudience,
        TokenRejection::Expired,
        TokenRejection::NotYetValid,
        TokenRejection::Revoked,
    ];

    /// A stable code, e.g. `"expired"`.
    pub fn code(self) -> &'static str {
        match self {
            TokenRejection::Malformed => "malformed",
            TokenRejection::AlgorithmNone => "alg_none",
            TokenRejection::UnknownKey => "unknown_kid",
            TokenRejection::AlgorithmMismatch => "alg_mismatch",
            TokenRejection::BadSignature => "bad_signature",
            TokenRejection::MissingClaim => "missing_claim",
            TokenRejection::WrongIssuer => "wrong_issuer",
            TokenRejection::WrongAudience => "wrong_audience",
            TokenRejection::Expired => "expired",
            TokenRejection::NotYetValid => "not_yet_valid",
            TokenRejection::Revoked => "revoked",
        }
    }

    /// A message for the caller.
    pub fn message(self) -> &'static str {
        match self {
            TokenRejection::Malformed => "the token is malformed",
            TokenRejection::AlgorithmNone => "unsigned tokens (alg none) are not accepted",
            TokenRejection::UnknownKey => "the token's signing key is unknown",
            TokenRejection::AlgorithmMismatch => {
                "the token's algorithm is not the one of its signing key"
            }
            TokenRejection::BadSignature => "the token's signature is invalid",
            TokenRejection::MissingClaim => "the token lacks a required claim",
            TokenRejection::WrongIssuer => "the token's issuer is not accepted",
            TokenRejection::WrongAudience => "the token is not meant for this audience",
            TokenRejection::Expired => "the token has expired",
            TokenRejection::NotYetValid => "the token is not valid yet",
            TokenRejection::Revoked => "the token has been revoked",
        }
    }
}

impl fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// What a valid maas token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedToken {
    /// Who it was minted for.
    pub identity: Identity,
    /// The tier recorded when it was minted.
    pub tier: Option<String>,
    /// Its `jti`.
    pub jti: String,
    /// The key that signed it.
    pub kid: String,
    /// When it was issued (milliseconds precision).
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
}
