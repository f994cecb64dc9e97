//! The storage conformance suite (feature `testkit`).
//!
//! Every storage scenario is a `pub async fn(Storage, ManualClock)` in this
//! module. A backend runs all of them with one line in its tests:
//!
//! ```text
//! maas_core::conformance_suite!(|| async { my_backend::Store::open_temporary().await.storage() });
//! ```
//!
//! The macro expands to one `#[tokio::test]` per scenario (multi-threaded, so
//! concurrency scenarios really race). The factory is called once per
//! scenario and must return a fresh, empty [`Storage`]. [`SCENARIOS`] names
//! them all, so a backend can check it runs the same count as another.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admission;
mod catalog;
mod gateway;
mod keys;
mod limits;
mod probe;
mod props;
mod rootkeys;
mod store;
mod tokens;
mod usage;
mod webhooks;

use std::future::Future;
use std::sync::Arc;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::audit::Actor;
use crate::clock::ManualClock;
use crate::key::{KeyHasher, KeyService, KeyServiceConfig};
use crate::keyspace::{Keyspace, NewKeyspace};
use crate::storage::Storage;

pub use admission::*;
pub use catalog::*;
pub use gateway::*;
pub use keys::*;
pub use limits::*;
pub use probe::{Probe, ProbeCounts};
pub use props::*;
pub use rootkeys::*;
pub use store::*;
pub use tokens::*;
pub use usage::*;
pub use webhooks::*;

macro_rules! scenarios {
    ($d:tt; $($name:ident),* $(,)?) => {
        /// The names of every scenario of the suite, in order.
        pub const SCENARIOS: &[&str] = &[$(stringify!($name)),*];

        /// Expands to one `#[tokio::test]` per scenario of the conformance
        /// suite, each on a fresh storage from `$factory` (a closure returning
        /// a future of [`Storage`]).
        #[macro_export]
        macro_rules! conformance_suite {
            ($d factory:expr) => {
                $(
                    #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let clock = $crate::ManualClock::default();
                        let storage: $crate::Storage = ($d factory)().await;
                        $crate::testkit::$name(storage, clock).await;
                    }
                )*
            };
        }
    };
}

scenarios!($;
    tenant_lifecycle,
    tenant_update_is_optimistic,
    keyspace_lifecycle,
    key_create_and_lookup,
    key_list_pagination_and_totals,
    key_unique_names,
    key_update_is_optimistic,
    key_concurrent_updates_all_land,
    key_touch_keeps_latest,
    audit_every_change_newest_first,
    counters_balance_operations,
    counters_window_operations,
    counters_spend_concurrently_exact,
    counters_take_concurrently_exact,
    counters_reserve_all_or_none,
    counters_reserve_concurrently_exact,
    ratelimit_consistent_window,
    ratelimit_concurrently_exact,
    ratelimit_fast_syncs_between_nodes,
    ratelimit_overrides,
    admission_reserve_reconcile_release,
    admission_denials_name_the_limit,
    admission_budgets,
    admission_budgets_bill_cached_tokens_once,
    admission_concurrent_holds_are_exact,
    scheduling_groups_capacity_tenants,
    gateway_authenticate_admit_complete,
    gateway_drop_and_failure_leak_nothing,
    gateway_complete_detached_settles,
    gateway_queue_refusals_release,
    gateway_response_cache,
    records_lifecycle,
    records_update_is_optimistic,
    tokens_key_ring_is_persisted_and_shared,
    tokens_rotation_keeps_live_tokens,
    tokens_revoke_all_applies_to_cached_tokens,
    verify_valid_returns_details,
    verify_reaches_every_code,
    verify_check_order_has_no_side_effects,
    verify_remaining_concurrently_exact,
    verify_consistent_ratelimit_concurrently_exact,
    verify_fast_ratelimit_refills,
    verify_daily_refill_at_utc_midnight,
    verify_monthly_refill_on_refill_day,
    verify_sees_own_changes_at_once,
    verify_other_node_within_ttl,
    verify_cache_is_bounded,
    verify_malformed_keys_touch_no_store,
    reroll_keeps_id_and_balance,
    update_patch_semantics,
    update_remaining_rules,
    restore_conflicts_with_taken_unique_name,
    create_invalid_input_stores_nothing,
    update_invalid_input_changes_nothing,
    last_used_is_written_behind,
    keyspace_delete_removes_its_keys,
    keys_scan_pages_like_list,
    tier_lifecycle,
    tier_lookup_sees_other_nodes_after_ttl,
    tier_of_tenants,
    tier_ensure_defaults_is_idempotent,
    tier_invalid_input_writes_nothing,
    model_lifecycle,
    model_cache_sees_other_nodes_after_ttl,
    model_invalid_input_writes_nothing,
    user_keys_lifecycle,
    user_keys_authenticate_as_their_owner,
    user_keys_nodes_share_one_keyspace,
    user_keys_invalid_input_writes_nothing,
    root_keys_lifecycle,
    root_keys_nodes_share_one_keyspace,
    root_keys_invalid_input_writes_nothing,
    root_keys_guard_the_key_api,
    usage_adds_merge_into_buckets,
    usage_filters_and_half_open_ranges,
    usage_concurrent_adds_all_land,
    usage_reports_add_once,
    usage_reports_concurrent_resends_count_once,
    usage_verification_buckets,
    usage_ledger_writes_behind,
    usage_costs_with_a_price_change,
    usage_records_key_verifications,
    prop_verify_never_panics,
    prop_update_remaining_agrees_with_model,
    prop_refill_agrees_with_model,
    prop_balance_never_overspends,
    prop_window_never_over_admits,
    prop_budget_holds_never_overspend,
    webhooks_emit_once_and_retry,
    prop_reserve_never_over_admits,
    prop_usage_totals_equal_sum_of_records,
);

