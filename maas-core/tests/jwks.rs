//! The OIDC/JWKS authenticator against locally generated issuer keys
//! (`tests/fixtures`, see its README).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use maas_core::identity::{Authenticator, JwksAuthenticator, JwksConfig, JwksSource};
use maas_core::{Clock, Error, ManualClock, TokenRejection};
use serde_json::{Value, json};

const RSA_PEM: &[u8] = include_bytes!("fixtures/rsa-issuer.pem");
const EC_PEM: &[u8] = include_bytes!("fixtures/ec-issuer.pem");
const ED_PEM: &[u8] = include_bytes!("fixtures/ed-issuer.pem");

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "maas";

struct IssuerKey {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

fn keys() -> Vec<IssuerKey> {
    vec![
        IssuerKey {
            kid: "rsa-1",
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(RSA_PEM).unwrap(),
        },
        IssuerKey {
            kid: "ec-1",
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(EC_PEM).unwrap(),
        },
        IssuerKey {
            kid: "ed-1",
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(ED_PEM).unwrap(),
        },
    ]
}

fn jwks_of(keys: &[IssuerKey]) -> String {
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|k| {
                let mut jwk = Jwk::from_encoding_key(&k.key, k.alg).unwrap();
                jwk.common.key_id = Some(k.kid.into());
                jwk
            })
            .collect(),
    };
    serde_json::to_string(&set).unwrap()
}

fn sign(k: &IssuerKey, claims: &Value) -> String {
    let mut h = Header::new(k.alg);
    h.kid = Some(k.kid.into());
    jsonwebtoken::encode(&h, claims, &k.key).unwrap()
}

fn claims(clock: &ManualClock) -> Value {
    let now = clock.now().as_millis() / 1000;
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "preferred_username": "alice@example.com",
        "groups": ["premium-users", "system:authenticated"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    })
}

