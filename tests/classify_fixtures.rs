//! Table-driven classifier tests: one test per recorded error in `fixtures/errors/`.
//!
//! The cases are data so that a new Azure error seen in the wild becomes a regression test by
//! dropping a JSON file next to the others (see `fixtures/errors/README.md`) and adding one line
//! to the `fixtures!` list below; `every_fixture_is_listed` fails until that line is there, so no
//! case is silently skipped.

use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use reqwest_conflict::{Classification, Classifier, ConflictKind};
use serde::{Deserialize, Deserializer};

macro_rules! fixtures {
    ($($test:ident => $file:literal),* $(,)?) => {
        const LISTED: &[&str] = &[$($file),*];
        $(
            #[test]
            fn $test() {
                check($file);
            }
        )*
    };
}

fixtures! {
    another_operation_in_progress => "01_another_operation_in_progress.json",
    another_operation_regional_uri_retry_after => "02_another_operation_regional_uri_retry_after.json",
    retryable_error_referenced_resource => "03_retryable_error_referenced_resource.json",
    retryable_error_due_to_another_operation => "04_retryable_error_due_to_another_operation.json",
    canceled_and_superseded => "05_canceled_and_superseded.json",
    operation_preempted => "06_operation_preempted.json",
    deployment_active => "07_deployment_active.json",
    deployment_failed_embedded_document => "08_deployment_failed_embedded_document.json",
    vm_extension_vm_not_running => "09_vm_extension_vm_not_running.json",
    disk_attached_to_vm => "10_disk_attached_to_vm.json",
    disk_already_attached_elsewhere => "11_disk_already_attached_elsewhere.json",
    property_change_needs_deallocation => "12_property_change_needs_deallocation.json",
    property_change_not_allowed => "13_property_change_not_allowed.json",
    quota_operation_not_allowed => "14_quota_operation_not_allowed.json",
    vm_marked_for_deletion => "15_vm_marked_for_deletion.json",
    compute_concurrent_request => "16_compute_concurrent_request.json",
    scope_locked => "17_scope_locked.json",
    missing_subscription_registration => "18_missing_subscription_registration.json",
    storage_account_already_taken => "19_storage_account_already_taken.json",
    storage_account_operation_in_progress => "20_storage_account_operation_in_progress.json",
    resource_group_being_deleted => "21_resource_group_being_deleted.json",
    role_assignment_exists => "22_role_assignment_exists.json",
    create_only_if_none_match_star => "23_create_only_if_none_match_star.json",
    stale_etag_network => "24_stale_etag_network.json",
    etag_mismatch_as_409 => "25_etag_mismatch_as_409.json",
    if_match_star_on_missing_resource => "26_if_match_star_on_missing_resource.json",
    precondition_failed_without_precondition => "27_precondition_failed_without_precondition.json",
    blob_lease_already_present => "28_blob_lease_already_present.json",
    blob_lease_id_missing => "29_blob_lease_id_missing.json",
    blob_lease_lost => "30_blob_lease_lost.json",
    blob_condition_not_met => "31_blob_condition_not_met.json",
    blob_head_header_only => "32_blob_head_header_only.json",
    blob_already_exists => "33_blob_already_exists.json",
    container_being_deleted => "34_container_being_deleted.json",
    blob_pending_copy => "35_blob_pending_copy.json",
    table_entity_already_exists => "36_table_entity_already_exists.json",
    table_update_condition_not_satisfied => "37_table_update_condition_not_satisfied.json",
    cosmos_conflict_already_exists => "38_cosmos_conflict_already_exists.json",
    cosmos_precondition_failed => "39_cosmos_precondition_failed.json",
    cosmos_throttled_retry_after_ms => "40_cosmos_throttled_retry_after_ms.json",
    keyvault_deleted_but_recoverable => "41_keyvault_deleted_but_recoverable.json",
    keyvault_being_recovered => "42_keyvault_being_recovered.json",
    keyvault_parallel_recover => "43_keyvault_parallel_recover.json",
    service_bus_current_state => "44_service_bus_current_state.json",
    empty_body => "45_empty_body.json",
    garbage_body => "46_garbage_body.json",
    html_error_page => "47_html_error_page.json",
    truncated_json => "48_truncated_json.json",
    non_utf8_body => "49_non_utf8_body.json",
}

