//! The permission-query parser (`PermissionQuery`, Unkey's
//! `authorization.permissions`) and the root key permission parser
//! (`RootAction::parse_permission`, `check_permission`) on arbitrary UTF-8.
//!
//! Checks: no panic; `from_json` and `Deserialize` agree; an accepted query
//! displays, serializes back to JSON that parses to the same query, is
//! satisfied by the set of its own terms and not by none; a root permission
//! parses as exactly one action and formats back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maas_core::key::PermissionQuery;
use maas_core::rootkeys::{RootAction, check_permission};
use serde_json::Value;

fn terms(q: &PermissionQuery, out: &mut Vec<String>) {
    match q {
        PermissionQuery::Permission(p) => out.push(p.clone()),
        PermissionQuery::And { and } => and.iter().for_each(|q| terms(q, out)),
        PermissionQuery::Or { or } => or.iter().for_each(|q| terms(q, out)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    // Root key permissions: the string itself.
    let parsed = RootAction::parse_permission(s);
    assert_eq!(parsed.is_some(), check_permission(s).is_ok(), "{s:?}");
    if let Some((action, target)) = parsed {
        assert_eq!(action.permission(Some(target)), s, "{s:?}");
        assert!(!target.is_empty() && target.len() <= 256, "{s:?}");
        let matching = RootAction::ALL
            .into_iter()
            .filter(|a| {
                s.strip_prefix(a.resource())
                    .and_then(|r| r.strip_prefix('.'))
                    .and_then(|r| r.strip_suffix(a.verb()))
                    .and_then(|r| r.strip_suffix('.'))
                    .is_some_and(|t| !t.is_empty())
            })
            .count();
        assert_eq!(matching, 1, "{s:?} names {matching} actions");
        if action == RootAction::CreateApi {
            assert_eq!(target, "*", "{s:?}");
        }
    }

    // Permission queries: the string as JSON.
    let Ok(v) = serde_json::from_str::<Value>(s) else {
        return;
    };
    let from_json = PermissionQuery::from_json(&v);
    let deserialized = serde_json::from_str::<PermissionQuery>(s);
    match (&from_json, &deserialized) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{s:?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("{s:?}: from_json {from_json:?} but Deserialize {deserialized:?}"),
    }
    let Ok(q) = from_json else {
        return;
    };
    let _ = q.to_string();
    let back = serde_json::to_value(&q).expect("a query serializes");
    assert_eq!(
        PermissionQuery::from_json(&back).ok().as_ref(),
        Some(&q),
        "{s:?} -> {back}"
    );
    let mut all = Vec::new();
    terms(&q, &mut all);
    assert!(
        !all.is_empty() && all.len() <= 256,
        "{s:?}: {} terms",
        all.len()
    );
    assert!(all.iter().all(|t| !t.is_empty() && t.len() <= 512));
    assert!(
        q.is_satisfied_by(&all),
        "{s:?}: not satisfied by its own terms"
    );
    assert!(!q.is_satisfied_by(&[]), "{s:?}: satisfied by nothing");
});
