//! Unit tests of `rules.rs`.
use super::*;
use crate::classify::ErrorNode;

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

fn error(code: Option<&str>, message: Option<&str>, depth: usize) -> ErrorNode {
    ErrorNode {
        code: code.map(Into::into),
        message: message.map(Into::into),
        depth,
    }
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
        errors: vec![
            error(Some("Other"), None, 0),
            error(Some("CONFLICT"), Some("the thing is busy"), 1),
        ],
        ..ErrorBody::default()
    };
    let none = HeaderMap::new();
    assert!(rule.matches(409, &none, &body));
    assert!(!rule.matches(412, &none, &body));
    let mut if_match = HeaderMap::new();
    if_match.insert(header::IF_MATCH, "*".parse().unwrap());
    assert!(!rule.matches(409, &if_match, &body));
    let quiet = ErrorBody {
        errors: vec![error(Some("Conflict"), Some("the thing is fine"), 1)],
        ..body
    };
    assert!(!rule.matches(409, &none, &quiet));
}

#[test]
fn code_and_phrase_must_belong_to_the_same_error() {
    let rule = Rule {
        name: None,
        kind: ConflictKind::Permanent,
        status: vec![],
        codes: vec!["OperationNotAllowed".into()],
        message_contains: vec!["quota".into()],
        request: None,
        why: None,
    };
    let apart = ErrorBody {
        errors: vec![
            error(Some("OperationNotAllowed"), Some("Not allowed."), 0),
            error(Some("Other"), Some("quota exceeded"), 1),
        ],
        ..ErrorBody::default()
    };
    assert!(!rule.matches(409, &HeaderMap::new(), &apart));
    // A body built from the flat fields alone (as XML gives them): the top code and message
    // belong together.
    let flat = ErrorBody {
        code: Some("OperationNotAllowed".into()),
        message: Some("exceeds the quota".into()),
        ..ErrorBody::default()
    };
    assert!(rule.matches(409, &HeaderMap::new(), &flat));
}

/// Classifies one body with the built-in table.
fn built_in(status: u16, request: &[(&str, &str)], body: &str) -> Classification {
    let request: HeaderMap = request
        .iter()
        .map(|(name, value)| {
            (
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            )
        })
        .collect();
    classify(
        builtin(),
        StatusCode::from_u16(status).unwrap(),
        &request,
        &HeaderMap::new(),
        body.as_bytes(),
    )
}

#[test]
fn the_innermost_recognized_error_decides() {
    // A deployment whose detail embeds the resource's own error: the wrappers are
    // recognized by nothing, the embedded code is.
    let deployment = r#"{"code":"DeploymentFailed","message":"At least one resource deployment operation failed.","details":[{"code":"Conflict","message":"{\"error\":{\"code\":\"AnotherOperationInProgress\",\"message\":\"Another operation on this or dependent resource is in progress.\"}}"}]}"#;
    let c = built_in(200, &[], deployment);
    assert_eq!(c.rule.as_deref(), Some("another_operation_in_progress"));
    assert_eq!(c.kind, ConflictKind::StateConflict);
    // The top message asks to retry later; the innererror says why, and decides.
    let recovering = r#"{"error":{"code":"Conflict","message":"Secret s is currently being recovered and cannot be re-created; retry later.","innererror":{"code":"ObjectIsBeingRecovered"}}}"#;
    assert_eq!(
        built_in(409, &[], recovering).rule.as_deref(),
        Some("being_recovered")
    );
    // A failed operation's status: the error inside `status: Failed` is read like any other.
    let failed = r#"{"status":"Failed","error":{"code":"RetryableError","message":"A retryable error occurred.","details":[{"code":"ReferencedResourceNotProvisioned","message":"Cannot proceed."}]}}"#;
    assert_eq!(
        built_in(200, &[], failed).rule.as_deref(),
        Some("referenced_resource_not_provisioned")
    );
}

