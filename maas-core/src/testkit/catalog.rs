//! Scenarios of the catalog services: tiers, models and user keys.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Actor, AuditEvent, AuditQuery};
use crate::clock::{Clock, ManualClock};
use crate::error::Error;
use crate::identity::Identity;
use crate::key::{KeyHasher, KeyService, VerifyCode, VerifyOptions};
use crate::model::{
    CacheSettings, ModelService, ModelServiceConfig, ModelUpdate, NewModel, Pricing,
};
use crate::patch::Patch;
use crate::storage::{PageRequest, Storage};
use crate::tenant::{NewTenant, TenantService, TenantUpdate};
use crate::tier::{ModelAccess, NewTier, TierService, TierServiceConfig, TierUpdate};
use crate::userkeys::UserKeys;

use super::Probe;

fn tiers(storage: &Storage, clock: &ManualClock) -> TierService {
    TierService::new_with_clock(storage.clone(), Arc::new(clock.clone()))
}

fn models(storage: &Storage, clock: &ManualClock) -> ModelService {
    ModelService::new_with_clock(storage.clone(), Arc::new(clock.clone()))
}

fn groups(g: &[&str]) -> Vec<String> {
    g.iter().map(|s| (*s).to_owned()).collect()
}

fn new_tier(name: &str, level: u32, g: &[&str]) -> NewTier {
    NewTier {
        name: name.into(),
        level,
        groups: groups(g),
        requests_per_minute: 10,
        tokens_per_minute: 1000,
        max_tokens_per_request: None,
        models: ModelAccess::All,
    }
}

/// Every audit event, oldest first.
async fn audit_log(storage: &Storage) -> Vec<AuditEvent> {
    let mut q = AuditQuery {
        before_seq: None,
        limit: 1000,
    };
    let mut out = Vec::new();
    loop {
        let page = storage.audit.list_audit(&q).await.unwrap();
        out.extend(page.items);
        match page.cursor {
            Some(c) => q.before_seq = Some(c.parse().unwrap()),
            None => break,
        }
    }
    out.reverse();
    out
}

fn field_of<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::InvalidInput { field, .. }) => field.into_owned(),
        other => panic!("expected invalid input, got {other:?}"),
    }
}

