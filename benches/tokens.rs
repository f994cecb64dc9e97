//! Token verification and tier lookup, each beside its floor measured in the
//! same run.
//!
//! Group `token` (memory backend, system clock):
//! - `raw_decode_hs256` / `raw_decode_eddsa`: `jsonwebtoken::decode` of a
//!   token with the same header and claims, signed by a key held by the
//!   bench, validating signature, `exp`, `iss` and `aud`: the floor;
//! - `verify_hs256` / `verify_eddsa`: [`TokenService::check`] with the cache
//!   off (`cache_capacity: 0`): header, pinned key, signature, claims,
//!   revocation state. Goal: at most 1.15 times the raw decode;
//! - `verify_cached`: the same token again through the cache (goal: at most
//!   300 ns), beside `blake3_keyed_signature`, the keyed hash of the
//!   signature segment every cached lookup computes.
//!
//! Group `tier_lookup`: [`TierService::lookup`] among 100 tiers (5 groups
//! each) for a caller in 20 groups (3 of them mapped), beside
//! `hashmap_probe_20`: 20 probes of a std `HashMap<String, usize>` of the 500
//! groups.
//!
//! `cargo bench -- "token/|tier_lookup"`; `cargo bench -- "token/|tier_lookup" --test` runs
//! each once.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use maas::core::identity::Identity;
use maas::core::tier::{ModelAccess, NewTier, TierService};
use maas::core::token::{SigningAlgorithm, TokenConfig, TokenService};
use maas::core::{Actor, KeyHasher, SystemClock};
use maas::memory::MemoryStore;
use rand::Rng as _;
use tokio::runtime::Runtime;

fn identity() -> Identity {
    Identity::new(
        "alice@example.com",
        ["premium-users", "system:authenticated"],
    )
}

fn service(rt: &Runtime, alg: SigningAlgorithm, cache_capacity: usize) -> TokenService {
    rt.block_on(TokenService::open_with_clock(
        MemoryStore::new().storage(),
        TokenConfig {
            algorithm: alg,
            cache_capacity,
            ..TokenConfig::default()
        },
        Arc::new(SystemClock),
    ))
    .unwrap()
}

/// A raw jsonwebtoken key pair of `alg` and a validation like maas' own.
fn raw_keys(alg: Algorithm) -> (EncodingKey, DecodingKey) {
    let mut rng = rand::rng();
    match alg {
        Algorithm::HS256 => {
            let mut s = [0u8; 64];
            rng.fill_bytes(&mut s);
            (EncodingKey::from_secret(&s), DecodingKey::from_secret(&s))
        }
        _ => {
            let mut der = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            der.extend_from_slice(&seed);
            let enc = EncodingKey::from_ed_der(&der);
            let jwk = Jwk::from_encoding_key(&enc, Algorithm::EdDSA).unwrap();
            (enc, DecodingKey::from_jwk(&jwk).unwrap())
        }
    }
}

/// The claims of a maas token minted by `svc`, re-signed by `enc`: the
/// same bytes to parse, the same signature cost.
fn raw_token(svc_token: &str, alg: Algorithm, enc: &EncodingKey) -> String {
    let payload = svc_token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let mut h = Header::new(alg);
    h.kid = Some("raw".into());
    jsonwebtoken::encode(&h, &claims, enc).unwrap()
}

fn raw_validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&["maas"]);
    v.set_audience(&["maas"]);
    v
}

fn tokens(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("token");
    g.measurement_time(Duration::from_secs(4));

    for (alg, jwt_alg, name) in [
        (SigningAlgorithm::HS256, Algorithm::HS256, "hs256"),
        (SigningAlgorithm::EdDSA, Algorithm::EdDSA, "eddsa"),
    ] {
        let svc = service(&rt, alg, 0);
        let minted = svc
            .mint(&identity(), Some("premium"), Duration::from_secs(3600))
            .unwrap();
        assert!(rt.block_on(svc.check(&minted.token)).unwrap().is_ok());
        let (enc, dec) = raw_keys(jwt_alg);
        let raw = raw_token(&minted.token, jwt_alg, &enc);
        let validation = raw_validation(jwt_alg);
        jsonwebtoken::decode::<serde_json::Value>(&raw, &dec, &validation).unwrap();

        g.bench_function(format!("raw_decode_{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(&raw), &dec, &validation)
                    .unwrap()
            })
        });
        g.bench_function(format!("verify_{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { svc.check(black_box(&minted.token)).await.unwrap().unwrap() })
        });
    }

    let svc = service(&rt, SigningAlgorithm::EdDSA, 100_000);
    let minted = svc
        .mint(&identity(), Some("premium"), Duration::from_secs(3600))
        .unwrap();
    rt.block_on(svc.check(&minted.token)).unwrap().unwrap();
    let signature = minted.token.rsplit_once('.').unwrap().1.to_owned();
    let hasher = KeyHasher::from_secret(b"bench");
    g.bench_function("blake3_keyed_signature", |b| {
        b.iter(|| hasher.hash(black_box(signature.as_bytes())))
    });
    g.bench_function("verify_cached", |b| {
        b.to_async(&rt)
            .iter(|| async { svc.check(black_box(&minted.token)).await.unwrap().unwrap() })
    });
    g.finish();
}

fn tier_lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tiers = TierService::new(MemoryStore::new().storage());
    let admin = Actor::new("bench");
    let mut all_groups = HashMap::new();
    rt.block_on(async {
        for t in 0..100 {
            let groups: Vec<String> = (0..5).map(|g| format!("group-{t}-{g}")).collect();
            for g in &groups {
                all_groups.insert(g.clone(), t);
            }
            tiers
                .create(
                    &admin,
                    NewTier {
                        name: format!("tier-{t:03}"),
                        level: t,
                        groups,
                        requests_per_minute: 60,
                        tokens_per_minute: 100_000,
                        max_tokens_per_request: None,
                        models: ModelAccess::All,
                    },
                )
                .await
                .unwrap();
        }
    });
    // 20 groups: 17 unmapped, 3 mapped to tiers 12, 57 and 83.
    let mut caller: Vec<String> = (0..17).map(|i| format!("team-{i}")).collect();
    caller.extend(["group-12-1", "group-57-4", "group-83-0"].map(String::from));
    let best = rt.block_on(tiers.lookup(&caller)).unwrap();
    assert_eq!(best.name, "tier-083");

    let mut g = c.benchmark_group("tier_lookup");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("hashmap_probe_20", |b| {
        b.iter(|| {
            let mut best = None;
            for grp in black_box(&caller) {
                if let Some(&t) = all_groups.get(grp) {
                    best = best.max(Some(t));
                }
            }
            best
        })
    });
    g.bench_function("lookup_100_tiers_20_groups", |b| {
        b.to_async(&rt)
            .iter(|| async { tiers.lookup(black_box(&caller)).await.unwrap() })
    });
    g.finish();
}

criterion_group!(benches, tokens, tier_lookup);
