//! Tenants: who consumes — a user or a team — with a fair-share weight and
//! group, a tier and a tokens-per-minute quota.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditEvent};
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::id::TenantId;
use crate::patch::Patch;
use crate::storage::{Page, PageRequest, Storage};
use crate::validate;
use crate::versioned;

/// The fair-share group of tenants that name none.
pub const DEFAULT_GROUP: &str = "default";
/// The weight of tenants that name none.
pub const DEFAULT_WEIGHT: u32 = 100;
/// The largest accepted weight.
pub const MAX_WEIGHT: u32 = 1_000_000;
const MAX_NAME: usize = 128;

/// A consumer of models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// Identifier.
    pub id: TenantId,
    /// Unique name.
    pub name: String,
    /// Fair-share weight within its group (1..=1,000,000).
    pub weight: u32,
    /// Fair-share group.
    pub group: String,
    /// Tier name, if assigned.
    pub tier: Option<String>,
    /// Tokens-per-minute quota; `None` is unlimited.
    pub tokens_per_minute: Option<u64>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Optimistic-concurrency version, 1 at creation.
    pub version: u64,
}

/// What to create a tenant with.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewTenant {
    /// Unique name (1..=128 bytes).
    pub name: String,
    /// Weight; default [`DEFAULT_WEIGHT`].
    #[serde(default)]
    pub weight: Option<u32>,
    /// Group; default [`DEFAULT_GROUP`].
    #[serde(default)]
    pub group: Option<String>,
    /// Tier.
    #[serde(default)]
    pub tier: Option<String>,
    /// Tokens-per-minute quota (≥ 1); `None` is unlimited.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

/// A partial update of a tenant; absent fields are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TenantUpdate {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New weight.
    #[serde(default)]
    pub weight: Option<u32>,
    /// New group.
    #[serde(default)]
    pub group: Option<String>,
    /// New tier, or `null` to unassign.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub tier: Patch<String>,
    /// New quota, or `null` for unlimited.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub tokens_per_minute: Patch<u64>,
}

fn check_weight(w: u32) -> Result<()> {
    if (1..=MAX_WEIGHT).contains(&w) {
        Ok(())
    } else {
        Err(Error::invalid("weight", "must be between 1 and 1000000"))
    }
}

fn check_tpm(t: Option<u64>) -> Result<()> {
    match t {
        Some(0) => Err(Error::invalid(
            "tokens_per_minute",
            "must be at least 1 (null for unlimited)",
        )),
        _ => Ok(()),
    }
}

impl Tenant {
    fn validate(&self) -> Result<()> {
        validate::label("name", &self.name, MAX_NAME)?;
        check_weight(self.weight)?;
        validate::label("group", &self.group, MAX_NAME)?;
        if let Some(t) = &self.tier {
            validate::label("tier", t, MAX_NAME)?;
        }
        check_tpm(self.tokens_per_minute)
    }

    fn audit_value(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }
}

/// Creates, reads, changes and removes tenants; every change is audited.
#[derive(Debug, Clone)]
pub struct TenantService {
    storage: Storage,
    clock: SharedClock,
}

impl TenantService {
    /// A service over `storage` using the system clock.
    pub fn new(storage: Storage) -> Self {
        Self::new_with_clock(storage, Arc::new(SystemClock))
    }

    /// A service over `storage` using `clock`.
    pub fn new_with_clock(storage: Storage, clock: Arc<dyn Clock>) -> Self {
        TenantService { storage, clock }
    }

    /// [`Error::InvalidInput`] (`tier`) unless a tier named `name` exists: a
    /// tenant is served at its tier, so it may only name one there is.
    async fn check_tier(&self, name: &str) -> Result<()> {
        match self
            .storage
            .records
            .get_record(crate::tier::TIER_KIND, name)
            .await?
        {
            Some(_) => Ok(()),
            None => Err(Error::invalid("tier", format!("no tier is named '{name}'"))),
        }
    }

    /// Creates a tenant. [`Error::Conflict`] if the name is taken;
    /// [`Error::InvalidInput`] (`tier`) if it names a tier that does not
    /// exist.
    pub async fn create(&self, actor: &Actor, new: NewTenant) -> Result<Tenant> {
        let now = self.clock.now();
        let tenant = Tenant {
            id: TenantId::generate(now),
            name: new.name,
            weight: new.weight.unwrap_or(DEFAULT_WEIGHT),
            group: new.group.unwrap_or_else(|| DEFAULT_GROUP.to_owned()),
            tier: new.tier,
            tokens_per_minute: new.tokens_per_minute,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        tenant.validate()?;
        if let Some(t) = &tenant.tier {
            self.check_tier(t).await?;
        }
        let audit = AuditEvent::new(
            now,
            actor,
            "tenant.create",
            "tenant",
            tenant.id.as_str(),
            None,
            tenant.audit_value(),
        );
        self.storage.tenants.create_tenant(&tenant, audit).await?;
        Ok(tenant)
    }

    /// The tenant `id`.
    pub async fn get(&self, id: &TenantId) -> Result<Tenant> {
        self.storage
            .tenants
            .get_tenant(id)
            .await?
            .ok_or_else(|| Error::not_found("tenant", id.as_str()))
    }

    /// The tenant named `name`.
    pub async fn get_by_name(&self, name: &str) -> Result<Tenant> {
        self.storage
            .tenants
            .get_tenant_by_name(name)
            .await?
            .ok_or_else(|| Error::not_found("tenant", name))
    }

    /// Tenants by id.
    pub async fn list(&self, page: &PageRequest) -> Result<Page<Tenant>> {
        self.storage.tenants.list_tenants(page).await
    }

    /// Applies `update`; retried on concurrent changes. A new tier must
    /// exist ([`Error::InvalidInput`], `tier`).
    pub async fn update(
        &self,
        actor: &Actor,
        id: &TenantId,
        update: TenantUpdate,
    ) -> Result<Tenant> {
        if let Patch::Set(t) = &update.tier {
            self.check_tier(t).await?;
        }
        let now = self.clock.now();
        let tenants = &self.storage.tenants;
        let (_, after) = versioned::update(
            "tenant",
            || self.get(id),
            |t| {
                if let Some(n) = &update.name {
                    t.name = n.clone();
                }
                if let Some(w) = update.weight {
                    t.weight = w;
                }
                if let Some(g) = &update.group {
                    t.group = g.clone();
                }
                update.tier.clone().apply_to(&mut t.tier);
                update
                    .tokens_per_minute
                    .clone()
                    .apply_to(&mut t.tokens_per_minute);
                t.updated_at = now;
                t.validate()
            },
            move |before, after| async move {
                let audit = AuditEvent::new(
                    now,
                    actor,
                    "tenant.update",
                    "tenant",
                    id.as_str(),
                    before.audit_value(),
                    after.audit_value(),
                );
                tenants.update_tenant(&after, before.version, audit).await
            },
        )
        .await?;
        Ok(after)
    }

    /// Removes the tenant `id`.
    pub async fn delete(&self, actor: &Actor, id: &TenantId) -> Result<()> {
        let before = self.get(id).await?;
        let audit = AuditEvent::new(
            self.clock.now(),
            actor,
            "tenant.delete",
            "tenant",
            id.as_str(),
            before.audit_value(),
            None,
        );
        self.storage.tenants.delete_tenant(id, audit).await
    }
}
