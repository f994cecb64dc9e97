//! Gateway scenarios: the per-request path (authenticate, admit, complete)
//! over every service, on the storage under test.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::{AdmissionConfig, AdmissionLimits};
use crate::audit::Actor;
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::error::Error;
use crate::fairshare::{FairShare, FairShareConfig, RejectReason};
use crate::gateway::{
    Admission, CacheKey, Caller, Completion, Gateway, GatewayServices, InferenceRequest, Refused,
};
use crate::identity::{Identity, StaticTokens};
use crate::key::{KeyHasher, KeyService};
use crate::model::{CacheSettings, ModelService, NewModel, Pricing};
use crate::scheduling::Scheduling;
use crate::storage::Storage;
use crate::testkit::Probe;
use crate::tier::{ModelAccess, NewTier, TierService};
use crate::usage::{GroupBy, TimeRange, UsageConfig, UsageLedger, UsageScope, UsageSummary};
use crate::userkeys::UserKeys;

/// 2025-03-12T10:00:00Z.
const T0: i64 = 1_741_773_600_000;

struct Rig {
    gw: Gateway,
    ledger: UsageLedger,
    user_keys: UserKeys,
    scheduling: Scheduling,
    models: ModelService,
}

async fn rig(storage: &Storage, clock: &ManualClock, slots: usize) -> Rig {
    clock.set(Timestamp::from_millis(T0));
    let admin = Actor::new("admin");
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    let tiers = TierService::new_with_clock(storage.clone(), c.clone());
    tiers
        .create(
            &admin,
            NewTier {
                name: "free".into(),
                level: 0,
                groups: vec!["users".into()],
                requests_per_minute: 3,
                tokens_per_minute: 1000,
                max_tokens_per_request: None,
                models: ModelAccess::List(vec!["small".into()]),
            },
        )
        .await
        .unwrap();
    let models = ModelService::new_with_clock(storage.clone(), c.clone());
    for id in ["small", "big"] {
        let mut m = NewModel::new(id, "http://127.0.0.1:1");
        m.pricing = Some(Pricing::usd(1_000_000.0, 2_000_000.0));
        models.create(&admin, m).await.unwrap();
    }
    let fs = FairShare::with_clock(
        FairShareConfig {
            max_in_flight: slots,
            max_queue_per_tenant: 1,
            queue_timeout: None,
            ..FairShareConfig::default()
        },
        c.clone(),
    )
    .unwrap();
    let scheduling = Scheduling::new(storage.clone(), fs, c.clone());
    let ledger = UsageLedger::new_with_clock(storage, UsageConfig::default(), c.clone());
    let keys = KeyService::new_with_clock(storage.clone(), KeyHasher::random(), c.clone());
    let user_keys = UserKeys::new_with_clock(keys, c.clone());
    let identity =
        StaticTokens::new([("tok-ann".to_owned(), Identity::new("ann", ["users"]))]).unwrap();
    let gw = Gateway::new(
        GatewayServices {
            identity: Arc::new(identity),
            user_keys: Some(user_keys.clone()),
            tiers,
            models: models.clone(),
            admission: AdmissionLimits::with_config(
                storage.clone(),
                AdmissionConfig::default(),
                c.clone(),
            ),
            scheduling: scheduling.clone(),
            usage: Some(ledger.clone()),
            webhooks: None,
        },
        c,
    );
    Rig {
        gw,
        ledger,
        user_keys,
        scheduling,
        models,
    }
}

fn ask(model: &str, key: Option<CacheKey>) -> InferenceRequest<'_> {
    InferenceRequest {
        model,
        prompt_tokens: 10,
        max_tokens: Some(20),
        cache_key: key,
        api: crate::model::ModelApi::Openai,
    }
}

/// `caller` admitted for a small request (10 prompt tokens, 20 at most out).
async fn admit_small(r: &Rig, caller: &Caller) -> crate::gateway::Admitted {
    admitted(
        r.gw.admit(caller, &ask("small", None))
            .await
            .unwrap()
            .unwrap(),
    )
}

/// The tenant totals of the rig's first minute, usage flushed first.
async fn first_minute(r: &Rig) -> UsageSummary {
    r.ledger.flush().await.unwrap();
    let range = TimeRange::new(
        Timestamp::from_millis(T0),
        Timestamp::from_millis(T0 + 60_000),
    );
    let rows = r
        .ledger
        .totals(range, GroupBy::Tenant, &UsageScope::default())
        .await
        .unwrap();
    rows[0].usage.clone()
}

fn admitted(a: Admission) -> crate::gateway::Admitted {
    match a {
        Admission::Admitted(a) => *a,
        Admission::Cached(_) => panic!("expected a slot, got a cached answer"),
    }
}