/// Tiers: create, duplicate refused, get, list, update (lookup sees it at
/// once), delete; each change audited with before and after.
pub async fn tier_lifecycle(storage: Storage, clock: ManualClock) {
    let svc = tiers(&storage, &clock);
    let admin = Actor::new("admin");
    let free = svc
        .create(&admin, new_tier("free", 0, &["system:authenticated"]))
        .await
        .unwrap();
    assert_eq!(free.version, 1);
    assert_eq!(free.created_at, clock.now());
    let premium = svc
        .create(&admin, new_tier("premium", 1, &["premium-users"]))
        .await
        .unwrap();
    let dup = svc.create(&admin, new_tier("free", 5, &["x"])).await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
    assert_eq!(svc.get("free").await.unwrap(), free);
    assert!(matches!(
        svc.get("nope").await,
        Err(Error::NotFound { kind: "tier", .. })
    ));
    let all = svc.list().await.unwrap();
    assert_eq!(all, vec![free.clone(), premium.clone()]);

    let both = groups(&["system:authenticated", "premium-users"]);
    assert_eq!(svc.lookup(&both).await.unwrap().name, "premium");
    let e = svc.lookup(&groups(&["unknown-group"])).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "No tier mapping found for groups: ['unknown-group']"
    );
    assert!(e.is_not_found());

    clock.advance(Duration::from_secs(1));
    let updated = svc
        .update(
            &admin,
            "free",
            TierUpdate {
                level: Some(7),
                max_tokens_per_request: Patch::Set(512),
                models: Some(ModelAccess::List(groups(&["m1"]))),
                ..TierUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.level, 7);
    assert_eq!(updated.max_tokens_per_request, Some(512));
    assert_eq!(updated.created_at, free.created_at);
    assert_eq!(updated.updated_at, clock.now());
    assert_eq!(svc.get("free").await.unwrap(), updated);
    // The snapshot was refreshed by the change: no TTL to wait for.
    assert_eq!(svc.lookup(&both).await.unwrap().name, "free");
    assert_eq!(svc.get_cached("free").await.unwrap().level, 7);
    let cleared = svc
        .update(
            &admin,
            "free",
            TierUpdate {
                max_tokens_per_request: Patch::Clear,
                ..TierUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.max_tokens_per_request, None);
    assert_eq!(cleared.version, 3);
    assert!(matches!(
        svc.update(&admin, "nope", TierUpdate::default()).await,
        Err(Error::NotFound { .. })
    ));

    svc.delete(&admin, "free").await.unwrap();
    assert!(matches!(
        svc.delete(&admin, "free").await,
        Err(Error::NotFound { kind: "tier", .. })
    ));
    assert_eq!(svc.lookup(&both).await.unwrap().name, "premium");
    assert!(matches!(
        svc.lookup(&groups(&["system:authenticated"])).await,
        Err(Error::NoTierMapping { .. })
    ));
    assert!(svc.get_cached("free").await.is_err());

    let log = audit_log(&storage).await;
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tier.create",
            "tier.create",
            "tier.update",
            "tier.update",
            "tier.delete"
        ]
    );
    for e in &log {
        assert_eq!(e.target_kind, "tier");
        assert_eq!(e.actor, admin);
    }
    assert_eq!(log[0].target_id, "free");
    assert!(log[0].before.is_none());
    assert_eq!(log[0].after.as_ref().unwrap()["level"], 0);
    assert_eq!(log[2].before.as_ref().unwrap()["level"], 0);
    assert_eq!(log[2].after.as_ref().unwrap()["level"], 7);
    assert_eq!(log[2].after.as_ref().unwrap()["models"][0], "m1");
    assert_eq!(log[4].before.as_ref().unwrap()["name"], "free");
    assert!(log[4].after.is_none());
}

/// Lookups read the snapshot without I/O; a change made by another node is
/// seen once the snapshot is older than the TTL, not before.
pub async fn tier_lookup_sees_other_nodes_after_ttl(storage: Storage, clock: ManualClock) {
    let (probe, probed) = Probe::wrap(storage.clone());
    let ttl = Duration::from_secs(30);
    let here = TierService::new_with_config(
        probed,
        TierServiceConfig { snapshot_ttl: ttl },
        Arc::new(clock.clone()),
    );
    let there = tiers(&storage, &clock);
    let admin = Actor::new("admin");
    there
        .create(&admin, new_tier("free", 0, &["users"]))
        .await
        .unwrap();
    let users = groups(&["users"]);
    assert_eq!(here.lookup(&users).await.unwrap().name, "free");
    let loaded = probe.counts();
    for _ in 0..100 {
        assert_eq!(here.lookup(&users).await.unwrap().name, "free");
    }
    assert_eq!(probe.counts(), loaded, "fresh lookups touch no store");

    there
        .create(&admin, new_tier("gold", 3, &["users"]))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(29));
    assert_eq!(here.lookup(&users).await.unwrap().name, "free");
    assert_eq!(probe.counts(), loaded);
    clock.advance(Duration::from_secs(1));
    assert_eq!(here.lookup(&users).await.unwrap().name, "gold");
    assert!(probe.counts().reads > loaded.reads);
    assert_eq!(probe.counts().writes, 0);

    // A removal elsewhere is seen after the TTL too.
    there.delete(&admin, "gold").await.unwrap();
    there.delete(&admin, "free").await.unwrap();
    assert_eq!(here.lookup(&users).await.unwrap().name, "gold");
    clock.advance(ttl);
    assert!(matches!(
        here.lookup(&users).await,
        Err(Error::NoTierMapping { .. })
    ));
}

