//! Scenarios of maas tokens that depend on the store: the persisted key
//! ring, rotation across nodes, revoke-all.

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Actor, AuditQuery};
use crate::clock::ManualClock;
use crate::error::Error;
use crate::identity::Identity;
use crate::storage::Storage;
use crate::token::{SigningAlgorithm, TokenConfig, TokenRejection, TokenService};

async fn node(storage: &Storage, clock: &ManualClock, config: TokenConfig) -> TokenService {
    TokenService::open_with_clock(storage.clone(), config, Arc::new(clock.clone()))
        .await
        .unwrap()
}

fn alice() -> Identity {
    Identity::new("alice", ["premium-users"])
}

const HOUR: Duration = Duration::from_secs(3600);

/// The key ring is generated once, persisted, and shared by every node
/// opened on the store, even when they start together; its audit event and
/// the JWKS document hold no secret.
pub async fn tokens_key_ring_is_persisted_and_shared(storage: Storage, clock: ManualClock) {
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let storage = storage.clone();
            let clock = clock.clone();
            tokio::spawn(async move { node(&storage, &clock, TokenConfig::default()).await })
        })
        .collect();
    let mut nodes = Vec::new();
    for o in opens {
        nodes.push(o.await.unwrap());
    }
    let keys = nodes[0].signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].active);
    assert_eq!(keys[0].alg, SigningAlgorithm::EdDSA);
    // Every node signs with the same key, and each verifies the others'.
    for (i, n) in nodes.iter().enumerate() {
        let t = n.mint(&alice(), Some("premium"), HOUR).unwrap();
        assert_eq!(t.kid, keys[0].kid);
        let other = &nodes[(i + 1) % nodes.len()];
        let v = other.check(&t.token).await.unwrap().unwrap();
        assert_eq!(v.identity, alice());
        assert_eq!(v.tier.as_deref(), Some("premium"));
    }
    // Reopened later: the same key, tokens minted before still verify.
    let before = nodes[0].mint(&alice(), None, HOUR).unwrap();
    drop(nodes);
    let reopened = node(&storage, &clock, TokenConfig::default()).await;
    assert!(reopened.check(&before.token).await.unwrap().is_ok());

    let jwks = reopened.jwks();
    let listed = jwks["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["kid"], keys[0].kid.as_str());
    assert_eq!(listed[0]["kty"], "OKP");
    assert_eq!(listed[0]["crv"], "Ed25519");
    assert!(listed[0].get("d").is_none(), "no private part: {jwks}");

    let audit = storage
        .audit
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    let creates: Vec<_> = audit
        .items
        .iter()
        .filter(|e| e.action == "token_key.create")
        .collect();
    assert_eq!(creates.len(), 1, "exactly one node created the ring");
    let text = serde_json::to_string(&creates[0]).unwrap();
    assert!(!text.contains("secret"), "{text}");
}

/// Rotation: new tokens are signed by the new key, tokens of the old key
/// keep verifying everywhere (another node learns the new key on first
/// sight of its kid); retiring the old key ends them; the active key cannot
/// be retired.
pub async fn tokens_rotation_keeps_live_tokens(storage: Storage, clock: ManualClock) {
    let a = node(&storage, &clock, TokenConfig::default()).await;
    let b = node(&storage, &clock, TokenConfig::default()).await;
    let old = a.mint(&alice(), None, HOUR).unwrap();
    assert!(b.check(&old.token).await.unwrap().is_ok());

    let admin = Actor::new("admin");
    let new_key = a
        .rotate(&admin, Some(SigningAlgorithm::HS256))
        .await
        .unwrap();
    assert_ne!(new_key.kid, old.kid);
    let fresh = a.mint(&alice(), None, HOUR).unwrap();
    assert_eq!(fresh.kid, new_key.kid);
    assert!(a.check(&old.token).await.unwrap().is_ok());
    assert!(a.check(&fresh.token).await.unwrap().is_ok());
    // HS256 keys are not published.
    assert_eq!(a.jwks()["keys"].as_array().unwrap().len(), 1);

    // b has not seen the new kid: it reloads the ring (at most once a
    // second) and then accepts.
    clock.advance(Duration::from_secs(1));
    assert!(b.check(&fresh.token).await.unwrap().is_ok());
    assert!(b.check(&old.token).await.unwrap().is_ok());

    let keys = a.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k.active).count(), 1);

    let refused = a.retire(&admin, &new_key.kid).await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    let unknown = a.retire(&admin, "nope").await;
    assert!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "{unknown:?}"
    );

    a.retire(&admin, &old.kid).await.unwrap();
    assert_eq!(
        a.check(&old.token).await.unwrap(),
        Err(TokenRejection::UnknownKey),
        "the retiring node drops cached tokens of the key at once"
    );
    assert!(a.check(&fresh.token).await.unwrap().is_ok());
    // b still has the old ring (and the token cached) until its refresh.
    assert!(b.check(&old.token).await.unwrap().is_ok());
    clock.advance(TokenConfig::default().refresh);
    let fresh_again = a.mint(&alice(), None, HOUR * 2).unwrap();
    assert!(b.check(&fresh_again.token).await.unwrap().is_ok());
    assert_eq!(
        b.check(&old.token).await.unwrap(),
        Err(TokenRejection::UnknownKey)
    );

    let audit = storage
        .audit
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    let actions: Vec<_> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["token_key.retire", "token_key.rotate", "token_key.create"]
    );
    assert_eq!(audit.items[0].actor.as_str(), "admin");
}