/// Authentication by identity and by API key (as its owner, with the key's
/// id), tenants created on first use, model access, and usage recorded with
/// the model's price.
pub async fn gateway_authenticate_admit_complete(storage: Storage, clock: ManualClock) {
    let r = rig(&storage, &clock, 4).await;
    assert!(matches!(
        r.gw.authenticate("nope").await,
        Err(Error::Unauthenticated { .. })
    ));
    let ann = r.gw.authenticate("tok-ann").await.unwrap();
    assert_eq!((ann.tenant(), ann.tier.name.as_str()), ("ann", "free"));
    assert!(ann.key_id.is_none());
    let t = r.scheduling.tenants().get_by_name("ann").await.unwrap();
    assert_eq!(
        t.weight,
        crate::tenant::DEFAULT_WEIGHT,
        "created on first use"
    );
    r.gw.authenticate("tok-ann").await.unwrap();

    let key = r
        .user_keys
        .create_for(&Identity::new("ann", ["users"]), "laptop")
        .await
        .unwrap();
    let by_key = r.gw.authenticate(&key.api_key).await.unwrap();
    assert_eq!(by_key.tenant(), "ann");
    assert_eq!(by_key.key_id.as_ref(), Some(&key.key_id));

    // Model access.
    assert!(matches!(
        r.gw.admit(&ann, &ask("big", None)).await,
        Err(Error::Forbidden { .. })
    ));
    assert!(
        r.gw.admit(&ann, &ask("nope", None))
            .await
            .unwrap_err()
            .is_not_found()
    );

    // A request: slot held while running, usage recorded on completion.
    let a = admit_small(&r, &by_key).await;
    assert_eq!(a.max_output_tokens(), 20);
    assert_eq!(a.headers().requests.remaining, 2);
    assert_eq!(r.gw.fair_share().counts(), (1, 0));
    a.complete(Completion::success(12, 7)).await.unwrap();
    assert_eq!(r.gw.fair_share().counts(), (0, 0));

    let range = TimeRange::new(
        Timestamp::from_millis(T0),
        Timestamp::from_millis(T0 + 60_000),
    );
    let rows = r
        .ledger
        .totals(range, GroupBy::Key, &UsageScope::tenant("ann"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].group, key.key_id.to_string());
    let u = &rows[0].usage;
    assert_eq!((u.requests, u.input_tokens, u.output_tokens), (1, 12, 7));
    assert!((u.cost("USD") - (12.0 + 14.0)).abs() < 1e-9, "{u:?}");

    // A tenant deleted by an operator comes back on its next request once
    // the gateway checks again, not only after a restart.
    let admin = Actor::new("admin");
    let t = r.scheduling.tenants().get_by_name("ann").await.unwrap();
    r.scheduling.tenants().delete(&admin, &t.id).await.unwrap();
    r.gw.authenticate("tok-ann").await.unwrap();
    assert!(
        r.scheduling.tenants().get_by_name("ann").await.is_err(),
        "trusted until the recheck"
    );
    clock.advance(crate::gateway::TENANT_RECHECK);
    r.gw.authenticate("tok-ann").await.unwrap();
    let again = r.scheduling.tenants().get_by_name("ann").await.unwrap();
    assert_ne!(again.id, t.id, "created anew");
}

/// A dropped request (client gone mid-stream) frees its slot, keeps the
/// tokens reported so far charged and records them as cancelled and
/// estimated; an upstream failure gives the whole reservation back.
pub async fn gateway_drop_and_failure_leak_nothing(storage: Storage, clock: ManualClock) {
    let r = rig(&storage, &clock, 1).await;
    let ann = r.gw.authenticate("tok-ann").await.unwrap();
    let mut a = admit_small(&r, &ann).await;
    a.record_output(5);
    drop(a);
    assert_eq!(r.gw.fair_share().counts(), (0, 0), "slot freed on drop");
    // The reconcile runs in the background on this runtime.
    r.gw.settled().await;
    let b = admit_small(&r, &ann).await;
    // 1000 - (10 + 5 kept) - (10 + 20 reserved now).
    assert_eq!(b.headers().tokens.remaining, 1000 - 15 - 30);
    b.complete(Completion::failed()).await.unwrap();
    let c = admit_small(&r, &ann).await;
    assert_eq!(
        c.headers().tokens.remaining,
        1000 - 15 - 30,
        "the failed request was given back, tokens and request"
    );
    assert_eq!(c.headers().requests.remaining, 1);
    c.complete(Completion::success(10, 1)).await.unwrap();

    let u = first_minute(&r).await;
    assert_eq!(
        (u.requests, u.cancelled, u.errors, u.estimated),
        (3, 1, 1, 1)
    );
    assert_eq!((u.input_tokens, u.output_tokens), (20, 6));
}

