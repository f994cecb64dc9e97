//! Signing keys of maas tokens: one key ring per deployment, stored as one
//! catalog record so "exactly one active signer" holds across nodes (every
//! change is an optimistic update of the whole ring).

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::jwt::VerifyKey;
use crate::clock::Timestamp;
use crate::error::{Error, Result};

/// The record kind and id of the key ring.
pub(crate) const KEYRING_KIND: &str = "token_keyring";
pub(crate) const KEYRING_ID: &str = "default";

/// The algorithms maas signs its own tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// Ed25519 signatures (`EdDSA`): the public key is published in the JWKS
    /// document, so other services can verify maas tokens.
    #[default]
    EdDSA,
    /// HMAC-SHA256 with a 64-byte secret: only maas can verify; never
    /// published.
    HS256,
}

impl SigningAlgorithm {
    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
            SigningAlgorithm::HS256 => Algorithm::HS256,
        }
    }
}

/// One stored key. The secret is the Ed25519 seed or the HMAC secret.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    pub(crate) kid: String,
    pub(crate) alg: SigningAlgorithm,
    /// base64url, no padding.
    secret: String,
    pub(crate) created_at: Timestamp,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl StoredKey {
    /// A fresh key with a random kid.
    pub(crate) fn generate(alg: SigningAlgorithm, now: Timestamp) -> Self {
        let mut rng = rand::rng();
        let mut kid = [0u8; 12];
        rng.fill_bytes(&mut kid);
        let secret = match alg {
            SigningAlgorithm::EdDSA => {
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                seed.to_vec()
            }
            SigningAlgorithm::HS256 => {
                let mut s = [0u8; 64];
                rng.fill_bytes(&mut s);
                s.to_vec()
            }
        };
        StoredKey {
            kid: URL_SAFE_NO_PAD.encode(kid),
            alg,
            secret: URL_SAFE_NO_PAD.encode(secret),
            created_at: now,
        }
    }

    fn encoding_key(&self) -> Result<EncodingKey> {
        let secret = URL_SAFE_NO_PAD
            .decode(&self.secret)
            .map_err(|_| Error::internal(format!("signing key {}: bad encoding", self.kid)))?;
        Ok(match self.alg {
            SigningAlgorithm::EdDSA => {
                if secret.len() != 32 {
                    return Err(Error::internal(format!(
                        "signing key {}: an Ed25519 seed has 32 bytes",
                        self.kid
                    )));
                }
                let mut der = ED25519_PKCS8_PREFIX.to_vec();
                der.extend_from_slice(&secret);
                EncodingKey::from_ed_der(&der)
            }
            SigningAlgorithm::HS256 => EncodingKey::from_secret(&secret),
        })
    }
}

/// The stored key ring: every key that verifies, and which one signs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredRing {
    pub(crate) active: String,
    pub(crate) keys: Vec<StoredKey>,
}

/// The signer of new tokens.
pub(crate) struct Signer {
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
    pub(crate) key: EncodingKey,
}

/// A key ring parsed once: the signer, the verification keys by kid and the
/// public JWKS document.
pub(crate) struct KeyRing {
    pub(crate) signer: Signer,
    pub(crate) verify: HashMap<String, VerifyKey>,
    pub(crate) jwks: JwkSet,
    pub(crate) version: u64,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.signer.kid)
            .field("keys", &self.verify.len())
            .field("version", &self.version)
            .finish()
    }
}

impl KeyRing {
    /// Parses every key of `stored` (version `version` of the record).
    pub(crate) fn parse(stored: &StoredRing, version: u64) -> Result<Self> {
        let mut verify = HashMap::new();
        let mut jwks = JwkSet { keys: Vec::new() };
        let mut signer = None;
        for k in &stored.keys {
            let alg = k.alg.jwt();
            let enc = k.encoding_key()?;
            let dec = match k.alg {
                SigningAlgorithm::HS256 => DecodingKey::from_secret(enc.as_bytes()),
                SigningAlgorithm::EdDSA => {
                    let mut jwk = Jwk::from_encoding_key(&enc, alg)
                        .map_err(|e| Error::internal(format!("signing key {}: {e}", k.kid)))?;
                    jwk.common.key_id = Some(k.kid.clone());
                    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                    jwk.common.key_algorithm = Some(KeyAlgorithm::EdDSA);
                    let dec = DecodingKey::from_jwk(&jwk)
                        .map_err(|e| Error::internal(format!("signing key {}: {e}", k.kid)))?;
                    jwks.keys.push(jwk);
                    dec
                }
            };
            verify.insert(k.kid.clone(), VerifyKey { alg, key: dec });
            if k.kid == stored.active {
                signer = Some(Signer {
                    kid: k.kid.clone(),
                    alg,
                    key: enc,
                });
            }
        }
        let signer = signer.ok_or_else(|| {
            Error::internal(format!(
                "the token key ring names active key {} but does not hold it",
                stored.active
            ))
        })?;
        Ok(KeyRing {
            signer,
            verify,
            jwks,
            version,
        })
    }
}

/// A signing key as listed by [`TokenService::signing_keys`](super::TokenService::signing_keys):
/// no secret material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyInfo {
    /// The key id, the `kid` header of the tokens it signs.
    pub kid: String,
    /// Its algorithm.
    pub alg: SigningAlgorithm,
    /// Whether it signs new tokens (exactly one does).
    pub active: bool,
    /// When it was generated.
    pub created_at: Timestamp,
}

impl StoredRing {
    pub(crate) fn info(&self) -> Vec<SigningKeyInfo> {
        self.keys
            .iter()
            .map(|k| SigningKeyInfo {
                kid: k.kid.clone(),
                alg: k.alg,
                active: k.kid == self.active,
                created_at: k.created_at,
            })
            .collect()
    }
}
