//! User API keys (the MaaS API's `/keys`): each authenticated user creates,
//! lists and deletes their own keys, by name.
//!
//! [`UserKeys`] is a thin layer over [`KeyService`]: every user key lives in
//! one keyspace of the deployment, owned by the user (`owner_id`), named
//! with a unique name among the user's live keys. The keyspace is created
//! on the first key; its id is kept in the catalog record
//! `("setting", "user_keyspace")`, created with create-if-absent, so every
//! node of a deployment agrees on it (a node that loses the race removes
//! the keyspace it made and uses the winner's).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::catalog;
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::id::{KeyId, KeyspaceId};
use crate::identity::{Authenticator, Identity};
use crate::key::{KeyService, NewKey, VerifyCode, VerifyOptions};
use crate::keyspace::NewKeyspace;
use crate::storage::{KeyQuery, MAX_PAGE_SIZE, PageRequest};
use crate::validate;

/// The record kind of deployment settings.
pub const SETTING_KIND: &str = "setting";
/// The id of the setting that holds the user keyspace's id.
pub const USER_KEYSPACE_SETTING: &str = "user_keyspace";
/// The prefix of user keys (`maas_…`).
pub const USER_KEY_PREFIX: &str = "maas";
/// The prefix of tenants' keys (`sk_…`, seed 003), made by
/// [`UserKeys::create_tenant_key`].
pub const TENANT_KEY_PREFIX: &str = "sk";
/// The key meta field that marks a tenant's key (`"tenant"`).
pub const KIND_META: &str = "kind";
/// The name of the user keyspace.
pub const USER_KEYSPACE_NAME: &str = "user keys";
/// The key meta field holding the groups of the user who created the key.
pub const GROUPS_META: &str = "groups";
/// The longest user name and key name, in bytes.
pub const MAX_USER_KEY_NAME: usize = 256;

/// A user's key as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserKey {
    /// The key's id.
    pub key_id: KeyId,
    /// Its name (unique among the user's keys).
    pub name: String,
    /// The prefix and first characters of the secret, to recognise it.
    pub start: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last verified successfully (written behind).
    pub last_used_at: Option<Timestamp>,
}

/// A user's keys and how many there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserKeyList {
    /// The keys, oldest first.
    pub keys: Vec<UserKey>,
    /// How many keys the user has.
    pub total_keys: u64,
}

/// A newly created user key, with its secret shown this once.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CreatedUserKey {
    /// The key's id.
    pub key_id: KeyId,
    /// Its name.
    pub name: String,
    /// The secret. Hand it to the user; it is not stored.
    pub api_key: String,
    /// The prefix and first characters of the secret.
    pub start: String,
    /// When it was created.
    pub created_at: Timestamp,
}

impl fmt::Debug for CreatedUserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedUserKey")
            .field("key_id", &self.key_id)
            .field("name", &self.name)
            .field("start", &self.start)
            .field("created_at", &self.created_at)
            .field("api_key", &"<secret>")
            .finish()
    }
}

/// Users' own API keys, by name (the MaaS API's `/keys`).
///
/// Cheap to clone. Changes are audited by the [`KeyService`] with the actor
/// `user:{user}`.
#[derive(Debug, Clone)]
pub struct UserKeys {
    keys: KeyService,
    clock: SharedClock,
    keyspace: Arc<tokio::sync::OnceCell<KeyspaceId>>,
}

fn check_user(user: &str) -> Result<()> {
    validate::label("user", user, MAX_USER_KEY_NAME)
}

fn check_name(name: &str) -> Result<()> {
    validate::label("name", name, MAX_USER_KEY_NAME)
}

fn actor_of(user: &str) -> Actor {
    Actor::new(format!("user:{user}"))
}

impl UserKeys {
    /// User keys over `keys`, on the system clock.
    pub fn new(keys: KeyService) -> Self {
        Self::new_with_clock(keys, Arc::new(SystemClock))
    }