/// The tier of a caller without groups (a tenant's key): its tenant's
/// tier, the lowest-level tier when it has none (or does not exist), a 403
/// when that tier is gone or no tier exists; callers with groups keep the
/// group lookup. A tenant's tier is read again after the snapshot TTL, or
/// at once after `forget_tenant_tiers`.
pub async fn tier_of_tenants(storage: Storage, clock: ManualClock) {
    let svc = tiers(&storage, &clock);
    let tenants = TenantService::new_with_clock(storage.clone(), Arc::new(clock.clone()));
    let admin = Actor::new("admin");
    let acme = Identity::new("acme", Vec::<String>::new());
    let forbidden = |r: Result<Arc<crate::tier::Tier>, Error>| match r {
        Err(Error::Forbidden { reason }) => reason.into_owned(),
        other => panic!("expected forbidden, got {other:?}"),
    };
    assert_eq!(forbidden(svc.tier_of(&acme).await), "no tier exists");
    for (name, level) in [("gold", 2), ("basic", 0), ("aaa", 0), ("silver", 1)] {
        svc.create(&admin, new_tier(name, level, &[name]))
            .await
            .unwrap();
    }
    // No tenant yet, then a tenant without a tier: the lowest level, ties
    // by name.
    assert_eq!(svc.tier_of(&acme).await.unwrap().name, "aaa");
    let t = tenants
        .create(
            &admin,
            NewTenant {
                name: "acme".into(),
                ..NewTenant::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(svc.tier_of(&acme).await.unwrap().name, "aaa");
    // Groups decide for callers that have them.
    let user = Identity::new("acme", vec!["silver".to_owned()]);
    assert_eq!(svc.tier_of(&user).await.unwrap().name, "silver");
    let empty = Identity::new("acme", vec![String::new()]);
    assert_eq!(svc.tier_of(&empty).await.unwrap().name, "aaa");

    let set = |tier: Patch<String>| TenantUpdate {
        tier,
        ..TenantUpdate::default()
    };
    tenants
        .update(&admin, &t.id, set(Patch::Set("gold".into())))
        .await
        .unwrap();
    // Cached until the TTL (another node's change) ...
    assert_eq!(svc.tier_of(&acme).await.unwrap().name, "aaa");
    clock.advance(Duration::from_secs(30));
    assert_eq!(svc.tier_of(&acme).await.unwrap().name, "gold");
    // ... or until this node forgets.
    tenants
        .update(&admin, &t.id, set(Patch::Set("silver".into())))
        .await
        .unwrap();
    svc.forget_tenant_tiers();
    assert_eq!(svc.tier_of(&acme).await.unwrap().name, "silver");
    svc.delete(&admin, "silver").await.unwrap();
    assert_eq!(
        forbidden(svc.tier_of(&acme).await),
        "the tenant's tier 'silver' does not exist"
    );
    tenants
        .update(&admin, &t.id, set(Patch::Clear))
        .await
        .unwrap();
    svc.forget_tenant_tiers();
    assert_eq!(svc.tier_of(&acme).await.unwrap().name, "aaa");
}

/// `ensure_defaults` creates free, premium and enterprise once; again, or
/// on two nodes at once, it creates nothing more; with any tier present it
/// creates none.
pub async fn tier_ensure_defaults_is_idempotent(storage: Storage, clock: ManualClock) {
    let a = tiers(&storage, &clock);
    let b = tiers(&storage, &clock);
    let system = Actor::system();
    let (ra, rb) = tokio::join!(a.ensure_defaults(&system), b.ensure_defaults(&system));
    let created = ra.unwrap().len() + rb.unwrap().len();
    assert_eq!(created, 3, "each default is created by one node");
    assert!(a.ensure_defaults(&system).await.unwrap().is_empty());
    let all = a.list().await.unwrap();
    let summary: Vec<(&str, u32, u64, u64)> = all
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.level,
                t.requests_per_minute,
                t.tokens_per_minute,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("enterprise", 2, 50, 100_000),
            ("free", 0, 5, 100),
            ("premium", 1, 20, 50_000)
        ]
    );
    assert!(all.iter().all(|t| t.models == ModelAccess::All));
    let lookup = |g: &'static [&'static str]| {
        let a = a.clone();
        async move { a.lookup(&groups(g)).await.unwrap().name.clone() }
    };
    assert_eq!(lookup(&["system:authenticated"]).await, "free");
    assert_eq!(
        lookup(&["system:authenticated", "premium-users"]).await,
        "premium"
    );
    assert_eq!(
        lookup(&["enterprise-users", "premium-users", "system:authenticated"]).await,
        "enterprise"
    );

    // With any tier present (not a default), nothing is created.
    for t in a.list().await.unwrap() {
        a.delete(&system, &t.name).await.unwrap();
    }
    a.create(&system, new_tier("custom", 0, &["g"]))
        .await
        .unwrap();
    let c = tiers(&storage, &clock);
    assert!(c.ensure_defaults(&system).await.unwrap().is_empty());
    assert_eq!(c.list().await.unwrap().len(), 1);
}