/// One recorded response and what the classifier must make of it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    description: String,
    service: String,
    status: u16,
    #[serde(default)]
    request_headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    response_headers: serde_json::Map<String, serde_json::Value>,
    body: Option<String>,
    body_base64: Option<String>,
    expect: Expect,
}

/// Fields that are absent are not checked; `null` means "must be absent".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    kind: ConflictKind,
    #[serde(default, deserialize_with = "present")]
    code: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    rule: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    target: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    operation_uri: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    referenced_resource: Option<Option<String>>,
    #[serde(default)]
    detail_codes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    retry_after_secs: Option<Option<f64>>,
}

/// Tells a field set to `null` (`Some(None)`) from a missing one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/errors")
}

fn headers(file: &str, map: &serde_json::Map<String, serde_json::Value>) -> HeaderMap {
    map.iter()
        .map(|(name, value)| {
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("{file}: header {name} is not a string"));
            (
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            )
        })
        .collect()
}

fn check(file: &str) {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let fx: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let body = match (&fx.body, &fx.body_base64) {
        (Some(body), None) => body.clone().into_bytes(),
        (None, Some(b64)) => base64(b64).unwrap_or_else(|| panic!("{file}: bad body_base64")),
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => panic!("{file}: both body and body_base64"),
    };
    let got = Classifier::azure().classify(
        StatusCode::from_u16(fx.status).expect("status"),
        &headers(file, &fx.request_headers),
        &headers(file, &fx.response_headers),
        &body,
    );
    let failures = compare(&fx.expect, &got);
    assert!(
        failures.is_empty(),
        "{file} ({}: {}):\n  {}\nclassification: {got:#?}",
        fx.service,
        fx.description,
        failures.join("\n  ")
    );
    // The classification travels in reports; it must survive a serde round trip.
    let json = serde_json::to_string(&got).unwrap();
    assert_eq!(serde_json::from_str::<Classification>(&json).unwrap(), got);
}

fn compare(want: &Expect, got: &Classification) -> Vec<String> {
    let mut failures = Vec::new();
    let mut field = |name: &str, want: Option<&Option<String>>, got: &Option<String>| {
        if let Some(want) = want
            && want != got
        {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    };
    field("code", want.code.as_ref(), &got.code);
    field("rule", want.rule.as_ref(), &got.rule);
    field("target", want.target.as_ref(), &got.target);
    field(
        "operation_uri",
        want.operation_uri.as_ref(),
        &got.operation_uri,
    );
    field(
        "referenced_resource",
        want.referenced_resource.as_ref(),
        &got.referenced_resource,
    );
    if want.kind != got.kind {
        failures.push(format!("kind: want {}, got {}", want.kind, got.kind));
    }
    if let Some(codes) = &want.detail_codes
        && codes != &got.detail_codes
    {
        failures.push(format!(
            "detail_codes: want {codes:?}, got {:?}",
            got.detail_codes
        ));
    }
    if let Some(secs) = want.retry_after_secs {
        let got_secs = got.retry_after.map(|d| d.as_secs_f64());
        let same = match (secs, got_secs) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            (a, b) => a.is_none() && b.is_none(),
        };
        if !same {
            failures.push(format!("retry_after_secs: want {secs:?}, got {got_secs:?}"));
        }
    }
    failures
}

/// Standard base64 (padding optional), enough for fixture bodies that are not UTF-8.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[test]
fn every_fixture_is_listed() {
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let listed: std::collections::BTreeSet<String> = LISTED.iter().map(|s| s.to_string()).collect();
    let unlisted: Vec<_> = on_disk.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "add to fixtures!: {unlisted:?}; listed but not on disk: {missing:?}"
    );
}

#[test]
fn enough_cases_cover_every_kind() {
    assert!(LISTED.len() >= 30);
    let kinds: std::collections::HashSet<String> = LISTED
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(dir().join(file)).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["expect"]["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        kinds.len(),
        6,
        "every ConflictKind has a fixture: {kinds:?}"
    );
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64("/w==").unwrap(), [0xff]);
    assert_eq!(base64("a*"), None);
}