async fn authenticator(source: JwksSource, clock: &ManualClock) -> JwksAuthenticator {
    JwksAuthenticator::new_with_clock(
        JwksConfig::new(source, ISSUER, AUDIENCE),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap()
}

fn b64(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn every_algorithm_round_trips() {
    let clock = ManualClock::default();
    let keys = keys();
    let a = authenticator(JwksSource::Inline(jwks_of(&keys)), &clock).await;
    assert_eq!(a.key_ids(), ["ec-1", "ed-1", "rsa-1"]);
    for k in &keys {
        let id = a.check(&sign(k, &claims(&clock))).await.unwrap();
        assert_eq!(id.user, "alice", "{:?}", k.alg);
        assert_eq!(id.groups, ["premium-users", "system:authenticated"]);
        let via_trait = a.authenticate(&sign(k, &claims(&clock))).await.unwrap();
        assert_eq!(via_trait.unwrap().user, "alice");
    }
    // `aud` as a list works too.
    let mut c = claims(&clock);
    c["aud"] = json!(["other", AUDIENCE]);
    assert!(a.check(&sign(&keys[0], &c)).await.is_ok());
}

#[tokio::test]
async fn user_and_groups_claims_are_configurable() {
    let clock = ManualClock::default();
    let keys = keys();
    let mut cfg = JwksConfig::new(JwksSource::Inline(jwks_of(&keys)), ISSUER, AUDIENCE);
    cfg.user_claim = "preferred_username".into();
    cfg.groups_claim = "roles".into();
    let a = JwksAuthenticator::new_with_clock(cfg, Arc::new(clock.clone()))
        .await
        .unwrap();
    let mut c = claims(&clock);
    c["roles"] = json!(["enterprise-users"]);
    let id = a.check(&sign(&keys[2], &c)).await.unwrap();
    assert_eq!(id.user, "alice@example.com");
    assert_eq!(id.groups, ["enterprise-users"]);
    c.as_object_mut().unwrap().remove("preferred_username");
    assert_eq!(
        a.check(&sign(&keys[2], &c)).await,
        Err(TokenRejection::MissingClaim)
    );
}

#[tokio::test]
async fn every_rejection_has_its_reason() {
    let clock = ManualClock::default();
    let keys = keys();
    let a = authenticator(JwksSource::Inline(jwks_of(&keys)), &clock).await;
    let rsa = &keys[0];
    let good = claims(&clock);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, String, TokenRejection)> = vec![
        ("garbage", "not a token".into(), TokenRejection::Malformed),
        ("two parts", "a.b".into(), TokenRejection::Malformed),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "rsa-1"})),
                b64(&good)
            ),
            TokenRejection::AlgorithmNone,
        ),
        (
            "unknown kid",
            {
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some("nope".into());
                jsonwebtoken::encode(&h, &good, &rsa.key).unwrap()
            },
            TokenRejection::UnknownKey,
        ),
        (
            "HS/RS swap: HMAC keyed with the public key, under the RSA kid",
            {
                let public = rsa_public_jwk_bytes();
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some("rsa-1".into());
                jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(&public)).unwrap()
            },
            TokenRejection::AlgorithmMismatch,
        ),
        (
            "ES256 signature under the RSA kid",
            {
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some("rsa-1".into());
                jsonwebtoken::encode(&h, &good, &keys[1].key).unwrap()
            },
            TokenRejection::AlgorithmMismatch,
        ),
        (
            "bad signature",
            {
                let t = sign(rsa, &good);
                let (signed, _) = t.rsplit_once('.').unwrap();
                let other = sign(rsa, &with(&|c| c["sub"] = json!("mallory")));
                format!("{signed}.{}", other.rsplit_once('.').unwrap().1)
            },
            TokenRejection::BadSignature,
        ),
        (
            "wrong issuer",
            sign(rsa, &with(&|c| c["iss"] = json!("https://evil.example"))),
            TokenRejection::WrongIssuer,
        ),
        (
            "missing issuer",
            sign(
                rsa,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("iss");
                }),
            ),
            TokenRejection::WrongIssuer,
        ),
        (
            "wrong audience",
            sign(rsa, &with(&|c| c["aud"] = json!("someone-else"))),
            TokenRejection::WrongAudience,
        ),
        (
            "expired beyond the leeway",
            sign(
                rsa,
                &with(&|c| c["exp"] = json!(clock.now().as_millis() / 1000 - 31)),
            ),
            TokenRejection::Expired,
        ),
        (
            "not yet valid beyond the leeway",
            sign(
                rsa,
                &with(&|c| c["nbf"] = json!(clock.now().as_millis() / 1000 + 31)),
            ),
            TokenRejection::NotYetValid,
        ),
        (
            "no exp",
            sign(
                rsa,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            TokenRejection::MissingClaim,
        ),
    ];
    for (what, token, want) in cases {
        assert_eq!(a.check(&token).await, Err(want), "{what}");
        let via_trait = a.authenticate(&token).await;
        match want {
            TokenRejection::Malformed | TokenRejection::UnknownKey => {
                assert_eq!(via_trait, Ok(None), "{what}")
            }
            _ => assert!(
                matches!(via_trait, Err(Error::Unauthenticated { .. })),
                "{what}: {via_trait:?}"
            ),
        }
    }
    // Within the leeway both ways.
    let now = clock.now().as_millis() / 1000;
    let edge = with(&|c| {
        c["exp"] = json!(now - 29);
        c["nbf"] = json!(now + 29);
    });
    assert!(a.check(&sign(rsa, &edge)).await.is_ok());
}

/// The RSA issuer's public key as published: what an attacker uses as the HMAC secret.
fn rsa_public_jwk_bytes() -> Vec<u8> {
    let jwk = Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(RSA_PEM).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    serde_json::to_vec(&jwk).unwrap()
}

