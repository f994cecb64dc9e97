//! Tiers: a user's groups map to the highest tier any of them belongs to;
//! the tier carries the limits (requests and tokens per minute) and the
//! models its users may call.
//!
//! [`TierService`] keeps tiers as catalog records (kind [`TIER_KIND`], id =
//! the tier's name), audits every change, and answers
//! [`TierService::lookup`] from an in-memory snapshot.
//!
//! # Which tier wins
//!
//! Among the tiers that list at least one of the groups, the one with the
//! highest `level` wins; between tiers of the same level, the name that
//! sorts first (byte order) wins. [`select_tier`] is that rule as a pure
//! function.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::audit::Actor;
use crate::catalog::{self, SnapshotCell};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::model::check_model_id;
use crate::patch::Patch;
use crate::storage::{PageRequest, Storage};
use crate::validate;

/// The record kind of tiers.
pub const TIER_KIND: &str = "tier";
/// The longest tier name and group, in bytes.
pub const MAX_TIER_NAME: usize = 128;
/// The most groups a tier may list.
pub const MAX_TIER_GROUPS: usize = 1000;
/// The most model ids a tier may list.
pub const MAX_TIER_MODELS: usize = 1000;

/// Which models a tier may use.
///
/// In JSON: `["*"]` for all (the string `"all"` is read too), or a list of
/// model ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ModelAccess {
    /// Every model of the catalog.
    #[default]
    All,
    /// Only these model ids.
    List(Vec<String>),
}

impl ModelAccess {
    /// Whether the model `id` is allowed.
    pub fn allows(&self, id: &str) -> bool {
        match self {
            ModelAccess::All => true,
            ModelAccess::List(ids) => ids.iter().any(|m| m == id),
        }
    }
}

impl Serialize for ModelAccess {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelAccess::All => ["*"].serialize(s),
            ModelAccess::List(ids) => ids.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ModelAccess {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Word(String),
            List(Vec<String>),
        }
        match Repr::deserialize(d)? {
            Repr::Word(w) if w == "all" => Ok(ModelAccess::All),
            Repr::Word(w) => Err(serde::de::Error::custom(format!(
                "expected [\"*\"] or a list of model ids, got \"{w}\""
            ))),
            Repr::List(ids) if ids.len() == 1 && ids[0] == "*" => Ok(ModelAccess::All),
            Repr::List(ids) if ids.iter().any(|i| i == "*") => Err(serde::de::Error::custom(
                "\"*\" (all models) cannot be combined with model ids",
            )),
            Repr::List(ids) => Ok(ModelAccess::List(ids)),
        }
    }
}

/// `["*"]` (every model) or a list of model ids; requests may also send
/// the string `"all"`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ModelAccess {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let ids = ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(
                "[\"*\"] for every model of the catalog, or a list of model ids",
            ));
        let all = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["all"]))
            .description(Some("every model (read in requests; answers use [\"*\"])"));
        OneOfBuilder::new().item(ids).item(all).into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ModelAccess {}

/// A tier: who belongs to it (groups), what they may do (limits) and use
/// (models).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tier {
    /// Unique name; the id of the tier (immutable).
    pub name: String,
    /// Rank: the highest level among a user's tiers wins.
    pub level: u32,
    /// The groups whose members belong to this tier.
    pub groups: Vec<String>,
    /// Requests per minute (≥ 1).
    pub requests_per_minute: u64,
    /// Tokens per minute (≥ 1).
    pub tokens_per_minute: u64,
    /// The most tokens one request may ask for; `None` for no per-request cap.
    pub max_tokens_per_request: Option<u64>,
    /// The models its users may call.
    pub models: ModelAccess,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Optimistic-concurrency version, 1 at creation.
    pub version: u64,
}

