//! # maas
//!
//! A Model-as-a-Service access layer to put in front of LLM inference: API
//! keys, tokens, tiers, limits and quotas, fair share, usage and audit.
//!
//! This facade re-exports the crates of the workspace:
//! - [`core`] (`maas-core`): the domain, storage and clock traits;
//! - [`memory`] (`maas-store-memory`): the in-memory backend;
//! - [`sled`] (`maas-store-sled`): the persistent embedded backend.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use maas::core::{Actor, KeyHasher, KeyService, NewKey, NewKeyspace, VerifyCode, VerifyOptions};
//! use maas::memory::MemoryStore;
//!
//! let keys = KeyService::new(MemoryStore::new().storage(), KeyHasher::from_secret(b"deployment secret"));
//! let admin = Actor::new("admin");
//! let api = keys
//!     .create_keyspace(&admin, NewKeyspace { name: "prod".into(), prefix: Some("sk".into()), ..Default::default() })
//!     .await?;
//! let created = keys
//!     .create(&admin, NewKey { remaining: Some(1), ..NewKey::in_keyspace(api.id) })
//!     .await?;
//! let first = keys.verify(&created.key, &VerifyOptions::default()).await?;
//! assert!(first.valid());
//! let second = keys.verify(&created.key, &VerifyOptions::default()).await?;
//! assert_eq!(second.code(), VerifyCode::UsageExceeded);
//! # Ok::<(), maas::core::Error>(())
//! # }).unwrap();
//! ```

#![forbid(unsafe_code)]

pub use maas_core as core;
pub use maas_store_memory as memory;
pub use maas_store_sled as sled;
