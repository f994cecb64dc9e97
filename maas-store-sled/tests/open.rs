//! Opening: missing paths are created, locked databases and newer formats are
//! refused with clear errors, and all state survives a clean close and reopen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use maas_core::audit::AuditQuery;
use maas_core::storage::{KeyQuery, PageRequest};
use maas_core::{
    Actor, Clock, KeyHasher, KeyRateLimit, KeyService, KeyUpdate, ManualClock, NewKey, NewKeyspace,
    NewTenant, Patch, RateLimitKind, Refill, RefillInterval, RemainingOp, TenantService,
    VerifyCode, VerifyOptions,
};
use maas_store_sled::{FORMAT_VERSION, SledConfig, SledError, SledStore};
use serde_json::json;

#[test]
fn a_missing_path_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/maas.db");
    let store = SledStore::open(&path).unwrap();
    assert!(path.is_dir());
    assert_eq!(store.format_version(), FORMAT_VERSION);
}

#[test]
fn a_locked_database_fails_at_once_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maas.db");
    let _held = SledStore::open(&path).unwrap();
    let second = SledStore::open_with(SledConfig {
        lock_wait: Duration::ZERO,
        ..SledConfig::at(&path)
    });
    match second {
        Err(e @ SledError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("maas.db") && msg.contains("locked"), "{msg}");
            let core: maas_core::Error = e.into();
            assert!(core.is_transient());
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn a_newer_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maas.db");
    {
        // A database as a future version would leave it.
        let db = sled::open(&path).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    match SledStore::open(&path) {
        Err(
            e @ SledError::NewerFormat {
                found: 99,
                supported: FORMAT_VERSION,
                ..
            },
        ) => {
            let msg = e.to_string();
            assert!(
                msg.contains("99") && msg.contains(&FORMAT_VERSION.to_string()),
                "{msg}"
            );
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_state_survives_a_clean_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maas.db");
    let clock = ManualClock::default();
    let hasher = KeyHasher::from_secret(b"reopen");
    let admin = Actor::new("admin");
    let services = |store: SledStore| {
        let storage = store.storage();
        (
            KeyService::new_with_clock(storage.clone(), hasher.clone(), Arc::new(clock.clone())),
            TenantService::new_with_clock(storage, Arc::new(clock.clone())),
        )
    };

    let store = SledStore::open(&path).unwrap();
    let (keys, tenants) = services(store.clone());
    // The tier the tenant names (a tenant may only name an existing tier).
    maas_core::TierService::new_with_clock(store.clone().storage(), Arc::new(clock.clone()))
        .create(
            &admin,
            maas_core::tier::NewTier {
                name: "premium".into(),
                level: 1,
                groups: vec!["premium-users".into()],
                requests_per_minute: 10,
                tokens_per_minute: 1_000,
                max_tokens_per_request: None,
                models: maas_core::tier::ModelAccess::All,
            },
        )
        .await
        .unwrap();
    let acme = tenants
        .create(
            &admin,
            NewTenant {
                name: "acme".into(),
                weight: Some(300),
                tier: Some("premium".into()),
                tokens_per_minute: Some(50_000),
                group: Some("batch".into()),
            },
        )
        .await
        .unwrap();
    tenants
        .create(
            &admin,
            NewTenant {
                name: "beta".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ks = keys
        .create_keyspace(
            &admin,
            NewKeyspace {
                name: "prod".into(),
                prefix: Some("sk".into()),
                default_byte_length: Some(24),
            },
        )
        .await
        .unwrap();
    let full = keys
        .create(
            &admin,
            NewKey {
                name: Some("full".into()),
                unique_name: true,
                owner_id: Some(acme.id.to_string()),
                meta: json!({"plan": "pro", "n": [1, 2.5, null], "nested": {"a": true}})
                    .as_object()
                    .cloned(),
                expires: Some(clock.now().add_millis(86_400_000)),
                remaining: Some(10),
                refill: Some(Refill {
                    interval: RefillInterval::Monthly,
                    amount: 10,
                    day: Some(15),
                }),
                ratelimit: Some(KeyRateLimit {
                    kind: RateLimitKind::Consistent,
                    limit: 5,
                    refill_rate: 1,
                    refill_interval: 1_000,
                }),
                roles: vec!["admin".into()],
                permissions: vec!["dns.read".into(), "dns.write".into()],
                environment: Some("test".into()),
                ..NewKey::in_keyspace(ks.id.clone())
            },
        )
        .await
        .unwrap();
    let disabled = keys
        .create(
            &admin,
            NewKey {
                enabled: false,
                ..NewKey::in_keyspace(ks.id.clone())
            },
        )
        .await
        .unwrap();
    let deleted = keys
        .create(&admin, NewKey::in_keyspace(ks.id.clone()))
        .await
        .unwrap();
    keys.delete(&admin, &deleted.key_id).await.unwrap();
    keys.update(
        &admin,
        &full.key_id,
        KeyUpdate {
            environment: Patch::Set("live".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    keys.update_remaining(&admin, &full.key_id, RemainingOp::Decrement, Some(3))
        .await
        .unwrap();
    clock.advance_millis(2_000);
    let v = keys
        .verify(&full.key, &VerifyOptions::default())
        .await
        .unwrap();
    assert_eq!((v.code(), v.remaining()), (VerifyCode::Valid, Some(6)));
    keys.flush_last_used().await.unwrap();

    let snapshot = |keys: KeyService, tenants: TenantService, store: SledStore| async move {
        let all = KeyQuery {
            include_deleted: true,
            ..KeyQuery::default()
        };
        (
            tenants.list(&PageRequest::default()).await.unwrap(),
            keys.list_keyspaces(&PageRequest::default()).await.unwrap(),
            keys.list(&all).await.unwrap(),
            keys.storage().keys.list_keys(&all).await.unwrap(),
            keys.storage()
                .audit
                .list_audit(&AuditQuery {
                    before_seq: None,
                    limit: 1000,
                })
                .await
                .unwrap(),
            store.check_integrity().unwrap(),
        )
    };
    let before = snapshot(keys, tenants, store.clone()).await;
    store.flush().await.unwrap();
    drop(store);

    let store = SledStore::open(&path).unwrap();
    let (keys, tenants) = services(store.clone());
    let after = snapshot(keys.clone(), tenants, store).await;
    assert_eq!(before.0, after.0, "tenants");
    assert_eq!(before.1, after.1, "keyspaces");
    assert_eq!(before.2, after.2, "keys (views with balances)");
    assert_eq!(before.3, after.3, "key records, every field");
    assert_eq!(before.4, after.4, "audit log");
    assert!(after.5.is_ok(), "{:?}", after.5.problems);
    assert_eq!(after.0.total, 2);
    assert_eq!(after.2.total, 3);
    // Nine changes, and the tier the tenant names.
    assert_eq!(after.4.total, 10);
    let rec = after.3.items.iter().find(|k| k.id == full.key_id).unwrap();
    assert_eq!(rec.last_used_at, Some(clock.now()));
    assert_eq!(rec.environment.as_deref(), Some("live"));

    // The reopened store verifies with the same secret, and keeps counting.
    let v = keys
        .verify(&full.key, &VerifyOptions::default())
        .await
        .unwrap();
    assert_eq!((v.code(), v.remaining()), (VerifyCode::Valid, Some(5)));
    assert_eq!(
        keys.verify(&disabled.key, &VerifyOptions::default())
            .await
            .unwrap()
            .code(),
        VerifyCode::Disabled
    );
    assert_eq!(
        keys.verify(&deleted.key, &VerifyOptions::default())
            .await
            .unwrap()
            .code(),
        VerifyCode::NotFound
    );
    // A unique name is still taken.
    let dup = keys
        .create(
            &admin,
            NewKey {
                name: Some("full".into()),
                unique_name: true,
                owner_id: Some(acme.id.to_string()),
                ..NewKey::in_keyspace(ks.id.clone())
            },
        )
        .await;
    assert!(
        matches!(dup, Err(maas_core::Error::Conflict { .. })),
        "{dup:?}"
    );
}
