//! Unit tests of `parse.rs`.
use super::*;

fn body(text: &str) -> ErrorBody {
    parse(&HeaderMap::new(), text.as_bytes())
}

#[test]
fn arm_details_and_innererror_outermost_first() {
    let b = body(
        r#"{"error":{"code":"Top","message":"top msg","target":"vm1",
          "details":[{"code":"D1","message":"m1","details":[{"code":"D3"}]},{"code":"top","message":"top msg"}],
          "innererror":{"code":"I1","innererror":{"code":"I2","message":"deep"}},
          "additionalInfo":[{"type":"PolicyViolation","info":{"code":"NotACode"}}]}}"#,
    );
    assert_eq!(b.code.as_deref(), Some("Top"));
    assert_eq!(b.message.as_deref(), Some("top msg"));
    assert_eq!(b.target.as_deref(), Some("vm1"));
    assert_eq!(b.detail_codes, ["I1", "D1", "I2", "D3"]);
    assert_eq!(b.detail_messages, ["m1", "deep"]);
}

#[test]
fn unwrapped_and_capitalized() {
    let b = body(r#"{"Code":"Conflict","Message":"Entity with the specified id already exists."}"#);
    assert_eq!(b.code.as_deref(), Some("Conflict"));
    assert_eq!(
        b.message.as_deref(),
        Some("Entity with the specified id already exists.")
    );
}

#[test]
fn odata_table_error() {
    let b = body(
        r#"{"odata.error":{"code":"EntityAlreadyExists","message":{"lang":"en-US","value":"The specified entity already exists."}}}"#,
    );
    assert_eq!(b.code.as_deref(), Some("EntityAlreadyExists"));
    assert_eq!(
        b.message.as_deref(),
        Some("The specified entity already exists.")
    );
}

#[test]
fn storage_xml_with_entities_and_cdata() {
    let b = body(
        "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ConditionNotMet</Code>\
         <Message>a &amp; b &#x41;<![CDATA[ <c> ]]>\nRequestId:1</Message><Extra><Code>No</Code></Extra></Error>",
    );
    assert_eq!(b.code.as_deref(), Some("ConditionNotMet"));
    assert_eq!(b.message.as_deref(), Some("a & b A <c> \nRequestId:1"));
    assert!(b.detail_codes.is_empty());
}

#[test]
fn truncated_xml_keeps_what_was_read() {
    let b = body("<Error><Code>ContainerBeingDeleted</Code><Message>The specified container is be");
    assert_eq!(b.code.as_deref(), Some("ContainerBeingDeleted"));
    assert_eq!(b.message.as_deref(), Some("The specified container is be"));
}

#[test]
fn service_bus_detail_is_the_message() {
    let b = body("<Error><Code>409</Code><Detail>Conflict. TrackingId:x</Detail></Error>");
    assert_eq!(b.code.as_deref(), Some("409"));
    assert_eq!(b.message.as_deref(), Some("Conflict. TrackingId:x"));
}

#[test]
fn header_code_fills_in_but_does_not_override() {
    let mut h = HeaderMap::new();
    h.insert("x-ms-error-code", "LeaseAlreadyPresent".parse().unwrap());
    assert_eq!(parse(&h, b"").code.as_deref(), Some("LeaseAlreadyPresent"));
    assert_eq!(
        parse(&h, b"<html>oops</html>").code.as_deref(),
        Some("LeaseAlreadyPresent")
    );
    let b = parse(
        &h,
        br#"{"error":{"code":"Other","details":[{"code":"LeaseAlreadyPresent"}]}}"#,
    );
    assert_eq!(b.code.as_deref(), Some("Other"));
    let b = parse(
        &h,
        br#"{"error":{"message":"m","details":[{"code":"leasealreadypresent"}]}}"#,
    );
    assert_eq!(b.code.as_deref(), Some("LeaseAlreadyPresent"));
    assert!(
        b.detail_codes.is_empty(),
        "the top code is not repeated as a detail"
    );
}

#[test]
fn nothing_readable_is_empty() {
    for junk in [
        "",
        "   ",
        "Conflict",
        "<!DOCTYPE html><html><body><h1>409</h1><br></body></html>",
        "{",
        "[1,2",
        "null",
    ] {
        assert_eq!(body(junk), ErrorBody::default(), "{junk:?}");
    }
    assert_eq!(
        parse(&HeaderMap::new(), &[0xff, 0xfe, 0x00, 0x80]),
        ErrorBody::default()
    );
}

#[test]
fn non_utf8_inside_json_is_replaced() {
    let b = parse(
        &HeaderMap::new(),
        b"{\"error\":{\"code\":\"Conflict\",\"message\":\"bad \xff byte\"}}",
    );
    assert_eq!(b.code.as_deref(), Some("Conflict"));
    assert_eq!(b.message.as_deref(), Some("bad \u{fffd} byte"));
}

#[test]
fn truncated_json_is_scanned() {
    let b = body(
        r#"{"error":{"code":"RetryableError","message":"A retryable error occurred.","details":[{"code":"ReferencedResourceNotProvisioned","message":"Cannot proceed with \"operation\" because resource /subscriptions/s/x is not in Succ"#,
    );
    assert_eq!(b.code.as_deref(), Some("RetryableError"));
    assert_eq!(b.detail_codes, ["ReferencedResourceNotProvisioned"]);
    assert_eq!(
        b.detail_messages,
        ["Cannot proceed with \"operation\" because resource /subscriptions/s/x is not in Succ"]
    );
    let odata = body(
        r#"{"odata.error":{"code":"TableBeingDeleted","message":{"lang":"en-US","value":"The specified table is being del"#,
    );
    assert_eq!(odata.code.as_deref(), Some("TableBeingDeleted"));
    assert_eq!(
        odata.message.as_deref(),
        Some("The specified table is being del")
    );
    let escaped = body(r#"{"code":"A\u0042\n","message":"x\u12"#);
    assert_eq!(escaped.code.as_deref(), Some("AB"));
    assert_eq!(escaped.message.as_deref(), Some("x\u{fffd}"));
}

#[test]
fn embedded_error_document_in_a_detail_message() {
    let inner = r#"{\r\n  \"status\": \"Failed\",\r\n  \"error\": {\r\n    \"code\": \"AnotherOperationInProgress\",\r\n    \"message\": \"busy\"\r\n  }\r\n}"#;
    let b = body(&format!(
        r#"{{"error":{{"code":"DeploymentFailed","message":"At least one resource deployment operation failed.","details":[{{"code":"Conflict","message":"{inner}"}}]}}}}"#
    ));
    assert_eq!(b.code.as_deref(), Some("DeploymentFailed"));
    assert_eq!(b.detail_codes, ["Conflict", "AnotherOperationInProgress"]);
    assert!(b.detail_messages.iter().any(|m| m == "busy"));
}

#[test]
fn numeric_code() {
    assert_eq!(
        body(r#"{"code":409,"message":"x"}"#).code.as_deref(),
        Some("409")
    );
}

#[test]
fn hostile_nesting_is_bounded() {
    // Deeper than serde_json's recursion limit: falls back to the scanner, no stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), r#"{"code":"X"}"#);
    assert_eq!(body(&deep).code.as_deref(), Some("X"));

    // Within serde_json's limit but deeper than ours: only MAX_DEPTH levels are followed.
    let mut nested = String::from(r#"{"code":"L60"}"#);
    for level in (0..60).rev() {
        nested = format!(r#"{{"code":"L{level}","innererror":{nested}}}"#);
    }
    let b = body(&format!(r#"{{"error":{nested}}}"#));
    assert_eq!(b.code.as_deref(), Some("L0"));
    assert_eq!(b.detail_codes.len(), MAX_DEPTH - 1);

    // Thousands of details: codes and messages are capped.
    let b = body(&with_details(10_000));
    assert_eq!(b.detail_codes.len(), MAX_DETAILS);
    assert_eq!(b.detail_messages.len(), MAX_DETAILS);
    assert_eq!(b.detail_codes[0], "C0");
}

#[test]
fn bare_array_uses_first_object() {
    let b = body(r#"[1, {"code":"PreconditionFailed","message":"m"}]"#);
    assert_eq!(b.code.as_deref(), Some("PreconditionFailed"));
}

#[test]
fn app_service_error_entity_is_read() {
    let b = body(
        r#"{"Code":"Conflict","Message":"Cannot modify this site because another operation is in progress.","Target":null,
          "Details":[{"Message":"Cannot modify this site because another operation is in progress."},{"Code":"Conflict"},
          {"ErrorEntity":{"ExtendedCode":"59205","MessageTemplate":"Cannot modify this site because another operation is in progress.","Parameters":[],
            "Code":"Conflict","Message":"Cannot modify this site because another operation is in progress."}}],"Innererror":null}"#,
    );
    assert_eq!(b.code.as_deref(), Some("Conflict"));
    assert!(b.detail_codes.is_empty(), "the details repeat the top code");
    let entity = b.errors.last().unwrap();
    assert_eq!(entity.depth, 2, "ErrorEntity sits below its detail");
    assert_eq!(entity.code.as_deref(), Some("Conflict"));
    assert!(entity.message.as_deref().unwrap().contains("in progress"));
}

#[test]
fn errors_keep_code_and_message_together_with_their_depth() {
    let b = body(
        r#"{"status":"Failed","error":{"code":"DeploymentFailed","message":"outer",
          "details":[{"code":"Conflict","message":"{\"error\":{\"code\":\"Inner\",\"message\":\"deep\"}}"}]}}"#,
    );
    let errors: Vec<(Option<&str>, Option<&str>, usize)> = b
        .errors
        .iter()
        .map(|e| (e.code.as_deref(), e.message.as_deref(), e.depth))
        .collect();
    assert_eq!(errors[0], (Some("DeploymentFailed"), Some("outer"), 0));
    assert_eq!(errors[1].0, Some("Conflict"));
    assert_eq!(errors[1].2, 1);
    assert_eq!(errors[2], (Some("Inner"), Some("deep"), 2));
}

#[test]
fn a_header_code_completes_an_empty_json_code() {
    let mut headers = HeaderMap::new();
    headers.insert("x-ms-error-code", "ShareBeingDeleted".parse().unwrap());
    let b = parse(
        &headers,
        br#"{"error":{"code":"","message":"being deleted"}}"#,
    );
    assert_eq!(b.code.as_deref(), Some("ShareBeingDeleted"));
    assert_eq!(b.errors[0].code.as_deref(), Some("ShareBeingDeleted"));
    assert_eq!(b.errors[0].message.as_deref(), Some("being deleted"));
}

#[test]
fn non_json_answers_leave_errors_to_the_flat_fields() {
    let b = body(
        "<Error><Code>LeaseAlreadyPresent</Code><Message>There is already a lease present.</Message></Error>",
    );
    assert!(b.errors.is_empty());
    assert_eq!(b.code.as_deref(), Some("LeaseAlreadyPresent"));
}

#[test]
fn error_objects_are_bounded() {
    let b = body(&with_details(1000));
    assert_eq!(b.errors.len(), MAX_DETAILS + 1);
}

#[test]
fn a_top_message_that_is_a_document_is_read_too() {
    // How a deployment reports one failed operation: the HTTP status name as the code, the
    // service's own error as the message.
    let b = body(
        r#"{"code":"Conflict","message":"{\r\n  \"error\": {\r\n    \"code\": \"PessimisticConcurrencyConflict\",\r\n    \"message\": \"Operation on the API is in progress\"\r\n  }\r\n}"}"#,
    );
    assert_eq!(b.code.as_deref(), Some("Conflict"));
    assert_eq!(b.detail_codes, ["PessimisticConcurrencyConflict"]);
    assert_eq!(b.errors.last().unwrap().depth, 1);
}

/// An ARM error `Top` with `n` details, `C0`…, each with its message.
fn with_details(n: usize) -> String {
    let details: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"code":"C{i}","message":"m{i}"}}"#))
        .collect();
    format!(
        r#"{{"error":{{"code":"Top","details":[{}]}}}}"#,
        details.join(",")
    )
}
