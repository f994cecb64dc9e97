//! Who is calling: a bearer credential becomes an [`Identity`] (a user name
//! and groups) through an [`Authenticator`].
//!
//! Implementations:
//! - [`StaticTokens`]: tokens from configuration (the example server, tests);
//! - [`JwksAuthenticator`]: JWTs of an external OIDC issuer, checked against
//!   its JWKS document (RS256, ES256, EdDSA), issuer and audience;
//! - [`TokenService`](crate::token::TokenService): maas' own tokens;
//! - [`Chain`]: several of these, tried in order.

mod jwks;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::KeyHash;

pub use jwks::{JwksAuthenticator, JwksConfig, JwksSource};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The user name (a token's `sub`).
    pub user: String,
    /// The groups the user belongs to; they decide the tier.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Identity {
    /// An identity of `user` in `groups`.
    pub fn new(
        user: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Identity {
            user: user.into(),
            groups: groups.into_iter().map(Into::into).collect(),
        }
    }
}

/// Turns a bearer credential into an [`Identity`].
///
/// Three outcomes:
/// - `Ok(Some(identity))`: the credential is valid;
/// - `Ok(None)`: not a credential this authenticator knows (another one in a
///   [`Chain`] may);
/// - `Err(Error::Unauthenticated { reason })`: this authenticator's kind of
///   credential, but invalid (expired, revoked, bad signature, ...).
///
/// Other errors (a store or an issuer that cannot be reached) are not about
/// the credential: callers answer them as unavailable, not as 401.
#[async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Authenticates `credential` (the bearer token, without `Bearer `).
    async fn authenticate(&self, credential: &str) -> Result<Option<Identity>>;
}

#[async_trait]
impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    async fn authenticate(&self, credential: &str) -> Result<Option<Identity>> {
        (**self).authenticate(credential).await
    }
}

/// Tokens from configuration, each standing for a fixed identity.
///
/// Tokens are held as keyed hashes and compared in constant time, so the
/// configured secrets are not kept in memory after construction and a lookup
/// leaks nothing about them through timing.
pub struct StaticTokens {
    hasher: crate::key::KeyHasher,
    tokens: HashMap<KeyHash, Identity>,
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl StaticTokens {
    /// The authenticator of `tokens` (token, identity). An empty token is
    /// invalid input.
    pub fn new(tokens: impl IntoIterator<Item = (String, Identity)>) -> Result<Self> {
        let hasher = crate::key::KeyHasher::random();
        let mut map = HashMap::new();
        for (token, identity) in tokens {
            if token.is_empty() {
                return Err(Error::invalid("token", "must not be empty"));
            }
            map.insert(hasher.hash(token.as_bytes()), identity);
        }
        Ok(StaticTokens {
            hasher,
            tokens: map,
        })
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, credential: &str) -> Result<Option<Identity>> {
        // The map is keyed by the hash; KeyHash compares in constant time.
        Ok(self
            .tokens
            .get(&self.hasher.hash(credential.as_bytes()))
            .cloned())
    }
}

/// Several authenticators tried in order.
///
/// The first that accepts the credential wins. If none accepts it, the error
/// is the first rejection (`Err(Unauthenticated)`) in order, so an expired
/// maas token says "expired" even when a static-token authenticator came
/// first; if nobody recognized it, "credential not recognized". Any other
/// error stops the chain at once.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    links: Vec<Arc<dyn Authenticator>>,
}

impl Chain {
    /// An empty chain (it recognizes nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// The chain with `a` tried after the ones already in it.
    pub fn with(mut self, a: Arc<dyn Authenticator>) -> Self {
        self.links.push(a);
        self
    }

    /// Authenticates `credential`, failing with [`Error::Unauthenticated`]
    /// unless some link accepts it.
    pub async fn require(&self, credential: &str) -> Result<Identity> {
        match self.authenticate(credential).await? {
            Some(identity) => Ok(identity),
            None => Err(Error::Unauthenticated {
                reason: "credential not recognized".into(),
            }),
        }
    }
}

#[async_trait]
impl Authenticator for Chain {
    async fn authenticate(&self, credential: &str) -> Result<Option<Identity>> {
        let mut rejection = None;
        for link in &self.links {
            match link.authenticate(credential).await {
                Ok(Some(identity)) => return Ok(Some(identity)),
                Ok(None) => {}
                Err(e @ Error::Unauthenticated { .. }) => {
                    rejection.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match rejection {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Result<Option<Identity>>);

    #[async_trait]
    impl Authenticator for Fixed {
        async fn authenticate(&self, _: &str) -> Result<Option<Identity>> {
            self.0.clone()
        }
    }

    fn rejected(reason: &'static str) -> Arc<dyn Authenticator> {
        Arc::new(Fixed(Err(Error::Unauthenticated {
            reason: reason.into(),
        })))
    }

    #[tokio::test]
    async fn static_tokens_map_to_identities() {
        let a = StaticTokens::new([
            (
                "alice-token".to_string(),
                Identity::new("alice", ["premium-users"]),
            ),
            (
                "bob-token".to_string(),
                Identity::new("bob", Vec::<String>::new()),
            ),
        ])
        .unwrap();
        assert_eq!(a.len(), 2);
        let alice = a.authenticate("alice-token").await.unwrap().unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, ["premium-users"]);
        assert!(a.authenticate("alice-token ").await.unwrap().is_none());
        assert!(a.authenticate("").await.unwrap().is_none());
        assert!(StaticTokens::new([(String::new(), Identity::new("x", ["g"]))]).is_err());
        assert!(!format!("{a:?}").contains("alice-token"));
    }

    #[tokio::test]
    async fn chain_takes_first_acceptance_else_first_rejection() {
        let ok: Arc<dyn Authenticator> = Arc::new(Fixed(Ok(Some(Identity::new("u", ["g"])))));
        let none: Arc<dyn Authenticator> = Arc::new(Fixed(Ok(None)));
        let down: Arc<dyn Authenticator> =
            Arc::new(Fixed(Err(Error::unavailable("store down", true))));

        let c = Chain::new()
            .with(none.clone())
            .with(rejected("expired"))
            .with(ok.clone());
        assert_eq!(c.require("t").await.unwrap().user, "u");

        let c = Chain::new()
            .with(none.clone())
            .with(rejected("expired"))
            .with(rejected("unknown kid"));
        match c.require("t").await {
            Err(Error::Unauthenticated { reason }) => assert_eq!(reason, "expired"),
            other => panic!("{other:?}"),
        }

        let c = Chain::new().with(none.clone());
        match c.require("t").await {
            Err(Error::Unauthenticated { reason }) => {
                assert_eq!(reason, "credential not recognized")
            }
            other => panic!("{other:?}"),
        }

        let c = Chain::new().with(down).with(ok);
        assert!(matches!(
            c.require("t").await,
            Err(Error::Unavailable { .. })
        ));
    }
}
