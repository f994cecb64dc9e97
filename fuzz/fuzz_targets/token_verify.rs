//! The token verifier: arbitrary strings as tokens, and tokens built from
//! real ones (a segment replaced, bytes overwritten, headers such as
//! `{"alg":"none"}` or `{"alg":"HS256","kid":...}` with the real payload and
//! signature, HS256 signatures keyed with the EdDSA public key), against an
//! EdDSA and an HS256 `TokenService`.
//!
//! Checks: `check` never panics and is `Ok` on a memory store; only a token
//! the service minted (and did not revoke) is accepted, by that service only.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use maas_core::identity::Identity;
use maas_core::token::{SigningAlgorithm, TokenConfig, TokenService};
use maas_core::{Actor, Clock};
use maas_fuzz::{Input, b64, clock, rt};
use maas_store_memory::MemoryStore;
use serde_json::{Value, json};

struct Service {
    svc: TokenService,
    /// Tokens it minted for live subjects: the only ones it may accept.
    accepted: Vec<String>,
    /// A token of a subject whose tokens were all revoked.
    revoked: String,
    kid: String,
}

struct Fixture {
    services: [Service; 2],
    /// Candidate HMAC secrets from the EdDSA key's JWK.
    confusion_secrets: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| rt().block_on(build()))
}

async fn service(algorithm: SigningAlgorithm) -> Service {
    let clock = clock();
    let svc = TokenService::open_with_clock(
        MemoryStore::new().storage(),
        TokenConfig {
            algorithm,
            ..TokenConfig::default()
        },
        std::sync::Arc::new(clock.clone()) as std::sync::Arc<dyn Clock>,
    )
    .await
    .expect("a token service");
    let hour = Duration::from_secs(3600);
    let alice = svc
        .mint(
            &Identity::new("alice", ["g1", "premium-users"]),
            Some("premium"),
            hour,
        )
        .expect("mint");
    let bob = svc
        .mint(&Identity::new("bob", Vec::<String>::new()), None, hour)
        .expect("mint");
    let carol = svc
        .mint(&Identity::new("carol", ["g1"]), Some("free"), hour)
        .expect("mint");
    svc.revoke_all(&Actor::system(), "carol")
        .await
        .expect("revoke");
    for t in [&alice.token, &bob.token] {
        assert!(
            svc.check(t).await.expect("check").is_ok(),
            "a minted token verifies"
        );
    }
    assert!(svc.check(&carol.token).await.expect("check").is_err());
    Service {
        svc,
        accepted: vec![alice.token, bob.token],
        revoked: carol.token,
        kid: alice.kid,
    }
}

async fn build() -> Fixture {
    let ed = service(SigningAlgorithm::EdDSA).await;
    let hs = service(SigningAlgorithm::HS256).await;
    let jwks = ed.svc.jwks();
    let mut confusion_secrets = Vec::new();
    if let Some(k) = jwks["keys"].as_array().and_then(|a| a.first()) {
        confusion_secrets.push(k.to_string().into_bytes());
        if let Some(x) = k["x"].as_str() {
            confusion_secrets.push(x.as_bytes().to_vec());
            if let Ok(raw) = URL_SAFE_NO_PAD.decode(x) {
                confusion_secrets.push(raw);
            }
        }
    }
    confusion_secrets.push(Vec::new());
    Fixture {
        services: [ed, hs],
        confusion_secrets,
    }
}

const ALGS: [&str; 12] = [
    "none", "None", "NONE", "nOnE", "HS256", "EdDSA", "RS256", "ES256", "HS512", "PS256", "",
    "ED25519",
];

fn segments(t: &str) -> [&str; 3] {
    let mut it = t.splitn(3, '.');
    [
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    ]
}

fn forge(f: &Fixture, data: &[u8]) -> (String, usize) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let sel = input.byte();
    let target = usize::from(sel & 1);
    let s = &f.services[target];
    let base = if sel & 2 == 0 {
        &s.accepted[usize::from(sel >> 2) % s.accepted.len()]
    } else {
        &s.revoked
    };
    let [h, p, sig] = segments(base);
    let token = match mode % 7 {
        0 => String::from_utf8_lossy(data).into_owned(),
        // One segment replaced by the base64url of the rest.
        1 | 2 => {
            let seg = if mode % 7 == 1 {
                b64(input.rest())
            } else {
                String::from_utf8_lossy(input.rest()).into_owned()
            };
            match (sel >> 4) % 3 {
                0 => format!("{seg}.{p}.{sig}"),
                1 => format!("{h}.{seg}.{sig}"),
                _ => format!("{h}.{p}.{seg}"),
            }
        }
        // A header of the input's bytes with the real payload and signature.
        3 => format!("{}.{p}.{sig}", b64(input.rest())),
        // A templated header.
        4 => {
            let alg = ALGS[usize::from(input.byte()) % ALGS.len()];
            let which = input.byte();
            let kid = match which % 4 {
                0 => Value::String(f.services[0].kid.clone()),
                1 => Value::String(f.services[1].kid.clone()),
                2 => Value::Null,
                _ => Value::String(String::from_utf8_lossy(input.take(16)).into_owned()),
            };
            let mut header = json!({"alg": alg, "typ": "JWT"});
            if !kid.is_null() {
                header["kid"] = kid;
            }
            if which & 4 != 0 {
                header["crit"] = json!(["exp"]);
            }
            if which & 8 != 0 {
                header["jku"] = json!("https://attacker.example/jwks");
            }
            let header = b64(header.to_string().as_bytes());
            let rest = input.rest();
            let payload = if which & 16 != 0 {
                b64(rest)
            } else {
                p.to_owned()
            };
            let signature = match (which >> 5) % 4 {
                0 => sig.to_owned(),
                1 => String::new(),
                2 => b64(rest),
                _ => "AAAA".to_owned(),
            };
            format!("{header}.{payload}.{signature}")
        }
        // HS256 keyed with the EdDSA key's public parts (alg confusion).
        5 => {
            let secret =
                &f.confusion_secrets[usize::from(input.byte()) % f.confusion_secrets.len()];
            let ed = &f.services[0];
            let [_, ep, _] = segments(&ed.accepted[0]);
            let claims: Value = serde_json::from_slice(input.rest()).unwrap_or_else(|_| {
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(ep).unwrap_or_default())
                    .unwrap_or(Value::Null)
            });
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(ed.kid.clone());
            match jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)) {
                Ok(t) => t,
                Err(_) => return (String::new(), 0),
            }
        }
        // Bytes overwritten at (position, value) pairs.
        _ => {
            let mut v = base.as_bytes().to_vec();
            while let [pos, val] = input.take(2) {
                let i = usize::from(*pos) * 7 % v.len();
                v[i] = *val;
            }
            String::from_utf8_lossy(&v).into_owned()
        }
    };
    (token, target)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (token, _) = forge(f, data);
    for (i, s) in f.services.iter().enumerate() {
        let r = rt()
            .block_on(s.svc.check(&token))
            .expect("check is Ok on a memory store");
        if let Ok(v) = r {
            assert!(
                s.accepted.contains(&token),
                "service {i} accepted a token it did not mint: {token:?} as {:?}",
                v.identity
            );
        }
    }
});