#[tokio::test]
async fn file_source_refreshes_on_unknown_kid_at_most_every_min_refresh() {
    let clock = ManualClock::default();
    let keys = keys();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_of(&keys[..1])).unwrap();
    let a = authenticator(JwksSource::File(path.clone()), &clock).await;
    assert_eq!(a.key_ids(), ["rsa-1"]);

    // The issuer adds a key; a token of the new key arrives at once.
    std::fs::write(&path, jwks_of(&keys)).unwrap();
    let t = sign(&keys[2], &claims(&clock));
    assert_eq!(a.check(&t).await, Err(TokenRejection::UnknownKey));
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        a.check(&t).await,
        Err(TokenRejection::UnknownKey),
        "no refetch within the minimum interval"
    );
    clock.advance(Duration::from_secs(20));
    assert_eq!(a.check(&t).await.unwrap().user, "alice");

    // The issuer drops a key: gone after the refresh interval.
    std::fs::write(&path, jwks_of(&keys[2..])).unwrap();
    let rsa_token = sign(&keys[0], &claims(&clock));
    assert!(a.check(&rsa_token).await.is_ok());
    clock.advance(Duration::from_secs(601));
    let rsa_token = sign(&keys[0], &claims(&clock));
    assert_eq!(a.check(&rsa_token).await, Err(TokenRejection::UnknownKey));

    // A broken document keeps the keys in use.
    std::fs::write(&path, "{ not json").unwrap();
    clock.advance(Duration::from_secs(601));
    let t = sign(&keys[2], &claims(&clock));
    assert!(a.check(&t).await.is_ok());
}

#[tokio::test]
async fn unusable_documents_fail_at_start() {
    let clock = Arc::new(ManualClock::default());
    let missing = JwksConfig::new(
        JwksSource::File("/nonexistent/jwks.json".into()),
        ISSUER,
        AUDIENCE,
    );
    assert!(matches!(
        JwksAuthenticator::new_with_clock(missing, clock.clone()).await,
        Err(Error::Unavailable { .. })
    ));
    let garbage = JwksConfig::new(JwksSource::Inline("[]".into()), ISSUER, AUDIENCE);
    assert!(matches!(
        JwksAuthenticator::new_with_clock(garbage, clock.clone()).await,
        Err(Error::InvalidInput { .. })
    ));
    let no_issuer = JwksConfig::new(JwksSource::Inline(r#"{"keys":[]}"#.into()), "", AUDIENCE);
    assert!(
        JwksAuthenticator::new_with_clock(no_issuer, clock)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn keys_of_other_algorithms_are_ignored() {
    let clock = ManualClock::default();
    let keys = keys();
    let mut set: Value = serde_json::from_str(&jwks_of(&keys)).unwrap();
    // An HMAC key published by mistake, an RSA key claiming ES256, an
    // encryption key and a key without kid are all ignored.
    let arr = set["keys"].as_array_mut().unwrap();
    arr.push(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"}));
    let mut lying = arr[0].clone();
    lying["kid"] = json!("lying");
    lying["alg"] = json!("ES256");
    arr.push(lying);
    let mut enc = arr[0].clone();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    arr.push(enc);
    let mut anonymous = arr[0].clone();
    anonymous.as_object_mut().unwrap().remove("kid");
    arr.push(anonymous);
    let a = authenticator(JwksSource::Inline(set.to_string()), &clock).await;
    assert_eq!(a.key_ids(), ["ec-1", "ed-1", "rsa-1"]);
}

#[cfg(feature = "jwks-url")]
#[tokio::test]
async fn url_source_is_fetched_over_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let clock = ManualClock::default();
    let keys = keys();
    let doc = jwks_of(&keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        // Serves exactly one request.
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
            doc.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
    });
    let a = authenticator(
        JwksSource::Url(format!("http://{addr}/.well-known/jwks.json")),
        &clock,
    )
    .await;
    server.await.unwrap();
    assert_eq!(a.key_ids().len(), 3);
    assert!(a.check(&sign(&keys[1], &claims(&clock))).await.is_ok());

    // Nothing listens there any more: a refresh fails, the keys stay.
    clock.advance(Duration::from_secs(601));
    assert!(matches!(a.refresh().await, Err(Error::Unavailable { .. })));
    assert!(a.check(&sign(&keys[1], &claims(&clock))).await.is_ok());
}
