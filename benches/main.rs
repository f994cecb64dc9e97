//! Every criterion bench of maas in one harness: `cargo bench` runs them
//! all; `cargo bench -- <filter>` runs the groups whose id matches (e.g.
//! `cargo bench -- verify`, `-- fairshare`, `-- "ratelimit|admission"`).
//! `scripts/benchmarks.sh` runs them and regenerates `BENCHMARKS.md`.
//!
//! Each group measures a hot path beside its floor or peer in the same run
//! (raw keyed blake3, a raw map lookup, raw jsonwebtoken decode, governor's
//! keyed limiter, tokio's semaphore), so the ratio means something on a
//! noisy machine. The modules' docs say what each measures.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod backends;
mod common;
mod fairshare;
mod http;
mod limits;
mod pools;
mod redis;
mod tokens;
mod translate;
mod usage;
mod verify;

criterion::criterion_main!(
    verify::benches,
    backends::benches,
    tokens::benches,
    fairshare::benches,
    limits::benches,
    usage::benches,
    http::benches,
    pools::benches,
    redis::benches,
    translate::benches,
);
