//! The operator dashboard through `oneshot`: login and its cookie, session
//! expiry and logout, cross-site posts refused, escaping, the audit of
//! logins, the security headers.

#![cfg(feature = "ui")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ui_common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use maas_core::{Actor, NewModel, Timestamp};
use maas_http::ui::COOKIE;
use ui_common::{ADMIN, HOST, SAME, ui};

#[tokio::test]
async fn login_makes_a_server_side_session_in_a_safe_cookie() {
    let ui = ui();
    // Not logged in: to the login form.
    let p = ui.get("/ui/", None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.headers[header::LOCATION], "/ui/login");
    let form = ui.get("/ui/login", None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body
            .contains(r#"type="password" id="token" name="token""#)
    );
    assert!(
        form.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'")
    );
    assert_eq!(form.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(form.headers[header::CACHE_CONTROL], "no-store");

    let p = ui
        .post("/ui/login", &format!("token={ADMIN}"), None, Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.headers[header::LOCATION], "/ui/");
    let set = p.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-maas-ui="), "{set}");
    assert!(
        set.ends_with("; Path=/; HttpOnly; Secure; SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(ADMIN), "the token is never in the cookie");
    let id = ui.login().await;
    let page = ui.get("/ui/", Some(&id)).await;
    assert_eq!(page.status, StatusCode::OK);
    for name in ["Overview", "Tenants", "Keys", "Models", "Usage", "Audit"] {
        assert!(page.body.contains(&format!(">{name}</a>")), "nav {name}");
    }
    assert!(!page.body.contains(ADMIN), "the token is never in a page");
    // A made-up session is no session.
    let p = ui.get("/ui/", Some(&"0".repeat(64))).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn failed_logins_are_refused_limited_and_audited() {
    let ui = ui();
    let p = ui.post("/ui/login", "token=wrong", None, Some(SAME)).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("That is not the admin token."));
    assert!(p.headers.get(header::SET_COOKIE).is_none());
    for _ in 0..9 {
        ui.post("/ui/login", "token=wrong", None, Some(SAME)).await;
    }
    // The 11th try in the minute is refused, even with the right token.
    let p = ui
        .post("/ui/login", &format!("token={ADMIN}"), None, Some(SAME))
        .await;
    assert_eq!(p.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(p.headers[header::RETRY_AFTER], "60");
    ui.clock.advance(Duration::from_secs(60));
    let id = ui.login().await;
    // Both kinds are in the audit log, shown by the Audit page.
    let audit = ui.get("/ui/audit?action=ui.login", Some(&id)).await;
    assert_eq!(audit.status, StatusCode::OK);
    assert_eq!(audit.body.matches("ui.login_failed").count(), 10);
    assert!(audit.body.contains("<td>ui.login</td>"));
    // A bad query is a clear 400.
    let p = ui.get("/ui/audit?before=yesterday", Some(&id)).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sessions_expire_and_end_at_logout() {
    let ui = ui();
    let id = ui.login().await;
    ui.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(ui.get("/ui/models", Some(&id)).await.status, StatusCode::OK);
    ui.clock.advance(Duration::from_secs(30 * 60));
    let p = ui.get("/ui/models", Some(&id)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "idle for 30 minutes");

    let id = ui.login().await;
    let p = ui.post("/ui/logout", "", Some(&id), Some(SAME)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert!(
        p.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        ui.get("/ui/", Some(&id)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn cross_site_and_cross_port_posts_are_refused() {
    let ui = ui();
    let id = ui.login().await;
    // The user listener's origin (same host, another port), another site,
    // and a post that says nothing of its origin.
    for origin in [
        Some("http://127.0.0.1:8080"),
        Some("https://evil.example"),
        Some("null"),
        None,
    ] {
        let p = ui.post("/ui/logout", "", Some(&id), origin).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{origin:?}");
        let p = ui
            .post("/ui/login", &format!("token={ADMIN}"), None, origin)
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{origin:?}");
    }
    // Fetch Metadata decides when the browser sends it.
    let req = Request::post("/ui/logout")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, SAME)
        .header("sec-fetch-site", "same-site")
        .header(header::COOKIE, format!("{COOKIE}={id}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(ui.send(req).await.status, StatusCode::FORBIDDEN);
    // The session survived every refused logout.
    assert_eq!(ui.get("/ui/", Some(&id)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn names_are_escaped() {
    let ui = ui();
    let mut m = NewModel::new("<i>m", "http://127.0.0.1:9");
    m.name = Some("<script>alert(1)</script>".into());
    ui.models.create(&Actor::new("admin"), m).await.unwrap();
    let id = ui.login().await;
    let p = ui.get("/ui/models", Some(&id)).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body.contains("&#60;i&#62;m") || p.body.contains("&lt;i&gt;m"),
        "{}",
        p.body
    );
    assert!(!p.body.contains("<i>m"));
    let audit = ui.get("/ui/audit", Some(&id)).await;
    assert!(!audit.body.contains("<script>"), "{}", audit.body);
}

#[tokio::test]
async fn usage_charts_come_with_the_same_numbers_as_a_table_and_csv() {
    use maas_core::usage::UsageRecord;
    let ui = ui();
    let at = |min: i64| Timestamp::from_millis(ui_common::T0 - min * 60_000);
    let usage = &ui.state.usage;
    for (min, tenant, model, input, output) in [
        (5, "acme", "llama", 100, 50),
        (65, "acme", "llama", 10, 5),
        (70, "=evil,co", "mistral", 7, 3),
        (60 * 30, "acme", "mistral", 1, 1),
    ] {
        usage
            .record(&UsageRecord {
                input_tokens: input,
                output_tokens: output,
                pricing: Some(maas_core::Pricing::usd(1.0, 2.0)),
                ..UsageRecord::new(at(min), tenant, model)
            })
            .unwrap();
    }
    usage.flush().await.unwrap();
    let id = ui.login().await;
    let p = ui.get("/ui/usage?range=day&group=tenant", Some(&id)).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    // The top table: acme first (165 tokens in the day), the other tenant's
    // name escaped; the chart has one bar per row.
    let top = &p.body[p.body.find(r#"<table id="top">"#).unwrap()..];
    let acme = top
        .find("<td>acme</td><td class=\"n\">2</td><td class=\"n\">110</td><td class=\"n\">55</td>");
    let evil = top.find(
        "<td>=evil,co</td><td class=\"n\">1</td><td class=\"n\">7</td><td class=\"n\">3</td>",
    );
    assert!(acme.is_some() && evil.is_some() && acme < evil, "{top}");
    assert_eq!(
        p.body.matches("<rect ").count(),
        2 + 2,
        "2 hours of series + 2 groups"
    );
    assert!(p.body.contains("<title>acme: 165</title>"));
    // The last hour: only the 5-minute-old request.
    let p = ui.get("/ui/usage?range=hour&group=model", Some(&id)).await;
    assert!(
        p.body
            .contains("<td>llama</td><td class=\"n\">1</td><td class=\"n\">100</td>")
    );
    assert!(!p.body.contains("<td>mistral</td>"));
    // 30 days: everything, as CSV too, formulas neutralised.
    let csv = ui
        .get("/ui/usage.csv?range=30d&group=tenant", Some(&id))
        .await;
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert_eq!(
        csv.body,
        "tenant,requests,errors,cancelled,input_tokens,output_tokens,cached_tokens,cost_usd\n\
         \"'=evil,co\",1,0,0,7,3,0,0.000013000\n\
         acme,3,0,0,111,56,0,0.000223000\n"
    );
    // Bad ranges and groups are a clear 400.
    assert_eq!(
        ui.get("/ui/usage?range=year", Some(&id)).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        ui.get("/ui/usage.csv?group=planet", Some(&id)).await.status,
        StatusCode::BAD_REQUEST
    );
}
