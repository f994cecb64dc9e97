//! maas tokens end to end on the memory backend: round trip per algorithm,
//! TTLs, every rejection reason, leeway, the verified-token cache, and the
//! service as an authenticator in a chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maas::core::identity::{Authenticator, Chain, Identity, StaticTokens};
use maas::core::token::{Claims, SigningAlgorithm, TokenConfig, TokenRejection, TokenService};
use maas::core::{Actor, Clock, Error, ManualClock, Storage};
use maas::memory::MemoryStore;
use serde_json::{Value, json};

fn alice() -> Identity {
    Identity::new("alice", ["premium-users", "system:authenticated"])
}

async fn service(storage: &Storage, clock: &ManualClock, config: TokenConfig) -> TokenService {
    TokenService::open_with_clock(storage.clone(), config, Arc::new(clock.clone()))
        .await
        .unwrap()
}

fn with_alg(alg: SigningAlgorithm) -> TokenConfig {
    TokenConfig {
        algorithm: alg,
        ..TokenConfig::default()
    }
}

fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    let p = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&p).unwrap(),
    )
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn round_trip_per_algorithm() {
    for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::HS256] {
        let clock = ManualClock::default();
        let storage = MemoryStore::new().storage();
        let s = service(&storage, &clock, with_alg(alg)).await;
        let ttl = s.ttl(Some("1h30m")).unwrap();
        let t = s.mint(&alice(), Some("premium"), ttl).unwrap();
        assert_eq!(
            t.expires_at.as_millis(),
            clock.now().as_millis() + 90 * 60 * 1000
        );
        assert!(!format!("{t:?}").contains(&t.token), "Debug redacts");

        let (header, payload) = parts(&t.token);
        assert_eq!(
            header["alg"],
            match alg {
                SigningAlgorithm::EdDSA => "EdDSA",
                SigningAlgorithm::HS256 => "HS256",
            }
        );
        assert_eq!(header["kid"], t.kid.as_str());
        let claims: Claims = serde_json::from_value(payload).unwrap();
        let now_s = clock.now().as_millis() / 1000;
        assert_eq!(claims.iss, "maas");
        assert_eq!(claims.aud, "maas");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.groups, ["premium-users", "system:authenticated"]);
        assert_eq!(claims.tier.as_deref(), Some("premium"));
        assert_eq!((claims.iat, claims.nbf), (now_s, now_s));
        assert_eq!(claims.exp, now_s + 5400);
        assert_eq!(claims.jti, t.jti);

        let v = s.verify(&t.token).await.unwrap();
        assert_eq!(v.identity, alice());
        assert_eq!(v.tier.as_deref(), Some("premium"));
        assert_eq!(v.expires_at, t.expires_at);
        assert_eq!(v.kid, t.kid);
        // Two tokens for the same identity differ (jti).
        assert_ne!(s.mint(&alice(), None, ttl).unwrap().token, t.token);
    }
}

#[tokio::test]
async fn ttl_default_maximum_and_invalid_input() {
    let clock = ManualClock::default();
    let storage = MemoryStore::new().storage();
    let config = TokenConfig {
        max_ttl: Duration::from_secs(24 * 3600),
        ..TokenConfig::default()
    };
    let s = service(&storage, &clock, config).await;
    assert_eq!(s.ttl(None).unwrap(), Duration::from_secs(4 * 3600));
    assert_eq!(s.ttl(Some("15m")).unwrap(), Duration::from_secs(900));
    assert_eq!(s.ttl(Some("1d")).unwrap(), Duration::from_secs(86400));
    for bad in ["0s", "-1h", "abc", "1w", "1d1ms"] {
        assert!(
            matches!(s.ttl(Some(bad)), Err(Error::InvalidInput { .. })),
            "{bad}"
        );
    }
    // A sub-second TTL still lasts at least that long (exp rounds up).
    let t = s.mint(&alice(), None, Duration::from_millis(1500)).unwrap();
    clock.advance_millis(1500 + 30_000 - 1);
    assert!(s.check(&t.token).await.unwrap().is_ok());
    assert!(
        s.mint(&alice(), None, Duration::from_secs(25 * 3600))
            .is_err()
    );
    assert!(s.mint(&alice(), None, Duration::ZERO).is_err());
    assert!(
        s.mint(&Identity::new("", ["g"]), None, Duration::from_secs(60))
            .is_err()
    );
}

