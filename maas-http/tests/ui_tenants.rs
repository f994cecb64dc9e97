//! The dashboard's Tenants and Keys pages through `oneshot`: creating,
//! finding and changing tenants (bad input refused with the page and 400,
//! nothing changed), the usage chart and its table, keys created with the
//! secret shown once, disabled, enabled and deleted, cursor paging, and
//! cross-site, session-less and escaping checks.

#![cfg(feature = "ui")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ui_common;

use std::collections::HashSet;
use std::time::Duration;

use axum::http::{StatusCode, header};
use maas_core::usage::UsageRecord;
use maas_core::{Actor, KeyId, KeyQuery, NewTenant, PageRequest, TenantId, Timestamp};
use ui_common::{Page, SAME, T0, Ui, ui};

fn location(p: &Page) -> String {
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    p.headers[header::LOCATION].to_str().unwrap().to_owned()
}

/// An attribute value as the browser reads it.
fn unescape(s: &str) -> String {
    s.replace("&#38;", "&")
        .replace("&amp;", "&")
        .replace("&#47;", "/")
        .replace("&#x2f;", "/")
}

/// The target of the page's "Next" link, if any.
fn next_link(body: &str) -> Option<String> {
    let before = body.split_once(r#"" rel="next">Next</a>"#)?.0;
    let at = before.rfind("href=\"")?;
    Some(unescape(&before[at + 6..]))
}

/// The ids of the keys listed (`<tr id="key-…">`).
fn key_ids(body: &str) -> Vec<String> {
    body.match_indices(r#"<tr id="key-"#)
        .map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        })
        .collect()
}

/// The tenant id in a `/ui/tenants/{id}…` location.
fn tenant_in(loc: &str) -> TenantId {
    let rest = loc.strip_prefix("/ui/tenants/").unwrap();
    TenantId::parse(rest.split('?').next().unwrap()).unwrap()
}

async fn weight_of(ui: &Ui, id: &TenantId) -> u32 {
    ui.state.scheduling.tenants().get(id).await.unwrap().weight
}

