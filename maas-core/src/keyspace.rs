//! Keyspaces: namespaces of keys with their own prefix and defaults (an Unkey
//! "API", a Barbacane "project"). Managed through
//! [`KeyService`](crate::key::KeyService).

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::id::KeyspaceId;
use crate::patch::Patch;
use crate::validate;

/// The longest key prefix, in characters.
pub const MAX_PREFIX_LEN: usize = 8;
/// The fewest random bytes in a key.
pub const MIN_BYTE_LENGTH: u16 = 16;
/// The most random bytes in a key.
pub const MAX_BYTE_LENGTH: u16 = 255;
/// The random bytes in a key unless the keyspace or the request says otherwise.
pub const DEFAULT_BYTE_LENGTH: u16 = 16;

/// A namespace of keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyspace {
    /// Identifier.
    pub id: KeyspaceId,
    /// Display name.
    pub name: String,
    /// Prefix of its keys (`sk` gives `sk_…`); `None` for bare keys.
    pub prefix: Option<String>,
    /// Random bytes in its keys unless a request says otherwise.
    pub default_byte_length: u16,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// Optimistic-concurrency version, 1 at creation.
    pub version: u64,
}

/// What to create a keyspace with.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NewKeyspace {
    /// Display name (1..=256 bytes).
    pub name: String,
    /// Key prefix (1..=8 of `A-Z a-z 0-9 _ -`, not ending in `_`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Default random bytes per key (16..=255); default 16.
    #[serde(default)]
    pub default_byte_length: Option<u16>,
}

/// A partial update of a keyspace; absent fields are kept. Changing the
/// prefix or byte length affects keys created afterwards only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyspaceUpdate {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New prefix, or `null` for bare keys.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub prefix: Patch<String>,
    /// New default byte length.
    #[serde(default)]
    pub default_byte_length: Option<u16>,
}

/// Checks a key prefix: 1..=8 characters of `A-Z a-z 0-9 _ -`, not ending
/// in `_` (the separator is added).
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(Error::invalid("prefix", "must not be empty"));
    }
    if prefix.chars().count() > MAX_PREFIX_LEN {
        return Err(Error::invalid("prefix", "must be at most 8 characters"));
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(
            "prefix",
            "may contain only letters, digits, '_' and '-'",
        ));
    }
    if prefix.ends_with('_') {
        return Err(Error::invalid(
            "prefix",
            "must not end with '_' (the separator is added)",
        ));
    }
    Ok(())
}

/// Checks a key byte length: 16..=255.
pub fn check_byte_length(n: u16) -> Result<()> {
    if (MIN_BYTE_LENGTH..=MAX_BYTE_LENGTH).contains(&n) {
        Ok(())
    } else {
        Err(Error::invalid("byteLength", "must be between 16 and 255"))
    }
}

impl Keyspace {
    pub(crate) fn validate(&self) -> Result<()> {
        validate::label("name", &self.name, 256)?;
        if let Some(p) = &self.prefix {
            check_prefix(p)?;
        }
        check_byte_length(self.default_byte_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for ok in ["sk", "sk_live", "a-b", "12345678"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "123456789", "sk_", "s k", "ké", "sk/"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
        assert!(check_byte_length(15).is_err());
        assert!(check_byte_length(256).is_err());
        assert!(check_byte_length(16).is_ok());
    }
}