/// Invalid tier input is refused naming the field, and writes nothing.
pub async fn tier_invalid_input_writes_nothing(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let svc = tiers(&storage, &clock);
    let admin = Actor::new("admin");
    let base = || new_tier("t", 0, &["g"]);
    let t = svc.create(&admin, base()).await.unwrap();
    let before = probe.counts();
    let cases: Vec<(NewTier, &str)> = vec![
        (new_tier("", 0, &[]), "name"),
        (new_tier(" ", 0, &[]), "name"),
        (new_tier(&"n".repeat(129), 0, &[]), "name"),
        (new_tier("x", 0, &[""]), "groups"),
        (
            NewTier {
                requests_per_minute: 0,
                ..base()
            },
            "requests_per_minute",
        ),
        (
            NewTier {
                tokens_per_minute: 0,
                ..base()
            },
            "tokens_per_minute",
        ),
        (
            NewTier {
                max_tokens_per_request: Some(0),
                ..base()
            },
            "max_tokens_per_request",
        ),
        (
            NewTier {
                models: ModelAccess::List(groups(&["a b"])),
                ..base()
            },
            "models",
        ),
    ];
    for (new, field) in cases {
        assert_eq!(field_of(svc.create(&admin, new).await), field);
    }
    let updates: Vec<(TierUpdate, &str)> = vec![
        (
            TierUpdate {
                requests_per_minute: Some(0),
                ..TierUpdate::default()
            },
            "requests_per_minute",
        ),
        (
            TierUpdate {
                groups: Some(groups(&["ok", ""])),
                ..TierUpdate::default()
            },
            "groups",
        ),
        (
            TierUpdate {
                max_tokens_per_request: Patch::Set(0),
                ..TierUpdate::default()
            },
            "max_tokens_per_request",
        ),
        (
            TierUpdate {
                models: Some(ModelAccess::List(groups(&["a/b"]))),
                ..TierUpdate::default()
            },
            "models",
        ),
    ];
    for (update, field) in updates {
        assert_eq!(field_of(svc.update(&admin, "t", update).await), field);
    }
    assert_eq!(field_of(svc.lookup(&[]).await), "groups");
    assert_eq!(field_of(svc.lookup(&groups(&["", ""])).await), "groups");
    assert_eq!(probe.counts().writes, before.writes, "no write");
    assert_eq!(svc.get("t").await.unwrap(), t);
    assert_eq!(svc.list().await.unwrap().len(), 1);
}

fn new_model(id: &str, tiers: &[&str]) -> NewModel {
    NewModel {
        tiers: groups(tiers),
        ..NewModel::new(id, format!("http://{id}.models.svc:8000"))
    }
}

