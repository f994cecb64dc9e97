//! MCP servers (seed 003's `/mcp-servers`): tool servers registered with
//! the gateway, with the tiers that may use them. Catalog records, audited.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::catalog;
use crate::clock::{Clock, SharedClock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::id::ordered_random;
use crate::validate;

/// The record kind of MCP servers.
pub const MCP_KIND: &str = "mcp_server";
const MAX_NAME: usize = 128;
const MAX_DESCRIPTION: usize = 4096;
const MAX_URL: usize = 2048;

/// How the gateway talks to an MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Transport {
    /// MCP's streamable HTTP transport.
    StreamableHttp,
    /// Server-sent events (the older HTTP transport).
    Sse,
}

/// A registered MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct McpServer {
    /// Identifier (`mcp_…`).
    pub id: String,
    /// Unique display name.
    pub name: String,
    /// Where it listens (http or https).
    pub url: String,
    /// How to talk to it.
    pub transport: Transport,
    /// What it offers.
    pub description: String,
    /// The tiers whose users may use it; empty: every tier.
    pub tiers: Vec<String>,
    /// Whether it is offered at all.
    pub enabled: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Optimistic-concurrency version.
    pub version: u64,
}

impl crate::versioned::Versioned for McpServer {
    fn version(&self) -> u64 {
        self.version
    }
    fn set_version(&mut self, v: u64) {
        self.version = v;
    }
}

impl catalog::Entry for McpServer {
    const KIND: &'static str = MCP_KIND;
    fn id(&self) -> &str {
        &self.id
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
}

/// What to register an MCP server with (and, for an update, what to
/// replace it with: every field, as `PUT` does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewMcpServer {
    /// Unique display name.
    pub name: String,
    /// http or https URL.
    pub url: String,
    /// Default `streamable-http`.
    #[serde(default = "default_transport")]
    pub transport: Transport,
    /// Default empty.
    #[serde(default)]
    pub description: String,
    /// Default empty (every tier).
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_transport() -> Transport {
    Transport::StreamableHttp
}

fn yes() -> bool {
    true
}

impl NewMcpServer {
    fn validate(&mut self) -> Result<()> {
        validate::label("name", &self.name, MAX_NAME)?;
        let url = self.url.as_str();
        if url.len() > MAX_URL
            || !(url.starts_with("http://") || url.starts_with("https://"))
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid("url", "must be an http or https URL"));
        }
        if self.description.len() > MAX_DESCRIPTION {
            return Err(Error::invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION} bytes"),
            ));
        }
        self.tiers = validate::labels("tiers", std::mem::take(&mut self.tiers), MAX_NAME, 100)?;
        Ok(())
    }
}

/// Registers, reads, replaces and removes MCP servers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct McpServers {
    storage: crate::storage::Storage,
    clock: SharedClock,
}

impl McpServers {
    /// The registry over `storage`, on the system clock.
    pub fn new(storage: crate::storage::Storage) -> Self {
        Self::new_with_clock(storage, Arc::new(SystemClock))
    }

    /// The registry on `clock`.
    pub fn new_with_clock(storage: crate::storage::Storage, clock: Arc<dyn Clock>) -> Self {
        McpServers { storage, clock }
    }

    fn records(&self) -> &dyn crate::storage::RecordStore {
        &*self.storage.records
    }

    async fn name_taken(&self, name: &str, except: Option<&str>) -> Result<bool> {
        Ok(self
            .list()
            .await?
            .iter()
            .any(|s| s.name == name && Some(s.id.as_str()) != except))
    }

    /// Registers a server. [`Error::Conflict`] if the name is taken.
    pub async fn create(&self, actor: &Actor, mut new: NewMcpServer) -> Result<McpServer> {
        new.validate()?;
        if self.name_taken(&new.name, None).await? {
            return Err(Error::conflict(format!(
                "an MCP server named '{}' exists",
                new.name
            )));
        }
        let now = self.clock.now();
        let s = McpServer {
            id: format!("mcp_{}", ordered_random(now)),
            name: new.name,
            url: new.url,
            transport: new.transport,
            description: new.description,
            tiers: new.tiers,
            enabled: new.enabled,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        catalog::create_entry(self.records(), actor, &s, now).await?;
        Ok(s)
    }

    /// The server `id`.
    pub async fn get(&self, id: &str) -> Result<McpServer> {
        catalog::get_entry(self.records(), id).await
    }

    /// Every server, by name.
    pub async fn list(&self) -> Result<Vec<McpServer>> {
        let mut all: Vec<McpServer> = catalog::list_entries(self.records()).await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Replaces every field of server `id`.
    pub async fn update(
        &self,
        actor: &Actor,
        id: &str,
        mut new: NewMcpServer,
    ) -> Result<McpServer> {
        new.validate()?;
        if self.name_taken(&new.name, Some(id)).await? {
            return Err(Error::conflict(format!(
                "an MCP server named '{}' exists",
                new.name
            )));
        }
        let now = self.clock.now();
        catalog::update_entry(
            self.records(),
            actor,
            id,
            "mcp_server.update",
            now,
            |s: &mut McpServer| {
                s.name = new.name.clone();
                s.url = new.url.clone();
                s.transport = new.transport;
                s.description = new.description.clone();
                s.tiers = new.tiers.clone();
                s.enabled = new.enabled;
                s.updated_at = now;
                Ok(())
            },
        )
        .await
    }

    /// Removes server `id`.
    pub async fn delete(&self, actor: &Actor, id: &str) -> Result<()> {
        catalog::delete_entry::<McpServer>(self.records(), actor, id, self.clock.now()).await
    }
}
