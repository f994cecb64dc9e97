//! Root keys: the credentials of the Unkey-compatible key API, and the
//! operations of that API under a root key's authority.
//!
//! A root key is a maas key of an internal keyspace whose `permissions` say
//! what it may do, in Unkey's naming: `<resource>.<target>.<action>`, where
//! the target is `*` (every target) or one id. The permissions maas knows
//! ([`RootAction`]):
//!
//! | permission | allows |
//! |---|---|
//! | `api.*.create_key`, `api.<apiId>.create_key` | `keys.createKey`, `POST /v1/keys` |
//! | `api.*.read_key`, `api.<apiId>.read_key` | `keys.getKey`, `keys.getVerifications`, `apis.listKeys`, `GET /v1/apis/{apiId}/keys` |
//! | `api.*.update_key`, `api.<apiId>.update_key` | `keys.updateKey`, `keys.updateRemaining` |
//! | `api.*.delete_key`, `api.<apiId>.delete_key` | `keys.deleteKey` |
//! | `api.*.create_api` | `apis.createApi` |
//! | `api.*.read_api`, `api.<apiId>.read_api` | `apis.getApi` |
//! | `api.*.delete_api`, `api.<apiId>.delete_api` | `apis.deleteApi` |
//! | `ratelimit.*.limit`, `ratelimit.<namespace>.limit` | `ratelimits.limit` |
//!
//! An Unkey "api" is a maas keyspace, so `<apiId>` is a keyspace id. A
//! deployment's admin token ([`RootKeys::authenticate`]) counts as a root
//! key with every permission ([`RootAuth::Admin`]).
//!
//! The root keyspace is created on first need; its id is kept in the catalog
//! setting `("setting", "root_keyspace")`, created with create-if-absent so
//! every node of a deployment agrees on it. It is invisible through the
//! operations here: its id is an unknown api, its keys unknown keys, and
//! [`RootKeys::verify`] answers `NOT_FOUND` for a root key, so no root key
//! can read, mint or widen root keys through the key API.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::catalog::{self, SnapshotCell};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::id::{KeyId, KeyspaceId};
use crate::key::{
    CreatedKey, Key, KeyService, KeyUpdate, NewKey, RemainingOp, Verification, VerifyCode,
    VerifyOptions,
};
use crate::keyspace::{Keyspace, NewKeyspace};
use crate::ratelimit::{DEFAULT_NAMESPACE, LimitRequest, LimitResponse, RateLimiter};
use crate::storage::{KeyQuery, MAX_PAGE_SIZE, Page, PageRequest};
use crate::usage::{TimeRange, UsageLedger, VerificationDay, VerificationScope};
use crate::validate;

/// The id of the setting that holds the root keyspace's id.
pub const ROOT_KEYSPACE_SETTING: &str = "root_keyspace";
/// The name of the root keyspace.
pub const ROOT_KEYSPACE_NAME: &str = "root keys";
/// The prefix of root keys (`root_…`).
pub const ROOT_KEY_PREFIX: &str = "root";
/// The longest root key name, in bytes.
pub const MAX_ROOT_KEY_NAME: usize = 256;
/// The most permissions a root key holds.
pub const MAX_ROOT_PERMISSIONS: usize = 1000;
/// The shortest api name (seed 004's `apis.createApi`), in characters.
pub const MIN_API_NAME: usize = 3;
/// How long `keys.getVerifications` looks back when no `start` is given.
pub const DEFAULT_VERIFICATIONS_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// How long a node that found no root keyspace trusts that before reading
/// the setting again: a root keyspace created on another node reaches this
/// one within it.
const ABSENT_TTL: Duration = Duration::from_secs(30);
const MAX_TARGET: usize = 256;