/// Models: register, duplicate refused, get, list, update (patching the
/// price), cache settings, delete; each change audited; per-tier lists, the
/// OpenAI list and access checks follow every change at once.
pub async fn model_lifecycle(storage: Storage, clock: ManualClock) {
    let svc = models(&storage, &clock);
    let tier_svc = tiers(&storage, &clock);
    let admin = Actor::new("admin");
    tier_svc.ensure_defaults(&admin).await.unwrap();
    let free = tier_svc.get("free").await.unwrap();
    let premium = tier_svc.get("premium").await.unwrap();

    let sim = svc
        .create(
            &admin,
            NewModel {
                name: Some("Simulator Model".into()),
                owned_by: Some("model-namespace".into()),
                pricing: Some(Pricing::usd(0.5, 1.5)),
                ..new_model("simulator", &[])
            },
        )
        .await
        .unwrap();
    assert_eq!(sim.version, 1);
    assert_eq!(sim.created, clock.now());
    assert!(sim.ready);
    assert!(!sim.cache.enabled);
    let qwen = svc
        .create(&admin, new_model("qwen3", &["premium", "enterprise"]))
        .await
        .unwrap();
    assert_eq!(qwen.name, "qwen3");
    assert_eq!(qwen.owned_by, "maas");
    let dup = svc.create(&admin, new_model("qwen3", &[])).await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
    assert_eq!(svc.get("simulator").await.unwrap(), sim);
    assert!(matches!(
        svc.get("nope").await,
        Err(Error::NotFound { kind: "model", .. })
    ));
    assert_eq!(svc.list().await.unwrap(), vec![qwen.clone(), sim.clone()]);

    let ids = |v: Vec<Arc<crate::model::Model>>| -> Vec<String> {
        v.iter().map(|m| m.id.clone()).collect()
    };
    assert_eq!(ids(svc.list_for_tier(&free).await.unwrap()), ["simulator"]);
    assert_eq!(
        ids(svc.list_for_tier(&premium).await.unwrap()),
        ["qwen3", "simulator"]
    );
    let list = svc
        .openai_list(&premium, "https://gateway.example.com")
        .await
        .unwrap();
    assert_eq!(list.object, "list");
    assert_eq!(list.data.len(), 2);
    assert_eq!(list.data[1].id, "simulator");
    assert_eq!(list.data[1].object, "model");
    assert_eq!(list.data[1].owned_by, "model-namespace");
    assert_eq!(list.data[1].created, clock.now().as_millis() / 1000);
    assert_eq!(list.data[1].url, "https://gateway.example.com/simulator");
    assert!(svc.check_access(&premium, "qwen3").await.is_ok());
    assert!(matches!(
        svc.check_access(&free, "qwen3").await,
        Err(Error::Forbidden { .. })
    ));
    assert!(matches!(
        svc.check_access(&free, "nope").await,
        Err(Error::NotFound { .. })
    ));

    clock.advance(Duration::from_secs(5));
    let updated = svc
        .update(
            &admin,
            "qwen3",
            ModelUpdate {
                tiers: Some(vec![]),
                ready: Some(false),
                pricing: Patch::Set(Pricing::usd(1.0, 2.0)),
                ..ModelUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert!(!updated.ready);
    assert_eq!(updated.created_at, qwen.created_at);
    assert_eq!(updated.updated_at, clock.now());
    assert_eq!(svc.get("qwen3").await.unwrap(), updated);
    // Seen at once by the snapshot: free may now use it.
    assert_eq!(
        ids(svc.list_for_tier(&free).await.unwrap()),
        ["qwen3", "simulator"]
    );
    assert!(!svc.get_cached("qwen3").await.unwrap().ready);
    let cleared = svc
        .update(
            &admin,
            "qwen3",
            ModelUpdate {
                pricing: Patch::Clear,
                ..ModelUpdate::default()
            },
        )
        .await
        .unwrap();
    assert!(cleared.pricing.is_none());
    let cache = CacheSettings {
        enabled: true,
        ttl_seconds: 60,
        max_entries: 10,
    };
    let cached = svc.set_cache(&admin, "qwen3", cache).await.unwrap();
    assert_eq!(cached.cache, cache);
    assert_eq!(cached.version, 4);
    assert_eq!(svc.get_cached("qwen3").await.unwrap().cache, cache);
    assert!(matches!(
        svc.set_cache(&admin, "nope", cache).await,
        Err(Error::NotFound { .. })
    ));

    svc.delete(&admin, "qwen3").await.unwrap();
    assert!(matches!(
        svc.delete(&admin, "qwen3").await,
        Err(Error::NotFound { kind: "model", .. })
    ));
    assert!(svc.get_cached("qwen3").await.is_err());
    assert_eq!(
        ids(svc.list_for_tier(&premium).await.unwrap()),
        ["simulator"]
    );

    let log: Vec<AuditEvent> = audit_log(&storage)
        .await
        .into_iter()
        .filter(|e| e.target_kind == "model")
        .collect();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "model.create",
            "model.create",
            "model.update",
            "model.update",
            "model.cache",
            "model.delete"
        ]
    );
    assert_eq!(log[2].before.as_ref().unwrap()["ready"], true);
    assert_eq!(log[2].after.as_ref().unwrap()["ready"], false);
    assert_eq!(log[4].after.as_ref().unwrap()["cache"]["ttl_seconds"], 60);
    assert!(log[5].after.is_none());
}

