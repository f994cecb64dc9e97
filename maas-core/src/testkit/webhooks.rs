//! Scenarios of webhooks: subscriptions, events emitted once across nodes,
//! deliveries retried with backoff until they succeed or time out.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::Actor;
use crate::clock::{Clock, ManualClock};
use crate::error::Error;
use crate::key::KeyHasher;
use crate::storage::Storage;
use crate::webhook::{DeliveryState, Event, EventType, NewWebhook, WebhookConfig, Webhooks, sign};

fn hooks(storage: &Storage, clock: &ManualClock, hasher: &KeyHasher) -> Webhooks {
    Webhooks::with_config(
        storage.clone(),
        hasher.clone(),
        WebhookConfig {
            retry_for: Duration::from_secs(60),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(16),
        },
        Arc::new(clock.clone()),
    )
}

/// Create (bad input writes nothing; the secret is derived, the same on
/// every node, never stored), list, emit once across two nodes, deliver,
/// retry with doubling backoff, give up after `retry_for`, delete.
pub async fn webhooks_emit_once_and_retry(storage: Storage, clock: ManualClock) {
    let hasher = KeyHasher::random();
    let here = hooks(&storage, &clock, &hasher);
    let there = hooks(&storage, &clock, &hasher);
    let admin = Actor::new("admin");
    for (bad, field) in [
        (
            NewWebhook {
                url: "ftp://x".into(),
                events: vec![EventType::WebhookTest],
            },
            "url",
        ),
        (
            NewWebhook {
                url: "http://127.0.0.1:9/h".into(),
                events: vec![],
            },
            "events",
        ),
    ] {
        match here.create(&admin, bad).await {
            Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid input, got {other:?}"),
        }
    }
    assert!(here.list().await.unwrap().is_empty());
    let budgets = here
        .create(
            &admin,
            NewWebhook {
                url: "http://127.0.0.1:9/budgets".into(),
                events: vec![EventType::BudgetExhausted, EventType::BudgetExhausted],
            },
        )
        .await
        .unwrap();
    assert_eq!(budgets.webhook.events, [EventType::BudgetExhausted]);
    assert!(budgets.secret.starts_with("whsec_"));
    let stored = there.get(&budgets.webhook.id).await.unwrap();
    assert_eq!(
        there.secret_of(&stored),
        budgets.secret,
        "derived, not stored"
    );
    let raw = storage
        .records
        .get_record("webhook", &budgets.webhook.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!raw.body.to_string().contains(&budgets.secret));
    let other = here
        .create(
            &admin,
            NewWebhook {
                url: "http://127.0.0.1:9/keys".into(),
                events: vec![EventType::KeyExpiring],
            },
        )
        .await
        .unwrap();

    // Emitted once per key, whichever node tries.
    let e1 = Event::new(
        EventType::BudgetExhausted,
        clock.now(),
        serde_json::json!({"b": 1}),
    );
    let e2 = Event::new(
        EventType::BudgetExhausted,
        clock.now(),
        serde_json::json!({"b": 1}),
    );
    let key = "budget.exhausted:tenant:acme:1";
    // Both nodes at once: the event id comes from the key, so one delivery.
    let (a, b) = tokio::join!(here.emit_once(key, &e1), there.emit_once(key, &e2));
    assert!(a.unwrap() || b.unwrap());
    assert!(!there.emit_once(key, &e2).await.unwrap(), "marked");
    let due = here.due().await.unwrap();
    assert_eq!(due.len(), 1, "only the subscribed webhook");
    let (w, d) = &due[0];
    assert_eq!(w.id, budgets.webhook.id);
    assert_eq!((d.event.kind, &d.event.data), (e1.kind, &e1.data));
    assert!(d.event.id.starts_with("evt_") && d.event.id != e1.id);

    // Fails: retried after 1 s, 2 s, 4 s ...; then delivered.
    let d = here.record_attempt(&d.id, Some(500), None).await.unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.next_at, clock.now().add_millis(1000));
    assert!(here.due().await.unwrap().is_empty());
    clock.advance(Duration::from_secs(1));
    let d = here
        .record_attempt(&d.id, None, Some("connection refused".into()))
        .await
        .unwrap();
    assert_eq!(d.next_at, clock.now().add_millis(2000));
    clock.advance(Duration::from_secs(2));
    assert_eq!(here.due().await.unwrap().len(), 1);
    let d = here.record_attempt(&d.id, Some(204), None).await.unwrap();
    assert_eq!(d.state, DeliveryState::Delivered);
    assert!(here.due().await.unwrap().is_empty());
    let all = here.deliveries(&budgets.webhook.id).await.unwrap();
    assert_eq!(all.len(), 1);
    let codes: Vec<Option<u16>> = all[0].attempts.iter().map(|a| a.status).collect();
    assert_eq!(codes, [Some(500), None, Some(204)]);
    // Finished deliveries leave the pending ones the dispatcher reads.
    let pending = storage
        .records
        .list_records("webhook_delivery", &crate::storage::PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(pending.total, 0);

    // A test event goes to that webhook only, whatever it subscribes to;
    // one that never succeeds is given up after `retry_for`.
    let t = here.test(&other.webhook.id).await.unwrap();
    assert_eq!(t.kind, EventType::WebhookTest);
    let mut d = here.due().await.unwrap().remove(0).1;
    while d.state == DeliveryState::Pending {
        d = here.record_attempt(&d.id, Some(503), None).await.unwrap();
        clock.set(d.next_at.max(clock.now()));
    }
    assert_eq!(d.state, DeliveryState::Failed);
    // 1+2+4+8+16+16+16 > 60 s: seven attempts at most.
    assert!(d.attempts.len() <= 7 && d.attempts.len() >= 5, "{d:?}");
    assert!(here.due().await.unwrap().is_empty());

    // Removed: pending deliveries of it fail when they come due.
    let e3 = Event::new(EventType::KeyExpiring, clock.now(), serde_json::json!({}));
    assert_eq!(here.emit(&e3).await.unwrap(), 1);
    here.delete(&admin, &other.webhook.id).await.unwrap();
    assert!(here.due().await.unwrap().is_empty());
    assert!(matches!(
        here.deliveries(&other.webhook.id).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(here.list().await.unwrap().len(), 1);
    // Each webhook signs with its own secret.
    let body = serde_json::to_vec(&e1).unwrap();
    assert_ne!(sign(&budgets.secret, &body), sign(&other.secret, &body));
}