async fn new_tenant(ui: &Ui, name: &str) -> TenantId {
    let t = NewTenant {
        name: name.to_owned(),
        ..NewTenant::default()
    };
    ui.state
        .scheduling
        .create_tenant(&Actor::new("admin"), t)
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn tenants_are_created_found_and_changed_through_the_pages() {
    let ui = ui();
    let id = ui.login().await;
    let p = ui
        .post("/ui/tenants", "name=acme&weight=7", Some(&id), Some(SAME))
        .await;
    let loc = location(&p);
    assert!(loc.ends_with("?saved=created"), "{loc}");
    let tid = tenant_in(&loc);
    assert_eq!(weight_of(&ui, &tid).await, 7);
    let page = ui.get(&loc, Some(&id)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Tenant created."), "{}", page.body);
    assert!(page.body.contains("acme"));
    assert!(page.body.contains(r#"href="/ui/keys?tenant=acme""#));
    // Bad input to the create form: the page again, with the reason; nothing made.
    let p = ui
        .post(
            "/ui/tenants",
            "name=other&weight=lots",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(
        p.body
            .contains("weight must be a whole number between 1 and 1000000")
    );
    assert!(
        p.body.contains(r#"value="other""#),
        "the form keeps its input"
    );
    let p = ui
        .post("/ui/tenants", "name=acme", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(p.body.contains(r#"class="error""#));
    location(
        &ui.post("/ui/tenants", "name=other", Some(&id), Some(SAME))
            .await,
    );
    let all = ui.state.scheduling.tenants();
    assert_eq!(
        all.list(&PageRequest::first(10)).await.unwrap().items.len(),
        2
    );

    // Listed, and found by part of the name in any case.
    let list = ui.get("/ui/tenants", Some(&id)).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains(">acme</a>") && list.body.contains(">other</a>"));
    assert!(list.body.contains(r#"aria-current="page">Tenants"#));
    let found = ui.get("/ui/tenants?q=CM", Some(&id)).await;
    assert!(found.body.contains(">acme</a>"));
    assert!(!found.body.contains(">other</a>"));

    // The weight changes; bad weights are refused with 400 and change nothing.
    let path = format!("/ui/tenants/{tid}");
    let p = ui
        .post(&path, "what=weight&weight=250", Some(&id), Some(SAME))
        .await;
    assert_eq!(location(&p), format!("{path}?saved=weight"));
    assert_eq!(weight_of(&ui, &tid).await, 250);
    for bad in ["abc", "0", "1000001", "-3", "2.5", ""] {
        let p = ui
            .post(
                &path,
                &format!("what=weight&weight={bad}"),
                Some(&id),
                Some(SAME),
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            p.body
                .contains("weight must be a whole number between 1 and 1000000"),
            "{bad}: {}",
            p.body
        );
        assert_eq!(weight_of(&ui, &tid).await, 250, "{bad}");
    }

    // Quota, group, tier, budget.
    location(
        &ui.post(
            &path,
            "what=quota&tokens_per_minute=1000",
            Some(&id),
            Some(SAME),
        )
        .await,
    );
    let t = all.get(&tid).await.unwrap();
    assert_eq!(t.tokens_per_minute, Some(1000));
    let p = ui
        .post(
            &path,
            "what=quota&tokens_per_minute=0",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert_eq!(all.get(&tid).await.unwrap().tokens_per_minute, Some(1000));
    location(
        &ui.post(
            &path,
            "what=quota&tokens_per_minute=",
            Some(&id),
            Some(SAME),
        )
        .await,
    );
    assert_eq!(all.get(&tid).await.unwrap().tokens_per_minute, None);
    let p = ui
        .post(&path, "what=group&group=nowhere", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("not a fair-share group"), "{}", p.body);
    let p = ui
        .post(&path, "what=tier&tier=gold", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("no tier is named"), "{}", p.body);
    let t = all.get(&tid).await.unwrap();
    assert_eq!((t.group.as_str(), t.tier.as_deref()), ("default", None));
    let p = ui
        .post(
            &path,
            "what=budget&amount=5&currency=USD&period=daily",
            Some(&id),
            Some(SAME),
        )
        .await;
    location(&p);
    let page = ui.get(&format!("{path}?saved=budget"), Some(&id)).await;
    assert!(page.body.contains("Budget saved."));
    assert!(page.body.contains("5 USD daily"), "{}", page.body);
    for bad in [
        "amount=-1&period=daily",
        "amount=x&period=daily",
        "amount=5&period=hourly",
        "amount=5&period=daily&currency=usd",
        "amount=5&period=daily&soft_limit=9",
    ] {
        let p = ui
            .post(&path, &format!("what=budget&{bad}"), Some(&id), Some(SAME))
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{bad}: {}", p.body);
        assert!(p.body.contains(r#"class="error""#), "{bad}");
    }
    let list = ui.get("/ui/tenants", Some(&id)).await;
    assert!(list.body.contains("<td>5 USD daily</td>"), "{}", list.body);
    location(
        &ui.post(&path, "what=budget_delete", Some(&id), Some(SAME))
            .await,
    );
    let page = ui.get(&path, Some(&id)).await;
    assert!(page.body.contains("No budget."));
    // An unknown setting, an unknown tenant.
    let p = ui
        .post(&path, "what=name&name=x", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    let p = ui.get("/ui/tenants/ten_nope", Some(&id)).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    let p = ui
        .post(
            "/ui/tenants/ten_nope",
            "what=weight&weight=5",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_tenant_list_pages_and_its_search_is_bounded() {
    let ui = ui();
    let id = ui.login().await;
    for i in 0..2_100 {
        let name = match i {
            2_050 => "needle".to_owned(),
            i if i < 120 && i % 2 == 0 => format!("match-{i:04}"),
            i => format!("t-{i:04}"),
        };
        new_tenant(&ui, &name).await;
        // Ids are ordered by time: the needle is among the last.
        ui.clock.advance(Duration::from_millis(1));
    }
    // Paging: 50 a page, every tenant once.
    let mut seen = HashSet::new();
    let mut next = Some("/ui/tenants".to_owned());
    let mut pages = 0;
    while let Some(url) = next {
        let p = ui.get(&url, Some(&id)).await;
        assert_eq!(p.status, StatusCode::OK);
        let rows = p.body.matches(r#"<tr class="tenant">"#).count();
        assert!(rows <= 50);
        for (i, _) in p
            .body
            .match_indices(r#"<tr class="tenant"><td><a href="/ui/tenants/"#)
        {
            let rest = &p.body[i..];
            let start = rest.find(r#"">"#).unwrap() + 2;
            let end = rest.find("</a>").unwrap();
            assert!(seen.insert(rest[start..end].to_owned()));
        }
        next = next_link(&p.body);
        pages += 1;
    }
    assert_eq!(seen.len(), 2_100);
    assert_eq!(pages, 42);
    // A limit is clamped to 50.
    let p = ui.get("/ui/tenants?limit=500", Some(&id)).await;
    assert_eq!(p.body.matches(r#"<tr class="tenant">"#).count(), 50);
    let p = ui.get("/ui/tenants?limit=3", Some(&id)).await;
    assert_eq!(p.body.matches(r#"<tr class="tenant">"#).count(), 3);

    // A search: 60 names (among the first 120) match, 50 then 10; the
    // second page reads 2000 more tenants, finds nothing more and offers
    // the rest, where there is nothing.
    let p = ui.get("/ui/tenants?q=match", Some(&id)).await;
    assert_eq!(p.body.matches(r#"<tr class="tenant">"#).count(), 50);
    let more = next_link(&p.body).expect("a next page");
    assert!(more.contains("q=match"), "{more}");
    let p = ui.get(&more, Some(&id)).await;
    assert_eq!(p.body.matches(r#"<tr class="tenant">"#).count(), 10);
    assert!(p.body.contains("read 2000 tenants"), "{}", p.body);
    let p = ui.get(&next_link(&p.body).unwrap(), Some(&id)).await;
    assert_eq!(p.body.matches(r#"<tr class="tenant">"#).count(), 0);
    assert!(next_link(&p.body).is_none());
    // A search reads at most 2000 tenants, then offers to go on.
    let p = ui.get("/ui/tenants?q=needle", Some(&id)).await;
    assert_eq!(p.body.matches(r#"<tr class="tenant">"#).count(), 0);
    assert!(p.body.contains("read 2000 tenants"), "{}", p.body);
    let more = next_link(&p.body).expect("the search goes on");
    let p = ui.get(&more, Some(&id)).await;
    assert_eq!(p.body.matches(r#"<tr class="tenant">"#).count(), 1);
    assert!(p.body.contains(">needle</a>"));
    assert!(next_link(&p.body).is_none());
}

#[tokio::test]
async fn a_tenant_page_charts_its_last_24_hours_with_a_table() {
    let ui = ui();
    let id = ui.login().await;
    let tid = new_tenant(&ui, "acme").await;
    let at = Timestamp::from_millis(T0 - 2 * 3_600_000 + 60_000);
    ui.state
        .usage
        .record(&UsageRecord {
            input_tokens: 300,
            output_tokens: 200,
            ..UsageRecord::new(at, "acme", "m")
        })
        .unwrap();
    // Another tenant's usage, and usage older than the day, are not shown.
    ui.state
        .usage
        .record(&UsageRecord {
            input_tokens: 9_999,
            ..UsageRecord::new(at, "other", "m")
        })
        .unwrap();
    ui.state
        .usage
        .record(&UsageRecord {
            input_tokens: 7_777,
            ..UsageRecord::new(Timestamp::from_millis(T0 - 30 * 3_600_000), "acme", "m")
        })
        .unwrap();
    let p = ui.get(&format!("/ui/tenants/{tid}"), Some(&id)).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains(r#"<svg class="chart""#));
    assert_eq!(p.body.matches("<rect ").count(), 24);
    assert!(
        p.body
            .contains(r#"height="160"><title>2025-11-24 22:00 UTC: 500 tokens</title>"#)
    );
    assert!(p.body.contains(
        r#"<td>2025-11-24 22:00</td><td class="n">1</td><td class="n">300</td><td class="n">200</td><td class="n">500</td><td class="n">0</td>"#
    ), "{}", p.body);
    assert!(p.body.contains("<td>2025-11-24 01:00</td>"));
    assert!(p.body.contains("<td>2025-11-25 00:00</td>"));
    assert!(!p.body.contains("9999") && !p.body.contains("7777"));
    assert!(!p.body.contains("style="), "no inline style");
    assert!(!p.body.contains("<script"), "no script");
}

#[tokio::test]
async fn a_key_is_created_its_secret_shown_once_then_disabled_enabled_deleted() {
    let ui = ui();
    let id = ui.login().await;
    new_tenant(&ui, "acme").await;
    let p = ui
        .post("/ui/keys", "tenant=acme&name=ci", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.headers[header::CACHE_CONTROL], "no-store");
    let open = r#"<code class="secret">"#;
    let start = p.body.find(open).unwrap() + open.len();
    let secret = p.body[start..start + p.body[start..].find("</code>").unwrap()].to_owned();
    assert!(secret.starts_with("sk_"), "{secret}");
    assert_eq!(p.body.matches(&secret).count(), 1, "shown once");
    let keys = ui.state.user_keys.key_service();
    let keyspace = ui.state.user_keys.keyspace().await.unwrap();
    let all = keys
        .list(&KeyQuery {
            keyspace_id: Some(keyspace.clone()),
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
    let key = all.items[0].clone();
    assert!(secret.starts_with(&key.start));

    // Listed by its prefix, never its secret.
    for url in ["/ui/keys", "/ui/keys?tenant=acme"] {
        let list = ui.get(url, Some(&id)).await;
        assert_eq!(list.status, StatusCode::OK);
        assert_eq!(key_ids(&list.body), vec![key.id.to_string()]);
        assert!(list.body.contains(&key.start));
        assert!(!list.body.contains(&secret), "{url}");
    }
    let other = ui.get("/ui/keys?tenant=other", Some(&id)).await;
    assert!(key_ids(&other.body).is_empty());
    assert!(other.body.contains("No key."));

    // Disable, enable, back to the list it was on.
    let base = format!("/ui/keys/{}", key.id);
    let p = ui
        .post(
            &format!("{base}/disable"),
            "tenant=acme&cursor=",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(location(&p), "/ui/keys?tenant=acme");
    assert!(!keys.get(&key.id).await.unwrap().enabled);
    let list = ui.get("/ui/keys?tenant=acme", Some(&id)).await;
    assert!(list.body.contains("<strong>disabled</strong>"));
    assert!(list.body.contains(&format!(r#"action="{base}/enable""#)));
    assert!(!list.body.contains(&secret));
    location(
        &ui.post(&format!("{base}/enable"), "", Some(&id), Some(SAME))
            .await,
    );
    assert!(keys.get(&key.id).await.unwrap().enabled);

    // Delete asks first: nothing is deleted without confirm=yes.
    let p = ui
        .post(
            &format!("{base}/delete"),
            "tenant=acme",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains(r#"name="confirm" value="yes""#));
    assert!(!p.body.contains(&secret));
    assert!(keys.get(&key.id).await.is_ok());
    let p = ui
        .post(
            &format!("{base}/delete"),
            "tenant=acme&confirm=yes",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(location(&p), "/ui/keys?tenant=acme");
    assert!(keys.get(&key.id).await.unwrap_err().is_not_found());
    let list = ui.get("/ui/keys", Some(&id)).await;
    assert!(key_ids(&list.body).is_empty());
    // Gone: its buttons find nothing.
    let p = ui
        .post(&format!("{base}/enable"), "", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);

    // Refused creations: no such tenant, a name taken.
    let p = ui
        .post("/ui/keys", "tenant=nobody&name=ci", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("no tenant is named"), "{}", p.body);
    let p = ui
        .post("/ui/keys", "tenant=acme&name=ci2", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::OK);
    let p = ui
        .post("/ui/keys", "tenant=acme&name=ci2", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    assert!(p.body.contains("already exists"), "{}", p.body);
    assert!(!p.body.contains(r#"class="secret""#));
    let p = ui
        .post("/ui/keys/none/delete", "confirm=yes", Some(&id), Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn keys_page_by_cursor_50_at_a_time() {
    let ui = ui();
    let id = ui.login().await;
    new_tenant(&ui, "acme").await;
    new_tenant(&ui, "other").await;
    let actor = Actor::new("admin");
    for i in 0..120 {
        ui.state
            .user_keys
            .create_tenant_key(&actor, "acme", &format!("k{i}"))
            .await
            .unwrap();
    }
    ui.state
        .user_keys
        .create_tenant_key(&actor, "other", "theirs")
        .await
        .unwrap();
    let first = ui.get("/ui/keys?tenant=acme", Some(&id)).await;
    assert_eq!(key_ids(&first.body).len(), 50);
    assert!(first.body.contains(">Next</a>"));
    let mut seen = HashSet::new();
    let mut next = Some("/ui/keys?tenant=acme".to_owned());
    let mut pages = 0;
    while let Some(url) = next {
        let p = ui.get(&url, Some(&id)).await;
        assert_eq!(p.status, StatusCode::OK);
        for k in key_ids(&p.body) {
            assert!(seen.insert(k.clone()), "{k} twice");
        }
        // The buttons come back to this very page.
        if let Some(cursor) = url.split("cursor=").nth(1) {
            assert!(
                p.body
                    .contains(&format!(r#"name="cursor" value="{cursor}""#))
            );
        }
        next = next_link(&p.body);
        pages += 1;
    }
    assert_eq!((seen.len(), pages), (120, 3));
    for k in &seen {
        let key = ui
            .state
            .user_keys
            .key_service()
            .get(&KeyId::parse(k).unwrap())
            .await
            .unwrap();
        assert_eq!(key.owner_id.as_deref(), Some("acme"));
    }
    // Every tenant's: 121; a limit is clamped to 1..=50.
    let p = ui.get("/ui/keys?limit=1000", Some(&id)).await;
    assert_eq!(key_ids(&p.body).len(), 50);
    let p = ui.get("/ui/keys?limit=7", Some(&id)).await;
    assert_eq!(key_ids(&p.body).len(), 7);
    assert!(next_link(&p.body).unwrap().contains("limit=7"));
    let p = ui.get("/ui/keys?limit=0", Some(&id)).await;
    assert_eq!(key_ids(&p.body).len(), 1);
}

#[tokio::test]
async fn cross_site_and_sessionless_posts_change_nothing() {
    let ui = ui();
    let id = ui.login().await;
    let tid = new_tenant(&ui, "acme").await;
    let k = ui
        .state
        .user_keys
        .create_tenant_key(&Actor::new("admin"), "acme", "ci")
        .await
        .unwrap();
    let keys = ui.state.user_keys.key_service();
    let count = || async {
        let keyspace = ui.state.user_keys.keyspace().await.unwrap();
        keys.list(&KeyQuery {
            keyspace_id: Some(keyspace),
            ..KeyQuery::default()
        })
        .await
        .unwrap()
        .items
        .len()
    };
    let posts = [
        ("/ui/keys".to_owned(), "tenant=acme&name=evil".to_owned()),
        ("/ui/tenants".to_owned(), "name=evil".to_owned()),
        (
            format!("/ui/tenants/{tid}"),
            "what=weight&weight=9".to_owned(),
        ),
        (format!("/ui/keys/{}/disable", k.key_id), String::new()),
        (
            format!("/ui/keys/{}/delete", k.key_id),
            "confirm=yes".to_owned(),
        ),
    ];
    for (path, form) in &posts {
        for origin in [
            Some("https://evil.example"),
            Some("http://127.0.0.1:8080"),
            None,
        ] {
            let p = ui.post(path, form, Some(&id), origin).await;
            assert_eq!(p.status, StatusCode::FORBIDDEN, "{path} {origin:?}");
        }
        let p = ui.post(path, form, None, Some(SAME)).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path} without a session");
        let p = ui.post(path, form, Some(&"0".repeat(64)), Some(SAME)).await;
        assert_eq!(
            p.status,
            StatusCode::FORBIDDEN,
            "{path} with a made-up session"
        );
    }
    assert_eq!(count().await, 1);
    let key = keys.get(&k.key_id).await.unwrap();
    assert!(key.enabled);
    assert_eq!(weight_of(&ui, &tid).await, 100);
    let tenants = ui.state.scheduling.tenants();
    assert!(tenants.get_by_name("evil").await.is_err());
    // Pages without a session: to the login form.
    for path in ["/ui/tenants", "/ui/keys", &format!("/ui/tenants/{tid}")] {
        let p = ui.get(path, None).await;
        assert_eq!(location(&p), "/ui/login", "{path}");
    }
}

#[tokio::test]
async fn names_are_escaped_on_the_tenant_and_key_pages() {
    let ui = ui();
    let id = ui.login().await;
    let p = ui
        .post(
            "/ui/tenants",
            "name=%3Cb%3Ex%3C%2Fb%3E",
            Some(&id),
            Some(SAME),
        )
        .await;
    let tid = tenant_in(&location(&p));
    assert_eq!(
        ui.state.scheduling.tenants().get(&tid).await.unwrap().name,
        "<b>x</b>"
    );
    let p = ui
        .post(
            "/ui/keys",
            "tenant=%3Cb%3Ex%3C%2Fb%3E&name=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            Some(&id),
            Some(SAME),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    for page in [
        p,
        ui.get("/ui/tenants", Some(&id)).await,
        ui.get("/ui/tenants?q=%3Cb", Some(&id)).await,
        ui.get(&format!("/ui/tenants/{tid}"), Some(&id)).await,
        ui.get("/ui/keys", Some(&id)).await,
        ui.get("/ui/keys?tenant=%3Cb%3Ex%3C%2Fb%3E", Some(&id))
            .await,
    ] {
        assert_eq!(page.status, StatusCode::OK);
        assert!(!page.body.contains("<b>x"), "{}", page.body);
        assert!(!page.body.contains("<script>"), "{}", page.body);
        assert!(
            page.body.contains("&#60;b&#62;x") || page.body.contains("&lt;b&gt;x"),
            "{}",
            page.body
        );
    }
    // The keys link of the tenant's page carries the name percent-encoded.
    let page = ui.get(&format!("/ui/tenants/{tid}"), Some(&id)).await;
    assert!(page.body.contains("/ui/keys?tenant=%3Cb%3Ex%3C%2Fb%3E"));
}