/// The model snapshot serves reads without I/O and sees another node's
/// change after the TTL.
pub async fn model_cache_sees_other_nodes_after_ttl(storage: Storage, clock: ManualClock) {
    let (probe, probed) = Probe::wrap(storage.clone());
    let here = ModelService::new_with_config(
        probed,
        ModelServiceConfig {
            snapshot_ttl: Duration::from_secs(10),
        },
        Arc::new(clock.clone()),
    );
    let there = models(&storage, &clock);
    let admin = Actor::new("admin");
    there.create(&admin, new_model("m", &[])).await.unwrap();
    assert!(here.get_cached("m").await.unwrap().ready);
    let loaded = probe.counts();
    for _ in 0..100 {
        here.get_cached("m").await.unwrap();
    }
    assert_eq!(probe.counts(), loaded);
    there
        .update(
            &admin,
            "m",
            ModelUpdate {
                ready: Some(false),
                ..ModelUpdate::default()
            },
        )
        .await
        .unwrap();
    clock.advance(Duration::from_millis(9_999));
    assert!(here.get_cached("m").await.unwrap().ready);
    clock.advance(Duration::from_millis(1));
    assert!(!here.get_cached("m").await.unwrap().ready);
}

/// Invalid model input is refused naming the field, and writes nothing.
pub async fn model_invalid_input_writes_nothing(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let svc = models(&storage, &clock);
    let admin = Actor::new("admin");
    let m = svc.create(&admin, new_model("m", &[])).await.unwrap();
    let before = probe.counts();
    let base = || new_model("x", &[]);
    let cases: Vec<(NewModel, &str)> = vec![
        (new_model("a/b", &[]), "id"),
        (new_model("a b", &[]), "id"),
        (new_model("", &[]), "id"),
        (NewModel::new("x", "ftp://host"), "upstream_url"),
        (NewModel::new("x", "http://"), "upstream_url"),
        (NewModel::new("x", "http://u:p@host"), "upstream_url"),
        (new_model("x", &[""]), "tiers"),
        (
            NewModel {
                name: Some(String::new()),
                ..base()
            },
            "name",
        ),
        (
            NewModel {
                owned_by: Some("\u{7}".into()),
                ..base()
            },
            "owned_by",
        ),
        (
            NewModel {
                pricing: Some(Pricing::usd(f64::INFINITY, 1.0)),
                ..base()
            },
            "pricing.input_per_million",
        ),
        (
            NewModel {
                cache: CacheSettings {
                    enabled: true,
                    ttl_seconds: 1,
                    max_entries: 0,
                },
                ..base()
            },
            "cache.max_entries",
        ),
    ];
    for (new, field) in cases {
        assert_eq!(field_of(svc.create(&admin, new).await), field);
    }
    let bad_update = ModelUpdate {
        upstream_url: Some("not a url".into()),
        ..ModelUpdate::default()
    };
    assert_eq!(
        field_of(svc.update(&admin, "m", bad_update).await),
        "upstream_url"
    );
    let bad_cache = CacheSettings {
        enabled: true,
        ttl_seconds: 0,
        max_entries: 1,
    };
    assert_eq!(
        field_of(svc.set_cache(&admin, "m", bad_cache).await),
        "cache.ttl_seconds"
    );
    assert_eq!(probe.counts().writes, before.writes, "no write");
    assert_eq!(svc.get("m").await.unwrap(), m);
    assert_eq!(svc.list().await.unwrap().len(), 1);
}

