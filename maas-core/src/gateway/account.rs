//! What a caller may still do right now ([`Gateway::account`], the user
//! API's `GET /v1/me`).

use serde::Serialize;

use crate::admission::Allowances;
use crate::clock::Timestamp;
use crate::error::Result;
use crate::id::KeyId;
use crate::usage::{GroupBy, TimeRange, UsageScope, UsageSummary};

use super::{Caller, Gateway};

const DAY_MS: i64 = 86_400_000;

/// How a caller is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CallerKind {
    /// A user, at the tier its groups map to.
    User,
    /// A tenant's key (no groups), at its tenant's tier.
    Tenant,
}

/// The tier a caller is served at, as [`Account`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountTier {
    /// Its name.
    pub name: String,
    /// Its level.
    pub level: u32,
    /// Requests per minute.
    pub requests_per_minute: u64,
    /// Tokens per minute.
    pub tokens_per_minute: u64,
    /// The most output tokens per request, if capped.
    pub max_tokens_per_request: Option<u64>,
}

/// Who a caller is and what it has left: the tier and its limits this
/// minute, the tenant's quota, the budgets, the key's remaining uses and
/// today's usage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Account {
    /// The user, or the tenant a tenant's key belongs to: the tenant served.
    pub user: String,
    /// How it is served.
    pub kind: CallerKind,
    /// Its groups (none for a tenant's key).
    pub groups: Vec<String>,
    /// The API key used, if the credential was one.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub key_id: Option<KeyId>,
    /// The tier served at.
    pub tier: AccountTier,
    /// What is left of each limit right now.
    #[serde(flatten)]
    pub limits: Allowances,
    /// The key's remaining uses, if it has a limit.
    pub key_remaining: Option<i64>,
    /// The tenant's usage and cost since 00:00 UTC today (what the usage
    /// ledger has recorded).
    pub today: UsageSummary,
}

impl Gateway {
    /// What `caller` (from [`Gateway::authenticate`]) has left right now.
    /// Reads only.
    pub async fn account(&self, caller: &Caller) -> Result<Account> {
        let s = &self.inner.services;
        let key_id = caller.key_id.as_ref().map(KeyId::to_string);
        let limits = s
            .admission
            .allowances(caller.tenant(), key_id.as_deref(), &caller.tier)
            .await?;
        let key_remaining = match (&caller.key_id, &s.user_keys) {
            (Some(id), Some(keys)) => keys.key_service().get(id).await?.remaining,
            _ => None,
        };
        let today = match &s.usage {
            Some(ledger) => {
                let now = self.now().as_millis();
                let range = TimeRange::new(
                    Timestamp::from_millis(now - now.rem_euclid(DAY_MS)),
                    Timestamp::from_millis(now.saturating_add(1)),
                );
                ledger
                    .totals(range, GroupBy::Tenant, &UsageScope::tenant(caller.tenant()))
                    .await?
                    .into_iter()
                    .find(|r| r.group == caller.tenant())
                    .map(|r| r.usage)
                    .unwrap_or_default()
            }
            None => UsageSummary::default(),
        };
        let identity = &caller.identity;
        let grouped = identity.groups.iter().any(|g| !g.is_empty());
        Ok(Account {
            user: identity.user.clone(),
            kind: if grouped {
                CallerKind::User
            } else {
                CallerKind::Tenant
            },
            groups: identity.groups.clone(),
            key_id: caller.key_id.clone(),
            tier: AccountTier {
                name: caller.tier.name.clone(),
                level: caller.tier.level,
                requests_per_minute: caller.tier.requests_per_minute,
                tokens_per_minute: caller.tier.tokens_per_minute,
                max_tokens_per_request: caller.tier.max_tokens_per_request,
            },
            limits,
            key_remaining,
            today,
        })
    }
}