#[tokio::test]
async fn every_rejection_reason() {
    let clock = ManualClock::default();
    let storage = MemoryStore::new().storage();
    let s = service(&storage, &clock, TokenConfig::default()).await;
    let hour = Duration::from_secs(3600);
    let good = s.mint(&alice(), None, hour).unwrap();
    let (header, payload) = parts(&good.token);
    let sig = good.token.rsplit_once('.').unwrap().1.to_owned();

    // A node with a different issuer/audience on the same keys.
    let other_iss = service(
        &storage,
        &clock,
        TokenConfig {
            issuer: "someone-else".into(),
            ..TokenConfig::default()
        },
    )
    .await;
    let other_aud = service(
        &storage,
        &clock,
        TokenConfig {
            audience: "another-api".into(),
            ..TokenConfig::default()
        },
    )
    .await;
    // A node whose clock runs ahead mints tokens not valid here yet.
    let ahead_clock = ManualClock::new(clock.now().add_millis(10 * 60 * 1000));
    let ahead = service(&storage, &ahead_clock, TokenConfig::default()).await;

    let mut h_none = header.clone();
    h_none["alg"] = json!("none");
    let mut h_hs = header.clone();
    h_hs["alg"] = json!("HS256");
    let mut h_unknown = header.clone();
    h_unknown["kid"] = json!("no-such-key");
    let mut h_nokid = header.clone();
    h_nokid.as_object_mut().unwrap().remove("kid");
    let mut h_crit = header.clone();
    h_crit["crit"] = json!(["exp"]);
    let mut p_mallory = payload.clone();
    p_mallory["sub"] = json!("mallory");
    // HS256 over the token keyed with the published public key: the classic
    // algorithm-confusion forgery.
    let public_x = s.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
    let forged_hs = {
        use jsonwebtoken::{EncodingKey, Header};
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(good.kid.clone());
        jsonwebtoken::encode(
            &h,
            &payload,
            &EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(public_x).unwrap()),
        )
        .unwrap()
    };

    let cases: Vec<(&str, String, TokenRejection)> = vec![
        ("empty", String::new(), TokenRejection::Malformed),
        (
            "an API key",
            "sk_3ZbGxv1k9q".into(),
            TokenRejection::Malformed,
        ),
        (
            "two parts",
            format!("{}.{}", b64(&header), b64(&payload)),
            TokenRejection::Malformed,
        ),
        (
            "payload not base64: the signature is checked first",
            format!("{}.!!.{sig}", b64(&header)),
            TokenRejection::BadSignature,
        ),
        (
            "header not JSON",
            format!("{}.{}.{sig}", URL_SAFE_NO_PAD.encode("nope"), b64(&payload)),
            TokenRejection::Malformed,
        ),
        (
            "crit header",
            format!("{}.{}.{sig}", b64(&h_crit), b64(&payload)),
            TokenRejection::Malformed,
        ),
        (
            "oversized",
            "a".repeat(20_000) + ".b.c",
            TokenRejection::Malformed,
        ),
        (
            "alg none",
            format!("{}.{}.", b64(&h_none), b64(&payload)),
            TokenRejection::AlgorithmNone,
        ),
        (
            "unknown kid",
            format!("{}.{}.{sig}", b64(&h_unknown), b64(&payload)),
            TokenRejection::UnknownKey,
        ),
        (
            "no kid",
            format!("{}.{}.{sig}", b64(&h_nokid), b64(&payload)),
            TokenRejection::UnknownKey,
        ),
        (
            "alg swapped in the header",
            format!("{}.{}.{sig}", b64(&h_hs), b64(&payload)),
            TokenRejection::AlgorithmMismatch,
        ),
        (
            "HS256 forged with the public key",
            forged_hs,
            TokenRejection::AlgorithmMismatch,
        ),
        (
            "payload changed",
            format!("{}.{}.{sig}", b64(&header), b64(&p_mallory)),
            TokenRejection::BadSignature,
        ),
        (
            "signature cut",
            good.token[..good.token.len() - 4].to_owned(),
            TokenRejection::BadSignature,
        ),
        (
            "wrong issuer",
            other_iss.mint(&alice(), None, hour).unwrap().token,
            TokenRejection::WrongIssuer,
        ),
        (
            "wrong audience",
            other_aud.mint(&alice(), None, hour).unwrap().token,
            TokenRejection::WrongAudience,
        ),
        (
            "not yet valid",
            ahead.mint(&alice(), None, hour).unwrap().token,
            TokenRejection::NotYetValid,
        ),
    ];
    for (what, token, want) in &cases {
        assert_eq!(s.check(token).await.unwrap(), Err(*want), "{what}");
    }
    let codes: std::collections::HashSet<_> = cases.iter().map(|c| c.2.code()).collect();
    assert_eq!(codes.len(), 8, "distinct reasons: {codes:?}");

    // Expired: after exp plus the leeway, not before.
    assert!(s.check(&good.token).await.unwrap().is_ok());
    clock.advance(hour + Duration::from_secs(29));
    assert!(s.check(&good.token).await.unwrap().is_ok(), "within leeway");
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        s.check(&good.token).await.unwrap(),
        Err(TokenRejection::Expired),
        "cached, and still expired"
    );
    let fresh = service(&storage, &clock, TokenConfig::default()).await;
    assert_eq!(
        fresh.check(&good.token).await.unwrap(),
        Err(TokenRejection::Expired),
        "not cached"
    );
    // Leeway zero: expired exactly at exp.
    let strict = service(
        &storage,
        &clock,
        TokenConfig {
            leeway: Duration::ZERO,
            ..TokenConfig::default()
        },
    )
    .await;
    let t = strict
        .mint(&alice(), None, Duration::from_secs(60))
        .unwrap();
    clock.advance(Duration::from_secs(59));
    assert!(strict.check(&t.token).await.unwrap().is_ok());
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        strict.check(&t.token).await.unwrap(),
        Err(TokenRejection::Expired)
    );
}