fn user_keys(storage: &Storage, clock: &ManualClock, hasher: &KeyHasher) -> UserKeys {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let keys = KeyService::new_with_clock(storage.clone(), hasher.clone(), Arc::clone(&clock));
    UserKeys::new_with_clock(keys, clock)
}

/// User keys: create (secret once, `maas_` prefix, verifies), duplicate
/// name refused for the same user but not another, list without secrets
/// with the total, delete by name (stops verifying, frees the name),
/// unknown name not found.
pub async fn user_keys_lifecycle(storage: Storage, clock: ManualClock) {
    let hasher = KeyHasher::random();
    let svc = user_keys(&storage, &clock, &hasher);
    assert_eq!(svc.list("alice").await.unwrap().total_keys, 0);
    let k1 = svc.create("alice", "johns-personal-key").await.unwrap();
    assert!(k1.api_key.starts_with("maas_"), "{}", k1.api_key);
    assert!(k1.api_key.starts_with(&k1.start));
    assert_eq!(k1.created_at, clock.now());
    let dup = svc.create("alice", "johns-personal-key").await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
    clock.advance(Duration::from_millis(5));
    let k2 = svc.create("alice", "ci").await.unwrap();
    let bob = svc.create("bob", "johns-personal-key").await.unwrap();

    let list = svc.list("alice").await.unwrap();
    assert_eq!(list.total_keys, 2);
    let names: Vec<&str> = list.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["johns-personal-key", "ci"]);
    assert_eq!(list.keys[0].key_id, k1.key_id);
    assert_eq!(list.keys[0].start, k1.start);
    assert_eq!(list.keys[1].created_at, k2.created_at);
    let json = serde_json::to_string(&list).unwrap();
    assert!(!json.contains(&k1.api_key) && !json.contains(&k2.api_key));
    assert_eq!(svc.list("bob").await.unwrap().total_keys, 1);
    assert_eq!(svc.list("carol").await.unwrap().total_keys, 0);

    let keys = svc.key_service();
    let opts = VerifyOptions::default();
    let v = keys.verify(&k1.api_key, &opts).await.unwrap();
    assert!(v.valid());
    assert_eq!(v.owner_id(), Some("alice"));
    assert_eq!(v.name(), Some("johns-personal-key"));

    svc.delete("alice", "johns-personal-key").await.unwrap();
    let v = keys.verify(&k1.api_key, &opts).await.unwrap();
    assert_eq!(v.code(), VerifyCode::NotFound);
    let missing = svc.delete("alice", "johns-personal-key").await.unwrap_err();
    assert_eq!(
        missing.to_string(),
        "API key 'johns-personal-key' not found"
    );
    assert!(matches!(
        svc.delete("alice", "never").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        svc.delete("carol", "ci").await,
        Err(Error::NotFound { .. })
    ));
    let list = svc.list("alice").await.unwrap();
    assert_eq!(list.total_keys, 1);
    assert_eq!(list.keys[0].name, "ci");
    // Bob's key of the same name is untouched; the name is free again.
    assert!(keys.verify(&bob.api_key, &opts).await.unwrap().valid());
    svc.create("alice", "johns-personal-key").await.unwrap();
    assert_eq!(svc.list("alice").await.unwrap().total_keys, 2);

    let log = audit_log(&storage).await;
    let deletes: Vec<&AuditEvent> = log.iter().filter(|e| e.action == "key.delete").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].actor, Actor::new("user:alice"));
}

