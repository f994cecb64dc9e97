//! A database written by the previous release (format 1: JSON records, audit
//! events with two whole copies, no journal) opens: it is migrated to the
//! compact format on open, and every key, balance, tenant, tier, usage
//! bucket and audit event reads back as it was written. A format-2 database
//! (compact, with the `key_flags` index) loses that index on open.
//!
//! The fixture (`tests/fixtures/v1/`) was written at commit 1f4e56a by the
//! program in `tests/fixtures/v1/generate.rs.txt`; `keys.json` holds the
//! secrets of its keys (hashed with the secret `fixture-secret`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use maas_core::audit::AuditQuery;
use maas_core::storage::{KeyQuery, PageRequest};
use maas_core::usage::UsageFilter;
use maas_core::{
    Clock, KeyHasher, KeyId, KeyService, ManualClock, RefillInterval, TenantService, TierService,
    Timestamp, VerifyCode, VerifyOptions,
};
use maas_store_sled::{FORMAT_VERSION, SledStore};

fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    std::fs::create_dir_all(to.join("blobs")).unwrap();
    for f in ["conf", "db"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn fixture_keys() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/keys.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_database_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maas.db");
    copy_fixture(&path);
    let ids = fixture_keys();
    // The fixture's clock stood at 2026-06-01; a day later here.
    let clock = ManualClock::new(Timestamp::from_millis(1_780_272_000_000 + 86_400_000));
    let clock: Arc<dyn Clock> = Arc::new(clock);

    for open in 0..2 {
        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.format_version(), FORMAT_VERSION);
        let report = store.check_integrity().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.keys, 3);
        let storage = store.clone().storage();
        let keys = KeyService::new_with_clock(
            storage.clone(),
            KeyHasher::from_secret(b"fixture-secret"),
            clock.clone(),
        );
        let secret = |k: &str| ids[k]["key"].as_str().unwrap().to_owned();
        let id = |k: &str| KeyId::parse(ids[k]["id"].as_str().unwrap()).unwrap();

        let plain = keys.get(&id("plain")).await.unwrap();
        assert_eq!(plain.name.as_deref(), Some("renamed"));
        let full = keys.get(&id("full")).await.unwrap();
        assert_eq!(full.name.as_deref(), Some("full key"));
        assert_eq!(full.owner_id.as_deref(), Some("owner-1"));
        assert_eq!(
            serde_json::to_value(&full.meta).unwrap(),
            serde_json::json!({"plan": "pro", "n": [1, 2.5, null], "nested": {"ok": true}})
        );
        let refill = full.refill.as_ref().unwrap();
        assert_eq!(
            (refill.interval, refill.amount, refill.day),
            (RefillInterval::Monthly, 10, Some(15))
        );
        assert_eq!(full.ratelimit.as_ref().unwrap().limit, 5);
        assert_eq!(full.permissions, ["api.read", "api.write"]);
        assert_eq!(full.environment.as_deref(), Some("test"));
        // Two uses were spent when the fixture was written; one more per open.
        assert_eq!(full.remaining, Some(8 - open));
        assert!(full.last_used_at.is_some(), "its last use survived");
        assert!(keys.get(&id("deleted")).await.is_err(), "still deleted");

        let v = keys
            .verify(secret("full"), &VerifyOptions::default())
            .await
            .unwrap();
        assert_eq!(v.code(), VerifyCode::Valid);
        assert_eq!(v.remaining(), Some(7 - open));
        let v = keys
            .verify(secret("plain"), &VerifyOptions::default())
            .await
            .unwrap();
        assert_eq!(v.code(), VerifyCode::Valid);
        let v = keys
            .verify(secret("deleted"), &VerifyOptions::default())
            .await
            .unwrap();
        assert_eq!(v.code(), VerifyCode::NotFound);

        let tenants = TenantService::new_with_clock(storage.clone(), clock.clone());
        let acme = tenants.get_by_name("acme").await.unwrap();
        assert_eq!((acme.weight, acme.group.as_str()), (3, "gold"));
        let tiers = TierService::new_with_clock(storage.clone(), clock.clone());
        let names: Vec<String> = tiers
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["enterprise", "free", "premium"]);

        let usage = storage
            .usage
            .usage_buckets(&UsageFilter::range(
                Timestamp::from_millis(0),
                Timestamp::from_millis(4_102_444_800_000),
            ))
            .await
            .unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(
            (usage[0].sums.requests, usage[0].sums.output_tokens),
            (2, 60)
        );

        let audit = storage
            .audit
            .list_audit(&AuditQuery {
                before_seq: None,
                limit: 1000,
            })
            .await
            .unwrap();
        let rename = audit
            .items
            .iter()
            .find(|e| e.action == "key.update")
            .expect("the rename's event");
        // Migrated to what changed: the name, its time and its version.
        let before = rename.before.as_ref().unwrap().as_object().unwrap();
        assert_eq!(before["name"], serde_json::Value::Null, "no name before");
        let after = rename.after.as_ref().unwrap().as_object().unwrap();
        assert_eq!(after["name"], "renamed");
        assert!(!after.contains_key("keyspaceId"), "{after:?}");
        assert!(audit.items.iter().any(|e| e.action == "tenant.create"));
        assert_eq!(audit.total, audit.items.len() as u64);
        let _ = keys.list_keyspaces(&PageRequest::first(10)).await.unwrap();
        store.flush().await.unwrap();
    }

    // Every record is in the compact encoding now (first byte 2, not `{`).
    let db = sled::open(&path).unwrap();
    for tree in ["tenants", "keyspaces", "keys", "records", "audit"] {
        let t = db.open_tree(tree).unwrap();
        assert!(!t.is_empty(), "{tree}");
        for kv in t.iter() {
            let (_, v) = kv.unwrap();
            assert_eq!(v[0], 2, "{tree}");
        }
    }

    // Format 3 has no flag index.
    assert!(
        !db.tree_names().iter().any(|n| n.as_ref() == b"key_flags"),
        "the key_flags tree is gone"
    );
}