/// What a root key may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootAction {
    /// Create keys in an api.
    CreateKey,
    /// Read keys of an api, their verifications, and list them.
    ReadKey,
    /// Update keys of an api (including their remaining uses).
    UpdateKey,
    /// Delete keys of an api.
    DeleteKey,
    /// Create apis (only `api.*.create_api` allows it).
    CreateApi,
    /// Read an api.
    ReadApi,
    /// Delete an api.
    DeleteApi,
    /// Take from a namespace's rate limits.
    Limit,
}

impl RootAction {
    /// Every action.
    pub const ALL: [RootAction; 8] = [
        RootAction::CreateKey,
        RootAction::ReadKey,
        RootAction::UpdateKey,
        RootAction::DeleteKey,
        RootAction::CreateApi,
        RootAction::ReadApi,
        RootAction::DeleteApi,
        RootAction::Limit,
    ];

    /// The resource it acts on: `api` or `ratelimit`.
    pub fn resource(self) -> &'static str {
        match self {
            RootAction::Limit => "ratelimit",
            _ => "api",
        }
    }

    /// The action's name in permissions: `create_key`, `limit`, ...
    pub fn verb(self) -> &'static str {
        match self {
            RootAction::CreateKey => "create_key",
            RootAction::ReadKey => "read_key",
            RootAction::UpdateKey => "update_key",
            RootAction::DeleteKey => "delete_key",
            RootAction::CreateApi => "create_api",
            RootAction::ReadApi => "read_api",
            RootAction::DeleteApi => "delete_api",
            RootAction::Limit => "limit",
        }
    }

    /// The permission that allows it on `target` (`None`: every target,
    /// `*`): `api.*.create_key`, `api.ks_….read_key`, ...
    pub fn permission(self, target: Option<&str>) -> String {
        format!(
            "{}.{}.{}",
            self.resource(),
            target.unwrap_or("*"),
            self.verb()
        )
    }

    /// The action and target a permission names; `None` for a string that
    /// is not a permission maas knows.
    pub fn parse_permission(p: &str) -> Option<(RootAction, &str)> {
        RootAction::ALL.into_iter().find_map(|a| {
            let target = p
                .strip_prefix(a.resource())?
                .strip_prefix('.')?
                .strip_suffix(a.verb())?
                .strip_suffix('.')?;
            let ok = !target.is_empty()
                && target.len() <= MAX_TARGET
                && !target.chars().any(char::is_control)
                && (a != RootAction::CreateApi || target == "*");
            ok.then_some((a, target))
        })
    }
}

impl fmt::Display for RootAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb())
    }
}

/// Checks a root key permission (see the [module documentation](self)).
pub fn check_permission(p: &str) -> Result<()> {
    match RootAction::parse_permission(p) {
        Some(_) => Ok(()),
        None => Err(Error::invalid(
            "permissions",
            format!(
                "unknown permission '{p}': use api.<*|apiId>.<create_key|read_key|update_key|delete_key|read_api|delete_api>, api.*.create_api or ratelimit.<*|namespace>.limit"
            ),
        )),
    }
}

/// Whether `a` and `b` are equal, in time that does not depend on where
/// they differ nor on their lengths (their blake3 hashes are compared in
/// constant time).
pub fn token_eq(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

/// Who is calling the key API, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootAuth {
    /// The deployment's admin token: every permission.
    Admin,
    /// A root key.
    Key {
        /// The root key's id.
        key_id: KeyId,
        /// Its permissions.
        permissions: Vec<String>,
    },
}

impl RootAuth {
    /// The actor its changes are audited under: `admin` or `rootkey:<id>`.
    pub fn actor(&self) -> Actor {
        match self {
            RootAuth::Admin => Actor::new("admin"),
            RootAuth::Key { key_id, .. } => Actor::new(format!("rootkey:{key_id}")),
        }
    }