/// Nodes that create their first user key at the same time agree on one
/// user keyspace; the losers' keyspaces are removed.
pub async fn user_keys_nodes_share_one_keyspace(storage: Storage, clock: ManualClock) {
    let hasher = KeyHasher::random();
    let nodes: Vec<UserKeys> = (0..4)
        .map(|_| user_keys(&storage, &clock, &hasher))
        .collect();
    let tasks: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let n = n.clone();
            tokio::spawn(async move { n.create(&format!("user{i}"), "k").await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut ids = Vec::new();
    for n in &nodes {
        ids.push(n.keyspace().await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let live = storage
        .keyspaces
        .list_keyspaces(&PageRequest::default())
        .await
        .unwrap();
    assert_eq!(live.total, 1);
    assert_eq!(live.items[0].id, ids[0]);
    // Every node sees every user's key.
    for i in 0..4 {
        assert_eq!(
            nodes[0].list(&format!("user{i}")).await.unwrap().total_keys,
            1
        );
    }
    // A fresh node finds the same keyspace.
    let late = user_keys(&storage, &clock, &hasher);
    assert_eq!(late.keyspace().await.unwrap(), ids[0]);
}

/// Invalid user-key input is refused naming the field, and writes nothing
/// (not even the user keyspace).
pub async fn user_keys_invalid_input_writes_nothing(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let svc = user_keys(&storage, &clock, &KeyHasher::random());
    assert_eq!(field_of(svc.create("alice", "").await), "name");
    assert_eq!(field_of(svc.create("alice", "a\nb").await), "name");
    assert_eq!(
        field_of(svc.create("alice", &"n".repeat(257)).await),
        "name"
    );
    assert_eq!(field_of(svc.create("", "k").await), "user");
    assert_eq!(field_of(svc.list(" ").await), "user");
    assert_eq!(field_of(svc.delete("alice", "").await), "name");
    assert_eq!(probe.counts().writes, 0, "no write");
    // Listing and deleting before any key exists write nothing either.
    assert_eq!(svc.list("alice").await.unwrap().total_keys, 0);
    assert!(matches!(
        svc.delete("alice", "k").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(probe.counts().writes, 0, "no write");
}

/// A user key authenticates as its owner with the groups remembered at
/// creation; other credentials are not recognised; a deleted or disabled
/// key is refused.
pub async fn user_keys_authenticate_as_their_owner(storage: Storage, clock: ManualClock) {
    use crate::identity::Identity;
    let hasher = KeyHasher::random();
    let svc = user_keys(&storage, &clock, &hasher);
    // Before any user key exists.
    assert!(matches!(
        svc.authenticate("maas_unknown").await,
        Err(Error::Unauthenticated { .. })
    ));
    assert_eq!(svc.authenticate("eyJhbGciOi.x.y").await.unwrap(), None);
    assert_eq!(svc.authenticate("maasive").await.unwrap(), None);
    let alice = Identity::new("alice", ["premium-users", "system:authenticated"]);
    let k = svc.create_for(&alice, "ci").await.unwrap();
    assert_eq!(
        svc.authenticate(&k.api_key).await.unwrap(),
        Some(alice.clone())
    );
    let plain = svc.create("bob", "old").await.unwrap();
    assert_eq!(
        svc.authenticate(&plain.api_key).await.unwrap(),
        Some(Identity::new("bob", Vec::<String>::new()))
    );
    // Disabled, then deleted: refused.
    svc.key_service()
        .update(
            &crate::audit::Actor::new("admin"),
            &k.key_id,
            crate::key::KeyUpdate {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        svc.authenticate(&k.api_key).await,
        Err(Error::Unauthenticated { reason }) if reason.contains("disabled")
    ));
    svc.delete("bob", "old").await.unwrap();
    assert!(matches!(
        svc.authenticate(&plain.api_key).await,
        Err(Error::Unauthenticated { .. })
    ));
}
