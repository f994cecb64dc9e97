//! Input checks shared by the services. Each returns [`Error::InvalidInput`]
//! naming the field.

use crate::error::{Error, Result};

/// A label (name, group, environment, role, permission): 1..=`max` bytes, no
/// control characters, not only whitespace.
pub(crate) fn label(field: &'static str, s: &str, max: usize) -> Result<()> {
    if s.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A list of labels: at most `max_items`, each a [`label`], no duplicates
/// (duplicates are removed, order kept).
pub(crate) fn labels(
    field: &'static str,
    items: Vec<String>,
    max_len: usize,
    max_items: usize,
) -> Result<Vec<String>> {
    if items.len() > max_items {
        return Err(Error::invalid(
            field,
            format!("must have at most {max_items} entries"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        label(field, &item, max_len)?;
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_and_deduplicated() {
        assert!(label("name", "", 8).is_err());
        assert!(label("name", "   ", 8).is_err());
        assert!(label("name", "123456789", 8).is_err());
        assert!(label("name", "a\u{0}", 8).is_err());
        assert!(label("name", "acme", 8).is_ok());
        let v = labels("roles", vec!["a".into(), "b".into(), "a".into()], 8, 3).unwrap();
        assert_eq!(v, vec!["a", "b"]);
        assert!(labels("roles", vec!["a".into(); 4], 8, 3).is_err());
    }
}
