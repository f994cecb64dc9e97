//! The operator dashboard in a real browser: Debian's `chromium`, driven
//! over WebDriver (`chromedriver`, started by the test on a free port),
//! against the example server on loopback. Both packages are installed
//! with apt-get when missing, so `cargo test` alone runs this on a fresh
//! machine. Screenshots of each page are kept under
//! `target/ui-screenshots/` (a test artifact) and checked not blank.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use maas_core::{Clock, ManualClock, Timestamp};
use maas_server::{RunningServer, SIMULATOR_MODEL, Server};
use serde_json::{Value, json};

const PREMIUM: &str = "dev-premium-token";

static INSTALL: Once = Once::new();

fn installed() -> bool {
    ["chromium", "chromedriver"].iter().all(|bin| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Makes sure they are on the PATH: apt-get installs chromium and chromedriver
/// (Debian's `chromium` and `chromium-driver` packages) when they are missing.
fn ensure_browser() {
    INSTALL.call_once(|| {
        if installed() {
            return;
        }
        let quiet = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let install = ["install", "-y", "-qq", "chromium", "chromium-driver"];
        let ok = quiet(&install) || (quiet(&["update", "-qq"]) && quiet(&install));
        assert!(
            ok && installed(),
            "the browser test needs chromium and chromedriver and could not install them \
             (apt-get install chromium chromium-driver)"
        );
    });
}

/// A `chromedriver` of the test's own, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// The child is killed and waited for by `Driver`'s `Drop`.
#[allow(clippy::zombie_processes)]
async fn driver() -> Driver {
    ensure_browser();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    // Ready when its status answers (bounded: 10 s).
    for _ in 0..200 {
        if reqwest::get(format!("{url}/status")).await.is_ok() {
            return Driver { child, url };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not start");
}

async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                        "--disable-gpu", "--window-size=1280,1000"]}),
    );
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&d.url)
        .await
        .unwrap()
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Takes a screenshot of the page as `name.png`, and checks it is not
/// blank: a PNG of the window's size whose pixels are not all one colour
/// (a blank page compresses to a few hundred bytes).
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    assert!(png.len() > 8_000, "{name}: {} bytes, blank?", png.len());
    std::fs::write(shots().join(format!("{name}.png")), &png).unwrap();
}