    /// User keys over `keys`, on `clock`.
    pub fn new_with_clock(keys: KeyService, clock: Arc<dyn Clock>) -> Self {
        UserKeys {
            keys,
            clock,
            keyspace: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The key service underneath.
    pub fn key_service(&self) -> &KeyService {
        &self.keys
    }

    async fn stored_keyspace(&self) -> Result<Option<KeyspaceId>> {
        catalog::setting_keyspace(&*self.keys.storage().records, USER_KEYSPACE_SETTING).await
    }

    /// The user keyspace if it exists (never creates it): what a scan of
    /// user keys should look at (nothing, before the first key).
    pub async fn existing_keyspace(&self) -> Result<Option<KeyspaceId>> {
        if let Some(id) = self.keyspace.get() {
            return Ok(Some(id.clone()));
        }
        match self.stored_keyspace().await? {
            Some(id) => {
                let _ = self.keyspace.set(id.clone());
                Ok(Some(id))
            }
            None => Ok(None),
        }
    }

    /// The user keyspace, created on first use.
    pub async fn keyspace(&self) -> Result<KeyspaceId> {
        self.keyspace
            .get_or_try_init(|| self.resolve_keyspace())
            .await
            .cloned()
    }

    async fn resolve_keyspace(&self) -> Result<KeyspaceId> {
        catalog::ensure_setting_keyspace(
            &self.keys,
            USER_KEYSPACE_SETTING,
            NewKeyspace {
                name: USER_KEYSPACE_NAME.to_owned(),
                prefix: Some(USER_KEY_PREFIX.to_owned()),
                default_byte_length: None,
            },
            self.clock.now(),
        )
        .await
    }

    /// Creates a key named `name` for `user`. The secret is in the result
    /// and nowhere else. [`Error::Conflict`] if the user has a live key of
    /// that name; [`Error::InvalidInput`] (`user`, `name`) before any write.
    pub async fn create(&self, user: &str, name: &str) -> Result<CreatedUserKey> {
        self.create_for(&Identity::new(user, Vec::<String>::new()), name)
            .await
    }

    /// Creates a key named `name` for `identity`, remembering its groups:
    /// the key authenticates as that identity ([`Self::authenticate`]), so
    /// it gets the tier those groups map to. As [`Self::create`] otherwise.
    pub async fn create_for(&self, identity: &Identity, name: &str) -> Result<CreatedUserKey> {
        self.create_by(&actor_of(&identity.user), identity, name)
            .await
    }

    /// As [`Self::create_for`], audited as `actor` (an operator creating a
    /// key for a tenant through the management API).
    pub async fn create_by(
        &self,
        actor: &Actor,
        identity: &Identity,
        name: &str,
    ) -> Result<CreatedUserKey> {
        self.create_with(actor, identity, name, None).await
    }

    /// Creates a key named `name` for the tenant named `tenant`, audited as
    /// `actor`: an `sk_` key ([`TENANT_KEY_PREFIX`]) without groups, so it
    /// is served as its tenant, at the tenant's tier
    /// ([`TierService::tier_of`](crate::tier::TierService::tier_of)).
    pub async fn create_tenant_key(
        &self,
        actor: &Actor,
        tenant: &str,
        name: &str,
    ) -> Result<CreatedUserKey> {
        let identity = Identity::new(tenant, Vec::<String>::new());
        self.create_with(actor, &identity, name, Some(TENANT_KEY_PREFIX))
            .await
    }

    async fn create_with(
        &self,
        actor: &Actor,
        identity: &Identity,
        name: &str,
        tenant_prefix: Option<&str>,
    ) -> Result<CreatedUserKey> {
        let user = identity.user.as_str();
        check_user(user)?;
        check_name(name)?;
        let keyspace = self.keyspace().await?;
        let mut meta = serde_json::Map::new();
        meta.insert(GROUPS_META.to_owned(), serde_json::json!(identity.groups));
        if tenant_prefix.is_some() {
            meta.insert(KIND_META.to_owned(), serde_json::json!("tenant"));
        }
        let new = NewKey {
            name: Some(name.to_owned()),
            unique_name: true,
            owner_id: Some(user.to_owned()),
            meta: Some(meta),
            prefix: tenant_prefix.map(str::to_owned),
            ..NewKey::in_keyspace(keyspace)
        };
        let created = match self.keys.create(actor, new).await {
            Ok(c) => c,
            Err(Error::Conflict { .. }) => {
                return Err(Error::conflict(format!(
                    "an API key named '{name}' already exists for this user"
                )));
            }
            Err(e) => return Err(e),
        };
        let key = self.keys.get(&created.key_id).await?;
        Ok(CreatedUserKey {
            key_id: created.key_id,
            name: name.to_owned(),
            api_key: created.key,
            start: created.start,
            created_at: key.created_at,
        })
    }

    /// The live keys of `user`, oldest first, without secrets.
    pub async fn list(&self, user: &str) -> Result<UserKeyList> {
        check_user(user)?;
        let Some(keyspace) = self.existing_keyspace().await? else {
            return Ok(UserKeyList {
                keys: Vec::new(),
                total_keys: 0,
            });
        };
        let mut query = KeyQuery {
            keyspace_id: Some(keyspace),
            owner_id: Some(user.to_owned()),
            include_deleted: false,
            page: PageRequest::first(MAX_PAGE_SIZE),
        };
        let mut keys = Vec::new();
        let total_keys = loop {
            let page = self.keys.list(&query).await?;
            keys.extend(page.items.into_iter().map(|k| UserKey {
                key_id: k.id,
                name: k.name.unwrap_or_default(),
                start: k.start,
                created_at: k.created_at,
                last_used_at: k.last_used_at,
            }));
            match page.cursor {
                Some(c) => query.page.cursor = Some(c),
                None => break page.total,
            }
        };
        Ok(UserKeyList { keys, total_keys })
    }

    /// Deletes the key `name` of `user` (soft delete: it stops verifying at
    /// once and its name is free again). [`Error::NotFound`] (kind
    /// `API key`) if the user has no live key of that name.
    pub async fn delete(&self, user: &str, name: &str) -> Result<()> {
        check_user(user)?;
        check_name(name)?;
        let not_found = || Error::not_found("API key", name);
        let list = self.list(user).await?;
        let key = list
            .keys
            .into_iter()
            .find(|k| k.name == name)
            .ok_or_else(not_found)?;
        match self.keys.delete(&actor_of(user), &key.key_id).await {
            Err(Error::NotFound { .. }) => Err(not_found()),
            other => other,
        }
    }
}

impl UserKeys {
    /// The identity of a user key: its owner, with the groups remembered at
    /// creation (none for a tenant's key). `Ok(None)` for credentials that
    /// are not user keys (no `maas_` or `sk_` prefix); a user key that does not verify (unknown, deleted,
    /// disabled, expired) is [`Error::Unauthenticated`].
    pub async fn authenticate(&self, credential: &str) -> Result<Option<Identity>> {
        Ok(self.authenticate_key(credential).await?.map(|(i, _)| i))
    }

    /// As [`Self::authenticate`], with the id of the key that authenticated
    /// (usage and key budgets are counted by it).
    pub async fn authenticate_key(&self, credential: &str) -> Result<Option<(Identity, KeyId)>> {
        let Some(rest) = credential
            .strip_prefix(USER_KEY_PREFIX)
            .or_else(|| credential.strip_prefix(TENANT_KEY_PREFIX))
        else {
            return Ok(None);
        };
        if !rest.starts_with('_') {
            return Ok(None);
        }
        let invalid = || Error::Unauthenticated {
            reason: "invalid API key".into(),
        };
        let Some(keyspace) = self.existing_keyspace().await? else {
            return Err(invalid());
        };
        let v = self
            .keys
            .verify(
                credential,
                &VerifyOptions {
                    keyspace_id: Some(&keyspace),
                    permissions: None,
                },
            )
            .await?;
        match v.code() {
            VerifyCode::Valid => {}
            VerifyCode::RateLimited => {
                let rl = v.ratelimit();
                return Err(Error::RateLimited {
                    limit: rl.map_or(0, |r| r.limit),
                    remaining: 0,
                    reset: rl.map_or(Timestamp::EPOCH, |r| r.reset),
                });
            }
            VerifyCode::UsageExceeded => {
                return Err(Error::QuotaExceeded {
                    message: "the API key has no uses left".into(),
                });
            }
            VerifyCode::Disabled => {
                return Err(Error::Unauthenticated {
                    reason: "API key is disabled".into(),
                });
            }
            VerifyCode::Expired => {
                return Err(Error::Unauthenticated {
                    reason: "API key has expired".into(),
                });
            }
            _ => return Err(invalid()),
        }
        let user = v.owner_id().ok_or_else(invalid)?.to_owned();
        let key_id = v.key_id().ok_or_else(invalid)?.clone();
        let groups = v
            .meta()
            .and_then(|m| m.get(GROUPS_META))
            .and_then(|g| g.as_array())
            .map(|g| {
                g.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some((Identity { user, groups }, key_id)))
    }
}

#[async_trait]
impl Authenticator for UserKeys {
    async fn authenticate(&self, credential: &str) -> Result<Option<Identity>> {
        UserKeys::authenticate(self, credential).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_debug_hides_the_secret() {
        let k = CreatedUserKey {
            key_id: KeyId::generate(Timestamp::EPOCH),
            name: "n".into(),
            api_key: "maas_secret".into(),
            start: "maas_se".into(),
            created_at: Timestamp::EPOCH,
        };
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("maas_secret"));
        assert!(dbg.contains("<secret>"));
        assert_eq!(
            Error::not_found("API key", "user-john-doe-key").to_string(),
            "API key 'user-john-doe-key' not found"
        );
    }
}