#[test]
fn wrappers_that_say_nothing_stay_unknown() {
    let wrapped = r#"{"status":"Failed","error":{"code":"ResourceDeploymentFailure","message":"The resource operation completed with terminal provisioning state 'Failed'.","details":[{"code":"DeploymentFailed","message":"At least one resource deployment operation failed."}]}}"#;
    let c = built_in(200, &[], wrapped);
    assert_eq!(c.kind, ConflictKind::Unknown);
    assert_eq!(c.rule, None);
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

/// One case per built-in rule: the rule it must be decided by, the status, the request headers
/// and the body. Each becomes its own test in `each_rule`, and `every_rule_has_a_case` keeps
/// the table and `rules.json` in step.
macro_rules! rule_cases {
    ($($rule:ident: $status:expr, [$($header:expr),*], $body:expr;)*) => {
        const RULE_CASES: &[&str] = &[$(stringify!($rule)),*];

        mod each_rule {
            $(
                #[test]
                fn $rule() {
                    super::decided_by(stringify!($rule), $status, &[$($header),*], $body);
                }
            )*
        }
    };
}

/// Asserts that the built-in table decides `body` by `rule`, with that rule's kind.
fn decided_by(rule: &str, status: u16, request: &[(&str, &str)], body: &str) {
    let expected = builtin()
        .iter()
        .find(|r| r.name.as_deref() == Some(rule))
        .unwrap_or_else(|| panic!("no built-in rule {rule}"));
    let c = built_in(status, request, body);
    assert_eq!(c.rule.as_deref(), Some(rule), "{body}");
    assert_eq!(c.kind, expected.kind, "{body}");
}

#[test]
fn every_rule_has_a_case() {
    let table: std::collections::BTreeSet<&str> =
        builtin().iter().filter_map(|r| r.name.as_deref()).collect();
    let cases: std::collections::BTreeSet<&str> = RULE_CASES.iter().copied().collect();
    assert_eq!(
        table, cases,
        "rules.json and rule_cases! must name the same rules"
    );
}

rule_cases! {
    scope_locked: 409, [], r#"{"error":{"code":"ScopeLocked","message":"The scope '/subscriptions/s/resourceGroups/rg' cannot perform write operation because following scope(s) are locked: '/subscriptions/s/resourceGroups/rg'. Please remove the lock and try again."}}"#;
    missing_subscription_registration: 409, [], r#"{"error":{"code":"MissingSubscriptionRegistration","message":"The subscription is not registered to use namespace 'Microsoft.Devices'."}}"#;
    storage_account_name_taken: 409, [], r#"{"error":{"code":"StorageAccountAlreadyTaken","message":"The storage account named st1 is already taken."}}"#;
    blob_lease_id_missing: 412, [], "<Error><Code>LeaseIdMissing</Code><Message>There is currently a lease on the blob and no lease ID was specified in the request.</Message></Error>";
    blob_lease_lost_or_mismatched: 409, [], "<Error><Code>LeaseIsBrokenAndCannotBeRenewed</Code><Message>The lease ID matched, but the lease has been broken explicitly and cannot be renewed.</Message></Error>";
    storage_condition_not_etag: 412, [("x-ms-if-sequence-number-le", "5")], "<Error><Code>SequenceNumberConditionNotMet</Code><Message>The sequence number condition specified was not met.</Message></Error>";
    storage_request_cannot_succeed: 409, [], "<Error><Code>NoPendingCopyOperation</Code><Message>There is currently no pending copy operation.</Message></Error>";
    quota_exceeded: 409, [], r#"{"code":"QuotaExceeded","message":"Public preview limit of 5 for managed cluster(AKS) has been reached."}"#;
    quota_operation_not_allowed: 409, [], r#"{"error":{"code":"OperationNotAllowed","message":"Operation results in exceeding quota limits of Core."}}"#;
    sku_not_available: 409, [], r#"{"error":{"code":"SkuNotAvailable","message":"The requested size is currently not available in location 'westus'."}}"#;
    not_supported_code: 200, [], r#"{"status":"Failed","error":{"code":"NotSupported","message":"The license type is Windows_Server, but the image blob is not from on-premises."}}"#;
    property_change_needs_deallocation: 409, [], r#"{"error":{"code":"PropertyChangeNotAllowed","message":"Updating Host of VM 'vm1' is not allowed as the VM is currently allocated. Please Deallocate the VM and retry the operation.","target":"host"}}"#;
    property_change_not_allowed: 409, [], r#"{"error":{"code":"PropertyChangeNotAllowed","message":"Changing property 'priority' is not allowed.","target":"priority"}}"#;
    create_only_precondition: 412, [("if-none-match", "*")], r#"{"code":"PreconditionFailed","message":"Precondition failed."}"#;
    role_assignment_exists: 409, [], r#"{"error":{"code":"RoleAssignmentExists","message":"The role assignment already exists."}}"#;
    already_exists_code: 409, [], "<Error><Code>ContainerAlreadyExists</Code><Message>The specified container already exists.</Message></Error>";
    stale_etag: 412, [("if-match", "\"1\"")], "<Error><Code>ConditionNotMet</Code><Message>The condition specified using HTTP conditional header(s) is not met.</Message></Error>";
    etag_mismatch_conflict: 409, [("if-match", "\"1\"")], r#"{"error":{"code":"PreconditionFailed","message":"Precondition failed."}}"#;
    another_operation_in_progress: 409, [], r#"{"error":{"code":"AnotherOperationInProgress","message":"Another operation on this or dependent resource is in progress."}}"#;
    referenced_resource_not_provisioned: 429, [], r#"{"error":{"code":"RetryableError","message":"A retryable error occurred.","details":[{"code":"ReferencedResourceNotProvisioned","message":"Cannot proceed with operation because resource /subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v1 used by resource n1 is not in Succeeded state."}]}}"#;
    retryable_error: 429, [], r#"{"error":{"code":"RetryableError","message":"A retryable error occurred."}}"#;
    superseded_by_another_operation: 200, [], r#"{"status":"Canceled","error":{"code":"Canceled","message":"Operation was canceled.","details":[{"code":"CanceledAndSupersededDueToAnotherOperation","message":"Operation PutLoadBalancerOperation was canceled and superseded."}]}}"#;
    deployment_active: 409, [], r#"{"error":{"code":"DeploymentActive","message":"Unable to edit or replace deployment 'main': previous deployment is still active."}}"#;
    storage_account_busy: 409, [], r#"{"error":{"code":"StorageAccountOperationInProgress","message":"An operation is currently performing on this storage account that requires exclusive access."}}"#;
    being_deleted: 409, [], "<Error><Code>ContainerBeingDeleted</Code><Message>The specified container is being deleted. Try operation later.</Message></Error>";
    being_recovered: 409, [], r#"{"error":{"code":"Conflict","message":"Secret s is currently being recovered and cannot be re-created; retry later.","innererror":{"code":"ObjectIsBeingRecovered"}}}"#;
    blob_lease_held: 409, [], "<Error><Code>LeaseAlreadyPresent</Code><Message>There is already a lease present.</Message></Error>";
    blob_lease_breaking: 409, [], "<Error><Code>LeaseIsBreakingAndCannotBeAcquired</Code><Message>The lease is breaking.</Message></Error>";
    blob_busy: 409, [], "<Error><Code>PendingCopyOperation</Code><Message>There is currently a pending copy operation.</Message></Error>";
    nic_reserved: 409, [], r#"{"error":{"code":"NicReservedForAnotherVm","message":"Nic is reserved for another Virtual Machine for 180 seconds."}}"#;
    // The wording hashicorp/terraform-provider-azurerm quotes (internal/services/compute).
    resize_other_cluster: 409, [], r#"{"error":{"code":"OperationNotAllowed","message":"Unable to resize the VM vm1 because the requested size Standard_F4s_v2 is not available in the current hardware cluster. The available sizes in this cluster are: Standard_D2s_v3. The requested size might be available in other clusters of this region. Read more on VM resizing strategy at https://aka.ms/azure-resizevm."}}"#;
    keyvault_deleted_but_recoverable: 409, [], r#"{"error":{"code":"Conflict","message":"Certificate c is currently in a deleted but recoverable state, and its name cannot be reused.","innererror":{"code":"ObjectIsDeletedButRecoverable"}}}"#;
    service_bus_conflict_subcode: 409, [], "<Error><Code>409</Code><Detail>SubCode=40901. Another conflicting operation is in progress.</Detail></Error>";
    throttled: 429, [], r#"{"code":"429","message":"Request rate is large. Please retry this request later."}"#;
    etag_mismatch_message: 200, [], r#"{"status":"Failed","error":{"code":"PreconditionFailed","message":"The Zone z has been modified (etag mismatch)."}}"#;
    in_progress_message: 409, [], r#"{"error":{"code":"","message":"Another indexer invocation is currently in progress; concurrent invocations are not allowed."}}"#;
    being_deleted_message: 409, [], r#"{"error":{"code":"OperationNotAllowed","message":"Operation 'start' is not allowed on VM 'vm1' since the VM is marked for deletion."}}"#;
    try_again_later_message: 429, [], r#"{"Code":"429","Message":"Cannot acquire exclusive lock to create, update or delete this site. Retry the request later."}"#;
    busy_message: 409, [], r#"{"error":{"code":"Conflict","message":"The server is busy processing a previous update."}}"#;
    power_state_message: 409, [], r#"{"error":{"code":"OperationNotAllowed","message":"Cannot modify extensions in the VM when the VM is not running."}}"#;
    attached_message: 409, [], r#"{"error":{"code":"OperationNotAllowed","message":"Disk d1 is attached to VM /subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1."}}"#;
    dependents_first_message: 409, [], r#"{"error":{"code":"ApplicationPackagesNotEmpty","message":"All application packages must be deleted before the application can be deleted."}}"#;
    has_snapshots_message: 409, [], "<Error><Code>ShareHasSnapshots</Code><Message>The share has snapshots and the operation requires no snapshots.</Message></Error>";
    soft_deleted_message: 409, [], r#"{"error":{"code":"FlagMustBeSetForRestore","message":"An existing resource has been soft-deleted. To restore the resource, you must specify 'restore' to be 'true' in the property."}}"#;
    current_state_message: 409, [], "<Error><Code>409</Code><Detail>The operation is not allowed in the entity's current state.</Detail></Error>";
    already_exists_message: 412, [], r#"{"code":"PreconditionFailed","message":"The Record set www exists already and hence cannot be created again."}"#;
    name_taken_message: 409, [], r#"{"error":{"code":"ResourceConflicted","message":"Resource Name belongs to another resource."}}"#;
    locked_message: 409, [], r#"{"error":{"code":"Conflict","message":"The resource is locked."}}"#;
    not_supported_message: 409, [], r#"{"error":{"code":"Conflict","message":"This operation is not supported for the current tier."}}"#;
    quota_or_limit_message: 409, [], r#"{"error":{"code":"Conflict","message":"The limit of 10 accounts per region has been reached."}}"#;
    conflicting_user_input: 409, [], r#"{"error":{"code":"ConflictingUserInput","message":"Source and destination storage accounts for disk d1 are different."}}"#;
    precondition_failed: 412, [], r#"{"code":"PreconditionFailed","message":"Operation cannot be performed because one of the specified precondition is not met."}"#;
}