/// Revoke-all: every token of the subject issued before the revocation
/// fails from the next verification on this node (cached or not), within
/// the refresh interval on another node; tokens minted after it, and other
/// subjects' tokens, stay valid.
pub async fn tokens_revoke_all_applies_to_cached_tokens(storage: Storage, clock: ManualClock) {
    let a = node(&storage, &clock, TokenConfig::default()).await;
    let b = node(&storage, &clock, TokenConfig::default()).await;
    let bob = Identity::new("bob", ["system:authenticated"]);
    let cached = a.mint(&alice(), None, HOUR).unwrap();
    let uncached = a.mint(&alice(), None, HOUR).unwrap();
    let bobs = a.mint(&bob, None, HOUR).unwrap();
    assert!(a.check(&cached.token).await.unwrap().is_ok());
    assert!(b.check(&cached.token).await.unwrap().is_ok());
    assert!(a.check(&bobs.token).await.unwrap().is_ok());

    clock.advance_millis(5);
    let at = a.revoke_all(&Actor::new("alice"), "alice").await.unwrap();
    // Minted in the same millisecond as the revocation, after it: valid.
    let after = a.mint(&alice(), None, HOUR).unwrap();

    assert_eq!(
        a.check(&cached.token).await.unwrap(),
        Err(TokenRejection::Revoked)
    );
    assert_eq!(
        a.check(&uncached.token).await.unwrap(),
        Err(TokenRejection::Revoked)
    );
    assert!(a.check(&after.token).await.unwrap().is_ok());
    assert!(a.check(&bobs.token).await.unwrap().is_ok());
    match a.verify(&cached.token).await {
        Err(Error::Unauthenticated { reason }) => {
            assert_eq!(reason, TokenRejection::Revoked.message())
        }
        other => panic!("{other:?}"),
    }

    // Node b checked alice's revocation state just before: it trusts what it
    // knows for the refresh interval, then reads the store.
    assert!(b.check(&cached.token).await.unwrap().is_ok());
    assert!(b.check(&uncached.token).await.unwrap().is_ok());
    clock.advance(TokenConfig::default().refresh);
    assert_eq!(
        b.check(&cached.token).await.unwrap(),
        Err(TokenRejection::Revoked)
    );
    assert_eq!(
        b.check(&uncached.token).await.unwrap(),
        Err(TokenRejection::Revoked)
    );
    assert!(b.check(&after.token).await.unwrap().is_ok());
    // A node that never saw alice reads the store on first sight.
    let c = node(&storage, &clock, TokenConfig::default()).await;
    assert_eq!(
        c.check(&cached.token).await.unwrap(),
        Err(TokenRejection::Revoked)
    );
    assert!(c.check(&after.token).await.unwrap().is_ok());

    // A second revocation moves the time forward; the first is kept in the
    // audit log.
    clock.advance_millis(10);
    let again = b.revoke_all(&Actor::new("admin"), "alice").await.unwrap();
    assert!(again > at);
    assert_eq!(
        b.check(&after.token).await.unwrap(),
        Err(TokenRejection::Revoked)
    );
    let audit = storage
        .audit
        .list_audit(&AuditQuery::default())
        .await
        .unwrap();
    let revocations = audit
        .items
        .iter()
        .filter(|e| e.action == "token.revoke_all" && e.target_id == "alice")
        .count();
    assert_eq!(revocations, 2);
    assert!(a.revoke_all(&Actor::new("x"), "").await.is_err());
}
