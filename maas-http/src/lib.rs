//! # maas-http
//!
//! The axum adapter of maas. Each API is a function returning a [`Router`]
//! over its state, so an embedder mounts the ones it wants and tests drive
//! them with `tower::ServiceExt::oneshot`:
//!
//! - [`maas_api::router`]: the MaaS user API (seed 000: `/health`, `/keys`,
//!   `/tiers/lookup`, `/tokens`, `/v1/models`), errors in Goa's shape;
//! - [`unkey::router`]: the Unkey v1-compatible key API (seed 004), errors
//!   in Unkey's envelope;
//! - [`management::router`]: the management API under `/api/v1` (seed
//!   003), behind the admin token, errors as RFC 9457 problem details;
//! - [`simulator::router`]: a built-in OpenAI-compatible model server
//!   (`/v1/chat/completions`, `/v1/completions`, streamed or not) with
//!   paced, deterministic answers, errors in OpenAI's shape.
//!
//! The `maas-server` crate runs them all over one store on a public and an
//! admin listener, as `examples/server.rs` does.
//!
//! Handlers only parse, call `maas-core` and render: no rule lives here.
//! Every router answers with an `x-request-id`, limits request bodies
//! ([`HttpConfig::body_limit`]; the simulator's is [`simulator::BODY_LIMIT`]) and opens a tracing span per request.
//!
//! [`Router`]: axum::Router

#![forbid(unsafe_code)]

pub mod anthropic;
pub mod common;
pub mod controlplane;
pub mod dataplane;
pub mod gateway;
pub mod layer;
pub mod maas_api;
pub mod management;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod responses;
pub mod simulator;
mod strict;
#[cfg(feature = "ui")]
pub mod ui;
pub mod unkey;
pub mod webhooks;

pub use common::{ApiJson, Dialect, HttpConfig, RequestId};
pub use unkey::{Unkey, UnkeyState};