/// What to create a tier with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewTier {
    /// Unique name (a label of at most [`MAX_TIER_NAME`] bytes).
    pub name: String,
    /// Rank.
    #[serde(default)]
    pub level: u32,
    /// Groups (labels; duplicates are dropped).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Requests per minute (≥ 1).
    pub requests_per_minute: u64,
    /// Tokens per minute (≥ 1).
    pub tokens_per_minute: u64,
    /// Per-request token cap (≥ 1), if any.
    #[serde(default)]
    pub max_tokens_per_request: Option<u64>,
    /// Allowed models; default all.
    #[serde(default)]
    pub models: ModelAccess,
}

/// A partial update of a tier; absent fields are kept. The name cannot
/// change (it is the tier's id): create the new tier and delete the old one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TierUpdate {
    /// New level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// New groups (replaced as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// New requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// New tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// New per-request token cap, or `null` for none.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub max_tokens_per_request: Patch<u64>,
    /// New model access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<ModelAccess>,
}

/// The default tiers of the MaaS user guide: free (level 0, every
/// authenticated user, 5 requests and 100 tokens per minute), premium
/// (level 1, `premium-users`, 20 and 50,000) and enterprise (level 2,
/// `enterprise-users`, 50 and 100,000), each allowed every model.
pub fn default_tiers() -> Vec<NewTier> {
    let tier = |name: &str, level, group: &str, rpm, tpm| NewTier {
        name: name.to_owned(),
        level,
        groups: vec![group.to_owned()],
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        max_tokens_per_request: None,
        models: ModelAccess::All,
    };
    vec![
        tier("free", 0, "system:authenticated", 5, 100),
        tier("premium", 1, "premium-users", 20, 50_000),
        tier("enterprise", 2, "enterprise-users", 50, 100_000),
    ]
}

impl Tier {
    fn validate(&mut self) -> Result<()> {
        validate::label("name", &self.name, MAX_TIER_NAME)?;
        self.groups = validate::labels(
            "groups",
            std::mem::take(&mut self.groups),
            MAX_TIER_NAME,
            MAX_TIER_GROUPS,
        )?;
        if self.requests_per_minute == 0 {
            return Err(Error::invalid("requests_per_minute", "must be at least 1"));
        }
        if self.tokens_per_minute == 0 {
            return Err(Error::invalid("tokens_per_minute", "must be at least 1"));
        }
        if self.max_tokens_per_request == Some(0) {
            return Err(Error::invalid(
                "max_tokens_per_request",
                "must be at least 1 (null for no cap)",
            ));
        }
        if let ModelAccess::List(ids) = &mut self.models {
            if ids.len() > MAX_TIER_MODELS {
                return Err(Error::invalid(
                    "models",
                    format!("must have at most {MAX_TIER_MODELS} entries"),
                ));
            }
            for id in ids.iter() {
                check_model_id("models", id)?;
            }
            let mut seen = Vec::with_capacity(ids.len());
            ids.retain(|id| {
                let new = !seen.contains(id);
                if new {
                    seen.push(id.clone());
                }
                new
            });
        }
        Ok(())
    }

    /// Whether `self` wins over `other` by the lookup rule (higher level,
    /// then name first).
    fn outranks(&self, other: &Tier) -> bool {
        (self.level, std::cmp::Reverse(&self.name)) > (other.level, std::cmp::Reverse(&other.name))
    }
}

/// The groups of a lookup as the MaaS API's message shows them: each
/// quoted, separated by a space, in brackets (`['a' 'b']`).
pub fn format_groups(groups: &[String]) -> String {
    let mut out = String::from("[");
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "'{g}'");
    }
    out.push(']');
    out
}

/// [`Error::InvalidInput`] (`groups`) unless some group is not empty.
fn check_lookup_groups(groups: &[String]) -> Result<()> {
    if groups.iter().all(|g| g.is_empty()) {
        return Err(Error::invalid("groups", "must name at least one group"));
    }
    Ok(())
}

