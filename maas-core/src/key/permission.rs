//! Permission queries, as Unkey's `authorization.permissions` accepts them: a
//! permission name, or `{"and": [...]}` / `{"or": [...]}` of queries, nested.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// How deep queries may nest.
pub const MAX_DEPTH: usize = 16;
/// How many permission names a query may hold in all.
pub const MAX_TERMS: usize = 256;
const MAX_PERMISSION_LEN: usize = 512;
const FIELD: &str = "authorization.permissions";

/// A query over a key's permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(no_recursion))]
pub enum PermissionQuery {
    /// The key must have this permission.
    Permission(String),
    /// Every sub-query must hold.
    And {
        /// The sub-queries.
        and: Vec<PermissionQuery>,
    },
    /// At least one sub-query must hold.
    Or {
        /// The sub-queries.
        or: Vec<PermissionQuery>,
    },
}

impl PermissionQuery {
    /// Parses a query from JSON. Malformed queries (wrong types, empty
    /// `and`/`or`, objects with other keys, too deep or too large) are
    /// [`Error::InvalidInput`] for `authorization.permissions`.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut terms = 0;
        parse(v, 0, &mut terms)
    }

    /// Whether `has` (the key's permissions) satisfies the query.
    pub fn is_satisfied_by(&self, has: &[String]) -> bool {
        match self {
            PermissionQuery::Permission(p) => has.iter().any(|h| h == p),
            PermissionQuery::And { and } => and.iter().all(|q| q.is_satisfied_by(has)),
            PermissionQuery::Or { or } => or.iter().any(|q| q.is_satisfied_by(has)),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(FIELD, reason.into())
}

fn parse(v: &Value, depth: usize, terms: &mut usize) -> Result<PermissionQuery> {
    if depth > MAX_DEPTH {
        return Err(invalid(format!("nests deeper than {MAX_DEPTH} levels")));
    }
    match v {
        Value::String(s) => {
            *terms += 1;
            if *terms > MAX_TERMS {
                return Err(invalid(format!("has more than {MAX_TERMS} permissions")));
            }
            if s.is_empty() || s.len() > MAX_PERMISSION_LEN {
                return Err(invalid("a permission must be 1 to 512 bytes"));
            }
            Ok(PermissionQuery::Permission(s.clone()))
        }
        Value::Object(map) => {
            let (op, items) = match map.iter().next() {
                Some((op, items)) if map.len() == 1 => (op.as_str(), items),
                _ => {
                    return Err(invalid(
                        "an object must have exactly one key, \"and\" or \"or\"",
                    ));
                }
            };
            let Value::Array(items) = items else {
                return Err(invalid(format!("\"{op}\" must be an array")));
            };
            if items.is_empty() {
                return Err(invalid(format!("\"{op}\" must not be empty")));
            }
            let subs = items
                .iter()
                .map(|i| parse(i, depth + 1, terms))
                .collect::<Result<Vec<_>>>()?;
            match op {
                "and" => Ok(PermissionQuery::And { and: subs }),
                "or" => Ok(PermissionQuery::Or { or: subs }),
                _ => Err(invalid(format!(
                    "unknown operator \"{op}\"; use \"and\" or \"or\""
                ))),
            }
        }
        _ => Err(invalid(
            "must be a permission string or an object {\"and\": [...]} / {\"or\": [...]}",
        )),
    }
}

impl<'de> Deserialize<'de> for PermissionQuery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        PermissionQuery::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PermissionQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, qs: &[PermissionQuery], op: &str| {
            f.write_str("(")?;
            for (i, q) in qs.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{q}")?;
            }
            f.write_str(")")
        };
        match self {
            PermissionQuery::Permission(p) => f.write_str(p),
            PermissionQuery::And { and } => join(f, and, "AND"),
            PermissionQuery::Or { or } => join(f, or, "OR"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn has(ps: &[&str]) -> Vec<String> {
        ps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nested_queries_evaluate() {
        let q = PermissionQuery::from_json(&json!({
            "or": [{"and": ["dns.record.read", "dns.record.update"]}, "admin"]
        }))
        .unwrap();
        assert!(q.is_satisfied_by(&has(&["admin"])));
        assert!(q.is_satisfied_by(&has(&["dns.record.read", "dns.record.update"])));
        assert!(!q.is_satisfied_by(&has(&["dns.record.read"])));
        assert_eq!(
            q.to_string(),
            "((dns.record.read AND dns.record.update) OR admin)"
        );
        let single: PermissionQuery = serde_json::from_value(json!("admin")).unwrap();
        assert_eq!(single, PermissionQuery::Permission("admin".into()));
    }

    #[test]
    fn malformed_queries_are_invalid_input() {
        for bad in [
            json!(1),
            json!(null),
            json!([]),
            json!({}),
            json!({"and": []}),
            json!({"and": "x"}),
            json!({"xor": ["a"]}),
            json!({"and": ["a"], "or": ["b"]}),
            json!(""),
        ] {
            let e = PermissionQuery::from_json(&bad).unwrap_err();
            assert!(
                matches!(e, Error::InvalidInput { ref field, .. } if field == FIELD),
                "{bad}"
            );
        }
        let mut deep = json!("a");
        for _ in 0..100 {
            deep = json!({ "and": [deep] });
        }
        assert!(PermissionQuery::from_json(&deep).is_err());
        let wide = json!({ "or": vec!["p"; 300] });
        assert!(PermissionQuery::from_json(&wide).is_err());
    }
}