#[tokio::test]
async fn cache_is_bounded_and_exact() {
    let clock = ManualClock::default();
    let storage = MemoryStore::new().storage();
    let s = service(
        &storage,
        &clock,
        TokenConfig {
            cache_capacity: 4,
            ..TokenConfig::default()
        },
    )
    .await;
    let hour = Duration::from_secs(3600);
    let t = s.mint(&alice(), None, hour).unwrap();
    assert!(s.check(&t.token).await.unwrap().is_ok());
    assert_eq!(s.cached_tokens(), 1);
    assert!(s.check(&t.token).await.unwrap().is_ok());
    assert_eq!(s.cached_tokens(), 1);
    // Same signature, different payload: no cache hit, a bad signature.
    let (header, payload) = parts(&t.token);
    let mut p = payload.clone();
    p["groups"] = json!(["enterprise-users"]);
    let sig = t.token.rsplit_once('.').unwrap().1;
    let tampered = format!("{}.{}.{sig}", b64(&header), b64(&p));
    assert_eq!(
        s.check(&tampered).await.unwrap(),
        Err(TokenRejection::BadSignature)
    );
    for _ in 0..10 {
        let t = s.mint(&alice(), None, hour).unwrap();
        assert!(s.check(&t.token).await.unwrap().is_ok());
        assert!(s.cached_tokens() <= 4);
    }
}

#[tokio::test]
async fn authenticates_in_a_chain() {
    let clock = ManualClock::default();
    let storage = MemoryStore::new().storage();
    let tokens = Arc::new(service(&storage, &clock, TokenConfig::default()).await);
    let statics = Arc::new(
        StaticTokens::new([("static-admin".to_string(), Identity::new("ops", ["admins"]))])
            .unwrap(),
    );
    let chain = Chain::new().with(statics).with(tokens.clone());
    let t = tokens
        .mint(&alice(), None, Duration::from_secs(60))
        .unwrap();
    assert_eq!(chain.require(&t.token).await.unwrap(), alice());
    assert_eq!(chain.require("static-admin").await.unwrap().user, "ops");
    assert!(matches!(
        chain.require("sk_unknown").await,
        Err(Error::Unauthenticated { .. })
    ));
    tokens
        .revoke_all(&Actor::new("alice"), "alice")
        .await
        .unwrap();
    match chain.require(&t.token).await {
        Err(Error::Unauthenticated { reason }) => {
            assert_eq!(reason, TokenRejection::Revoked.message())
        }
        other => panic!("{other:?}"),
    }
    // A maas token's kid unknown here is "not mine" to the chain.
    assert_eq!(tokens.authenticate("a.b.c").await, Ok(None));
}

/// Arbitrary input, and well-formed tokens carrying arbitrary headers and
/// claims under a real kid, are refused without a panic.
#[test]
fn hostile_tokens_never_panic_nor_pass() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let clock = ManualClock::default();
    let s = rt.block_on(service(
        &MemoryStore::new().storage(),
        &clock,
        TokenConfig::default(),
    ));
    let kid = s.mint(&alice(), None, Duration::from_secs(60)).unwrap().kid;
    let json = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,20}".prop_map(|t| json!(t)),
        prop::collection::vec(".{0,8}", 0..4).prop_map(|v| json!(v)),
    ];
    let fields = prop::collection::hash_map(
        prop_oneof![
            Just("alg".to_string()),
            Just("kid".to_string()),
            Just("crit".to_string()),
            Just("exp".to_string()),
            Just("sub".to_string()),
            ".{0,6}".prop_map(String::from)
        ],
        json,
        0..6,
    );
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 256,
        ..Default::default()
    });
    runner
        .run(
            &(".{0,200}", fields.clone(), fields, ".{0,90}"),
            |(raw, mut header, payload, sig)| {
                assert!(rt.block_on(s.check(&raw)).unwrap().is_err());
                if !header.contains_key("kid") {
                    header.insert("kid".into(), json!(kid));
                }
                let h = serde_json::to_value(&header).unwrap();
                let p = serde_json::to_value(&payload).unwrap();
                let token = format!("{}.{}.{sig}", b64(&h), b64(&p));
                assert!(rt.block_on(s.check(&token)).unwrap().is_err());
                Ok(())
            },
        )
        .unwrap();
}
