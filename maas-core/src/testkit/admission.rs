//! Admission scenarios: reserve / reconcile / release of inference requests
//! against tier limits, tenant quotas and budgets, on the storage under test.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::{
    ActualUsage, AdmissionConfig, AdmissionLimits, AdmissionRequest, BudgetScope, LimitKind,
    NewBudget,
};
use crate::audit::Actor;
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::counter::Period;
use crate::error::Error;
use crate::model::Pricing;
use crate::storage::Storage;
use crate::tenant::{NewTenant, TenantService};
use crate::tier::{ModelAccess, Tier};

/// 2025-03-12T10:00:00Z, a Wednesday.
const T0: i64 = 1_741_773_600_000;

pub(super) fn tier(rpm: u64, tpm: u64, max: Option<u64>) -> Tier {
    Tier {
        name: "t".into(),
        level: 0,
        groups: vec!["g".into()],
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        max_tokens_per_request: max,
        models: ModelAccess::All,
        created_at: Timestamp::EPOCH,
        updated_at: Timestamp::EPOCH,
        version: 1,
    }
}

pub(super) fn limits(storage: &Storage, clock: &ManualClock) -> AdmissionLimits {
    AdmissionLimits::with_config(
        storage.clone(),
        AdmissionConfig {
            default_max_tokens: 100,
            tenant_ttl: Duration::from_secs(5),
            budget_ttl: Duration::from_secs(5),
        },
        Arc::new(clock.clone()),
    )
}

pub(super) fn req<'a>(
    tenant: &'a str,
    tier: &'a Tier,
    prompt: u64,
    max: Option<u64>,
) -> AdmissionRequest<'a> {
    AdmissionRequest {
        tenant,
        key_id: None,
        tier,
        pricing: None,
        prompt_tokens: prompt,
        max_tokens: max,
    }
}