/// What most key scenarios start from: a key service on the storage under
/// test, an admin actor and one keyspace (prefix `sk`).
#[derive(Debug)]
pub struct Fixture {
    /// The storage under test.
    pub storage: Storage,
    /// The clock the service runs on.
    pub clock: ManualClock,
    /// A key service on the storage.
    pub keys: KeyService,
    /// The actor of changes.
    pub admin: Actor,
    /// A keyspace with prefix `sk`.
    pub ks: Keyspace,
    /// The hasher (to build a second node with the same secret).
    pub hasher: KeyHasher,
}

impl Fixture {
    /// Builds the fixture.
    pub async fn new(storage: Storage, clock: ManualClock) -> Self {
        let hasher = KeyHasher::random();
        let keys =
            KeyService::new_with_clock(storage.clone(), hasher.clone(), Arc::new(clock.clone()));
        let admin = Actor::new("admin");
        let ks = keys
            .create_keyspace(
                &admin,
                NewKeyspace {
                    name: "test".into(),
                    prefix: Some("sk".into()),
                    default_byte_length: None,
                },
            )
            .await
            .expect("create keyspace");
        Fixture {
            storage,
            clock,
            keys,
            admin,
            ks,
            hasher,
        }
    }

    /// Another node: a second key service on the same storage and secret,
    /// with its own cache of `ttl`.
    pub fn other_node(&self, ttl: std::time::Duration) -> KeyService {
        KeyService::new_with_config(
            self.storage.clone(),
            self.hasher.clone(),
            KeyServiceConfig {
                cache_ttl: ttl,
                ..KeyServiceConfig::default()
            },
            Arc::new(self.clock.clone()),
        )
    }

    /// Another node whose verification cache holds at most `capacity` keys.
    pub fn bounded_node(&self, capacity: usize) -> KeyService {
        KeyService::new_with_config(
            self.storage.clone(),
            self.hasher.clone(),
            KeyServiceConfig {
                cache_capacity: capacity,
                ..KeyServiceConfig::default()
            },
            Arc::new(self.clock.clone()),
        )
    }
}

/// Runs a proptest from async code: `cases` cases of `strategy`, each checked
/// by the async `test`, with shrinking. Needs a multi-threaded runtime.
pub fn run_prop<S, F, Fut>(cases: u32, strategy: S, test: F)
where
    S: Strategy,
    S::Value: Clone + std::fmt::Debug,
    F: Fn(S::Value) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, |v| handle.block_on(test(v))) {
            panic!("{e}");
        }
    });
}