    /// Whether it may do `action` on `target` (`None`: on every target,
    /// which only the `*` permission allows).
    pub fn allows(&self, action: RootAction, target: Option<&str>) -> bool {
        match self {
            RootAuth::Admin => true,
            RootAuth::Key { permissions, .. } => permissions.iter().any(|p| {
                RootAction::parse_permission(p)
                    .is_some_and(|(a, t)| a == action && (t == "*" || Some(t) == target))
            }),
        }
    }

    /// Whether it may do `action` on at least one target.
    pub fn allows_any(&self, action: RootAction) -> bool {
        match self {
            RootAuth::Admin => true,
            RootAuth::Key { permissions, .. } => permissions
                .iter()
                .any(|p| RootAction::parse_permission(p).is_some_and(|(a, _)| a == action)),
        }
    }

    /// [`Error::Forbidden`] naming the permission needed unless it
    /// [`allows`](Self::allows) `action` on `target`.
    pub fn require(&self, action: RootAction, target: Option<&str>) -> Result<()> {
        if self.allows(action, target) {
            return Ok(());
        }
        Err(forbidden(action, target))
    }
}

fn forbidden(action: RootAction, target: Option<&str>) -> Error {
    let needed = match target {
        Some(t) if action != RootAction::CreateApi => format!(
            "{} or {}",
            action.permission(None),
            action.permission(Some(t))
        ),
        _ => action.permission(None),
    };
    Error::Forbidden {
        reason: format!("the root key lacks the permission {needed}").into(),
    }
}

fn unauthenticated(reason: &'static str) -> Error {
    Error::Unauthenticated {
        reason: reason.into(),
    }
}

/// A root key as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RootKey {
    /// The key's id.
    pub key_id: KeyId,
    /// Its name.
    pub name: String,
    /// The prefix and first characters of the secret, to recognise it.
    pub start: String,
    /// What it may do.
    pub permissions: Vec<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last authenticated (written behind).
    pub last_used_at: Option<Timestamp>,
}

impl RootKey {
    fn from_key(k: Key) -> Self {
        RootKey {
            key_id: k.id,
            name: k.name.unwrap_or_default(),
            start: k.start,
            permissions: k.permissions,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// A newly created root key, with its secret shown this once.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CreatedRootKey {
    /// The key's id.
    pub key_id: KeyId,
    /// The secret (`root_…`). Hand it over; it is not stored.
    pub key: String,
    /// The prefix and first characters of the secret.
    pub start: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub permissions: Vec<String>,
    /// When it was created.
    pub created_at: Timestamp,
}

impl fmt::Debug for CreatedRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedRootKey")
            .field("key_id", &self.key_id)
            .field("start", &self.start)
            .field("name", &self.name)
            .field("permissions", &self.permissions)
            .field("created_at", &self.created_at)
            .field("key", &"<secret>")
            .finish()
    }
}

/// Where a listing of an api's keys starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFrom {
    /// After this cursor (`apis.listKeys`); `None` for the first page.
    Cursor(Option<String>),
    /// After skipping this many keys (`GET /v1/apis/{apiId}/keys`).
    Offset(u64),
}

/// Root keys, and the key API's operations under their authority.
///
/// Cheap to clone. Every change is made through the [`KeyService`] and
/// audited with the caller's [`RootAuth::actor`].
#[derive(Debug, Clone)]
pub struct RootKeys {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: KeyService,
    clock: SharedClock,
    /// The root keyspace, once known (it never changes).
    keyspace: tokio::sync::OnceCell<KeyspaceId>,
    /// The setting as last read while no root keyspace was known.
    absent: SnapshotCell<Option<KeyspaceId>>,
    /// The user keyspace (`userkeys`), once known (it never changes).
    user_keyspace: tokio::sync::OnceCell<KeyspaceId>,
}

impl RootKeys {
    /// Root keys over `keys`, on the system clock.
    pub fn new(keys: KeyService) -> Self {
        Self::new_with_clock(keys, Arc::new(SystemClock))
    }