/// [`Error::NoTierMapping`] for `groups`: empty strings and duplicates
/// dropped (first occurrence kept).
fn no_mapping<S: AsRef<str>>(groups: &[S]) -> Error {
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        let g = g.as_ref();
        if !g.is_empty() && !out.iter().any(|o| o == g) {
            out.push(g.to_owned());
        }
    }
    Error::NoTierMapping { groups: out }
}

/// The tier `groups` map to: among `tiers` listing any of the groups, the
/// highest level; on equal levels, the name that sorts first. `None` if no
/// tier lists any of them.
///
/// The rule of [`TierService::lookup`], without a store.
pub fn select_tier<'a>(
    tiers: impl IntoIterator<Item = &'a Tier>,
    groups: &[String],
) -> Option<&'a Tier> {
    let mut best: Option<&Tier> = None;
    for t in tiers {
        if t.groups.iter().any(|g| groups.contains(g)) && best.is_none_or(|b| t.outranks(b)) {
            best = Some(t);
        }
    }
    best
}

/// Tiers indexed for lookups: each group maps to the rank of its best tier,
/// so a lookup is one hash probe per group.
#[derive(Debug, Default)]
pub struct TierIndex {
    /// By rank: best first (level descending, then name ascending).
    ranked: Vec<Arc<Tier>>,
    /// Group -> rank of the best tier listing it.
    by_group: crate::FastMap<String, usize>,
    /// Name -> rank.
    by_name: crate::FastMap<String, usize>,
}

impl TierIndex {
    /// The index of `tiers` (names are expected to be unique; with
    /// duplicates, the first by rank is kept).
    pub fn new(tiers: impl IntoIterator<Item = Tier>) -> Self {
        let mut ranked: Vec<Arc<Tier>> = tiers.into_iter().map(Arc::new).collect();
        ranked.sort_by(|a, b| b.level.cmp(&a.level).then_with(|| a.name.cmp(&b.name)));
        let mut by_group = crate::FastMap::default();
        let mut by_name = crate::FastMap::default();
        for (rank, t) in ranked.iter().enumerate() {
            by_name.entry(t.name.clone()).or_insert(rank);
            for g in &t.groups {
                by_group.entry(g.clone()).or_insert(rank);
            }
        }
        TierIndex {
            ranked,
            by_group,
            by_name,
        }
    }

    /// The tier `groups` map to (the rule of [`select_tier`]).
    pub fn select<S: AsRef<str>>(&self, groups: &[S]) -> Option<&Arc<Tier>> {
        groups
            .iter()
            .filter_map(|g| self.by_group.get(g.as_ref()))
            .min()
            .and_then(|&rank| self.ranked.get(rank))
    }

    /// The tier named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Tier>> {
        self.by_name.get(name).and_then(|&r| self.ranked.get(r))
    }

    /// Every tier, best first.
    pub fn tiers(&self) -> &[Arc<Tier>] {
        &self.ranked
    }

    /// The lowest-level tier (between tiers of that level, the name that
    /// sorts first), if there is any tier.
    pub fn lowest(&self) -> Option<&Arc<Tier>> {
        let level = self.ranked.last()?.level;
        self.ranked.iter().find(|t| t.level == level)
    }
}

/// Settings of a [`TierService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierServiceConfig {
    /// How long the in-memory snapshot of tiers answers lookups before it is
    /// read from the store again. This bounds how long a change made on
    /// another node takes to reach this one; changes made through this
    /// service apply on this node at once. Default 30 s.
    pub snapshot_ttl: Duration,
}

impl Default for TierServiceConfig {
    fn default() -> Self {
        TierServiceConfig {
            snapshot_ttl: catalog::DEFAULT_SNAPSHOT_TTL,
        }
    }
}

/// Creates, reads, changes and removes tiers (each change audited), and
/// looks up the tier of a set of groups.
///
/// Cheap to clone (shared state). Lookups read an in-memory snapshot
/// ([`TierServiceConfig::snapshot_ttl`]).
#[derive(Debug, Clone)]
pub struct TierService {
    inner: Arc<TierInner>,
}

