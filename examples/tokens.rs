//! The user flow of the MaaS guide, embedded: a user proves who they are,
//! gets a maas token with a TTL, their groups resolve to a tier, and the tier
//! decides which models they see. Then they revoke their tokens.
//!
//! `cargo run --example tokens`

use std::sync::Arc;

use maas::core::identity::{Chain, Identity, StaticTokens};
use maas::core::model::NewModel;
use maas::core::tier::TierService;
use maas::core::token::{TokenConfig, TokenService};
use maas::core::{Actor, ModelService};
use maas::memory::MemoryStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> maas::core::Result<()> {
    let storage = MemoryStore::new().storage();
    let admin = Actor::new("admin");

    // The catalog: the guide's default tiers and one model.
    let tiers = TierService::new(storage.clone());
    tiers.ensure_defaults(&admin).await?;
    let models = ModelService::new(storage.clone());
    models
        .create(&admin, NewModel::new("granite-3b", "http://127.0.0.1:8000"))
        .await?;

    // Who may ask for a token: here a static identity token from
    // configuration; in production an OIDC issuer (JwksAuthenticator).
    let identities = Chain::new().with(Arc::new(StaticTokens::new([(
        "alice-identity-token".to_string(),
        Identity::new("alice", ["premium-users", "system:authenticated"]),
    )])?));
    let alice = identities.require("alice-identity-token").await?;

    // POST /v1/tokens {"expiration": "15m"}
    let tokens = TokenService::open(storage.clone(), TokenConfig::default()).await?;
    let tier = tiers.lookup(&alice.groups).await?;
    let ttl = tokens.ttl(Some("15m"))?;
    let minted = tokens.mint(&alice, Some(&tier.name), ttl)?;
    println!(
        "token for {} (tier {}) expires at {}",
        alice.user, tier.name, minted.expires_at
    );

    // GET /v1/models with the token: the models of the caller's tier.
    let verified = tokens.verify(&minted.token).await?;
    let tier = tiers.lookup(&verified.identity.groups).await?;
    let list = models.openai_list(&tier, "http://localhost:8080").await?;
    for m in &list.data {
        println!("model {} at {}", m.id, m.url);
    }

    // DELETE /v1/tokens: every token of alice issued so far stops working.
    tokens
        .revoke_all(&Actor::new(alice.user.clone()), &alice.user)
        .await?;
    match tokens.verify(&minted.token).await {
        Err(e) => println!("after revoke: {e}"),
        Ok(_) => println!("after revoke: still valid (unexpected)"),
    }
    Ok(())
}