    /// Root keys over `keys`, on `clock`.
    pub fn new_with_clock(keys: KeyService, clock: Arc<dyn Clock>) -> Self {
        RootKeys {
            inner: Arc::new(Inner {
                keys,
                clock,
                keyspace: tokio::sync::OnceCell::new(),
                absent: SnapshotCell::new(ABSENT_TTL),
                user_keyspace: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The key service underneath.
    pub fn key_service(&self) -> &KeyService {
        &self.inner.keys
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The root keyspace, created on first use.
    pub async fn keyspace(&self) -> Result<KeyspaceId> {
        self.inner
            .keyspace
            .get_or_try_init(|| {
                catalog::ensure_setting_keyspace(
                    &self.inner.keys,
                    ROOT_KEYSPACE_SETTING,
                    NewKeyspace {
                        name: ROOT_KEYSPACE_NAME.to_owned(),
                        prefix: Some(ROOT_KEY_PREFIX.to_owned()),
                        default_byte_length: None,
                    },
                    self.now(),
                )
            })
            .await
            .cloned()
    }

    /// The root keyspace if it exists (never creates it). While none is
    /// found, the answer is reused for 30 s before the setting is read
    /// again.
    async fn existing_keyspace(&self) -> Result<Option<&KeyspaceId>> {
        if let Some(id) = self.inner.keyspace.get() {
            return Ok(Some(id));
        }
        let records = &*self.inner.keys.storage().records;
        let found = self
            .inner
            .absent
            .get(self.now(), || {
                catalog::setting_keyspace(records, ROOT_KEYSPACE_SETTING)
            })
            .await?;
        match &*found {
            Some(id) => {
                let _ = self.inner.keyspace.set(id.clone());
                Ok(self.inner.keyspace.get())
            }
            None => Ok(None),
        }
    }

    /// Whether `id` is the root keyspace.
    pub async fn is_root_keyspace(&self, id: &KeyspaceId) -> Result<bool> {
        Ok(self.existing_keyspace().await?.is_some_and(|r| r == id))
    }

    /// Whether `id` is a keyspace the Unkey API must not reach: the root
    /// keyspace, or the user keyspace holding users' and tenants' keys
    /// (managed through the MaaS and management APIs; deleting it through
    /// `apis.deleteApi` would break both).
    async fn is_internal_keyspace(&self, id: &KeyspaceId) -> Result<bool> {
        if self.is_root_keyspace(id).await? {
            return Ok(true);
        }
        if let Some(user) = self.inner.user_keyspace.get() {
            return Ok(user == id);
        }
        let records = &*self.inner.keys.storage().records;
        match catalog::setting_keyspace(records, crate::userkeys::USER_KEYSPACE_SETTING).await? {
            Some(user) => {
                let hidden = &user == id;
                let _ = self.inner.user_keyspace.set(user);
                Ok(hidden)
            }
            None => Ok(false),
        }
    }

    // ----- root keys --------------------------------------------------------

    /// Creates a root key named `name` with `permissions` (each checked, see
    /// [`check_permission`]). The secret is in the result and nowhere else.
    /// Invalid input is refused naming the field before anything is written.
    pub async fn create(
        &self,
        actor: &Actor,
        name: &str,
        permissions: Vec<String>,
    ) -> Result<CreatedRootKey> {
        validate::label("name", name, MAX_ROOT_KEY_NAME)?;
        if permissions.len() > MAX_ROOT_PERMISSIONS {
            return Err(Error::invalid(
                "permissions",
                format!("must have at most {MAX_ROOT_PERMISSIONS} entries"),
            ));
        }
        let mut unique: Vec<String> = Vec::with_capacity(permissions.len());
        for p in permissions {
            check_permission(&p)?;
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        let keyspace = self.keyspace().await?;
        let new = NewKey {
            name: Some(name.to_owned()),
            permissions: unique.clone(),
            ..NewKey::in_keyspace(keyspace)
        };
        let created = self.inner.keys.create(actor, new).await?;
        Ok(CreatedRootKey {
            key_id: created.key_id,
            key: created.key,
            start: created.start,
            name: name.to_owned(),
            permissions: unique,
            created_at: self.now(),
        })
    }

    /// Every live root key, oldest first, without secrets.
    pub async fn list(&self) -> Result<Vec<RootKey>> {
        let Some(keyspace) = self.existing_keyspace().await? else {
            return Ok(Vec::new());
        };
        let mut query = KeyQuery {
            keyspace_id: Some(keyspace.clone()),
            page: PageRequest::first(MAX_PAGE_SIZE),
            ..KeyQuery::default()
        };
        let mut out = Vec::new();
        loop {
            let page = self.inner.keys.list(&query).await?;
            out.extend(page.items.into_iter().map(RootKey::from_key));
            match page.cursor {
                Some(c) => query.page.cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Deletes the root key `id`: it stops authenticating at once on this
    /// node. [`Error::NotFound`] (kind `root key`) if no live root key has
    /// that id.
    pub async fn delete(&self, actor: &Actor, id: &KeyId) -> Result<()> {
        let not_found = || Error::not_found("root key", id.as_str());
        let Some(keyspace) = self.existing_keyspace().await? else {
            return Err(not_found());
        };
        let key = match self.inner.keys.get(id).await {
            Err(e) if e.is_not_found() => return Err(not_found()),
            other => other?,
        };
        if key.keyspace_id != *keyspace {
            return Err(not_found());
        }
        match self.inner.keys.delete(actor, id).await {
            Err(e) if e.is_not_found() => Err(not_found()),
            other => other,
        }
    }

    /// Who presents `bearer`: the admin token (compared in constant time,
    /// ignored when `None` or empty) is [`RootAuth::Admin`]; a live, enabled,
    /// unexpired root key is [`RootAuth::Key`] with its permissions.
    /// [`Error::Unauthenticated`] for a missing credential or anything else.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        admin_token: Option<&str>,
    ) -> Result<RootAuth> {
        let Some(presented) = bearer else {
            return Err(unauthenticated(
                "a root key is required: Authorization: Bearer <root key>",
            ));
        };
        if admin_token.is_some_and(|t| !t.is_empty() && token_eq(t, presented)) {
            return Ok(RootAuth::Admin);
        }
        let Some(keyspace) = self.existing_keyspace().await? else {
            return Err(unauthenticated("the root key is not valid"));
        };
        let opts = VerifyOptions {
            keyspace_id: Some(keyspace),
            permissions: None,
        };
        let v = self.inner.keys.verify(presented, &opts).await?;
        match (v.code(), v.key_id()) {
            (VerifyCode::Valid, Some(id)) => Ok(RootAuth::Key {
                key_id: id.clone(),
                permissions: v.permissions().to_vec(),
            }),
            (VerifyCode::Disabled, _) => Err(unauthenticated("the root key is disabled")),
            (VerifyCode::Expired, _) => Err(unauthenticated("the root key has expired")),
            _ => Err(unauthenticated("the root key is not valid")),
        }
    }

    // ----- the key API under a root key's authority ---------------------------

    /// Verifies `key` as the public `keys.verifyKey` does: as
    /// [`KeyService::verify`], except that root keys are `NOT_FOUND`.
    pub async fn verify(
        &self,
        key: impl AsRef<[u8]>,
        opts: &VerifyOptions<'_>,
    ) -> Result<Verification> {
        let v = self.inner.keys.verify(key, opts).await?;
        if let Some(ks) = v.keyspace_id()
            && self.is_root_keyspace(ks).await?
        {
            return Ok(Verification::bare(VerifyCode::NotFound));
        }
        Ok(v)
    }

    /// The api `id` if `auth` may do `action` on it: [`Error::Forbidden`]
    /// first, then [`Error::NotFound`] (also for the root keyspace).
    async fn authorize_api(
        &self,
        auth: &RootAuth,
        action: RootAction,
        id: &KeyspaceId,
    ) -> Result<Keyspace> {
        auth.require(action, Some(id.as_str()))?;
        if self.is_internal_keyspace(id).await? {
            return Err(Error::not_found("keyspace", id.as_str()));
        }
        self.inner.keys.get_keyspace(id).await
    }

    /// The live key `id` if `auth` may do `action` on its api:
    /// [`Error::Forbidden`] when `auth` may do it on no api at all, then
    /// [`Error::NotFound`] (also for root keys), then [`Error::Forbidden`]
    /// for the key's api.
    async fn authorize_key(&self, auth: &RootAuth, action: RootAction, id: &KeyId) -> Result<Key> {
        if !auth.allows_any(action) {
            return Err(forbidden(action, None));
        }
        let key = self.inner.keys.get(id).await?;
        if self.is_internal_keyspace(&key.keyspace_id).await? {
            return Err(Error::not_found("key", id.as_str()));
        }
        auth.require(action, Some(key.keyspace_id.as_str()))?;
        Ok(key)
    }

    /// `apis.createApi`: a keyspace named `name` (at least 3 characters),
    /// without a prefix, 16 random bytes per key. Needs `api.*.create_api`.
    pub async fn create_api(&self, auth: &RootAuth, name: &str) -> Result<Keyspace> {
        auth.require(RootAction::CreateApi, None)?;
        if name.chars().count() < MIN_API_NAME {
            return Err(Error::invalid(
                "name",
                format!("must be at least {MIN_API_NAME} characters"),
            ));
        }
        let new = NewKeyspace {
            name: name.to_owned(),
            prefix: None,
            default_byte_length: None,
        };
        self.inner.keys.create_keyspace(&auth.actor(), new).await
    }

    /// `apis.getApi`: the api `id`. Needs `read_api` on it.
    pub async fn get_api(&self, auth: &RootAuth, id: &KeyspaceId) -> Result<Keyspace> {
        self.authorize_api(auth, RootAction::ReadApi, id).await
    }

    /// `apis.deleteApi`: deletes the api `id` and its keys. Needs
    /// `delete_api` on it.
    pub async fn delete_api(&self, auth: &RootAuth, id: &KeyspaceId) -> Result<()> {
        self.authorize_api(auth, RootAction::DeleteApi, id).await?;
        self.inner.keys.delete_keyspace(&auth.actor(), id).await
    }

    /// `apis.listKeys` and `GET /v1/apis/{apiId}/keys`: up to `limit` live
    /// keys of the api `id` (of `owner` only, if given), by id, from `from`.
    /// The page's `total` counts every live key of the api. Needs
    /// `read_key` on it.
    pub async fn list_api_keys(
        &self,
        auth: &RootAuth,
        id: &KeyspaceId,
        owner: Option<&str>,
        from: ListFrom,
        limit: usize,
    ) -> Result<Page<Key>> {
        self.authorize_api(auth, RootAction::ReadKey, id).await?;
        let keys = &self.inner.keys;
        let mut query = KeyQuery {
            keyspace_id: Some(id.clone()),
            owner_id: owner.map(str::to_owned),
            include_deleted: false,
            page: PageRequest::first(limit),
        };
        let mut page = match from {
            ListFrom::Cursor(cursor) => {
                query.page.cursor = cursor;
                keys.list(&query).await?
            }
            ListFrom::Offset(offset) => self.list_at_offset(query, offset, limit).await?,
        };
        if owner.is_some() {
            let all = KeyQuery {
                keyspace_id: Some(id.clone()),
                page: PageRequest::first(1),
                ..KeyQuery::default()
            };
            page.total = keys.list(&all).await?.total;
        }
        Ok(page)
    }

    /// The page of `limit` keys of `query` after skipping `offset`.
    async fn list_at_offset(
        &self,
        mut query: KeyQuery,
        offset: u64,
        limit: usize,
    ) -> Result<Page<Key>> {
        let keys = &self.inner.keys;
        let mut skip = offset;
        // Walk the ids only (pages of the largest size) up to the offset.
        while skip > 0 {
            query.page.limit = usize::try_from(skip)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE);
            let page = self.inner.keys.storage().keys.list_keys(&query).await?;
            skip -= page.items.len() as u64;
            match page.cursor {
                Some(c) => query.page.cursor = Some(c),
                // Past the end: an empty page with the total.
                None => {
                    return Ok(Page {
                        items: Vec::new(),
                        cursor: None,
                        total: page.total,
                    });
                }
            }
        }
        query.page.limit = limit;
        keys.list(&query).await
    }

    /// `keys.createKey` and `POST /v1/keys`. Needs `create_key` on the api.
    pub async fn create_key(&self, auth: &RootAuth, new: NewKey) -> Result<CreatedKey> {
        self.authorize_api(auth, RootAction::CreateKey, &new.keyspace_id)
            .await?;
        self.inner.keys.create(&auth.actor(), new).await
    }

    /// `keys.getKey`: the live key `id`. Needs `read_key` on its api.
    pub async fn get_key(&self, auth: &RootAuth, id: &KeyId) -> Result<Key> {
        self.authorize_key(auth, RootAction::ReadKey, id).await
    }

    /// `keys.updateKey`. Needs `update_key` on the key's api.
    pub async fn update_key(&self, auth: &RootAuth, id: &KeyId, update: KeyUpdate) -> Result<Key> {
        self.authorize_key(auth, RootAction::UpdateKey, id).await?;
        self.inner.keys.update(&auth.actor(), id, update).await
    }

    /// `keys.updateRemaining` ([`KeyService::update_remaining`]). Needs
    /// `update_key` on the key's api.
    pub async fn update_remaining(
        &self,
        auth: &RootAuth,
        id: &KeyId,
        op: RemainingOp,
        value: Option<i64>,
    ) -> Result<Option<i64>> {
        self.authorize_key(auth, RootAction::UpdateKey, id).await?;
        self.inner
            .keys
            .update_remaining(&auth.actor(), id, op, value)
            .await
    }

    /// `keys.deleteKey` (a soft delete: the key stops verifying at once).
    /// Needs `delete_key` on the key's api.
    pub async fn delete_key(&self, auth: &RootAuth, id: &KeyId) -> Result<()> {
        self.authorize_key(auth, RootAction::DeleteKey, id).await?;
        self.inner.keys.delete(&auth.actor(), id).await
    }

    /// `ratelimits.limit` ([`RateLimiter::limit`]). Needs `limit` on the
    /// request's namespace (`default` when it names none).
    pub async fn limit(
        &self,
        auth: &RootAuth,
        limiter: &RateLimiter,
        req: &LimitRequest,
    ) -> Result<LimitResponse> {
        let ns = req.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        auth.require(RootAction::Limit, Some(ns))?;
        limiter.limit(req).await
    }

    /// `keys.getVerifications`: verification outcomes per UTC day from
    /// `ledger`, of the key `key` or of every key of `owner` (at least one
    /// is needed; both narrow to the key if it has that owner).
    ///
    /// The range is `start..=end` in unix ms: `end` defaults to now, `start`
    /// to [`DEFAULT_VERIFICATIONS_WINDOW`] before `end`. A key needs
    /// `read_key` on its api; an owner alone spans apis and needs
    /// `api.*.read_key`.
    pub async fn verifications(
        &self,
        auth: &RootAuth,
        ledger: &UsageLedger,
        key: Option<&KeyId>,
        owner: Option<&str>,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
    ) -> Result<Vec<VerificationDay>> {
        let end = end.unwrap_or_else(|| self.now());
        let window = i64::try_from(DEFAULT_VERIFICATIONS_WINDOW.as_millis()).unwrap_or(i64::MAX);
        let start = start.unwrap_or_else(|| end.add_millis(-window));
        if start > end {
            return Err(Error::invalid("start", "must not be after 'end'"));
        }
        let max = ledger.config().max_range;
        let range = TimeRange::new(start, end.add_millis(1));
        if range
            .check(i64::try_from(max.as_millis()).unwrap_or(i64::MAX))
            .is_err()
        {
            return Err(Error::invalid(
                "start",
                format!(
                    "the range from 'start' to 'end' must be at most {} days",
                    max.as_secs() / 86_400
                ),
            ));
        }
        let scope = match (key, owner) {
            (None, None) => {
                return Err(Error::invalid(
                    "keyId",
                    "either keyId or ownerId must be provided",
                ));
            }
            (Some(id), owner) => {
                self.authorize_key(auth, RootAction::ReadKey, id).await?;
                VerificationScope {
                    key_id: Some(id.to_string()),
                    owner_id: owner.map(str::to_owned),
                    ..VerificationScope::default()
                }
            }
            (None, Some(owner)) => {
                auth.require(RootAction::ReadKey, None)?;
                VerificationScope::owner(owner)
            }
        };
        ledger.verifications(range, &scope).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(perms: &[&str]) -> RootAuth {
        RootAuth::Key {
            key_id: KeyId::generate(Timestamp::EPOCH),
            permissions: perms.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn permissions_parse_and_match() {
        assert_eq!(
            RootAction::parse_permission("api.*.create_key"),
            Some((RootAction::CreateKey, "*"))
        );
        assert_eq!(
            RootAction::parse_permission("ratelimit.email.outbound.limit"),
            Some((RootAction::Limit, "email.outbound"))
        );
        for bad in [
            "",
            "api",
            "api..read_key",
            "api.*.read",
            "api.*.read_keys",
            "apis.*.read_key",
            "ratelimit.*.create_key",
            "api.ks_1.create_api",
            "*",
        ] {
            assert!(check_permission(bad).is_err(), "{bad}");
        }
        for a in RootAction::ALL {
            assert!(check_permission(&a.permission(None)).is_ok());
            assert_eq!(
                RootAction::parse_permission(&a.permission(None)),
                Some((a, "*"))
            );
        }

        let narrow = key(&["api.ks_a.read_key", "ratelimit.*.limit"]);
        assert!(narrow.allows(RootAction::ReadKey, Some("ks_a")));
        assert!(!narrow.allows(RootAction::ReadKey, Some("ks_b")));
        assert!(!narrow.allows(RootAction::ReadKey, None));
        assert!(narrow.allows_any(RootAction::ReadKey));
        assert!(!narrow.allows_any(RootAction::UpdateKey));
        assert!(narrow.allows(RootAction::Limit, Some("anything")));
        let e = narrow
            .require(RootAction::ReadKey, Some("ks_b"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "forbidden: the root key lacks the permission api.*.read_key or api.ks_b.read_key"
        );
        assert!(RootAuth::Admin.allows(RootAction::CreateApi, None));
        assert_eq!(RootAuth::Admin.actor().as_str(), "admin");
        assert!(narrow.actor().as_str().starts_with("rootkey:key_"));
    }

    #[test]
    fn token_eq_compares_whole_strings() {
        assert!(token_eq("secret", "secret"));
        assert!(!token_eq("secret", "secreT"));
        assert!(!token_eq("secret", "secret2"));
        assert!(!token_eq("", "x"));
    }

    #[test]
    fn created_root_key_debug_hides_the_secret() {
        let k = CreatedRootKey {
            key_id: KeyId::generate(Timestamp::EPOCH),
            key: "root_secret".into(),
            start: "root_se".into(),
            name: "ci".into(),
            permissions: vec![],
            created_at: Timestamp::EPOCH,
        };
        assert!(!format!("{k:?}").contains("root_secret"));
    }
}
