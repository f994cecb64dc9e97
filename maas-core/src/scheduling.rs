//! The stored configuration of fair share, applied to a running
//! [`FairShare`] scheduler: fair-share groups and their weights, the
//! capacity (`max_in_flight`), and each tenant's weight and group.
//!
//! Changes go through [`Scheduling`], which validates them, stores them
//! (audited) and applies them to this node's scheduler at once.
//! [`Scheduling::load`] applies everything stored, at start-up and
//! periodically for changes made through other nodes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::catalog;
use crate::clock::{Clock, SharedClock, Timestamp};
use crate::error::{Error, Result};
use crate::fairshare::{FairShare, Snapshot};
use crate::id::TenantId;
use crate::storage::{MAX_PAGE_SIZE, PageRequest, Storage};
use crate::tenant::{
    DEFAULT_GROUP, DEFAULT_WEIGHT, NewTenant, Tenant, TenantService, TenantUpdate,
};
use crate::validate;

/// The record kind of fair-share groups.
pub const GROUP_KIND: &str = "fairshare_group";
/// The record kind of the capacity setting (one record, id `default`).
pub const CAPACITY_KIND: &str = "capacity";
/// The largest capacity accepted.
pub const MAX_CAPACITY: u64 = 100_000;
const MAX_GROUP_NAME: usize = 128;

/// A fair-share group: tenants in it share its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FairShareGroup {
    /// Unique name; the group's id.
    pub name: String,
    /// Weight among groups (1..=1,000,000).
    pub weight: u32,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Optimistic-concurrency version (0 for the built-in default group
    /// never changed).
    pub version: u64,
}