/// Every key (`include_deleted`: deleted ones too) without a filter, by id.
async fn all_keys(store: &SledStore, include_deleted: bool) -> Vec<String> {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Timestamp::from_millis(0)));
    let keys = KeyService::new_with_clock(
        store.clone().storage(),
        KeyHasher::from_secret(b"fixture-secret"),
        clock,
    );
    let mut out = Vec::new();
    let mut page = PageRequest::first(1);
    loop {
        let got = keys
            .list(&KeyQuery {
                keyspace_id: None,
                owner_id: None,
                include_deleted,
                page: page.clone(),
            })
            .await
            .unwrap();
        assert_eq!(got.total, if include_deleted { 3 } else { 2 });
        out.extend(got.items.iter().map(|k| k.id.to_string()));
        match got.cursor {
            Some(c) => page.cursor = Some(c),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_database_loses_its_flag_index_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maas.db");
    copy_fixture(&path);
    let (live, all) = {
        let store = SledStore::open(&path).unwrap();
        (all_keys(&store, false).await, all_keys(&store, true).await)
    };
    let ids = fixture_keys();
    let mut want = vec![
        ids["full"]["id"].as_str().unwrap().to_owned(),
        ids["plain"]["id"].as_str().unwrap().to_owned(),
    ];
    want.sort();
    assert_eq!(live, want, "listed in id order, the deleted key left out");
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");

    // Make it what format 2 wrote: a flag per key, and the marker.
    {
        let db = sled::open(&path).unwrap();
        let flags = db.open_tree("key_flags").unwrap();
        for id in &all {
            flags.insert(id.as_bytes(), &[0u8]).unwrap();
        }
        db.open_tree("meta")
            .unwrap()
            .insert("format_version", &2u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    {
        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.format_version(), 3);
        let report = store.check_integrity().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.keys, 3);
        assert_eq!(all_keys(&store, false).await, want);
        assert_eq!(all_keys(&store, true).await, all);
    }
    let db = sled::open(&path).unwrap();
    assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"key_flags"));
    let marker = db.open_tree("meta").unwrap().get("format_version").unwrap();
    assert_eq!(marker.unwrap().as_ref(), &3u32.to_be_bytes());
}