/// A request completed without waiting (`complete_detached`, as a response
/// body does when its last frame is read) frees its slot and records its
/// usage at once, and its reservation is settled by the time
/// `Gateway::settled` returns: reconciled to what it used, or given back
/// when it failed before producing anything. The store yields once on
/// every write, as one across a network would, so the settling cannot finish
/// inline and runs in the background that `settled` waits for.
pub async fn gateway_complete_detached_settles(storage: Storage, clock: ManualClock) {
    let (_probe, storage) = Probe::wrap_yielding(storage);
    let r = rig(&storage, &clock, 1).await;
    let ann = r.gw.authenticate("tok-ann").await.unwrap();
    let a = admit_small(&r, &ann).await;
    // 10 prompt + 20 output reserved.
    assert_eq!(a.headers().tokens.remaining, 1000 - 30);
    a.complete_detached(Completion::success(10, 2));
    assert_eq!(r.gw.fair_share().counts(), (0, 0), "slot freed at once");
    r.gw.settled().await;
    let b = admit_small(&r, &ann).await;
    // 1000 - 12 used - 30 reserved now: the first was reconciled.
    assert_eq!(b.headers().tokens.remaining, 1000 - 12 - 30);
    assert_eq!(b.headers().requests.remaining, 1);
    b.complete_detached(Completion::failed());
    r.gw.settled().await;
    let c = admit_small(&r, &ann).await;
    assert_eq!(
        (c.headers().tokens.remaining, c.headers().requests.remaining),
        (1000 - 12 - 30, 1),
        "the failed request was given back, tokens and request"
    );
    drop(c);
    r.gw.settled().await;

    let u = first_minute(&r).await;
    assert_eq!((u.requests, u.cancelled, u.errors), (3, 1, 1));
    assert_eq!((u.input_tokens, u.output_tokens), (20, 2));
}

/// The queue refuses a request when the tenant's queue is full; the
/// reservation is given back; a waiting request gets the slot when it frees.
pub async fn gateway_queue_refusals_release(storage: Storage, clock: ManualClock) {
    let r = rig(&storage, &clock, 1).await;
    let ann = r.gw.authenticate("tok-ann").await.unwrap();
    let running = admit_small(&r, &ann).await;
    let gw = r.gw.clone();
    let caller = ann.clone();
    let waiting = tokio::spawn(async move {
        match gw.admit(&caller, &ask("small", None)).await.unwrap() {
            Ok(Admission::Admitted(a)) => a.complete(Completion::success(1, 1)).await.unwrap(),
            other => panic!("expected a slot, got {other:?}"),
        }
    });
    while r.gw.fair_share().counts() != (1, 1) {
        tokio::task::yield_now().await;
    }
    // The tenant's queue (1) is full.
    let Err(Refused::Queue { rejected, headers }) =
        r.gw.admit(&ann, &ask("small", None)).await.unwrap()
    else {
        panic!("expected a queue refusal");
    };
    assert_eq!(rejected.reason, RejectReason::QueueFull);
    assert_eq!(headers.requests.remaining, 0, "as admitted, before release");
    drop(running);
    waiting.await.unwrap();
    r.gw.settled().await;
    // Two windows later (sliding windows weigh the previous one).
    clock.advance(Duration::from_secs(120));
    let a = admit_small(&r, &ann).await;
    assert_eq!(a.headers().requests.remaining, 2, "a fresh minute");
    a.complete(Completion::success(1, 1)).await.unwrap();
}

/// A model with a response cache answers a repeated request from it: the
/// request counts, its tokens do not, usage records a hit; turning the
/// cache off stops that.
pub async fn gateway_response_cache(storage: Storage, clock: ManualClock) {
    let r = rig(&storage, &clock, 2).await;
    let admin = Actor::new("admin");
    let on = CacheSettings {
        enabled: true,
        ttl_seconds: 60,
        max_entries: 10,
    };
    r.models.set_cache(&admin, "small", on).await.unwrap();
    let ann = r.gw.authenticate("tok-ann").await.unwrap();
    let key = CacheKey::of(&serde_json::json!({"model": "small", "prompt": "hi"}));
    let a = admitted(
        r.gw.admit(&ann, &ask("small", Some(key)))
            .await
            .unwrap()
            .unwrap(),
    );
    assert!(a.cacheable());
    a.cache_answer(Arc::from(&b"{\"answer\":1}"[..]));
    a.complete(Completion::success(10, 3)).await.unwrap();
    let Admission::Cached(hit) =
        r.gw.admit(&ann, &ask("small", Some(key)))
            .await
            .unwrap()
            .unwrap()
    else {
        panic!("expected a cache hit");
    };
    assert_eq!(&*hit.body, b"{\"answer\":1}");
    assert_eq!(hit.headers.requests.remaining, 1);
    assert_eq!(r.gw.fair_share().counts(), (0, 0), "a hit takes no slot");

    // Past the TTL: a miss again.
    clock.advance(Duration::from_secs(61));
    let a = admitted(
        r.gw.admit(&ann, &ask("small", Some(key)))
            .await
            .unwrap()
            .unwrap(),
    );
    a.complete(Completion::success(10, 3)).await.unwrap();

    let range = TimeRange::new(
        Timestamp::from_millis(T0),
        Timestamp::from_millis(T0 + 120_000),
    );
    let rows = r.ledger.cache(range).await.unwrap();
    let small = rows.iter().find(|c| c.model == "small").unwrap();
    assert_eq!((small.hits, small.misses), (1, 2));
    let rows = r
        .ledger
        .totals(range, GroupBy::Tenant, &UsageScope::default())
        .await
        .unwrap();
    assert_eq!(rows[0].usage.output_tokens, 6, "a hit generates nothing");
}