#[derive(Debug)]
struct TierInner {
    storage: Storage,
    clock: SharedClock,
    snapshot: SnapshotCell<TierIndex>,
    /// Tenants' tiers by tenant name, with when each was read.
    tenant_tiers: Mutex<crate::FastMap<String, (Timestamp, Option<String>)>>,
    snapshot_ttl: Duration,
}

/// At most this many tenants' tiers are remembered at once.
const TENANT_TIERS_MAX: usize = 100_000;

impl TierService {
    /// A service over `storage` using the system clock.
    pub fn new(storage: Storage) -> Self {
        Self::new_with_clock(storage, Arc::new(SystemClock))
    }

    /// A service over `storage` using `clock`.
    pub fn new_with_clock(storage: Storage, clock: Arc<dyn Clock>) -> Self {
        Self::new_with_config(storage, TierServiceConfig::default(), clock)
    }

    /// A service with explicit settings, on `clock`.
    pub fn new_with_config(
        storage: Storage,
        config: TierServiceConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        TierService {
            inner: Arc::new(TierInner {
                storage,
                clock,
                snapshot: SnapshotCell::new(config.snapshot_ttl),
                tenant_tiers: Mutex::default(),
                snapshot_ttl: config.snapshot_ttl,
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    async fn load_index(&self) -> Result<TierIndex> {
        Ok(TierIndex::new(self.list().await?))
    }

    /// The snapshot of every tier, reloaded from the store when older than
    /// the TTL.
    pub async fn snapshot(&self) -> Result<Arc<TierIndex>> {
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

    /// Creates a tier. [`Error::Conflict`] if the name is taken.
    pub async fn create(&self, actor: &Actor, new: NewTier) -> Result<Tier> {
        let now = self.now();
        let mut tier = Tier {
            name: new.name,
            level: new.level,
            groups: new.groups,
            requests_per_minute: new.requests_per_minute,
            tokens_per_minute: new.tokens_per_minute,
            max_tokens_per_request: new.max_tokens_per_request,
            models: new.models,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        tier.validate()?;
        catalog::create_entry(&*self.inner.storage.records, actor, &tier, now).await?;
        self.refresh().await;
        Ok(tier)
    }

    /// The tier `name`, read from the store.
    pub async fn get(&self, name: &str) -> Result<Tier> {
        catalog::get_entry(&*self.inner.storage.records, name).await
    }

    /// The tier `name` from the snapshot (no I/O unless it is stale).
    pub async fn get_cached(&self, name: &str) -> Result<Arc<Tier>> {
        self.snapshot()
            .await?
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found("tier", name))
    }

    /// Every tier, by name, read from the store.
    pub async fn list(&self) -> Result<Vec<Tier>> {
        catalog::list_entries(&*self.inner.storage.records).await
    }

    /// Applies `update` to the tier `name`; retried on concurrent changes.
    pub async fn update(&self, actor: &Actor, name: &str, update: TierUpdate) -> Result<Tier> {
        let now = self.now();
        let records = &*self.inner.storage.records;
        let after =
            catalog::update_entry(records, actor, name, "tier.update", now, |t: &mut Tier| {
                if let Some(l) = update.level {
                    t.level = l;
                }
                if let Some(g) = &update.groups {
                    t.groups = g.clone();
                }
                if let Some(r) = update.requests_per_minute {
                    t.requests_per_minute = r;
                }
                if let Some(r) = update.tokens_per_minute {
                    t.tokens_per_minute = r;
                }
                update
                    .max_tokens_per_request
                    .clone()
                    .apply_to(&mut t.max_tokens_per_request);
                if let Some(m) = &update.models {
                    t.models = m.clone();
                }
                t.updated_at = now;
                t.validate()
            })
            .await?;
        self.refresh().await;
        Ok(after)
    }

    /// Removes the tier `name`.
    pub async fn delete(&self, actor: &Actor, name: &str) -> Result<()> {
        catalog::delete_entry::<Tier>(&*self.inner.storage.records, actor, name, self.now())
            .await?;
        self.refresh().await;
        Ok(())
    }

    /// The tier of a user in `groups`: the highest level among the tiers
    /// listing any of them, ties by name (see the [module](self) docs).
    ///
    /// Empty strings are ignored; [`Error::InvalidInput`] (`groups`) if no
    /// group is left. [`Error::NoTierMapping`] if no tier lists any of them.
    /// Reads the snapshot: no I/O unless it is older than the TTL.
    pub async fn lookup(&self, groups: &[String]) -> Result<Arc<Tier>> {
        check_lookup_groups(groups)?;
        // Empty strings never match: tier groups are non-empty labels.
        let index = self.snapshot().await?;
        index
            .select(groups)
            .cloned()
            .ok_or_else(|| no_mapping(groups))
    }

    /// The tier a caller is served at. A caller with groups (a user) gets
    /// the tier they map to ([`Self::lookup`]). A caller without groups (a
    /// tenant's API key) is served as its tenant (the identity's user
    /// name): the tenant's `tier`, or the lowest-level tier when it has none
    /// or does not exist yet. A tenant's tier is read from the store at most
    /// once per snapshot TTL (changes through the management API of this
    /// node apply at once, see [`Self::forget_tenant_tiers`]).
    ///
    /// [`Error::Forbidden`] when there is no tier at all, or the tenant's
    /// tier does not exist; the errors of [`Self::lookup`] otherwise.
    pub async fn tier_of(&self, identity: &Identity) -> Result<Arc<Tier>> {
        if identity.groups.iter().any(|g| !g.is_empty()) {
            return self.lookup(&identity.groups).await;
        }
        let index = self.snapshot().await?;
        match self.tenant_tier(&identity.user).await? {
            Some(name) => index.get(&name).cloned().ok_or_else(|| Error::Forbidden {
                reason: format!("the tenant's tier '{name}' does not exist").into(),
            }),
            None => index.lowest().cloned().ok_or_else(|| Error::Forbidden {
                reason: "no tier exists".into(),
            }),
        }
    }

    /// The tier name of tenant `name` (`None`: none assigned, or no such
    /// tenant), cached for the snapshot TTL.
    async fn tenant_tier(&self, name: &str) -> Result<Option<String>> {
        let now = self.now();
        let ttl = catalog::millis(self.inner.snapshot_ttl);
        let fresh = |at: Timestamp| at <= now && now.as_millis() - at.as_millis() < ttl;
        if let Some((at, tier)) = self.tenant_tiers().get(name)
            && fresh(*at)
        {
            return Ok(tier.clone());
        }
        let tier = self
            .inner
            .storage
            .tenants
            .get_tenant_by_name(name)
            .await?
            .and_then(|t| t.tier);
        let mut cache = self.tenant_tiers();
        if cache.len() >= TENANT_TIERS_MAX {
            cache.retain(|_, (at, _)| fresh(*at));
            if cache.len() >= TENANT_TIERS_MAX {
                cache.clear();
            }
        }
        cache.insert(name.to_owned(), (now, tier.clone()));
        Ok(tier)
    }

    fn tenant_tiers(&self) -> MutexGuard<'_, crate::FastMap<String, (Timestamp, Option<String>)>> {
        self.inner
            .tenant_tiers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the tenants' tiers read so far, so the next request of each
    /// tenant reads its tier again (after a tenant changed on this node).
    pub fn forget_tenant_tiers(&self) {
        self.tenant_tiers().clear();
    }

    /// Creates the [`default_tiers`] if there is no tier at all; returns the
    /// tiers it created (none if any tier existed). Safe to run on several
    /// nodes at once: a default another node created meanwhile is skipped.
    pub async fn ensure_defaults(&self, actor: &Actor) -> Result<Vec<Tier>> {
        let any = self
            .inner
            .storage
            .records
            .list_records(TIER_KIND, &PageRequest::first(1))
            .await?;
        if any.total > 0 {
            return Ok(Vec::new());
        }
        let mut created = Vec::new();
        let mut elsewhere = false;
        for new in default_tiers() {
            match self.create(actor, new).await {
                Ok(t) => created.push(t),
                Err(Error::Conflict { .. }) => elsewhere = true,
                Err(e) => return Err(e),
            }
        }
        if elsewhere {
            // Another node created some: this node's snapshot, refreshed
            // after its own creations, may predate theirs.
            self.refresh().await;
        }
        Ok(created)
    }
}

impl catalog::Entry for Tier {
    const KIND: &'static str = TIER_KIND;
    fn id(&self) -> &str {
        &self.name
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(name: &str, level: u32, groups: &[&str]) -> Tier {
        Tier {
            name: name.into(),
            level,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            requests_per_minute: 1,
            tokens_per_minute: 1,
            max_tokens_per_request: None,
            models: ModelAccess::All,
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
            version: 1,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn selection_table() {
        let tiers = vec![
            tier("free", 0, &["system:authenticated"]),
            tier("premium", 1, &["premium-users", "shared"]),
            tier("enterprise", 2, &["enterprise-users"]),
            // Ties on level 1: "gold" sorts before "premium".
            tier("gold", 1, &["gold-users", "shared"]),
            tier("zeta", 1, &["gold-users"]),
        ];
        let index = TierIndex::new(tiers.clone());
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["system:authenticated"], Some("free")),
            (&["premium-users"], Some("premium")),
            (&["system:authenticated", "premium-users"], Some("premium")),
            (&["premium-users", "system:authenticated"], Some("premium")),
            (
                &["system:authenticated", "premium-users", "enterprise-users"],
                Some("enterprise"),
            ),
            (&["shared"], Some("gold")),
            (&["gold-users"], Some("gold")),
            (&["premium-users", "gold-users"], Some("gold")),
            (&["unknown"], None),
            (&["unknown", "premium-users"], Some("premium")),
            (&["premium-users", "premium-users"], Some("premium")),
            (&[], None),
            (&["PREMIUM-USERS"], None),
        ];
        for (groups, want) in cases {
            let groups = strings(groups);
            let pure = select_tier(&tiers, &groups).map(|t| t.name.as_str());
            let indexed = index.select(&groups).map(|t| t.name.as_str());
            assert_eq!(pure, *want, "select_tier {groups:?}");
            assert_eq!(indexed, *want, "TierIndex {groups:?}");
        }
        assert_eq!(index.get("gold").unwrap().level, 1);
        assert!(index.get("nope").is_none());
        let order: Vec<&str> = index.tiers().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, ["enterprise", "gold", "premium", "zeta", "free"]);
    }

    #[test]
    fn selection_agrees_with_index_on_random_tables() {
        use proptest::prelude::*;
        let groups = prop::collection::vec(0..6u8, 0..4);
        let table = prop::collection::vec((0..3u32, groups.clone()), 0..8);
        proptest!(|(table in table, asked in groups)| {
            let tiers: Vec<Tier> = table
                .iter()
                .enumerate()
                .map(|(i, (level, gs))| {
                    let gs: Vec<String> = gs.iter().map(|g| format!("g{g}")).collect();
                    let gs: Vec<&str> = gs.iter().map(String::as_str).collect();
                    tier(&format!("t{}", 7 - i), *level, &gs)
                })
                .collect();
            let asked: Vec<String> = asked.iter().map(|g| format!("g{g}")).collect();
            let index = TierIndex::new(tiers.clone());
            prop_assert_eq!(
                select_tier(&tiers, &asked).map(|t| t.name.clone()),
                index.select(&asked).map(|t| t.name.clone())
            );
        });
    }

    #[test]
    fn lookup_groups_are_checked_and_cleaned() {
        assert!(matches!(
            check_lookup_groups(&[]),
            Err(Error::InvalidInput { field, .. }) if field == "groups"
        ));
        assert!(matches!(
            check_lookup_groups(&strings(&["", ""])),
            Err(Error::InvalidInput { field, .. }) if field == "groups"
        ));
        assert!(check_lookup_groups(&strings(&["", "a"])).is_ok());
        assert_eq!(
            no_mapping(&strings(&["a", "", "b", "a"])),
            Error::NoTierMapping {
                groups: strings(&["a", "b"])
            }
        );
    }

    #[test]
    fn the_no_mapping_message_is_the_maas_apis() {
        let e = no_mapping(&["unknown-group"]);
        assert_eq!(
            e.to_string(),
            "No tier mapping found for groups: ['unknown-group']"
        );
        assert!(e.is_not_found());
        assert_eq!(
            no_mapping(&["a", "b"]).to_string(),
            "No tier mapping found for groups: ['a' 'b']"
        );
        assert_eq!(format_groups(&[]), "[]");
    }

    #[test]
    fn model_access_json() {
        assert_eq!(
            serde_json::to_string(&ModelAccess::All).unwrap(),
            r#"["*"]"#
        );
        let star: ModelAccess = serde_json::from_str(r#"["*"]"#).unwrap();
        assert_eq!(star, ModelAccess::All);
        assert!(serde_json::from_str::<ModelAccess>(r#"["*","a"]"#).is_err());
        let list = ModelAccess::List(strings(&["a", "b"]));
        assert_eq!(serde_json::to_string(&list).unwrap(), r#"["a","b"]"#);
        let back: ModelAccess = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert_eq!(back, list);
        let all: ModelAccess = serde_json::from_str(r#""all""#).unwrap();
        assert_eq!(all, ModelAccess::All);
        assert!(serde_json::from_str::<ModelAccess>(r#""some""#).is_err());
        assert!(serde_json::from_str::<ModelAccess>("3").is_err());
        assert!(all.allows("x"));
        assert!(list.allows("b") && !list.allows("c"));
        // Defaults in a new tier.
        let t: NewTier =
            serde_json::from_str(r#"{"name":"x","requests_per_minute":1,"tokens_per_minute":2}"#)
                .unwrap();
        assert_eq!(t.models, ModelAccess::All);
        assert_eq!(t.level, 0);
    }

    #[test]
    fn validation_names_the_field() {
        let field = |t: &mut Tier| match t.validate() {
            Err(Error::InvalidInput { field, .. }) => field.into_owned(),
            other => panic!("{other:?}"),
        };
        let mut t = tier("", 0, &[]);
        assert_eq!(field(&mut t), "name");
        let mut t = tier("a", 0, &[""]);
        assert_eq!(field(&mut t), "groups");
        let mut t = tier("a", 0, &[]);
        t.requests_per_minute = 0;
        assert_eq!(field(&mut t), "requests_per_minute");
        let mut t = tier("a", 0, &[]);
        t.tokens_per_minute = 0;
        assert_eq!(field(&mut t), "tokens_per_minute");
        let mut t = tier("a", 0, &[]);
        t.max_tokens_per_request = Some(0);
        assert_eq!(field(&mut t), "max_tokens_per_request");
        let mut t = tier("a", 0, &[]);
        t.models = ModelAccess::List(strings(&["a/b"]));
        assert_eq!(field(&mut t), "models");
        let mut t = tier("a", 0, &["g", "g"]);
        t.models = ModelAccess::List(strings(&["m", "m"]));
        t.validate().unwrap();
        assert_eq!(t.groups, ["g"]);
        assert_eq!(t.models, ModelAccess::List(strings(&["m"])));
        for d in default_tiers() {
            let mut t = tier(&d.name, d.level, &[]);
            t.groups = d.groups;
            t.validate().unwrap();
        }
    }
}
