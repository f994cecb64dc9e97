//! Root keys and the key API under their authority.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Actor;
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::error::Error;
use crate::key::{
    KeyHasher, KeyService, KeyUpdate, NewKey, RemainingOp, VerifyCode, VerifyOptions,
};
use crate::rootkeys::{ListFrom, RootAuth, RootKeys};
use crate::storage::{PageRequest, Storage};
use crate::usage::{UsageConfig, UsageLedger};

use super::Probe;

fn root_keys(storage: &Storage, clock: &ManualClock, hasher: &KeyHasher) -> RootKeys {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let keys = KeyService::new_with_clock(storage.clone(), hasher.clone(), Arc::clone(&clock));
    RootKeys::new_with_clock(keys, clock)
}

fn field_of<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::InvalidInput { field, .. }) => field.into_owned(),
        other => panic!("expected invalid input, got {other:?}"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Root keys: create (secret once, `root_` prefix), list without secrets,
/// authenticate with their permissions, the admin token in constant time,
/// disabled and deleted keys refused, delete only root keys.
pub async fn root_keys_lifecycle(storage: Storage, clock: ManualClock) {
    let svc = root_keys(&storage, &clock, &KeyHasher::random());
    let admin = Actor::new("admin");
    assert!(svc.list().await.unwrap().is_empty());
    let perms = strings(&["api.*.read_key", "api.*.read_key", "ratelimit.*.limit"]);
    let ci = svc.create(&admin, "ci", perms).await.unwrap();
    assert!(ci.key.starts_with("root_"), "{}", ci.key);
    assert!(ci.key.starts_with(&ci.start));
    assert_eq!(ci.permissions, ["api.*.read_key", "ratelimit.*.limit"]);
    clock.advance(Duration::from_millis(3));
    let ops = svc
        .create(&admin, "ops", strings(&["api.*.delete_api"]))
        .await
        .unwrap();

    let list = svc.list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].key_id, ci.key_id);
    assert_eq!(list[0].name, "ci");
    assert_eq!(list[0].permissions, ci.permissions);
    assert_eq!(list[1].key_id, ops.key_id);
    let json = serde_json::to_string(&list).unwrap();
    assert!(!json.contains(&ci.key) && !json.contains(&ops.key));

    match svc.authenticate(Some(&ci.key), None).await.unwrap() {
        RootAuth::Key {
            key_id,
            permissions,
        } => {
            assert_eq!(key_id, ci.key_id);
            assert_eq!(permissions, ci.permissions);
        }
        other => panic!("{other:?}"),
    }
    let token = Some("admin-token");
    assert_eq!(
        svc.authenticate(Some("admin-token"), token).await.unwrap(),
        RootAuth::Admin
    );
    // A root key still works beside an admin token; an empty token is none.
    assert!(svc.authenticate(Some(&ci.key), token).await.is_ok());
    for (bearer, token) in [
        (None, token),
        (Some("admin-tokeN"), token),
        (Some(""), Some("")),
        (Some("root_nope"), None),
    ] {
        let e = svc.authenticate(bearer, token).await.unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{e:?}");
    }

    let keys = svc.key_service();
    keys.set_enabled(&admin, &ops.key_id, false).await.unwrap();
    let e = svc.authenticate(Some(&ops.key), None).await.unwrap_err();
    assert_eq!(e.to_string(), "unauthenticated: the root key is disabled");

    svc.delete(&admin, &ci.key_id).await.unwrap();
    assert!(matches!(
        svc.authenticate(Some(&ci.key), None).await,
        Err(Error::Unauthenticated { .. })
    ));
    let again = svc.delete(&admin, &ci.key_id).await.unwrap_err();
    assert_eq!(
        again.to_string(),
        format!("root key '{}' not found", ci.key_id)
    );
    // A key of another keyspace is not a root key.
    let ks = keys
        .create_keyspace(
            &admin,
            crate::keyspace::NewKeyspace {
                name: "prod".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let user = keys
        .create(&admin, NewKey::in_keyspace(ks.id))
        .await
        .unwrap();
    assert!(matches!(
        svc.delete(&admin, &user.key_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(keys.get(&user.key_id).await.is_ok());
    assert_eq!(svc.list().await.unwrap().len(), 1);
}

/// Concurrent first root keys on four nodes end in one root keyspace; a
/// node that starts later finds it and authenticates every node's keys.
pub async fn root_keys_nodes_share_one_keyspace(storage: Storage, clock: ManualClock) {
    let hasher = KeyHasher::random();
    let nodes: Vec<RootKeys> = (0..4)
        .map(|_| root_keys(&storage, &clock, &hasher))
        .collect();
    let tasks: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let n = n.clone();
            tokio::spawn(async move {
                n.create(&Actor::new("admin"), &format!("k{i}"), Vec::new())
                    .await
            })
        })
        .collect();
    let mut secrets = Vec::new();
    for t in tasks {
        secrets.push(t.await.unwrap().unwrap().key);
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
    let late = root_keys(&storage, &clock, &hasher);
    for s in &secrets {
        assert!(late.authenticate(Some(s), None).await.is_ok());
    }
    assert_eq!(late.list().await.unwrap().len(), 4);
}

/// Invalid root-key input is refused naming the field and writes nothing
/// (not even the root keyspace); authenticating and listing before any
/// root key exists write nothing either.
pub async fn root_keys_invalid_input_writes_nothing(storage: Storage, clock: ManualClock) {
    let (probe, storage) = Probe::wrap(storage);
    let svc = root_keys(&storage, &clock, &KeyHasher::random());
    let admin = Actor::new("admin");
    assert_eq!(field_of(svc.create(&admin, "", Vec::new()).await), "name");
    assert_eq!(
        field_of(svc.create(&admin, "a\nb", Vec::new()).await),
        "name"
    );
    for bad in [
        "*",
        "api.*.read",
        "api.ks_1.create_api",
        "apis.*.read_key",
        "",
    ] {
        assert_eq!(
            field_of(svc.create(&admin, "ci", strings(&[bad])).await),
            "permissions",
            "{bad}"
        );
    }
    assert!(svc.authenticate(Some("root_x"), None).await.is_err());
    assert!(svc.list().await.unwrap().is_empty());
    assert_eq!(probe.counts().writes, 0, "no write");
}

/// The key API under root keys: permissions checked per api (403 before
/// 404 where the caller may do the action nowhere), the root keyspace and
/// its keys invisible even to the admin, listing by cursor and offset with
/// the api's total, verifications by key and owner.
pub async fn root_keys_guard_the_key_api(storage: Storage, clock: ManualClock) {
    let svc = root_keys(&storage, &clock, &KeyHasher::random());
    let keys = svc.key_service().clone();
    let ledger =
        UsageLedger::new_with_clock(&storage, UsageConfig::default(), Arc::new(clock.clone()));
    keys.attach_usage(ledger.clone()).unwrap();
    let admin = RootAuth::Admin;
    let api_a = svc.create_api(&admin, "api-a").await.unwrap();
    let api_b = svc.create_api(&admin, "api-b").await.unwrap();
    assert_eq!(field_of(svc.create_api(&admin, "ab").await), "name");
    let narrow = svc
        .create(
            &Actor::new("admin"),
            "narrow",
            vec![
                format!("api.{}.read_key", api_a.id),
                format!("api.{}.create_key", api_a.id),
            ],
        )
        .await
        .unwrap();
    let narrow = svc.authenticate(Some(&narrow.key), None).await.unwrap();
    assert!(matches!(
        svc.create_api(&narrow, "api-c").await,
        Err(Error::Forbidden { .. })
    ));

    let in_a = |owner: &str| NewKey {
        owner_id: Some(owner.into()),
        ..NewKey::in_keyspace(api_a.id.clone())
    };
    // A millisecond apart, so ids sort in creation order.
    let k1 = svc.create_key(&narrow, in_a("alice")).await.unwrap();
    clock.advance(Duration::from_millis(1));
    let k2 = svc.create_key(&narrow, in_a("bob")).await.unwrap();
    clock.advance(Duration::from_millis(1));
    let k3 = svc.create_key(&narrow, in_a("alice")).await.unwrap();
    assert!(matches!(
        svc.create_key(&narrow, NewKey::in_keyspace(api_b.id.clone()))
            .await,
        Err(Error::Forbidden { .. })
    ));
    let kb = svc
        .create_key(&admin, NewKey::in_keyspace(api_b.id.clone()))
        .await
        .unwrap();
    assert_eq!(
        svc.get_key(&narrow, &k1.key_id).await.unwrap().id,
        k1.key_id
    );
    assert!(matches!(
        svc.get_key(&narrow, &kb.key_id).await,
        Err(Error::Forbidden { .. })
    ));
    // No update permission anywhere: forbidden before the lookup.
    let unknown = crate::id::KeyId::parse("key_unknown").unwrap();
    assert!(matches!(
        svc.update_key(&narrow, &unknown, KeyUpdate::default())
            .await,
        Err(Error::Forbidden { .. })
    ));
    assert!(matches!(
        svc.get_key(&narrow, &unknown).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        svc.get_api(&narrow, &api_a.id).await,
        Err(Error::Forbidden { .. })
    ));

    // Listing: cursor pages, offsets, owner filter, total of the api.
    let p1 = svc
        .list_api_keys(&narrow, &api_a.id, None, ListFrom::Cursor(None), 2)
        .await
        .unwrap();
    assert_eq!(p1.items.len(), 2);
    assert_eq!(p1.total, 3);
    let p2 = svc
        .list_api_keys(&narrow, &api_a.id, None, ListFrom::Cursor(p1.cursor), 2)
        .await
        .unwrap();
    assert_eq!(p2.items[0].id, k3.key_id);
    assert!(p2.cursor.is_none());
    let off = svc
        .list_api_keys(&narrow, &api_a.id, None, ListFrom::Offset(1), 1)
        .await
        .unwrap();
    assert_eq!(off.items[0].id, k2.key_id);
    let past = svc
        .list_api_keys(&narrow, &api_a.id, None, ListFrom::Offset(5), 1)
        .await
        .unwrap();
    assert!(past.items.is_empty());
    assert_eq!(past.total, 3);
    let alice = svc
        .list_api_keys(&narrow, &api_a.id, Some("alice"), ListFrom::Offset(0), 10)
        .await
        .unwrap();
    assert_eq!(alice.items.len(), 2);
    assert_eq!(alice.total, 3);

    // The root keyspace is invisible, even to the admin.
    let root_ks = svc.keyspace().await.unwrap();
    assert!(matches!(
        svc.get_api(&admin, &root_ks).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        svc.delete_api(&admin, &root_ks).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        svc.create_key(&admin, NewKey::in_keyspace(root_ks.clone()))
            .await,
        Err(Error::NotFound { .. })
    ));
    let root = svc.list().await.unwrap().remove(0);
    assert!(matches!(
        svc.get_key(&admin, &root.key_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        svc.update_remaining(&admin, &root.key_id, RemainingOp::Set, Some(1))
            .await,
        Err(Error::NotFound { .. })
    ));
    let fresh = svc
        .create(&Actor::new("admin"), "probe", Vec::new())
        .await
        .unwrap();
    for opts in [
        VerifyOptions::default(),
        VerifyOptions {
            keyspace_id: Some(&root_ks),
            permissions: None,
        },
    ] {
        let v = svc.verify(&fresh.key, &opts).await.unwrap();
        assert_eq!(v.code(), VerifyCode::NotFound);
        assert!(v.key_id().is_none());
    }

    // Verifications by key (read_key on its api) and by owner (api.*.read_key).
    assert!(
        svc.verify(&k1.key, &VerifyOptions::default())
            .await
            .unwrap()
            .valid()
    );
    svc.update_key(
        &admin,
        &k1.key_id,
        KeyUpdate {
            enabled: Some(false),
            ..KeyUpdate::default()
        },
    )
    .await
    .unwrap();
    let v = svc
        .verify(&k1.key, &VerifyOptions::default())
        .await
        .unwrap();
    assert_eq!(v.code(), VerifyCode::Disabled);
    let days = svc
        .verifications(&narrow, &ledger, Some(&k1.key_id), None, None, None)
        .await
        .unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!((days[0].success, days[0].other), (1, 1));
    assert!(matches!(
        svc.verifications(&narrow, &ledger, None, Some("alice"), None, None)
            .await,
        Err(Error::Forbidden { .. })
    ));
    let by_owner = svc
        .verifications(&admin, &ledger, None, Some("alice"), None, None)
        .await
        .unwrap();
    assert_eq!(by_owner[0].success, 1);
    assert_eq!(
        field_of(
            svc.verifications(&admin, &ledger, None, None, None, None)
                .await
        ),
        "keyId"
    );
    let now = clock.now();
    assert_eq!(
        field_of(
            svc.verifications(
                &admin,
                &ledger,
                Some(&k1.key_id),
                None,
                Some(now),
                Some(Timestamp::from_millis(now.as_millis() - 1))
            )
            .await
        ),
        "start"
    );
    // The range excludes the verifications before `start`.
    let later = svc
        .verifications(
            &admin,
            &ledger,
            Some(&k1.key_id),
            None,
            Some(now.add_millis(120_000)),
            Some(now.add_millis(180_000)),
        )
        .await
        .unwrap();
    assert!(later.is_empty());

    svc.delete_key(&admin, &k2.key_id).await.unwrap();
    assert!(matches!(
        svc.get_key(&admin, &k2.key_id).await,
        Err(Error::NotFound { .. })
    ));
    svc.delete_api(&admin, &api_b.id).await.unwrap();
    assert!(matches!(
        svc.get_api(&admin, &api_b.id).await,
        Err(Error::NotFound { .. })
    ));
}
