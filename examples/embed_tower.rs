//! Embedding maas in your own axum gateway with one tower layer.
//!
//! The gateway below is "yours": an axum app whose handler forwards chat
//! completions to an upstream (here the built-in simulator, started
//! in-process). The lines marked `// maas` are all it takes to put keys,
//! tokens, tiers, limits, fair share and usage in front of it.
//!
//! ```sh
//! cargo run --example embed_tower
//! curl -s localhost:8090/v1/chat/completions -H 'authorization: Bearer dev-token' \
//!   -H 'content-type: application/json' \
//!   -d '{"model":"simulator","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use maas::core::{Actor, GatewayServices, Identity, NewModel, StaticTokens, SystemClock};
use maas_http::simulator::{self, SimulatorConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An upstream model server: the simulator, on its own port.
    let sim = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = format!("http://{}", sim.local_addr()?);
    let config = SimulatorConfig::default();
    tokio::spawn(simulator::serve(sim, config, std::future::pending()));

    let storage = maas::memory::MemoryStore::new().storage(); // maas
    let dev = Identity::new("alice", ["system:authenticated"]); // maas
    let identity = Arc::new(StaticTokens::new([("dev-token".to_owned(), dev)])?); // maas
    let services = GatewayServices::defaults(&storage, identity)?; // maas
    services.tiers.ensure_defaults(&Actor::system()).await?; // maas
    let model = NewModel::new("simulator", upstream.clone()); // maas
    services.models.create(&Actor::system(), model).await?; // maas
    let _flusher = services.usage.as_ref().map(|u| u.spawn_flusher()); // maas
    let gateway = maas::core::Gateway::new(services, Arc::new(SystemClock)); // maas
    let maas_layer = maas_http::layer::MaasLayer::new(gateway); // maas

    // Your gateway: routes, your own forwarding, your own middleware...
    let client = reqwest::Client::new();
    let app = Router::new()
        .route("/v1/chat/completions", post(forward))
        .with_state((client, upstream))
        .layer(maas_layer); // maas

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    println!(
        "your gateway, with maas in front: http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// Your handler: forwards the (already admitted, rewritten) request upstream
/// and streams the answer back.
async fn forward(
    State((client, upstream)): State<(reqwest::Client, String)>,
    req: Request,
) -> Response {
    let body = match axum::body::to_bytes(req.into_body(), usize::MAX).await {
        Ok(b) => b,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let sent = client
        .post(format!("{upstream}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(res) => {
            let mut out = Response::builder().status(res.status());
            if let Some(ct) = res.headers().get("content-type") {
                out = out.header("content-type", ct.clone());
            }
            out.body(Body::from_stream(res.bytes_stream()))
                .unwrap_or_else(|e| {
                    (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response()
                })
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
