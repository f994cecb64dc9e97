//! Scenarios on the storage traits: tenants, keyspaces, key records, audit,
//! counters.

use std::sync::Arc;

use serde_json::json;

use super::Fixture;
use crate::audit::{Actor, AuditEvent, AuditQuery};
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::counter::{Balance, BalanceOp, Refill, RefillInterval, WindowSpec};
use crate::error::Error;
use crate::key::{KeyHash, NewKey};
use crate::keyspace::{KeyspaceUpdate, NewKeyspace};
use crate::patch::Patch;
use crate::storage::{KeyQuery, PageRequest, Record, Storage};
use crate::tenant::{NewTenant, TenantService, TenantUpdate};

fn ev(clock: &ManualClock, action: &str, id: &str) -> AuditEvent {
    AuditEvent::new(
        clock.now(),
        &Actor::new("test"),
        action,
        "x",
        id,
        None,
        None,
    )
}

/// Tenants: create with defaults, unique names, get by id and name, list,
/// update (with audit), invalid input refused, delete.
pub async fn tenant_lifecycle(storage: Storage, clock: ManualClock) {
    let svc = TenantService::new_with_clock(storage.clone(), Arc::new(clock.clone()));
    let admin = Actor::new("admin");
    let acme = svc
        .create(
            &admin,
            NewTenant {
                name: "acme".into(),
                weight: Some(200),
                tokens_per_minute: Some(100_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(acme.weight, 200);
    assert_eq!(acme.group, "default");
    assert_eq!(acme.version, 1);
    let dup = svc
        .create(
            &admin,
            NewTenant {
                name: "acme".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
    let beta = svc
        .create(
            &admin,
            NewTenant {
                name: "beta".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(beta.weight, 100);
    assert_eq!(svc.get(&acme.id).await.unwrap(), acme);
    assert_eq!(svc.get_by_name("beta").await.unwrap(), beta);
    let page = svc.list(&PageRequest::first(1)).await.unwrap();
    assert_eq!((page.items.len(), page.total), (1, 2));
    let next = svc
        .list(&PageRequest {
            cursor: page.cursor,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(next.items.len(), 1);
    assert_ne!(next.items[0].id, page.items[0].id);
    assert!(next.cursor.is_none());

    clock.advance_millis(1_000);
    // A tenant may only name a tier that exists.
    crate::tier::TierService::new_with_clock(storage.clone(), Arc::new(clock.clone()))
        .create(
            &admin,
            crate::tier::NewTier {
                name: "premium".into(),
                level: 1,
                groups: vec!["premium-users".into()],
                requests_per_minute: 10,
                tokens_per_minute: 1_000,
                max_tokens_per_request: None,
                models: crate::tier::ModelAccess::All,
            },
        )
        .await
        .unwrap();
    let up = svc
        .update(
            &admin,
            &acme.id,
            TenantUpdate {
                weight: Some(500),
                tier: Patch::Set("premium".into()),
                tokens_per_minute: Patch::Clear,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (up.weight, up.tier.as_deref(), up.tokens_per_minute),
        (500, Some("premium"), None)
    );
    assert_eq!(up.version, 2);
    assert!(up.updated_at > acme.updated_at);
    let rename = svc
        .update(
            &admin,
            &acme.id,
            TenantUpdate {
                name: Some("beta".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(rename, Err(Error::Conflict { .. })), "{rename:?}");
    for bad in [
        TenantUpdate {
            weight: Some(0),
            ..Default::default()
        },
        TenantUpdate {
            name: Some(String::new()),
            ..Default::default()
        },
        TenantUpdate {
            tokens_per_minute: Patch::Set(0),
            ..Default::default()
        },
        TenantUpdate {
            tier: Patch::Set("no-such-tier".into()),
            ..Default::default()
        },
    ] {
        let e = svc.update(&admin, &acme.id, bad).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    }
    assert_eq!(svc.get(&acme.id).await.unwrap(), up);
    svc.delete(&admin, &beta.id).await.unwrap();
    assert!(matches!(
        svc.get(&beta.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        svc.delete(&admin, &beta.id).await,
        Err(Error::NotFound { .. })
    ));
    // The name is free again.
    svc.create(
        &admin,
        NewTenant {
            name: "beta".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let log = storage
        .audit
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    let actions: Vec<&str> = log.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "tenant.delete",
            "tenant.update",
            "tier.create",
            "tenant.create",
            "tenant.create"
        ]
    );
}

/// A tenant update with a stale version is refused and changes nothing.
pub async fn tenant_update_is_optimistic(storage: Storage, clock: ManualClock) {
    let svc = TenantService::new_with_clock(storage.clone(), Arc::new(clock.clone()));
    let t = svc
        .create(
            &Actor::system(),
            NewTenant {
                name: "t".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut changed = t.clone();
    changed.weight = 7;
    storage
        .tenants
        .update_tenant(&changed, 1, ev(&clock, "tenant.update", t.id.as_str()))
        .await
        .unwrap();
    let stored = storage.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!((stored.weight, stored.version), (7, 2));
    changed.weight = 9;
    let stale = storage
        .tenants
        .update_tenant(&changed, 1, ev(&clock, "tenant.update", t.id.as_str()))
        .await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    assert_eq!(
        storage
            .tenants
            .get_tenant(&t.id)
            .await
            .unwrap()
            .unwrap()
            .weight,
        7
    );
    let audit = storage
        .audit
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    assert_eq!(audit.total, 2, "a refused update appends no audit event");
}

/// Keyspaces: create, get, list, update (new prefix applies to new keys),
/// invalid input refused.
pub async fn keyspace_lifecycle(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    assert_eq!(f.ks.prefix.as_deref(), Some("sk"));
    assert_eq!(f.ks.default_byte_length, 16);
    assert_eq!(f.keys.get_keyspace(&f.ks.id).await.unwrap(), f.ks);
    for (bad, field) in [
        (
            NewKeyspace {
                name: "x".into(),
                prefix: Some("toolongpx".into()),
                ..Default::default()
            },
            "prefix",
        ),
        (
            NewKeyspace {
                name: "x".into(),
                default_byte_length: Some(8),
                ..Default::default()
            },
            "byteLength",
        ),
        (
            NewKeyspace {
                name: String::new(),
                ..Default::default()
            },
            "name",
        ),
    ] {
        match f.keys.create_keyspace(&f.admin, bad).await {
            Err(Error::InvalidInput { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{other:?}"),
        }
    }
    let other = f
        .keys
        .create_keyspace(
            &f.admin,
            NewKeyspace {
                name: "bare".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let page = f
        .keys
        .list_keyspaces(&PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    let bare = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(other.id.clone()))
        .await
        .unwrap();
    assert!(!bare.key.contains('_'));
    let up = f
        .keys
        .update_keyspace(
            &f.admin,
            &f.ks.id,
            KeyspaceUpdate {
                prefix: Patch::Set("live".into()),
                default_byte_length: Some(32),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (up.prefix.as_deref(), up.default_byte_length, up.version),
        (Some("live"), 32, 2)
    );
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    assert!(k.key.starts_with("live_"), "{}", k.key);
    assert!(k.key.len() > "live_".len() + 40, "32 bytes of base58");
    let e = f
        .keys
        .update_keyspace(
            &f.admin,
            &f.ks.id,
            KeyspaceUpdate {
                prefix: Patch::Set("a b".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }));
    assert_eq!(f.keys.get_keyspace(&f.ks.id).await.unwrap(), up);
}

/// A created key is found by id and by hash; the secret is not stored.
pub async fn key_create_and_lookup(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage.clone(), clock).await;
    let created = f
        .keys
        .create(
            &f.admin,
            NewKey {
                name: Some("k".into()),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    assert!(created.key.starts_with("sk_"));
    assert!(created.key.starts_with(&created.start));
    let rec = storage
        .keys
        .get_key(&created.key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.hash, f.hasher.hash(created.key.as_bytes()));
    assert_eq!(rec.version, 1);
    let by_hash = storage
        .keys
        .get_key_by_hash(&rec.hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_hash, rec);
    let serialized = serde_json::to_string(&rec).unwrap();
    assert!(
        !serialized.contains(&created.key),
        "the secret is never stored"
    );
    assert!(
        storage
            .keys
            .get_key_by_hash(&KeyHash::from_bytes([0; 32]))
            .await
            .unwrap()
            .is_none()
    );
    let dup = storage
        .keys
        .create_key(&rec, ev(&f.clock, "key.create", rec.id.as_str()))
        .await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
    let view = f.keys.get(&created.key_id).await.unwrap();
    assert_eq!(view.name.as_deref(), Some("k"));
    assert_eq!(view.start, created.start);
    assert!(
        !serde_json::to_string(&view)
            .unwrap()
            .contains(&rec.hash.to_hex())
    );
}

/// Lists by keyspace and by owner, with cursors and totals over all pages;
/// soft-deleted keys only when asked.
pub async fn key_list_pagination_and_totals(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let other = f
        .keys
        .create_keyspace(
            &f.admin,
            NewKeyspace {
                name: "other".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..25 {
        f.clock.advance_millis(1);
        let owner = if i % 2 == 1 {
            Some("odd".to_string())
        } else {
            None
        };
        let k = f
            .keys
            .create(
                &f.admin,
                NewKey {
                    owner_id: owner,
                    ..NewKey::in_keyspace(f.ks.id.clone())
                },
            )
            .await
            .unwrap();
        ids.push(k.key_id);
    }
    for _ in 0..5 {
        f.keys
            .create(
                &f.admin,
                NewKey {
                    owner_id: Some("odd".into()),
                    ..NewKey::in_keyspace(other.id.clone())
                },
            )
            .await
            .unwrap();
    }
    let mut q = KeyQuery {
        keyspace_id: Some(f.ks.id.clone()),
        page: PageRequest::first(10),
        ..KeyQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = f.keys.list(&q).await.unwrap();
        assert_eq!(page.total, 25);
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|k| k.id));
        match page.cursor {
            Some(c) => q.page.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every key once, in creation order");
    let by_owner = f
        .keys
        .list(&KeyQuery {
            owner_id: Some("odd".into()),
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(by_owner.total, 12 + 5);
    let both = f
        .keys
        .list(&KeyQuery {
            owner_id: Some("odd".into()),
            keyspace_id: Some(other.id.clone()),
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(both.total, 5);
    f.keys.delete(&f.admin, &ids[0]).await.unwrap();
    let live = f
        .keys
        .list(&KeyQuery {
            keyspace_id: Some(f.ks.id.clone()),
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(live.total, 24);
    assert!(live.items.iter().all(|k| k.id != ids[0]));
    let all = f
        .keys
        .list(&KeyQuery {
            keyspace_id: Some(f.ks.id.clone()),
            include_deleted: true,
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.total, 25);
    assert!(
        all.items
            .iter()
            .any(|k| k.id == ids[0] && k.deleted_at.is_some())
    );
    let everything = f.keys.list(&KeyQuery::default()).await.unwrap();
    assert_eq!(everything.total, 29);
}

/// Unique names: per keyspace and owner, only where asked, freed by delete.
pub async fn key_unique_names(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage, clock).await;
    let named = |owner: &str, unique: bool| NewKey {
        name: Some("laptop".into()),
        owner_id: Some(owner.into()),
        unique_name: unique,
        ..NewKey::in_keyspace(f.ks.id.clone())
    };
    let first = f.keys.create(&f.admin, named("alice", true)).await.unwrap();
    let dup = f.keys.create(&f.admin, named("alice", true)).await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");
    // Another owner, or a caller that does not ask for uniqueness, may reuse it.
    f.keys.create(&f.admin, named("bob", true)).await.unwrap();
    f.keys
        .create(&f.admin, named("alice", false))
        .await
        .unwrap();
    // Renaming another unique key onto it conflicts.
    let other = f
        .keys
        .create(
            &f.admin,
            NewKey {
                name: Some("desktop".into()),
                ..named("alice", true)
            },
        )
        .await
        .unwrap();
    let rename = f
        .keys
        .update(
            &f.admin,
            &other.key_id,
            crate::key::KeyUpdate {
                name: Patch::Set("laptop".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(rename, Err(Error::Conflict { .. })), "{rename:?}");
    f.keys.delete(&f.admin, &first.key_id).await.unwrap();
    f.keys.create(&f.admin, named("alice", true)).await.unwrap();
    let missing_name = f
        .keys
        .create(
            &f.admin,
            NewKey {
                name: None,
                ..named("alice", true)
            },
        )
        .await;
    assert!(matches!(missing_name, Err(Error::InvalidInput { .. })));
}

/// A key update with a stale version is refused; the right one bumps it.
pub async fn key_update_is_optimistic(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage.clone(), clock).await;
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let rec = storage.keys.get_key(&k.key_id).await.unwrap().unwrap();
    let mut next = rec.clone();
    next.enabled = false;
    let stale = storage
        .keys
        .update_key(&next, 7, ev(&f.clock, "key.update", rec.id.as_str()))
        .await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    assert!(
        storage
            .keys
            .get_key(&k.key_id)
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    storage
        .keys
        .update_key(&next, 1, ev(&f.clock, "key.update", rec.id.as_str()))
        .await
        .unwrap();
    let stored = storage.keys.get_key(&k.key_id).await.unwrap().unwrap();
    assert_eq!((stored.enabled, stored.version), (false, 2));
    let mut ghost = rec.clone();
    ghost.id = crate::id::KeyId::parse("key_missing").unwrap();
    let missing = storage
        .keys
        .update_key(&ghost, 1, ev(&f.clock, "key.update", "key_missing"))
        .await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
}

/// 32 concurrent updates of one key through the service all land (losers of
/// a race read again and retry), each with its own audit event.
pub async fn key_concurrent_updates_all_land(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage.clone(), clock).await;
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let keys = f.keys.clone();
        let admin = f.admin.clone();
        let id = k.key_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut roles = vec![format!("r{i}")];
            roles.sort();
            keys.update(
                &admin,
                &id,
                crate::key::KeyUpdate {
                    roles: Some(roles),
                    ..Default::default()
                },
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let rec = storage.keys.get_key(&k.key_id).await.unwrap().unwrap();
    assert_eq!(rec.version, 33);
    let audit = storage
        .audit
        .list_audit(&AuditQuery {
            before_seq: None,
            limit: 1000,
        })
        .await
        .unwrap();
    let updates = audit
        .items
        .iter()
        .filter(|e| e.action == "key.update")
        .count();
    assert_eq!(updates, 32);
    // The last event's "after" is what is stored.
    let last = audit
        .items
        .iter()
        .find(|e| e.action == "key.update")
        .unwrap();
    assert_eq!(last.after.as_ref().unwrap()["roles"], json!(rec.roles));
}

/// `touch_keys` keeps the latest time, ignores unknown ids and bumps no version.
pub async fn key_touch_keeps_latest(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage.clone(), clock).await;
    let k = f
        .keys
        .create(&f.admin, NewKey::in_keyspace(f.ks.id.clone()))
        .await
        .unwrap();
    let t1 = Timestamp::from_millis(2_000_000_000_000);
    let t0 = Timestamp::from_millis(1_000_000_000_000);
    storage
        .keys
        .touch_keys(&[
            (k.key_id.clone(), t1),
            (crate::id::KeyId::parse("key_nope").unwrap(), t1),
        ])
        .await
        .unwrap();
    storage
        .keys
        .touch_keys(&[(k.key_id.clone(), t0)])
        .await
        .unwrap();
    let rec = storage.keys.get_key(&k.key_id).await.unwrap().unwrap();
    assert_eq!((rec.last_used_at, rec.version), (Some(t1), 1));
}

/// Every configuration change appends one event, newest first, paged by
/// cursor; events never hold the secret or its hash.
pub async fn audit_every_change_newest_first(storage: Storage, clock: ManualClock) {
    let f = Fixture::new(storage.clone(), clock).await;
    let k = f
        .keys
        .create(
            &f.admin,
            NewKey {
                remaining: Some(3),
                ..NewKey::in_keyspace(f.ks.id.clone())
            },
        )
        .await
        .unwrap();
    f.keys
        .set_enabled(&f.admin, &k.key_id, false)
        .await
        .unwrap();
    f.keys
        .update_remaining(
            &f.admin,
            &k.key_id,
            crate::key::RemainingOp::Increment,
            Some(2),
        )
        .await
        .unwrap();
    let rolled = f.keys.reroll(&f.admin, &k.key_id).await.unwrap();
    f.keys.delete(&f.admin, &k.key_id).await.unwrap();
    // Verifications are not configuration changes.
    f.keys
        .verify(&rolled.key, &Default::default())
        .await
        .unwrap();
    let expected = [
        "key.delete",
        "key.reroll",
        "key.update_remaining",
        "key.disable",
        "key.create",
        "keyspace.create",
    ];
    let mut q = AuditQuery {
        before_seq: None,
        limit: 2,
    };
    let mut events = Vec::new();
    loop {
        let page = storage.audit.list_audit(&q).await.unwrap();
        assert_eq!(page.total, 6);
        events.extend(page.items);
        match page.cursor {
            Some(c) => q.before_seq = Some(c.parse().unwrap()),
            None => break,
        }
    }
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, expected);
    assert!(events.windows(2).all(|w| w[0].seq > w[1].seq));
    let create = &events[4];
    assert_eq!(
        (create.actor.as_str(), create.target_id.as_str()),
        ("admin", k.key_id.as_str())
    );
    assert!(create.before.is_none() && create.after.is_some());
    let disable = &events[3];
    assert_eq!(disable.before.as_ref().unwrap()["enabled"], json!(true));
    assert_eq!(disable.after.as_ref().unwrap()["enabled"], json!(false));
    let text = serde_json::to_string(&events).unwrap();
    let rec = storage.keys.get_key(&k.key_id).await.unwrap().unwrap();
    for secret in [&k.key, &rolled.key, &rec.hash.to_hex()] {
        assert!(!text.contains(secret.as_str()), "audit leaks a secret");
    }
    let appended = storage
        .audit
        .append_audit(ev(&f.clock, "custom.event", "x"))
        .await
        .unwrap();
    assert_eq!(appended, events[0].seq + 1);
}

/// Balances: put, read, spend (decrement-if-enough), adjust, refill, remove.
pub async fn counters_balance_operations(storage: Storage, clock: ManualClock) {
    let c = &storage.counters;
    let now = clock.now();
    assert_eq!(c.balance("b").await.unwrap(), None);
    let miss = c.spend("b", 1, None, now).await.unwrap();
    assert!(!miss.spent && miss.balance.is_none());
    assert_eq!(
        c.adjust("b", BalanceOp::Set(1), None, now).await.unwrap(),
        None
    );
    assert_eq!(
        c.balance("b").await.unwrap(),
        None,
        "nothing is created implicitly"
    );
    c.put_balance("b", Some(Balance::new(3, now)))
        .await
        .unwrap();
    let s = c.spend("b", 2, None, now).await.unwrap();
    assert!(s.spent);
    assert_eq!(s.balance.unwrap().remaining, 1);
    let s = c.spend("b", 2, None, now).await.unwrap();
    assert!(!s.spent);
    assert_eq!(
        s.balance.unwrap().remaining,
        1,
        "a refused spend takes nothing"
    );
    let b = c
        .adjust("b", BalanceOp::Increment(10), None, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.remaining, 11);
    let b = c
        .adjust("b", BalanceOp::Decrement(50), None, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.remaining, 0);
    let refill = Refill {
        interval: RefillInterval::Daily,
        amount: 7,
        day: None,
    };
    let later = now.add_millis(86_400_000);
    let s = c.spend("b", 1, Some(&refill), later).await.unwrap();
    assert!(s.spent);
    assert_eq!(
        s.balance.unwrap(),
        Balance {
            remaining: 6,
            refilled_at: later
        }
    );
    let stored = c.balance("b").await.unwrap().unwrap();
    assert_eq!(stored.remaining, 6);
    c.put_balance("b", None).await.unwrap();
    assert_eq!(c.balance("b").await.unwrap(), None);
}

/// Windows: a missing counter starts full; takes within a window add up;
/// the next window refills; `reset_window` starts over.
pub async fn counters_window_operations(storage: Storage, clock: ManualClock) {
    let c = &storage.counters;
    let spec = WindowSpec::fixed(3, 60_000);
    let t = Timestamp::from_millis(clock.now().as_millis() / 60_000 * 60_000 + 10);
    let a = c.take("w", &spec, 2, t).await.unwrap();
    assert!(a.allowed);
    assert_eq!((a.limit, a.remaining), (3, 1));
    assert_eq!(a.reset, Timestamp::from_millis(t.as_millis() - 10 + 60_000));
    let b = c.take("w", &spec, 2, t).await.unwrap();
    assert!(!b.allowed);
    assert_eq!(b.remaining, 1);
    let peek = c.take("w", &spec, 0, t).await.unwrap();
    assert_eq!(peek.remaining, 1);
    let next = c.take("w", &spec, 3, a.reset).await.unwrap();
    assert!(next.allowed);
    c.reset_window("w").await.unwrap();
    let fresh = c.take("w", &spec, 3, a.reset).await.unwrap();
    assert!(fresh.allowed, "reset starts full");
    let other = c.take("w2", &spec, 4, t).await.unwrap();
    assert!(!other.allowed);
    assert_eq!(other.remaining, 3);
}

/// 64 tasks spend from one balance of 1,000: exactly 1,000 spends succeed.
pub async fn counters_spend_concurrently_exact(storage: Storage, clock: ManualClock) {
    let now = clock.now();
    storage
        .counters
        .put_balance("hot", Some(Balance::new(1_000, now)))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let counters = Arc::clone(&storage.counters);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..25 {
                if counters.spend("hot", 1, None, now).await.unwrap().spent {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1_000);
    assert_eq!(
        storage
            .counters
            .balance("hot")
            .await
            .unwrap()
            .unwrap()
            .remaining,
        0
    );
}

/// 64 tasks take from one window of 500: exactly 500 takes succeed.
pub async fn counters_take_concurrently_exact(storage: Storage, clock: ManualClock) {
    let now = clock.now();
    let spec = WindowSpec::fixed(500, 3_600_000);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let counters = Arc::clone(&storage.counters);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..12 {
                if counters.take("win", &spec, 1, now).await.unwrap().allowed {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 500);
}

fn record(clock: &ManualClock, kind: &str, id: &str, body: serde_json::Value) -> Record {
    Record {
        kind: kind.into(),
        id: id.into(),
        body,
        created_at: clock.now(),
        updated_at: clock.now(),
        version: 1,
    }
}

/// Catalog records: create, get, list per kind (pagination, totals, kinds
/// isolated), update, delete, each with its audit event.
pub async fn records_lifecycle(storage: Storage, clock: ManualClock) {
    let r = &storage.records;
    for i in 0..5 {
        let id = format!("t{i}");
        r.create_record(
            &record(&clock, "tier", &id, json!({"level": i})),
            ev(&clock, "tier.create", &id),
        )
        .await
        .unwrap();
    }
    // Same id, other kind: a separate namespace. A kind that is a prefix of
    // another does not leak into it.
    r.create_record(
        &record(&clock, "model", "t1", json!({"m": true})),
        ev(&clock, "model.create", "t1"),
    )
    .await
    .unwrap();
    r.create_record(
        &record(&clock, "tie", "x", json!(null)),
        ev(&clock, "tie.create", "x"),
    )
    .await
    .unwrap();
    let dup = r
        .create_record(
            &record(&clock, "tier", "t1", json!({})),
            ev(&clock, "tier.create", "t1"),
        )
        .await;
    assert!(matches!(dup, Err(Error::Conflict { .. })), "{dup:?}");

    let got = r.get_record("tier", "t3").await.unwrap().unwrap();
    assert_eq!(got.body, json!({"level": 3}));
    assert_eq!(got.version, 1);
    assert_eq!(
        r.get_record("model", "t1").await.unwrap().unwrap().body,
        json!({"m": true})
    );
    assert!(r.get_record("tier", "nope").await.unwrap().is_none());
    assert!(r.get_record("nope", "t1").await.unwrap().is_none());

    let p1 = r
        .list_records("tier", &PageRequest::first(2))
        .await
        .unwrap();
    assert_eq!(p1.total, 5);
    let ids: Vec<_> = p1.items.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["t0", "t1"]);
    let p2 = r
        .list_records(
            "tier",
            &PageRequest {
                cursor: p1.cursor.clone(),
                limit: 2,
            },
        )
        .await
        .unwrap();
    let ids: Vec<_> = p2.items.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["t2", "t3"]);
    let p3 = r
        .list_records(
            "tier",
            &PageRequest {
                cursor: p2.cursor.clone(),
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(p3.items.len(), 1);
    assert!(p3.cursor.is_none());
    let none = r
        .list_records("absent", &PageRequest::default())
        .await
        .unwrap();
    assert_eq!((none.items.len(), none.total), (0, 0));

    clock.advance_millis(1000);
    let mut changed = got.clone();
    changed.body = json!({"level": 30});
    changed.updated_at = clock.now();
    r.update_record(&changed, 1, ev(&clock, "tier.update", "t3"))
        .await
        .unwrap();
    let after = r.get_record("tier", "t3").await.unwrap().unwrap();
    assert_eq!(
        (after.body.clone(), after.version),
        (json!({"level": 30}), 2)
    );
    assert_eq!(after.updated_at, clock.now());
    assert_eq!(after.created_at, got.created_at);

    r.delete_record("tier", "t3", ev(&clock, "tier.delete", "t3"))
        .await
        .unwrap();
    assert!(r.get_record("tier", "t3").await.unwrap().is_none());
    let gone = r
        .delete_record("tier", "t3", ev(&clock, "tier.delete", "t3"))
        .await;
    assert!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");
    let gone = r
        .update_record(&changed, 2, ev(&clock, "tier.update", "t3"))
        .await;
    assert!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");
    assert_eq!(
        r.list_records("tier", &PageRequest::default())
            .await
            .unwrap()
            .total,
        4
    );

    let audit = storage
        .audit
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    // 5 + 2 creates, 1 update, 1 delete; refusals append nothing.
    assert_eq!(audit.total, 9);
    assert_eq!(audit.items[0].action, "tier.delete");
    assert_eq!(audit.items[1].action, "tier.update");
}

/// A record update with a stale version is refused and changes nothing;
/// concurrent read-modify-write loops all land.
pub async fn records_update_is_optimistic(storage: Storage, clock: ManualClock) {
    let r = storage.records.clone();
    r.create_record(
        &record(&clock, "counter", "c", json!({"n": 0})),
        ev(&clock, "counter.create", "c"),
    )
    .await
    .unwrap();
    let mut stale = record(&clock, "counter", "c", json!({"n": 100}));
    stale.version = 7;
    let refused = r
        .update_record(&stale, 7, ev(&clock, "counter.update", "c"))
        .await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let r = r.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                loop {
                    let cur = r.get_record("counter", "c").await.unwrap().unwrap();
                    let mut next = cur.clone();
                    next.body = json!({"n": cur.body["n"].as_u64().unwrap() + 1});
                    match r
                        .update_record(&next, cur.version, ev(&clock, "counter.update", "c"))
                        .await
                    {
                        Ok(()) => break,
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let end = r.get_record("counter", "c").await.unwrap().unwrap();
    assert_eq!(end.body, json!({"n": 16}));
    assert_eq!(end.version, 17);
    let audit = storage
        .audit
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    assert_eq!(audit.total, 17);
}
