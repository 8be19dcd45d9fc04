//! Unit tests of `rules.rs`.
use super::*;

const OP_URI: &str = "https://management.azure.com/subscriptions/00000000-0000-0000-0000-000000000001/providers/Microsoft.Network/locations/westeurope/operations/5d66a0e0-e08b-4ecf-aee5-0ff5a461962b?api-version=2022-07-01";

#[test]
fn builtin_table_parses_with_unique_names_and_reasons() {
    let rules = builtin();
    assert!(rules.len() > 20);
    let mut names = std::collections::HashSet::new();
    for rule in rules {
        let name = rule
            .name
            .as_deref()
            .expect("every built-in rule has a name");
        assert!(names.insert(name), "duplicate rule name {name}");
    }
    for rule in rules {
        let why = rule.why.as_deref().unwrap_or_default();
        assert!(
            !why.is_empty(),
            "rule {name:?} has no why",
            name = rule.name
        );
    }
}

#[test]
fn unknown_rule_fields_are_rejected() {
    assert!(load(r#"[{"name":"x","kind":"permanent","code":["Typo"]}]"#).is_err());
    assert!(load(r#"[{"name":"x","why":"ok","kind":"permanent","codes":["A"]}]"#).is_ok());
}

#[test]
fn wildcards() {
    assert!(code_matches("*AlreadyExists", "BlobAlreadyExists"));
    assert!(code_matches("*alreadyexists", "BLOBALREADYEXISTS"));
    assert!(!code_matches("*AlreadyExists", "AlreadyExistsNot"));
    assert!(code_matches("Lease*", "LeaseLost"));
    assert!(code_matches("*Being*", "ContainerBeingDeleted"));
    assert!(code_matches("*", "Anything"));
    assert!(code_matches("Conflict", "conflict"));
    assert!(!code_matches("Conflict", "ConflictingUserInput"));
}

#[test]
fn request_conditions() {
    let mut h = HeaderMap::new();
    assert!(RequestCondition::NoPrecondition.holds_for(&h));
    h.insert(header::IF_NONE_MATCH, "\"abc\"".parse().unwrap());
    assert!(RequestCondition::NoPrecondition.holds_for(&h));
    h.insert(header::IF_NONE_MATCH, " * ".parse().unwrap());
    assert!(RequestCondition::IfNoneMatchStar.holds_for(&h));
    assert!(!RequestCondition::NoPrecondition.holds_for(&h));
    let mut h = HeaderMap::new();
    h.insert(
        header::IF_UNMODIFIED_SINCE,
        "Mon, 01 Jan 2024 00:00:00 GMT".parse().unwrap(),
    );
    assert!(RequestCondition::IfMatch.holds_for(&h));
}

#[test]
fn every_condition_must_hold() {
    let rule = Rule {
        name: None,
        kind: ConflictKind::StateConflict,
        status: vec![409],
        codes: vec!["Conflict".into()],
        message_contains: vec!["Busy".into()],
        request: Some(RequestCondition::NoPrecondition),
        why: None,
    };
    let body = ErrorBody {
        code: Some("Other".into()),
        detail_codes: vec!["CONFLICT".into()],
        detail_messages: vec!["the thing is busy".into()],
        ..ErrorBody::default()
    };
    let none = HeaderMap::new();
    assert!(rule.matches(409, &none, &body));
    assert!(!rule.matches(412, &none, &body));
    let mut if_match = HeaderMap::new();
    if_match.insert(header::IF_MATCH, "*".parse().unwrap());
    assert!(!rule.matches(409, &if_match, &body));
    let quiet = ErrorBody {
        detail_messages: vec![],
        ..body
    };
    assert!(!rule.matches(409, &none, &quiet));
}

#[test]
fn operation_uri_after_wording() {
    let msg = format!(
        "Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {OP_URI}."
    );
    let (op, res) = references(&[&msg]);
    assert_eq!(op.as_deref(), Some(OP_URI));
    assert_eq!(
        res, None,
        "the resource inside the operation URI is not a referenced resource"
    );
}

#[test]
fn operation_uri_by_path_in_a_detail() {
    let detail = format!("see ({OP_URI}), then retry");
    let (op, _) = references(&["top", &detail]);
    assert_eq!(op.as_deref(), Some(OP_URI));
}

#[test]
fn help_links_are_not_operation_uris() {
    let (op, _) = references(&["Please see https://aka.ms/arm-deploy for usage details."]);
    assert_eq!(op, None);
    let (op, _) = references(&["use uri: not-a-uri http:// https://"]);
    assert_eq!(op, None);
}

#[test]
fn referenced_resource() {
    let msg = "Cannot proceed with operation because resource /subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet1 used by resource /subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/nic1 is not in Succeeded state.";
    let (_, res) = references(&[msg]);
    assert_eq!(
        res.as_deref(),
        Some(
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet1"
        )
    );
    let quoted = "The scope '/subscriptions/s1/resourceGroups/rg' cannot perform write operation.";
    assert_eq!(
        references(&[quoted]).1.as_deref(),
        Some("/subscriptions/s1/resourceGroups/rg")
    );
    let ending = "Disk d1 is attached to VM /subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1.";
    assert_eq!(
        references(&[ending]).1.as_deref(),
        Some("/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1")
    );
    assert_eq!(references(&["see /subscriptions/ for details"]).1, None);
}

#[test]
fn resource_after_operation_uri_is_found() {
    let msg = format!("use uri: {OP_URI}, blocked by /subscriptions/s1/resourceGroups/rg,");
    let (op, res) = references(&[&msg]);
    assert_eq!(op.as_deref(), Some(OP_URI));
    assert_eq!(res.as_deref(), Some("/subscriptions/s1/resourceGroups/rg"));
}

#[test]
fn scanning_is_bounded_and_char_safe() {
    let long = format!("{}é{}", "x".repeat(SCAN_LIMIT - 1), " /subscriptions/s1");
    assert_eq!(references(&[&long]), (None, None));
    let odd = "use uri: https://é.example/operations/1 /subscriptions/é/x";
    let (op, res) = references(&[odd]);
    assert_eq!(op.as_deref(), Some("https://é.example/operations/1"));
    assert_eq!(res.as_deref(), Some("/subscriptions/é/x"));
}

#[test]
fn huge_retry_after_survives_serialization() {
    let mut response = HeaderMap::new();
    response.insert(
        header::RETRY_AFTER,
        "99999999999999999999999".parse().unwrap(),
    );
    let c = classify(
        builtin(),
        StatusCode::CONFLICT,
        &HeaderMap::new(),
        &response,
        b"",
    );
    assert_eq!(
        c.retry_after,
        Some(std::time::Duration::from_secs(u64::MAX))
    );
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Classification>(&json).unwrap(), c);
}

#[test]
fn endless_references_are_cheap_and_ignored() {
    let uris = "https://".repeat(SCAN_LIMIT / 8);
    assert_eq!(references(&[&uris]), (None, None));
    let ids = "/subscriptions/".repeat(SCAN_LIMIT / 15);
    assert_eq!(references(&[&ids]), (None, None));
    let exact = format!("/subscriptions/{}", "s".repeat(MAX_REFERENCE_LEN - 15));
    assert_eq!(
        references(&[&exact]).1.map(|id| id.len()),
        Some(MAX_REFERENCE_LEN)
    );
}

#[test]
fn no_rule_means_unknown() {
    let c = classify(
        &[],
        StatusCode::CONFLICT,
        &HeaderMap::new(),
        &HeaderMap::new(),
        b"",
    );
    assert_eq!(c.kind, ConflictKind::Unknown);
    assert_eq!(c.rule, None);
    assert_eq!(c.status, 409);
}
