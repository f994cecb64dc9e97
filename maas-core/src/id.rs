//! Identifiers: a type per kind of thing, each a short prefix and a
//! time-ordered random part (`key_01JGF9...`).
//!
//! The random part is 26 characters of Crockford base32 over 128 bits: 48 bits
//! of milliseconds from the service's clock, then 80 random bits. Ids created
//! later sort after ids created earlier (to the millisecond), which gives lists
//! a stable creation order and cursors that are just the last id seen.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The longest identifier accepted from a caller, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A new time-ordered random identifier body (26 characters).
pub(crate) fn ordered_random(now: Timestamp) -> String {
    let ms = u128::from(now.as_millis().clamp(0, (1 << 48) - 1) as u64);
    let mut rnd = [0u8; 10];
    rand::rng().fill_bytes(&mut rnd);
    let mut r: u128 = 0;
    for b in rnd {
        r = (r << 8) | u128::from(b);
    }
    let mut v = (ms << 80) | r;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = CROCKFORD[(v & 31) as usize];
        v >>= 5;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub struct $name(String);

        impl $name {
            /// The prefix of generated identifiers of this kind.
            pub const PREFIX: &'static str = $prefix;

            /// A new identifier, ordered by `now`.
            pub fn generate(now: Timestamp) -> Self {
                $name(format!("{}_{}", $prefix, ordered_random(now)))
            }

            /// An identifier taken from a caller: any non-empty string of at
            /// most [`MAX_ID_LEN`] bytes without control characters. (An id
            /// that was never issued is then simply not found.)
            pub fn parse(s: &str) -> Result<Self> {
                if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) {
                    return Err(Error::invalid(
                        concat!($kind, "Id"),
                        "must be 1 to 128 bytes without control characters",
                    ));
                }
                Ok($name(s.to_owned()))
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

define_id!(
    /// Identifies a [`Tenant`](crate::tenant::Tenant).
    TenantId,
    "ten",
    "tenant"
);
define_id!(
    /// Identifies a [`Keyspace`](crate::keyspace::Keyspace) (an Unkey "API").
    KeyspaceId,
    "ks",
    "keyspace"
);
define_id!(
    /// Identifies a [`Key`](crate::key::Key). Not a secret.
    KeyId,
    "key",
    "key"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let a = KeyId::generate(Timestamp::from_millis(1_000));
        let b = KeyId::generate(Timestamp::from_millis(1_001));
        let c = KeyId::generate(Timestamp::from_millis(1_001));
        assert!(a < b && a < c);
        assert_ne!(b, c);
        assert!(a.as_str().starts_with("key_"));
        assert_eq!(a.as_str().len(), 4 + 26);
    }

    #[test]
    fn parse_rejects_empty_long_and_control() {
        assert!(KeyId::parse("").is_err());
        assert!(KeyId::parse(&"x".repeat(129)).is_err());
        assert!(KeyId::parse("a\nb").is_err());
        assert_eq!(KeyId::parse("key_1").unwrap().as_str(), "key_1");
        match TenantId::parse("").unwrap_err() {
            Error::InvalidInput { field, .. } => assert_eq!(field, "tenantId"),
            e => panic!("{e}"),
        }
    }
}