impl crate::versioned::Versioned for FairShareGroup {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl catalog::Entry for FairShareGroup {
    const KIND: &'static str = GROUP_KIND;
    fn id(&self) -> &str {
        &self.name
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

/// The stored capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Capacity {
    id: String,
    max_in_flight: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
    version: u64,
}

impl crate::versioned::Versioned for Capacity {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl catalog::Entry for Capacity {
    const KIND: &'static str = CAPACITY_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

/// A fair-share weight as a caller sent it: 1..=1,000,000, else invalid
/// input naming `weight`.
pub fn check_weight(w: i64) -> Result<u32> {
    u32::try_from(w)
        .ok()
        .filter(|w| (1..=crate::tenant::MAX_WEIGHT).contains(w))
        .ok_or_else(|| Error::invalid("weight", "must be between 1 and 1000000"))
}

/// Fair-share configuration: stored, audited and applied live. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduling {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Storage,
    fairshare: FairShare,
    tenants: TenantService,
    clock: SharedClock,
}

impl Scheduling {
    /// Configuration over `storage`, applied to `fairshare`.
    pub fn new(storage: Storage, fairshare: FairShare, clock: Arc<dyn Clock>) -> Self {
        let tenants = TenantService::new_with_clock(storage.clone(), clock.clone());
        Scheduling {
            inner: Arc::new(Inner {
                storage,
                fairshare,
                tenants,
                clock,
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn records(&self) -> &dyn crate::storage::RecordStore {
        &*self.inner.storage.records
    }

    /// The scheduler configured.
    pub fn fairshare(&self) -> &FairShare {
        &self.inner.fairshare
    }

    /// The tenant service underneath.
    pub fn tenants(&self) -> &TenantService {
        &self.inner.tenants
    }

    /// Applies everything stored (groups, capacity, every tenant's weight
    /// and group) to the scheduler. Run at start-up, and periodically to
    /// pick up changes made through other nodes.
    pub async fn load(&self) -> Result<()> {
        let fs = &self.inner.fairshare;
        for g in catalog::list_entries::<FairShareGroup>(self.records()).await? {
            fs.set_group_weight(&g.name, g.weight)?;
        }
        if let Some(c) = self.stored_capacity().await? {
            fs.set_max_in_flight(usize::try_from(c.max_in_flight).unwrap_or(usize::MAX));
        }
        let mut page = PageRequest::first(MAX_PAGE_SIZE);
        loop {
            let got = self.inner.tenants.list(&page).await?;
            for t in &got.items {
                self.apply(t)?;
            }
            match got.cursor {
                Some(c) => page.cursor = Some(c),
                None => return Ok(()),
            }
        }
    }

    fn apply(&self, t: &Tenant) -> Result<()> {
        self.inner.fairshare.set_tenant(&t.name, t.weight, &t.group)
    }

    // ----- groups -----------------------------------------------------------

    /// Creates group `name` with `weight`. [`Error::Conflict`] if it exists
    /// (the `default` group always does).
    pub async fn create_group(
        &self,
        actor: &Actor,
        name: &str,
        weight: i64,
    ) -> Result<FairShareGroup> {
        validate::label("name", name, MAX_GROUP_NAME)?;
        let weight = check_weight(weight)?;
        if name == DEFAULT_GROUP {
            return Err(Error::conflict("the group 'default' always exists"));
        }
        let now = self.now();
        let g = FairShareGroup {
            name: name.to_owned(),
            weight,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        catalog::create_entry(self.records(), actor, &g, now).await?;
        self.inner.fairshare.set_group_weight(name, weight)?;
        Ok(g)
    }

    /// Every group by name, the `default` group included.
    pub async fn list_groups(&self) -> Result<Vec<FairShareGroup>> {
        let mut all: Vec<FairShareGroup> = catalog::list_entries(self.records()).await?;
        if !all.iter().any(|g| g.name == DEFAULT_GROUP) {
            all.push(Self::builtin_default());
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn builtin_default() -> FairShareGroup {
        FairShareGroup {
            name: DEFAULT_GROUP.to_owned(),
            weight: DEFAULT_WEIGHT,
            created_at: Timestamp::EPOCH,
            updated_at: Timestamp::EPOCH,
            version: 0,
        }
    }

    /// The group `name`. [`Error::NotFound`] if it does not exist.
    pub async fn get_group(&self, name: &str) -> Result<FairShareGroup> {
        match catalog::get_entry::<FairShareGroup>(self.records(), name).await {
            Err(e) if e.is_not_found() && name == DEFAULT_GROUP => Ok(Self::builtin_default()),
            other => other,
        }
    }

    /// Changes the weight of group `name`.
    pub async fn set_group_weight(
        &self,
        actor: &Actor,
        name: &str,
        weight: i64,
    ) -> Result<FairShareGroup> {
        let weight = check_weight(weight)?;
        let now = self.now();
        let existing = self.get_group(name).await?;
        let g = if existing.version == 0 {
            // The built-in default group gets its record on its first change.
            let g = FairShareGroup {
                weight,
                created_at: now,
                updated_at: now,
                version: 1,
                ..existing
            };
            catalog::create_entry(self.records(), actor, &g, now).await?;
            g
        } else {
            catalog::update_entry(
                self.records(),
                actor,
                name,
                "fairshare_group.update",
                now,
                |g: &mut FairShareGroup| {
                    g.weight = weight;
                    g.updated_at = now;
                    Ok(())
                },
            )
            .await?
        };
        self.inner.fairshare.set_group_weight(name, weight)?;
        Ok(g)
    }

    async fn require_group(&self, name: &str) -> Result<()> {
        match self.get_group(name).await {
            Err(e) if e.is_not_found() => Err(Error::invalid(
                "group",
                format!("'{name}' is not a fair-share group; create it first"),
            )),
            other => other.map(|_| ()),
        }
    }

    // ----- capacity ---------------------------------------------------------

    async fn stored_capacity(&self) -> Result<Option<Capacity>> {
        match catalog::get_entry::<Capacity>(self.records(), "default").await {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The number of slots of this node's scheduler.
    pub fn capacity(&self) -> usize {
        self.inner.fairshare.max_in_flight()
    }

    /// Sets the number of slots (1..=[`MAX_CAPACITY`]), stored and applied at once.
    pub async fn set_capacity(&self, actor: &Actor, max_in_flight: i64) -> Result<usize> {
        let max = u64::try_from(max_in_flight)
            .ok()
            .filter(|m| (1..=MAX_CAPACITY).contains(m))
            .ok_or_else(|| {
                Error::invalid(
                    "max_in_flight",
                    format!("must be between 1 and {MAX_CAPACITY}"),
                )
            })?;
        let now = self.now();
        if self.stored_capacity().await?.is_some() {
            catalog::update_entry(
                self.records(),
                actor,
                "default",
                "capacity.update",
                now,
                |c: &mut Capacity| {
                    c.max_in_flight = max;
                    c.updated_at = now;
                    Ok(())
                },
            )
            .await?;
        } else {
            let c = Capacity {
                id: "default".into(),
                max_in_flight: max,
                created_at: now,
                updated_at: now,
                version: 1,
            };
            catalog::create_entry(self.records(), actor, &c, now).await?;
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.inner.fairshare.set_max_in_flight(max);
        Ok(max)
    }

    /// The scheduler's live state.
    pub fn live(&self) -> Snapshot {
        self.inner.fairshare.snapshot()
    }

    // ----- tenants ----------------------------------------------------------

    /// Creates a tenant (its group must exist) and applies it.
    pub async fn create_tenant(&self, actor: &Actor, new: NewTenant) -> Result<Tenant> {
        if let Some(g) = &new.group {
            self.require_group(g).await?;
        }
        let t = self.inner.tenants.create(actor, new).await?;
        self.apply(&t)?;
        Ok(t)
    }

    /// Changes a tenant (a new group must exist) and applies it.
    pub async fn update_tenant(
        &self,
        actor: &Actor,
        id: &TenantId,
        update: TenantUpdate,
    ) -> Result<Tenant> {
        if let Some(g) = &update.group {
            validate::label("group", g, MAX_GROUP_NAME)?;
            self.require_group(g).await?;
        }
        let t = self.inner.tenants.update(actor, id, update).await?;
        self.apply(&t)?;
        Ok(t)
    }
}
