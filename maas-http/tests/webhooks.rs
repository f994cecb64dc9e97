//! `key.expiring`: the dispatcher's scan emits it once per key and expiry,
//! for live keys expiring within 24 hours, to the webhooks subscribed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use maas_core::webhook::{EventType, NewWebhook, Webhooks};
use maas_core::{
    Actor, Clock, KeyHasher, KeyService, ManualClock, NewKey, NewKeyspace, PageRequest, UserKeys,
};
use maas_http::webhooks::{Dispatcher, DispatcherConfig, scan_expiring};
use maas_store_memory::MemoryStore;

#[tokio::test]
async fn keys_expiring_within_a_day_are_told_once() {
    let storage = MemoryStore::new().storage();
    let clock = ManualClock::default();
    let hasher = KeyHasher::random();
    let keys = KeyService::new_with_clock(storage.clone(), hasher.clone(), Arc::new(clock.clone()));
    let hooks = Webhooks::with_config(
        storage.clone(),
        hasher,
        Default::default(),
        Arc::new(clock.clone()),
    );
    let admin = Actor::new("admin");
    let ks = keys
        .create_keyspace(
            &admin,
            NewKeyspace {
                name: "users".into(),
                prefix: None,
                default_byte_length: None,
            },
        )
        .await
        .unwrap();
    let hook = hooks
        .create(
            &admin,
            NewWebhook {
                url: "http://127.0.0.1:9/hook".into(),
                events: vec![EventType::KeyExpiring],
            },
        )
        .await
        .unwrap();
    let now = clock.now();
    let mut ids = Vec::new();
    for (name, in_hours) in [("soon", 23), ("later", 25), ("never", 0)] {
        let k = keys
            .create(
                &admin,
                NewKey {
                    name: Some(name.into()),
                    expires: (in_hours > 0).then(|| now.add_millis(in_hours * 3_600_000)),
                    ..NewKey::in_keyspace(ks.id.clone())
                },
            )
            .await
            .unwrap();
        ids.push(k.key_id);
    }
    assert_eq!(
        scan_expiring(&hooks, &keys, &ks.id, &clock).await.unwrap(),
        1
    );
    assert_eq!(
        scan_expiring(&hooks, &keys, &ks.id, &clock).await.unwrap(),
        0,
        "once"
    );
    let due = hooks.due().await.unwrap();
    assert_eq!(due.len(), 1);
    let event = &due[0].1.event;
    assert_eq!(event.kind, EventType::KeyExpiring);
    assert_eq!(event.data["key_id"], ids[0].to_string());
    assert_eq!(due[0].0.id, hook.webhook.id);
    // Two hours on, the second key is within a day too; the first is told
    // no more, and an expired key never.
    clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(
        scan_expiring(&hooks, &keys, &ks.id, &clock).await.unwrap(),
        1
    );
    clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(
        scan_expiring(&hooks, &keys, &ks.id, &clock).await.unwrap(),
        0
    );
}

/// The dispatcher's scan looks at the users' keyspace only if it exists:
/// it never creates it (on a data plane the control plane's arrives with
/// its first artifact, under the control plane's id).
#[tokio::test(start_paused = true)]
async fn the_expiring_scan_never_creates_the_user_keyspace() {
    let storage = MemoryStore::new().storage();
    let clock = Arc::new(ManualClock::default());
    let hasher = KeyHasher::random();
    let keys = KeyService::new_with_clock(storage.clone(), hasher.clone(), clock.clone());
    let hooks = Webhooks::with_config(storage.clone(), hasher, Default::default(), clock.clone());
    let dispatcher = Dispatcher::new(
        hooks,
        DispatcherConfig {
            expiring_scan: Duration::from_millis(10),
            ..DispatcherConfig::default()
        },
    );
    let user_keys = UserKeys::new_with_clock(keys, clock.clone());
    // Paused time: a hundred scans pass at once.
    dispatcher
        .run(
            Some((user_keys.clone(), clock.clone())),
            tokio::time::sleep(Duration::from_secs(1)),
        )
        .await;
    assert_eq!(user_keys.existing_keyspace().await.unwrap(), None);
    let all = storage
        .keyspaces
        .list_keyspaces(&PageRequest::first(10))
        .await
        .unwrap();
    assert!(all.items.is_empty(), "{:?}", all.items);
}