/// A request reserves its prompt estimate plus its output cap (the
/// client's `max_tokens`, capped by the tier, or the default) and one
/// request; reconciling gives back what it did not use; releasing gives
/// back everything; dropping an unsettled reservation releases it.
pub async fn admission_reserve_reconcile_release(storage: Storage, clock: ManualClock) {
    clock.set(Timestamp::from_millis(T0));
    let l = limits(&storage, &clock);
    let t = tier(3, 1000, Some(200));
    let r = l
        .reserve(&req("alice", &t, 50, Some(500)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.max_output_tokens(), 200, "capped by the tier");
    assert_eq!(r.reserved_tokens(), 250);
    let h = *r.headers();
    assert_eq!((h.requests.limit, h.requests.remaining), (3, 2));
    assert_eq!((h.tokens.limit, h.tokens.remaining), (1000, 750));
    assert!(h.requests.reset > clock.now());
    r.reconcile(ActualUsage {
        input_tokens: 50,
        output_tokens: 100,
        cached_tokens: 0,
    })
    .await
    .unwrap();

    // No client cap and no tier cap: the configured default (100).
    let open = tier(3, 1000, None);
    let r = l
        .reserve(&req("alice", &open, 10, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.max_output_tokens(), 100);
    // 150 kept by the first request, 110 held by this one.
    assert_eq!(r.headers().tokens.remaining, 1000 - 150 - 110);
    assert_eq!(r.headers().requests.remaining, 1);
    r.release().await.unwrap();

    // Released: the request and its tokens are back.
    let r = l
        .reserve(&req("alice", &t, 0, Some(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.headers().requests.remaining, 1);
    assert_eq!(r.headers().tokens.remaining, 1000 - 150 - 1);
    // Dropped without settling (a client went away): released in the background.
    drop(r);
    let mut back = false;
    // The release runs on another task: yield until it has (no timer).
    for _ in 0..10_000 {
        tokio::task::yield_now().await;
        let probe = l
            .reserve(&req("alice", &t, 0, Some(1)))
            .await
            .unwrap()
            .unwrap();
        let left = probe.headers().requests.remaining;
        probe.release().await.unwrap();
        if left == 1 {
            back = true;
            break;
        }
    }
    assert!(back, "a dropped reservation is released");

    // Another tenant has its own counters.
    let bob = l
        .reserve(&req("bob", &t, 0, Some(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bob.headers().requests.remaining, 2);
    bob.release().await.unwrap();

    // The sliding minute: a minute later the kept 150 tokens have slid out.
    clock.advance(Duration::from_secs(120));
    let r = l
        .reserve(&req("alice", &t, 0, Some(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.headers().tokens.remaining, 999);
    assert_eq!(r.headers().requests.remaining, 2);
    r.release().await.unwrap();
}

/// Each limit refuses by name with its reset; a refusal takes nothing from
/// any counter; a request larger than a whole limit is not retryable.
pub async fn admission_denials_name_the_limit(storage: Storage, clock: ManualClock) {
    clock.set(Timestamp::from_millis(T0));
    let l = limits(&storage, &clock);
    let t = tier(2, 1000, None);

    // Requests per minute.
    let a = l
        .reserve(&req("carol", &t, 10, Some(10)))
        .await
        .unwrap()
        .unwrap();
    let b = l
        .reserve(&req("carol", &t, 10, Some(10)))
        .await
        .unwrap()
        .unwrap();
    let d = l
        .reserve(&req("carol", &t, 10, Some(10)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(d.kind, LimitKind::Requests);
    assert_eq!((d.limit, d.remaining, d.requested), (2, 0, 1));
    assert!(d.retryable);
    assert!(d.reset > clock.now());
    assert!((1..=60).contains(&d.retry_after_secs));
    assert_eq!(d.headers.tokens.remaining, 1000 - 40, "nothing taken");
    assert!(matches!(
        Error::from(d),
        Error::RateLimited { limit: 2, .. }
    ));
    a.release().await.unwrap();
    b.release().await.unwrap();

    // Tokens per minute: 700 held, 400 more do not fit.
    let held = l
        .reserve(&req("carol", &t, 600, Some(100)))
        .await
        .unwrap()
        .unwrap();
    let d = l
        .reserve(&req("carol", &t, 300, Some(100)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(d.kind, LimitKind::Tokens);
    assert_eq!((d.remaining, d.requested), (300, 400));
    assert_eq!(
        d.headers.requests.remaining, 1,
        "the request was not counted"
    );
    held.release().await.unwrap();

    // Larger than the whole limit: never fits.
    let d = l
        .reserve(&req("carol", &t, 5000, Some(1)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(d.kind, LimitKind::Tokens);
    assert!(!d.retryable);

    // Output asked beyond what a whole minute leaves after the prompt is
    // capped to it (and forwarded upstream as max_tokens), not refused.
    let r = l
        .reserve(&req("erin", &t, 900, Some(500)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.max_output_tokens(), 100);
    assert_eq!(r.reserved_tokens(), 1000);
    r.release().await.unwrap();
    let r = l
        .reserve(&req("erin", &t, 950, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.max_output_tokens(), 50, "the default is capped too");
    r.release().await.unwrap();

    // The tenant's own quota, read from its record.
    let tenants = TenantService::new_with_clock(storage.clone(), Arc::new(clock.clone()));
    tenants
        .create(
            &Actor::new("admin"),
            NewTenant {
                name: "dave".into(),
                tokens_per_minute: Some(300),
                ..NewTenant::default()
            },
        )
        .await
        .unwrap();
    let r = l
        .reserve(&req("dave", &t, 100, Some(100)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.headers().tokens.limit, 300, "the tighter tokens limit");
    assert_eq!(r.headers().tokens.remaining, 100);
    let d = l
        .reserve(&req("dave", &t, 100, Some(100)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(d.kind, LimitKind::TenantTokens);
    r.release().await.unwrap();
}

/// Budgets: a request reserves its estimated cost at the model's price in
/// the budget's currency; reconciling keeps the actual cost; past the soft
/// threshold admissions carry a warning; a budget that cannot cover the
/// estimate refuses; the next period starts over; key budgets apply to
/// their key; other currencies do not count; bad budgets are refused.
pub async fn admission_budgets(storage: Storage, clock: ManualClock) {
    clock.set(Timestamp::from_millis(T0));
    let admin = Actor::new("admin");
    let l = limits(&storage, &clock);
    let t = tier(1000, 10_000_000, None);
    // 1 per 1,000 input tokens, 2 per 1,000 output tokens.
    let price = Pricing::usd(1000.0, 2000.0);
    let b = l
        .set_budget(
            &admin,
            BudgetScope::Tenant("erin".into()),
            NewBudget {
                amount: 10.0,
                currency: None,
                period: Period::Daily,
                soft_threshold: Some(0.5),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (b.id.as_str(), b.currency.as_str(), b.version),
        ("tenant:erin", "USD", 1)
    );
    let priced = |prompt, max| AdmissionRequest {
        pricing: Some(&price),
        ..req("erin", &t, prompt, Some(max))
    };
    // Estimate: 1000 in (1.0) + 2000 out (4.0) = 5.0 reserved.
    let r = l.reserve(&priced(1000, 2000)).await.unwrap().unwrap();
    assert_eq!(r.warnings().len(), 1, "5.0 of 10 reaches the 0.5 threshold");
    assert!((r.warnings()[0].used_fraction - 0.5).abs() < 1e-9);
    let status = l
        .budget_status(&BudgetScope::Tenant("erin".into()))
        .await
        .unwrap();
    assert!((status.used - 5.0).abs() < 1e-9, "{status:?}");
    // All of it held by the request in flight, nothing spent yet.
    assert!(
        (status.reserved - 5.0).abs() < 1e-9 && status.spent == 0.0,
        "{status:?}"
    );
    assert_eq!(status.reset, Timestamp::from_millis(T0 + 14 * 3_600_000));
    // Used 1000 in + 500 out: 2.0 kept.
    r.reconcile(ActualUsage {
        input_tokens: 1000,
        output_tokens: 500,
        cached_tokens: 0,
    })
    .await
    .unwrap();
    let status = l
        .budget_status(&BudgetScope::Tenant("erin".into()))
        .await
        .unwrap();
    assert!((status.used - 2.0).abs() < 1e-9 && (status.remaining - 8.0).abs() < 1e-9);
    assert!(
        (status.spent - 2.0).abs() < 1e-9 && status.reserved == 0.0,
        "{status:?}"
    );

    // 4.0 more: 6.0 of 10 used or held, past the 0.5 soft threshold.
    let r = l.reserve(&priced(0, 2000)).await.unwrap().unwrap();
    assert_eq!(r.warnings().len(), 1);
    assert!((r.warnings()[0].used_fraction - 0.6).abs() < 1e-9);
    // 5.0 more does not fit the 4.0 left.
    let d = l.reserve(&priced(1000, 2000)).await.unwrap().unwrap_err();
    assert_eq!(d.kind, LimitKind::TenantBudget);
    assert!(matches!(
        Error::from(d.clone()),
        Error::QuotaExceeded { .. }
    ));
    assert_eq!(d.reset, Timestamp::from_millis(T0 + 14 * 3_600_000));
    let status = l
        .budget_status(&BudgetScope::Tenant("erin".into()))
        .await
        .unwrap();
    assert!(
        (status.spent - 2.0).abs() < 1e-9 && (status.reserved - 4.0).abs() < 1e-9,
        "{status:?}"
    );
    r.reconcile(ActualUsage {
        input_tokens: 0,
        output_tokens: 2000,
        cached_tokens: 0,
    })
    .await
    .unwrap();
    let status = l
        .budget_status(&BudgetScope::Tenant("erin".into()))
        .await
        .unwrap();
    assert!(
        (status.spent - 6.0).abs() < 1e-9 && status.reserved == 0.0,
        "{status:?}"
    );

    // Free models and models priced in another currency do not count.
    let eur = Pricing {
        currency: "EUR".into(),
        ..Pricing::usd(1e6, 1e6)
    };
    let other = AdmissionRequest {
        pricing: Some(&eur),
        ..req("erin", &t, 1000, Some(1000))
    };
    l.reserve(&other)
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    l.reserve(&req("erin", &t, 1000, Some(1000)))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();

    // The next UTC day starts over.
    clock.set(Timestamp::from_millis(T0 + 14 * 3_600_000));
    let r = l.reserve(&priced(1000, 2000)).await.unwrap().unwrap();
    r.release().await.unwrap();
    let status = l
        .budget_status(&BudgetScope::Tenant("erin".into()))
        .await
        .unwrap();
    assert_eq!(
        (status.used, status.spent, status.reserved),
        (0.0, 0.0, 0.0)
    );
    // A request held over the day's end: its hold and charge start over
    // with the period; what it used is charged to the new day.
    clock.set(Timestamp::from_millis(T0 + 38 * 3_600_000 - 1));
    let r = l.reserve(&priced(1000, 2000)).await.unwrap().unwrap();
    clock.set(Timestamp::from_millis(T0 + 38 * 3_600_000));
    r.reconcile(ActualUsage {
        input_tokens: 1000,
        output_tokens: 0,
        cached_tokens: 0,
    })
    .await
    .unwrap();
    let status = l
        .budget_status(&BudgetScope::Tenant("erin".into()))
        .await
        .unwrap();
    // Used 1.0 but reserved 5.0: nothing beyond the reservation to charge.
    assert_eq!(
        (status.used, status.spent, status.reserved),
        (0.0, 0.0, 0.0)
    );

    // A request whose node died before settling: its money stays charged
    // (the upstream may have run); its hold lapses at the lease boundary.
    let r = l.reserve(&priced(1000, 2000)).await.unwrap().unwrap();
    std::mem::forget(r);
    let status = l
        .budget_status(&BudgetScope::Tenant("erin".into()))
        .await
        .unwrap();
    assert!((status.reserved - 5.0).abs() < 1e-9, "{status:?}");
    clock.advance(crate::admission::HOLD_LEASE);
    let status = l
        .budget_status(&BudgetScope::Tenant("erin".into()))
        .await
        .unwrap();
    assert!(
        status.reserved == 0.0 && (status.spent - 5.0).abs() < 1e-9,
        "charged as reserved, no longer held: {status:?}"
    );

    // A key budget applies to requests made with that key only.
    l.set_budget(
        &admin,
        BudgetScope::Key("key_1".into()),
        NewBudget {
            amount: 1.0,
            currency: Some("USD".into()),
            period: Period::Monthly,
            soft_threshold: None,
        },
    )
    .await
    .unwrap();
    let with_key = AdmissionRequest {
        key_id: Some("key_1"),
        ..priced(1000, 2000)
    };
    let d = l.reserve(&with_key).await.unwrap().unwrap_err();
    assert_eq!(d.kind, LimitKind::KeyBudget);
    l.reserve(&priced(1000, 2000))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();

    // Bad budgets name their field and store nothing.
    for (new, field) in [
        (
            NewBudget {
                amount: 0.0,
                currency: None,
                period: Period::Daily,
                soft_threshold: None,
            },
            "amount",
        ),
        (
            NewBudget {
                amount: f64::NAN,
                currency: None,
                period: Period::Daily,
                soft_threshold: None,
            },
            "amount",
        ),
        (
            NewBudget {
                amount: 1.0,
                currency: Some("usd".into()),
                period: Period::Daily,
                soft_threshold: None,
            },
            "currency",
        ),
        (
            NewBudget {
                amount: 1.0,
                currency: None,
                period: Period::Weekly,
                soft_threshold: Some(1.5),
            },
            "soft_threshold",
        ),
    ] {
        match l
            .set_budget(&admin, BudgetScope::Tenant("frank".into()), new)
            .await
        {
            Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        l.budget_status(&BudgetScope::Tenant("frank".into()))
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert_eq!(l.list_budgets().await.unwrap().len(), 2);
    l.delete_budget(&admin, &BudgetScope::Key("key_1".into()))
        .await
        .unwrap();
    l.reserve(&with_key)
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// Cached prompt tokens are billed once, at the model's cached price; the
/// reservation holds the worst case (every prompt token at the dearer
/// price), so a budget is never overshot whatever the upstream reports.
pub async fn admission_budgets_bill_cached_tokens_once(storage: Storage, clock: ManualClock) {
    clock.set(Timestamp::from_millis(T0));
    let l = limits(&storage, &clock);
    let t = tier(1000, 10_000_000, None);
    let scope = BudgetScope::Tenant("gina".into());
    l.set_budget(
        &Actor::new("admin"),
        scope.clone(),
        NewBudget {
            amount: 1.0,
            currency: None,
            period: Period::Monthly,
            soft_threshold: None,
        },
    )
    .await
    .unwrap();
    // Per million: 200 input, 50 cached input, 800 output.
    let price = Pricing {
        cached_input_per_million: Some(50.0),
        ..Pricing::usd(200.0, 800.0)
    };
    let r = l
        .reserve(&AdmissionRequest {
            pricing: Some(&price),
            ..req("gina", &t, 1000, Some(100))
        })
        .await
        .unwrap()
        .unwrap();
    // Held: 1000 x 200 + 100 x 800 per million = 0.28.
    let st = l.budget_status(&scope).await.unwrap();
    assert!((st.reserved - 0.28).abs() < 1e-9, "{st:?}");
    // 800 of the 1000 prompt tokens cached: 200 x 200 + 800 x 50 + 100 x
    // 800 per million = 0.16, charged once.
    r.reconcile(ActualUsage {
        input_tokens: 1000,
        output_tokens: 100,
        cached_tokens: 800,
    })
    .await
    .unwrap();
    let st = l.budget_status(&scope).await.unwrap();
    assert!(
        (st.spent - 0.16).abs() < 1e-9 && st.reserved == 0.0,
        "{st:?}"
    );
    // A cache dearer than input: the worst case uses the cached price.
    let dear = Pricing {
        cached_input_per_million: Some(400.0),
        ..Pricing::usd(200.0, 800.0)
    };
    let r = l
        .reserve(&AdmissionRequest {
            pricing: Some(&dear),
            ..req("gina", &t, 1000, Some(100))
        })
        .await
        .unwrap()
        .unwrap();
    let st = l.budget_status(&scope).await.unwrap();
    assert!((st.reserved - 0.48).abs() < 1e-9, "{st:?}");
    r.reconcile(ActualUsage {
        input_tokens: 1000,
        output_tokens: 100,
        cached_tokens: 1000,
    })
    .await
    .unwrap();
    let st = l.budget_status(&scope).await.unwrap();
    assert!((st.spent - 0.64).abs() < 1e-9, "{st:?}");
}

/// 64 concurrent requests of 100 tokens against 1000 tokens per minute,
/// held: exactly 10 are admitted; once released, 10 more.
pub async fn admission_concurrent_holds_are_exact(storage: Storage, clock: ManualClock) {
    clock.set(Timestamp::from_millis(T0));
    let l = limits(&storage, &clock);
    let t = Arc::new(tier(1000, 1000, None));
    for round in 0..2 {
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let l = l.clone();
            let t = Arc::clone(&t);
            tasks.push(tokio::spawn(async move {
                l.reserve(&req("gina", &t, 50, Some(50)))
                    .await
                    .unwrap()
                    .ok()
            }));
        }
        let mut held = Vec::new();
        for task in tasks {
            if let Some(r) = task.await.unwrap() {
                held.push(r);
            }
        }
        assert_eq!(held.len(), 10, "round {round}");
        for r in held {
            r.release().await.unwrap();
        }
    }
}

/// Fair-share configuration is stored, audited and applied live: groups
/// (the default one built in), capacity within bounds, tenants only in
/// existing groups; another node's scheduler gets all of it from `load`.
pub async fn scheduling_groups_capacity_tenants(storage: Storage, clock: ManualClock) {
    use crate::fairshare::{FairShare, FairShareConfig};
    use crate::scheduling::Scheduling;
    use crate::tenant::TenantUpdate;

    let admin = Actor::new("admin");
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let fs = FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap();
    let s = Scheduling::new(storage.clone(), fs.clone(), clock.clone());
    let gold = s.create_group(&admin, "gold", 300).await.unwrap();
    assert_eq!((gold.weight, gold.version), (300, 1));
    assert!(matches!(
        s.create_group(&admin, "gold", 1).await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        s.create_group(&admin, "default", 1).await,
        Err(Error::Conflict { .. })
    ));
    for w in [0, -1, 1_000_001] {
        assert!(matches!(
            s.create_group(&admin, "silver", w).await,
            Err(Error::InvalidInput { field, .. }) if field == "weight"
        ));
    }
    let names: Vec<String> = s
        .list_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["default", "gold"]);
    let d = s.set_group_weight(&admin, "default", 50).await.unwrap();
    assert_eq!((d.weight, d.version), (50, 1));
    let d = s.set_group_weight(&admin, "default", 60).await.unwrap();
    assert_eq!((d.weight, d.version), (60, 2));
    assert!(
        s.set_group_weight(&admin, "nope", 5)
            .await
            .unwrap_err()
            .is_not_found()
    );

    assert_eq!(s.set_capacity(&admin, 8).await.unwrap(), 8);
    assert_eq!((s.capacity(), fs.max_in_flight()), (8, 8));
    for bad in [0, -5, 100_001] {
        assert!(matches!(
            s.set_capacity(&admin, bad).await,
            Err(Error::InvalidInput { field, .. }) if field == "max_in_flight"
        ));
    }
    assert_eq!(s.capacity(), 8, "a refused change changes nothing");
    s.set_capacity(&admin, 12).await.unwrap();

    let refused = s
        .create_tenant(
            &admin,
            NewTenant {
                name: "acme".into(),
                group: Some("nope".into()),
                ..NewTenant::default()
            },
        )
        .await;
    assert!(matches!(refused, Err(Error::InvalidInput { field, .. }) if field == "group"));
    assert_eq!(
        s.tenants().list(&Default::default()).await.unwrap().total,
        0
    );
    let acme = s
        .create_tenant(
            &admin,
            NewTenant {
                name: "acme".into(),
                weight: Some(200),
                group: Some("gold".into()),
                ..NewTenant::default()
            },
        )
        .await
        .unwrap();
    let live = s.live();
    let g = live.groups.iter().find(|g| g.name == "gold").unwrap();
    assert_eq!(g.weight, 300);
    assert_eq!(g.tenants[0].name, "acme");
    assert_eq!(g.tenants[0].weight, 200);
    let moved = s
        .update_tenant(
            &admin,
            &acme.id,
            TenantUpdate {
                weight: Some(500),
                group: Some("default".into()),
                ..TenantUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((moved.weight, moved.group.as_str()), (500, "default"));
    let live = s.live();
    let d = live.groups.iter().find(|g| g.name == "default").unwrap();
    assert_eq!((d.weight, d.tenants[0].weight), (60, 500));
    assert!(matches!(
        s.update_tenant(
            &admin,
            &acme.id,
            TenantUpdate {
                group: Some("nope".into()),
                ..TenantUpdate::default()
            }
        )
        .await,
        Err(Error::InvalidInput { .. })
    ));

    // Another node's scheduler learns everything from the store.
    let other = FairShare::with_clock(FairShareConfig::default(), clock.clone()).unwrap();
    Scheduling::new(storage.clone(), other.clone(), clock)
        .load()
        .await
        .unwrap();
    assert_eq!(other.max_in_flight(), 12);
    let live = other.snapshot();
    let d = live.groups.iter().find(|g| g.name == "default").unwrap();
    assert_eq!(
        (d.weight, d.tenants[0].name.as_str(), d.tenants[0].weight),
        (60, "acme", 500)
    );
    assert!(
        live.groups
            .iter()
            .any(|g| g.name == "gold" && g.weight == 300)
    );

    let audit = storage
        .audit
        .list_audit(&crate::audit::AuditQuery::default())
        .await
        .unwrap();
    let actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "fairshare_group.create",
        "fairshare_group.update",
        "capacity.create",
        "capacity.update",
        "tenant.create",
        "tenant.update",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}
