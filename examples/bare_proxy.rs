//! The floor of `scripts/load/gateway.sh`: a reverse proxy on the gateway's
//! own stack (axum server, the same pooled reqwest client settings, the body
//! streamed back, mimalloc) with nothing of maas in front. Measured beside
//! the gateway, it tells what the extra HTTP hop costs on its own and what
//! maas adds to it.
//!
//! With `--simulator` in place of the upstream URL it starts its own
//! simulator in-process (instant, 4096 at once) and forwards to it: the hop
//! and the model then share one runtime, as they do in the example server
//! that gateway.sh measures.
//!
//! ```sh
//! cargo run --release --example bare_proxy -- 127.0.0.1:18082 http://127.0.0.1:8081
//! cargo run --release --example bare_proxy -- 127.0.0.1:18083 --simulator
//! ```

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use maas_http::simulator::{self, SimulatorConfig};

/// The same allocator as the example server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        eprintln!("usage: bare_proxy LISTEN_ADDR (UPSTREAM_URL | --simulator)");
        return std::process::ExitCode::from(2);
    };
    let upstream = if upstream == "--simulator" {
        match simulator().await {
            Ok(url) => url,
            Err(e) => {
                eprintln!("bare_proxy: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    } else {
        upstream.trim_end_matches('/').to_owned()
    };
    match run(listen, upstream).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare_proxy: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Starts an instant simulator on a loopback port; returns its URL.
async fn simulator() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = SimulatorConfig {
        tokens_per_second: 0.0,
        max_concurrent: 4096,
        ..SimulatorConfig::default()
    };
    tokio::spawn(simulator::serve(listener, config, std::future::pending()));
    Ok(url)
}

async fn run(listen: &str, upstream: String) -> Result<(), Box<dyn std::error::Error>> {
    // The settings of maas_http::gateway::router's client.
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(300))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()?;
    let app = Router::new()
        .route("/v1/chat/completions", post(forward))
        .with_state((client, upstream));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("bare proxy on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Forwards the body as it is and streams the answer back.
async fn forward(
    State((client, upstream)): State<(reqwest::Client, String)>,
    req: Request,
) -> Response {
    let body = match axum::body::to_bytes(req.into_body(), 8 << 20).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let sent = client
        .post(format!("{upstream}/v1/chat/completions"))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(res) => {
            let mut out = Response::builder().status(res.status());
            if let Some(ct) = res.headers().get(CONTENT_TYPE) {
                out = out.header(CONTENT_TYPE, ct.clone());
            }
            out.body(Body::from_stream(res.bytes_stream()))
                .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