async fn text(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits (at most 10 s) for `what` on the page a click started loading.
async fn wait_for(c: &Client, what: Locator<'_>) {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(what)
        .await
        .unwrap();
}

async fn login(c: &Client, admin: SocketAddr, token: &str) {
    c.goto(&format!("http://{admin}/ui/login")).await.unwrap();
    c.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The answer: the dashboard (its navigation) or the form again, refused.
    wait_for(c, Locator::Css("header nav, p.error")).await;
}

async fn chat(s: &RunningServer, max_tokens: u64) -> reqwest::StatusCode {
    chat_as(s, PREMIUM, max_tokens).await
}

async fn chat_as(s: &RunningServer, bearer: &str, max_tokens: u64) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", s.public_addr))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(
            json!({"model": SIMULATOR_MODEL, "max_tokens": max_tokens,
                   "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .status()
}

async fn admin_json(s: &RunningServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let c = reqwest::Client::new();
    let url = format!("http://{}{path}", s.admin_addr);
    let req = match method {
        "PUT" => c.put(url),
        _ => c.get(url),
    }
    .bearer_auth(s.admin_token());
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(b.to_string()),
        None => req,
    };
    let text = req.send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_764_028_800_000)));
    let mut config = common::config_on(clock.clone());
    // Slow simulated answers: 10 tokens a second.
    config.sim_tokens_per_second = 10.0;
    let s = Server::start(config).await.unwrap();
    let d = driver().await;
    let c = browser(&d).await;

    // A wrong token: refused, no session.
    login(&c, s.admin_addr, "not-the-token").await;
    assert!(text(&c).await.contains("That is not the admin token."));
    screenshot(&c, "login-refused").await;
    c.goto(&format!("http://{}/ui/", s.admin_addr))
        .await
        .unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));

    // The admin token: the overview, and the session cookie is not
    // readable by scripts.
    login(&c, s.admin_addr, s.admin_token()).await;
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/");
    let cookies: Value = c.execute("return document.cookie;", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""), "HttpOnly: invisible to scripts");
    screenshot(&c, "overview").await;

    // Seeded traffic: the Usage page's table and /api/v1/usage agree.
    for _ in 0..3 {
        assert_eq!(chat(&s, 2).await, 200);
    }
    let mut api = Value::Null;
    for _ in 0..100 {
        let now = clock.now().as_millis();
        let path = format!(
            "/api/v1/usage?group_by=model&from={}&to={}",
            now - 3_600_000,
            now + 60_000
        );
        api = admin_json(&s, "GET", &path, None).await;
        if api.to_string().contains("\"requests\":3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = api
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["model"] == SIMULATOR_MODEL || r["group"] == SIMULATOR_MODEL)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no usage row for the simulator: {api}"));
    let usage = if row["usage"].is_object() {
        &row["usage"]
    } else {
        &row
    };
    c.goto(&format!(
        "http://{}/ui/usage?range=day&group=model",
        s.admin_addr
    ))
    .await
    .unwrap();
    let cells: Vec<String> = {
        let tr = c
            .find(Locator::XPath(&format!(
                "//table[@id='top']//tr[td[1]='{SIMULATOR_MODEL}']"
            )))
            .await
            .unwrap();
        let mut v = Vec::new();
        for td in tr.find_all(Locator::Css("td")).await.unwrap() {
            v.push(td.text().await.unwrap());
        }
        v
    };
    assert_eq!(
        cells[1],
        usage["requests"].to_string(),
        "{cells:?} vs {usage}"
    );
    assert_eq!(cells[2], usage["input_tokens"].to_string());
    assert_eq!(cells[3], usage["output_tokens"].to_string());
    let bars = c.find_all(Locator::Css("svg.chart rect")).await.unwrap();
    assert!(!bars.is_empty(), "the chart has bars");
    // The top chart's bar for the model: its tokens, as the table's.
    let tokens = usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap();
    let titles: Vec<String> = {
        let mut v = Vec::new();
        for t in c
            .find_all(Locator::Css("svg.chart rect title"))
            .await
            .unwrap()
        {
            v.push(t.html(true).await.unwrap());
        }
        v
    };
    assert!(
        titles.contains(&format!("{SIMULATOR_MODEL}: {tokens}")),
        "{titles:?}"
    );
    screenshot(&c, "usage").await;

    // Slow requests on one slot: the overview shows them queued.
    admin_json(
        &s,
        "PUT",
        "/api/v1/capacity",
        Some(json!({"max_in_flight": 1})),
    )
    .await;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let addr = s.public_addr;
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .bearer_auth(PREMIUM)
                    .header("content-type", "application/json")
                    .body(
                        json!({"model": SIMULATOR_MODEL, "max_tokens": 30,
                               "messages": [{"role": "user", "content": "hi"}]})
                        .to_string(),
                    )
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    let mut seen = String::new();
    for _ in 0..50 {
        c.goto(&format!("http://{}/ui/", s.admin_addr))
            .await
            .unwrap();
        let row = c
            .find(Locator::XPath(&format!(
                "//table//tr[td[1]='{SIMULATOR_MODEL}']"
            )))
            .await;
        if let Ok(row) = row {
            seen = row.text().await.unwrap();
            // model, slots, in flight, queued, upstreams
            let cols: Vec<&str> = seen.split_whitespace().collect();
            if cols.get(2) == Some(&"1") && cols.get(3).is_some_and(|q| *q != "0") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cols: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"1"), "one slot: {seen}");
    assert!(
        cols.get(3).is_some_and(|q| *q != "0"),
        "queued shown: {seen}"
    );
    screenshot(&c, "overview-queued").await;
    for t in slow {
        t.abort();
    }
    // The free tier's 5 requests a minute: the 6th and 7th are refused,
    // and the overview says so.
    let mut refused = 0;
    for _ in 0..7 {
        if chat_as(&s, "dev-free-token", 1).await == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused}");
    c.goto(&format!("http://{}/ui/", s.admin_addr))
        .await
        .unwrap();
    let figure = c
        .find(Locator::XPath(
            "//div[contains(., 'refused (429)')]/span[@class='figure']",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_ne!(figure, "0.0%", "refusals shown");

    // A tenant and a key made in the browser; the secret shown once; the
    // key disabled in the browser is refused at the gateway.
    admin_json(
        &s,
        "PUT",
        "/api/v1/capacity",
        Some(json!({"max_in_flight": 8})),
    )
    .await;
    c.goto(&format!("http://{}/ui/tenants", s.admin_addr))
        .await
        .unwrap();
    c.find(Locator::Css(
        "form[action='/ui/tenants'][method=post] input[name=name]",
    ))
    .await
    .unwrap()
    .send_keys("acme-browser")
    .await
    .unwrap();
    c.find(Locator::Css(
        "form[action='/ui/tenants'][method=post] button",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    // The answer is the new tenant's page (waited for: the click only
    // starts the navigation).
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath("//*[contains(text(), 'Tenant created.')]"))
        .await
        .unwrap();
    let page = text(&c).await;
    assert!(page.contains("acme-browser"), "{page}");
    screenshot(&c, "tenant").await;
    c.goto(&format!("http://{}/ui/keys", s.admin_addr))
        .await
        .unwrap();
    let form = "form[action='/ui/keys'][method=post]";
    for (field, value) in [("tenant", "acme-browser"), ("name", "from-the-browser")] {
        c.find(Locator::Css(&format!("{form} input[name={field}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    c.find(Locator::Css(&format!("{form} button")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let secret = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("code.secret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(secret.len() > 20, "{secret}");
    screenshot(&c, "key-created").await;
    assert_eq!(chat_as(&s, &secret, 2).await, 200, "the new key serves");
    c.goto(&format!(
        "http://{}/ui/keys?tenant=acme-browser",
        s.admin_addr
    ))
    .await
    .unwrap();
    assert!(
        !c.source().await.unwrap().contains(&secret),
        "the secret is shown once"
    );
    screenshot(&c, "keys").await;
    c.find(Locator::XPath(
        "//tr[td[normalize-space()='from-the-browser']]//button[normalize-space()='Disable']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_for(
        &c,
        Locator::XPath(
            "//tr[td[normalize-space()='from-the-browser']]//button[normalize-space()='Enable']",
        ),
    )
    .await;
    assert_eq!(chat_as(&s, &secret, 2).await, 401, "disabled: refused");

    // The other pages render, with their data.
    c.goto(&format!("http://{}/ui/models", s.admin_addr))
        .await
        .unwrap();
    assert!(text(&c).await.contains(SIMULATOR_MODEL));
    screenshot(&c, "models").await;
    c.goto(&format!("http://{}/ui/audit", s.admin_addr))
        .await
        .unwrap();
    assert!(text(&c).await.contains("ui.login_failed"));
    screenshot(&c, "audit").await;

    // Logging out ends the session.
    c.find(Locator::Css("form.logout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, Locator::Css("input[name=token]")).await;
    c.goto(&format!("http://{}/ui/models", s.admin_addr))
        .await
        .unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));

    // The portal, on the user listener: a caller logs in with their token,
    // sees their tier and models, and makes a key (its secret once).
    let portal = format!("http://{}/portal", s.public_addr);
    c.goto(&format!("{portal}/login")).await.unwrap();
    c.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(PREMIUM)
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/portal/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, Locator::Css("h2#tier")).await;
    let page = text(&c).await;
    assert!(page.contains("Tier premium"), "{page}");
    assert!(page.contains(SIMULATOR_MODEL));
    assert!(
        !c.source().await.unwrap().contains(PREMIUM),
        "the token is in no page"
    );
    let cookies: Value = c.execute("return document.cookie;", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""));
    screenshot(&c, "portal").await;
    c.find(Locator::Css("form[action='/portal/keys'] input[name=name]"))
        .await
        .unwrap()
        .send_keys("laptop")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/portal/keys'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, Locator::XPath("//h2[@id='keys']/following::pre/code")).await;
    let secret = c
        .find(Locator::XPath("//h2[@id='keys']/following::pre/code"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        chat_as(&s, &secret, 1).await,
        200,
        "the portal's key serves"
    );
    screenshot(&c, "portal-key-created").await;
    c.goto(&format!("{portal}/")).await.unwrap();
    assert!(!c.source().await.unwrap().contains(&secret), "shown once");

    c.close().await.unwrap();
    s.shutdown().await.unwrap();
}
