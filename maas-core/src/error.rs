//! The one public error type of maas, by meaning.
//!
//! Backends map their own failures into [`Error::Unavailable`] (saying whether
//! a retry may help) or [`Error::Internal`]; HTTP adapters render each variant
//! in the dialect of the API being served.

use std::borrow::Cow;

use crate::clock::Timestamp;

/// The result type of maas.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by what it means to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The addressed thing does not exist (or was deleted).
    #[error("{kind} '{id}' not found")]
    NotFound {
        /// What was looked for: "key", "keyspace", "tenant", ...
        kind: &'static str,
        /// The identifier that was asked for.
        id: String,
    },

    /// No tier maps any of the caller's groups (`POST /tiers/lookup`,
    /// [`TierService::lookup`](crate::tier::TierService::lookup)).
    ///
    /// A not-found error ([`Error::is_not_found`]); HTTP adapters answer it
    /// as 404 `not_found` with this error's `Display`, which is the MaaS
    /// API's message: `No tier mapping found for groups: ['a' 'b']` (see
    /// [`format_groups`](crate::tier::format_groups)).
    #[error(
        "No tier mapping found for groups: {}",
        crate::tier::format_groups(groups)
    )]
    NoTierMapping {
        /// The groups that were looked up (non-empty ones, first occurrence
        /// order).
        groups: Vec<String>,
    },

    /// The request conflicts with the current state: a duplicate name, or a
    /// concurrent change that won (optimistic concurrency).
    #[error("conflict: {message}")]
    Conflict {
        /// What conflicts.
        message: String,
    },

    /// The request is malformed; nothing was changed.
    #[error("invalid '{field}': {reason}")]
    InvalidInput {
        /// The field at fault, dotted for nested ones (`ratelimit.limit`).
        field: Cow<'static, str>,
        /// Why it is invalid.
        reason: Cow<'static, str>,
    },

    /// No valid credential was presented.
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// Why the credential was refused.
        reason: Cow<'static, str>,
    },

    /// The caller is known but may not do this.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Why it is not allowed.
        reason: Cow<'static, str>,
    },

    /// A rate limit refused the request.
    #[error("rate limited: {remaining}/{limit} left, resets at {reset}")]
    RateLimited {
        /// The limit of the window.
        limit: u64,
        /// What is left in the window (usually 0).
        remaining: u64,
        /// When the window resets.
        reset: Timestamp,
    },

    /// A quota or budget is spent.
    #[error("quota exceeded: {message}")]
    QuotaExceeded {
        /// Which quota, and by how much.
        message: String,
    },

    /// Storage (or another dependency) could not serve the request.
    #[error("unavailable{}: {message}", if *transient { " (transient)" } else { "" })]
    Unavailable {
        /// What failed.
        message: String,
        /// Whether retrying the same request later may succeed.
        transient: bool,
    },

    /// A bug or a broken invariant; the request did not complete.
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// [`Error::NotFound`] for `kind` with `id`.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// [`Error::InvalidInput`] naming `field` and `reason`.
    pub fn invalid(
        field: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// [`Error::Conflict`] with `message`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
        }
    }

    /// [`Error::Unavailable`] with `message`; `transient` says whether a retry may help.
    pub fn unavailable(message: impl Into<String>, transient: bool) -> Self {
        Error::Unavailable {
            message: message.into(),
            transient,
        }
    }

    /// [`Error::Internal`] with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal {
            message: message.into(),
        }
    }

    /// Whether the error says something does not exist: [`Error::NotFound`]
    /// or [`Error::NoTierMapping`] (both are 404s).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. } | Error::NoTierMapping { .. })
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable {
                transient: true,
                ..
            } | Error::RateLimited { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field() {
        let e = Error::invalid("ratelimit.limit", "must be at least 1");
        assert_eq!(
            e.to_string(),
            "invalid 'ratelimit.limit': must be at least 1"
        );
        assert!(!e.is_transient());
        assert!(Error::unavailable("disk", true).is_transient());
        assert!(!Error::unavailable("corrupt", false).is_transient());
        assert_eq!(
            Error::unavailable("x", true).to_string(),
            "unavailable (transient): x"
        );
    }
}
