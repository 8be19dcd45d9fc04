//! Property tests of everything that parses input a server (or a caller) controls: resource IDs,
//! error bodies of every shape, `Retry-After`, and the URIs and resource IDs pulled out of error
//! messages. Each property states what must hold for *any* input — never a panic first of all —
//! and, for inputs built with a known structure, that the parser finds exactly what was put in.
//!
//! Each property sets its own case count, the cheap ones the most: 115,000 cases in all, which a
//! debug build runs in well under a minute on two cores. Failures are not persisted to files; the
//! minimal failing input is printed instead.

mod support;

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::{collection::vec, option, prelude::*, sample::select};
use reqwest_conflict::{Classification, Classifier, ResourceId, classify::retry_after};
use serde_json::{Value, json};
use support::http_date;
use url::Url;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Resource IDs

/// A path segment an ARM ID may hold; never one of the keywords the parser steers by.
fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_.-]{0,11}".prop_filter("a keyword", |s| {
        !["providers", "resourcegroups", "subscriptions"].contains(&s.to_ascii_lowercase().as_str())
    })
}

fn namespace() -> impl Strategy<Value = String> {
    "Microsoft\\.[A-Z][A-Za-z]{1,12}"
}

/// `providers/{ns}/{type}/{name}`, then `(child type, child name)` pairs.
type Provider = (String, String, String, Vec<(String, String)>);

/// An ARM ID built from known parts, so what the parser must find is known.
#[derive(Clone, Debug)]
struct ArmPath {
    subscription: String,
    group: Option<String>,
    provider: Option<Provider>,
    /// A nested `providers/{ns}/{type}/{name}`: an extension resource.
    extension: Option<(String, String, String)>,
    action: Option<String>,
    trailing_slash: bool,
    /// Which characters' ASCII case to flip: ARM compares segments ignoring case.
    flips: u64,
}

fn arm_path() -> impl Strategy<Value = ArmPath> {
    let provider = (
        namespace(),
        segment(),
        segment(),
        vec((segment(), segment()), 0..4),
    );
    (
        segment(),
        option::of(segment()),
        option::of(provider),
        option::of((namespace(), segment(), segment())),
        option::of(segment()),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(subscription, group, provider, extension, action, trailing_slash, flips)| ArmPath {
                // An extension resource extends a resource.
                extension: extension.filter(|_| provider.is_some()),
                subscription,
                group,
                provider,
                action,
                trailing_slash,
                flips,
            },
        )
}

fn flip_case(s: &str, flips: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if flips >> (i % 64) & 1 == 1 {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            } else {
                c
            }
        })
        .collect()
}

impl ArmPath {
    /// The resource path (no action), in canonical case, and its resources' ends, outermost first.
    fn resource(&self) -> (String, Vec<usize>) {
        let mut path = format!("/subscriptions/{}", self.subscription);
        let mut ends = vec![path.len()];
        if let Some(group) = &self.group {
            path += &format!("/resourceGroups/{group}");
            ends.push(path.len());
        }
        if let Some((ns, ty, name, children)) = &self.provider {
            path += &format!("/providers/{ns}/{ty}/{name}");
            ends.push(path.len());
            for (ty, name) in children {
                path += &format!("/{ty}/{name}");
                ends.push(path.len());
            }
        }
        if let Some((ns, ty, name)) = &self.extension {
            path += &format!("/providers/{ns}/{ty}/{name}");
            ends.push(path.len());
        }
        (path, ends)
    }

    /// The full path as a request would spell it: case flipped, action and slash appended.
    fn spelled(&self) -> String {
        let (mut path, _) = self.resource();
        if let Some(action) = &self.action {
            path += &format!("/{action}");
        }
        if self.trailing_slash {
            path.push('/');
        }
        flip_case(&path, self.flips)
    }

    fn resource_type(&self) -> String {
        match (&self.extension, &self.provider, &self.group) {
            (Some((ns, ty, _)), _, _) => format!("{ns}/{ty}"),
            (None, Some((ns, ty, _, children)), _) => {
                let mut t = format!("{ns}/{ty}");
                for (child, _) in children {
                    t += &format!("/{child}");
                }
                t
            }
            (None, None, Some(_)) => "Microsoft.Resources/resourceGroups".to_owned(),
            (None, None, None) => "Microsoft.Resources/subscriptions".to_owned(),
        }
    }
}

/// What holds for every ID the parser accepts, whatever the input was.
fn check_id_invariants(id: &ResourceId) -> Result<(), TestCaseError> {
    prop_assert_eq!(id.key(), id.key().to_ascii_lowercase());
    let again = ResourceId::parse(&id.to_string())
        .map_err(|e| TestCaseError::fail(format!("{id} does not parse again: {e}")))?;
    prop_assert_eq!(again.key(), id.key());
    prop_assert_eq!(again.resource_type(), id.resource_type());
    prop_assert_eq!(again.to_string(), id.to_string());
    // Every ancestor is a prefix, and the chain ends at the subscription.
    let mut child = id.clone();
    for _ in 0..64 {
        let Some(parent) = child.parent() else {
            prop_assert_eq!(
                child.resource_type(),
                Some("Microsoft.Resources/subscriptions")
            );
            return Ok(());
        };
        prop_assert!(
            child.key().starts_with(parent.key()) && child.key().len() > parent.key().len(),
            "parent {} of {}",
            parent.key(),
            child.key()
        );
        prop_assert!(child.to_string().starts_with(&parent.to_string()));
        child = parent;
    }
    Err(TestCaseError::fail("a parent chain longer than 64"))
}

proptest! {
    #![proptest_config(config(15_000))]

    #[test]
    fn resource_ids_from_any_string_never_panic(input in any::<String>()) {
        if let Ok(id) = ResourceId::parse(&input) {
            check_id_invariants(&id)?;
        }
    }
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn resource_ids_from_path_like_strings(
        input in "(/(subscriptions|resourceGroups|providers|Microsoft\\.[A-Za-z]{1,6}|[a-zA-Z0-9?=&%.:#@ -]{0,6})){0,14}/?(\\?[a-z=&-]{0,20})?",
    ) {
        if let Ok(id) = ResourceId::parse(&input) {
            prop_assert!(id.is_arm());
            check_id_invariants(&id)?;
        }
        if let Ok(url) = Url::parse(&format!("https://management.azure.com{input}")) {
            let id = ResourceId::from_url(&url);
            if id.is_arm() {
                check_id_invariants(&id)?;
            }
            let fetch = id.fetch_url(&url);
            prop_assert_eq!(fetch.host_str(), url.host_str());
        }
    }
}

proptest! {
    #![proptest_config(config(3_000))]

    #[test]
    fn structured_arm_ids_parse_to_their_parts(
        arm in arm_path(),
        api in "20[0-9]{2}-[01][0-9]-[0-3][0-9](-preview)?",
    ) {
        let (resource, ends) = arm.resource();
        let spelled = arm.spelled();
        let id = ResourceId::parse(&spelled)
            .map_err(|e| TestCaseError::fail(format!("{spelled}: {e}")))?;
        prop_assert!(id.is_arm());
        prop_assert_eq!(id.key(), resource.to_ascii_lowercase());
        prop_assert!(id.resource_type().unwrap().eq_ignore_ascii_case(&arm.resource_type()));
        let action = arm.action.as_deref().map(|a| flip_case_at(&spelled, a));
        prop_assert_eq!(id.action(), action.as_deref());
        prop_assert!(id.path().eq_ignore_ascii_case(&resource));
        check_id_invariants(&id)?;
        // One parent per enclosing resource.
        let mut depth = 0;
        let mut at = id.clone();
        while let Some(parent) = at.parent() {
            depth += 1;
            prop_assert_eq!(parent.key(), &resource[..ends[ends.len() - 1 - depth]].to_ascii_lowercase());
            at = parent;
        }
        prop_assert_eq!(depth, ends.len() - 1);

        // As a URL with a query: the same resource, the api-version kept for re-fetches.
        let url = Url::parse(&format!("https://management.azure.com{spelled}?x=1&api-version={api}&y=2")).unwrap();
        let parsed = ResourceId::parse(url.as_str()).unwrap();
        let from_url = ResourceId::from_url(&url);
        prop_assert_eq!(parsed.key(), id.key());
        prop_assert_eq!(from_url.key(), id.key());
        prop_assert_eq!(from_url.api_version(), Some(api.as_str()));
        let fetch = from_url.fetch_url(&url);
        prop_assert_eq!(fetch.host_str(), Some("management.azure.com"));
        prop_assert_eq!(fetch.path(), id.path());
        let query = format!("api-version={api}");
        prop_assert_eq!(fetch.query(), Some(query.as_str()));
    }
}

/// `action` as spelled (case flipped) at the end of `spelled`.
fn flip_case_at(spelled: &str, action: &str) -> String {
    let trimmed = spelled.trim_end_matches('/');
    trimmed[trimmed.len() - action.len()..].to_owned()
}

// ---------------------------------------------------------------------------------------------
// Error bodies

fn classify(status: u16, request: &HeaderMap, response: &HeaderMap, body: &[u8]) -> Classification {
    // One classifier for every case: building it copies the rule table.
    static AZURE: LazyLock<Classifier> = LazyLock::new(Classifier::azure);
    AZURE.classify(
        StatusCode::from_u16(status).unwrap(),
        request,
        response,
        body,
    )
}

/// Whether `found` appears in `input`, allowing for what parsers legitimately decode: JSON
/// escapes, XML entities, line-ending normalization and an element's text split by child
/// elements or CDATA sections, numbers re-printed.
fn appears_in(found: &str, input: &str) -> bool {
    let found = found.replace('\r', "");
    let input = input.replace('\r', "");
    let unwrapped = input.replace("<![CDATA[", "").replace("]]>", "");
    // CDATA text is text even when it looks like a tag (`<Code>A<![CDATA[<Error>]]>` is the
    // code `A<Error>`), so the unwrapped input is a view of its own.
    [
        input.clone(),
        without_tags(&input),
        without_tags(&unwrapped),
        unwrapped.clone(),
    ]
    .iter()
    .any(|view| view.contains(&found))
        || input.contains('\\')
        || input.contains('&')
        || found.parse::<f64>().is_ok()
}

/// The case a random run found: a CDATA section whose text looks like a tag is part of the code.
#[test]
fn cdata_that_looks_like_a_tag_is_text() {
    let body = "<Error><Code>A<![CDATA[<Error>]]>";
    let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), body.as_bytes());
    assert_eq!(c.code.as_deref(), Some("A<Error>"));
    assert!(check_classification(&c, 409, body, None).is_ok());
}

/// `s` without anything from a `<` to the next `>`: the text content of an XML document.
fn without_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn request_headers() -> impl Strategy<Value = HeaderMap> {
    (0..4u8).prop_map(|which| {
        let mut h = HeaderMap::new();
        match which {
            1 => drop(h.insert("if-match", HeaderValue::from_static("\"abc\""))),
            2 => drop(h.insert("if-none-match", HeaderValue::from_static("*"))),
            3 => drop(h.insert(
                "if-unmodified-since",
                HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
            )),
            _ => {}
        }
        h
    })
}

/// What must hold for any classification of any input.
fn check_classification(
    c: &Classification,
    status: u16,
    input: &str,
    header_code: Option<&str>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(c.status, status);
    // The kind is always one of the six, and serializes as such.
    let kind = serde_json::to_value(c.kind).unwrap();
    prop_assert!(kind.is_string());
    if let Some(code) = &c.code {
        prop_assert!(!code.is_empty() && code.trim() == code, "code {:?}", code);
        prop_assert!(
            header_code.is_some_and(|h| h.trim() == code) || appears_in(code, input),
            "code {:?} is not in the input",
            code
        );
    }
    prop_assert!(c.detail_codes.len() <= 32);
    for detail in &c.detail_codes {
        prop_assert!(!detail.is_empty());
        prop_assert!(appears_in(detail, input), "detail {:?}", detail);
        prop_assert!(
            !c.code
                .as_deref()
                .is_some_and(|top| top.eq_ignore_ascii_case(detail))
        );
    }
    if let Some(uri) = &c.operation_uri {
        prop_assert!(appears_in(uri, input), "operation URI {:?}", uri);
        prop_assert!(Url::parse(uri).is_ok_and(|u| u.has_host()));
    }
    if let Some(id) = &c.referenced_resource {
        prop_assert!(appears_in(id, input), "referenced resource {:?}", id);
        prop_assert!(id.to_ascii_lowercase().starts_with("/subscriptions/"));
    }
    Ok(())
}

/// Fragments of JSON error bodies in any order: mostly not JSON, sometimes almost.
fn json_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        3 => select(vec![
            "{", "}", "[", "]", ":", ",", " ", "\"", "\"code\"", "\"Code\"", "\"message\"",
            "\"error\"", "\"details\"", "\"innererror\"", "\"odata.error\"", "\"value\"",
            "\"target\"", "true", "null", "1e5", "-0.5", "42", "\\", "\\\"", "\\n", "\\ud800",
            "\\u00e9", "\u{feff}",
        ])
        .prop_map(str::to_owned),
        1 => "\"[A-Za-z /:.?=-]{0,12}\"",
        1 => "\\\\u[0-9a-fA-F]{0,4}",
    ];
    (select(vec!["{", "["]), vec(token, 0..40))
        .prop_map(|(first, rest)| format!("{first}{}", rest.concat()))
}

/// Fragments of Storage's XML error bodies in any order.
fn xml_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        3 => select(vec![
            "<Error>", "</Error>", "<Code>", "</Code>", "<Message>", "</Message>", "<Detail>",
            "</Detail>", "<Code/>", "<?xml version=\"1.0\" encoding=\"utf-8\"?>", "<![CDATA[",
            "]]>", "<!-- c -->", "&amp;", "&lt;", "&#65;", "&#x1F600;", "&#1114112;", "&#xD800;",
            "&bogus;", "&", "<", ">", "</", "\r\n", " ", "<a:Code xmlns:a=\"x\">",
        ])
        .prop_map(str::to_owned),
        1 => "[A-Za-z0-9 ]{0,8}",
    ];
    vec(token, 0..24).prop_map(|tokens| tokens.concat())
}

/// An ARM error tree: a code, a message, nested `details[]` and `innererror`.
#[derive(Clone, Debug)]
struct ErrorNode {
    code: Option<String>,
    message: Option<String>,
    details: Vec<ErrorNode>,
    inner: Option<Box<ErrorNode>>,
    /// Spell the keys `Code`/`Message`, as some services do.
    capitalized: bool,
}

fn code() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9]{0,24}"
}

fn error_tree() -> impl Strategy<Value = ErrorNode> {
    let leaf = (
        option::weighted(0.9, code()),
        option::of("[A-Za-z][A-Za-z0-9 ,.()'-]{0,60}"),
        any::<bool>(),
    )
        .prop_map(|(code, message, capitalized)| ErrorNode {
            code,
            message,
            details: Vec::new(),
            inner: None,
            capitalized,
        });
    leaf.prop_recursive(4, 48, 4, |inner| {
        (
            option::weighted(0.9, code()),
            option::of("[A-Za-z][A-Za-z0-9 ,.()'-]{0,60}"),
            vec(inner.clone(), 0..4),
            option::of(inner),
            any::<bool>(),
        )
            .prop_map(|(code, message, details, inner, capitalized)| ErrorNode {
                code,
                message,
                details,
                inner: inner.map(Box::new),
                capitalized,
            })
    })
}

impl ErrorNode {
    fn to_json(&self) -> Value {
        let (c, m) = if self.capitalized {
            ("Code", "Message")
        } else {
            ("code", "message")
        };
        let mut obj = serde_json::Map::new();
        if let Some(code) = &self.code {
            obj.insert(c.into(), json!(code));
        }
        if let Some(message) = &self.message {
            obj.insert(m.into(), json!(message));
        }
        obj.insert(
            "additionalInfo".into(),
            json!([{"type": "PolicyViolation", "info": {}}]),
        );
        if let Some(inner) = &self.inner {
            obj.insert("innererror".into(), inner.to_json());
        }
        if !self.details.is_empty() {
            obj.insert(
                "details".into(),
                self.details.iter().map(Self::to_json).collect(),
            );
        }
        Value::Object(obj)
    }

    /// The detail codes the parser must report: breadth first (innererror before details),
    /// de-duplicated ignoring case, at most 32, without the top code.
    fn expected_detail_codes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut queue: std::collections::VecDeque<&ErrorNode> = std::collections::VecDeque::new();
        queue.extend(self.inner.as_deref());
        queue.extend(&self.details);
        while let Some(node) = queue.pop_front() {
            if let Some(code) = &node.code
                && out.len() < 32
                && !out.iter().any(|c| c.eq_ignore_ascii_case(code))
            {
                out.push(code.clone());
            }
            queue.extend(node.inner.as_deref());
            queue.extend(&node.details);
        }
        out.retain(|c| {
            !self
                .code
                .as_deref()
                .is_some_and(|top| top.eq_ignore_ascii_case(c))
        });
        out
    }
}

/// The shapes Azure services wrap an error in.
#[derive(Clone, Copy, Debug)]
enum Wrapper {
    Arm,
    Bare,
    Array,
}

proptest! {
    #![proptest_config(config(15_000))]

    #[test]
    fn any_bytes_classify_without_panicking(
        status in select(vec![409u16, 412, 400, 500]),
        request in request_headers(),
        header_code in option::of("[ -~]{0,20}"),
        body in vec(any::<u8>(), 0..512),
    ) {
        let mut response = HeaderMap::new();
        if let Some(code) = &header_code {
            response.insert("x-ms-error-code", HeaderValue::from_str(code).unwrap());
        }
        let c = classify(status, &request, &response, &body);
        check_classification(&c, status, &String::from_utf8_lossy(&body), header_code.as_deref())?;
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn json_like_bytes_classify_without_panicking(
        status in select(vec![409u16, 412]),
        request in request_headers(),
        body in json_like(),
    ) {
        let c = classify(status, &request, &HeaderMap::new(), body.as_bytes());
        check_classification(&c, status, &body, None)?;
    }
}

proptest! {
    #![proptest_config(config(6_000))]

    #[test]
    fn xml_like_bytes_classify_without_panicking(
        status in select(vec![409u16, 412]),
        body in xml_like(),
    ) {
        let c = classify(status, &HeaderMap::new(), &HeaderMap::new(), body.as_bytes());
        check_classification(&c, status, &body, None)?;
    }
}

proptest! {
    #![proptest_config(config(1_500))]

    #[test]
    fn structured_json_errors_yield_their_codes(
        tree in error_tree(),
        wrapper in select(vec![Wrapper::Arm, Wrapper::Bare, Wrapper::Array]),
        cut in any::<prop::sample::Index>(),
    ) {
        let node = tree.to_json();
        let doc = match wrapper {
            Wrapper::Arm => json!({"error": node}),
            Wrapper::Bare => node,
            Wrapper::Array => json!([node]),
        };
        let text = doc.to_string();
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), text.as_bytes());
        check_classification(&c, 409, &text, None)?;
        prop_assert_eq!(&c.code, &tree.code);
        prop_assert_eq!(&c.message, &tree.message.as_ref().map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()));
        prop_assert_eq!(c.detail_codes, tree.expected_detail_codes());

        // Cut short anywhere (a capped read, a dropped connection): never a panic, and whatever
        // is found was in the part that arrived.
        let at = cut.index(text.len() + 1);
        let prefix = &text[..at];
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), prefix.as_bytes());
        check_classification(&c, 409, prefix, None)?;
        if let Some(code) = &c.code {
            prop_assert!(prefix.contains(code.as_str()));
        }
    }
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn deployment_errors_embedding_documents_in_messages(
        outer in error_tree(),
        embedded in error_tree(),
    ) {
        // Deployments put a whole error document, as a string, in a detail message.
        let mut detail = serde_json::Map::new();
        detail.insert("code".into(), json!("DeploymentFailed"));
        detail.insert("message".into(), json!(json!({"error": embedded.to_json()}).to_string()));
        let mut node = outer.to_json();
        node.as_object_mut().unwrap().insert("details".into(), json!([detail]));
        let text = json!({"error": node}).to_string();
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), text.as_bytes());
        check_classification(&c, 409, &text, None)?;
        prop_assert_eq!(&c.code, &outer.code);
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn xml_errors_yield_their_code_and_message(
        code in code(),
        message in "[A-Za-z0-9][A-Za-z0-9 .,:;/-]{0,60}",
        extra in "(<(RequestId|Time|AuthenticationErrorDetail)>[a-z0-9-]{0,20}</(RequestId|Time|AuthenticationErrorDetail)>){0,3}",
        declaration in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let text = format!(
            "{}<Error><Code>{code}</Code><Message>{message}</Message>{extra}</Error>",
            if declaration { "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>" } else { "" }
        );
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), text.as_bytes());
        prop_assert_eq!(c.code.as_deref(), Some(code.as_str()));
        prop_assert_eq!(c.message.as_deref(), Some(message.trim()));
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let prefix = &text[..at];
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), prefix.as_bytes());
        check_classification(&c, 409, prefix, None)?;
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn odata_errors_yield_their_code_and_message(
        code in code(),
        message in "[A-Za-z0-9][A-Za-z0-9 .,:;/-]{0,60}",
        lang in select(vec!["en-US", "de-DE"]),
    ) {
        let text = json!({"odata.error": {"code": code, "message": {"lang": lang, "value": message}}}).to_string();
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), text.as_bytes());
        prop_assert_eq!(c.code.as_deref(), Some(code.as_str()));
        prop_assert_eq!(c.message.as_deref(), Some(message.trim()));
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn the_error_code_header_fills_in_a_missing_code(
        header in "[ -~]{0,40}",
        body in select(vec!["", "<html>Bad gateway</html>", "{}", "{\"error\":{}}", "garbage"]),
    ) {
        let mut response = HeaderMap::new();
        response.insert("x-ms-error-code", HeaderValue::from_str(&header).unwrap());
        let c = classify(412, &HeaderMap::new(), &response, body.as_bytes());
        let expected = Some(header.trim()).filter(|h| !h.is_empty());
        prop_assert_eq!(c.code.as_deref(), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Retry-After

const RETRY_HEADERS: [&str; 3] = ["retry-after", "retry-after-ms", "x-ms-retry-after-ms"];

fn one_header(name: &str, value: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
    headers
}

proptest! {
    #![proptest_config(config(20_000))]

    #[test]
    fn any_retry_after_value_never_panics(
        name in select(RETRY_HEADERS.to_vec()),
        bytes in vec(any::<u8>(), 0..40),
    ) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let _ = retry_after(&one_header(name, value));
        }
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn delay_seconds_are_read_and_saturate(
        digits in "[0-9]{1,30}",
        pad_left in " {0,2}",
        pad_right in " {0,2}",
        sign in select(vec!["", "-", "+"]),
        fraction in option::of("[0-9]{1,3}"),
    ) {
        let value = match &fraction {
            Some(f) => format!("{pad_left}{sign}{digits}.{f}{pad_right}"),
            None => format!("{pad_left}{sign}{digits}{pad_right}"),
        };
        let n = digits.parse::<u64>().unwrap_or(u64::MAX);
        let valid = sign.is_empty() && fraction.is_none();
        let secs = retry_after(&one_header("retry-after", HeaderValue::from_str(&value).unwrap()));
        prop_assert_eq!(secs, valid.then(|| Duration::from_secs(n)), "{:?}", value);
        let ms = retry_after(&one_header("x-ms-retry-after-ms", HeaderValue::from_str(&value).unwrap()));
        prop_assert_eq!(ms, valid.then(|| Duration::from_millis(n)), "{:?}", value);
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn millisecond_headers_win_when_valid(secs in 0u64..100_000, ms in 0u64..100_000, valid_ms in any::<bool>()) {
        let mut headers = one_header("retry-after", HeaderValue::from(secs));
        let ms_value = if valid_ms { ms.to_string() } else { format!("-{ms}") };
        headers.insert("retry-after-ms", HeaderValue::from_str(&ms_value).unwrap());
        let expected = if valid_ms { Duration::from_millis(ms) } else { Duration::from_secs(secs) };
        prop_assert_eq!(retry_after(&headers), Some(expected));
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn http_dates_in_the_past_mean_now_and_in_the_future_the_time_left(
        past in 0u64..1_600_000_000,
        ahead in 60u64..400_000_000,
    ) {
        let past = http_date(UNIX_EPOCH + Duration::from_secs(past));
        prop_assert_eq!(
            retry_after(&one_header("retry-after", HeaderValue::from_str(&past).unwrap())),
            Some(Duration::ZERO),
            "{}", past
        );
        let future = http_date(SystemTime::now() + Duration::from_secs(ahead));
        let left = retry_after(&one_header("retry-after", HeaderValue::from_str(&future).unwrap()))
            .unwrap_or_else(|| panic!("{future} not read"));
        // Whole seconds on the wire, and the clock moves on while the test runs.
        prop_assert!(left <= Duration::from_secs(ahead), "{:?} for {}", left, future);
        prop_assert!(left + Duration::from_secs(30) >= Duration::from_secs(ahead), "{:?} for {}", left, future);
    }
}

// ---------------------------------------------------------------------------------------------
// Operation URIs and referenced resources named in messages

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("management.azure.com".to_owned()),
        "[a-z]{2,10}\\.management\\.azure\\.com",
        // The last label starts with a letter: an all-numeric host is read as an IPv4 address.
        "([a-z0-9]{1,10}\\.){0,3}[a-z][a-z0-9]{0,9}",
        "127\\.0\\.0\\.1:[1-9][0-9]{1,3}",
    ]
}

fn operation_uri() -> impl Strategy<Value = String> {
    (
        select(vec!["http", "https", "HTTPS"]),
        host(),
        "[0-9a-f]{8}-[0-9a-f]{4}",
        "Microsoft\\.[A-Z][a-z]{2,10}",
        "[a-z]{4,10}",
        select(vec!["operations", "operationResults", "operationStatuses", "asyncoperations"]),
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]",
    )
        .prop_map(|(scheme, host, sub, ns, location, kind, id, api)| {
            format!("{scheme}://{host}/subscriptions/{sub}/providers/{ns}/locations/{location}/{kind}/{id}?api-version={api}")
        })
}

fn prose() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9 ,'()-]{0,80}"
}

/// A resource ID as it appears in prose: names without characters the extractor trims.
fn prose_resource_id() -> impl Strategy<Value = String> {
    let name = "[A-Za-z0-9][A-Za-z0-9_-]{0,11}";
    (
        name,
        name,
        "Microsoft\\.[A-Z][a-z]{2,10}",
        "[a-z]{3,12}",
        name,
        option::of(("[a-z]{3,12}", name)),
    )
        .prop_map(|(s, g, ns, ty, n, child)| {
            let mut id = format!("/subscriptions/{s}/resourceGroups/{g}/providers/{ns}/{ty}/{n}");
            if let Some((cty, cn)) = child {
                id += &format!("/{cty}/{cn}");
            }
            id
        })
}

fn body_with_message(message: &str, in_detail: bool) -> Vec<u8> {
    let doc = if in_detail {
        json!({"error": {"code": "RetryableError", "message": "A retryable error occurred.",
            "details": [{"code": "AnotherOperationInProgress", "message": message}]}})
    } else {
        json!({"error": {"code": "AnotherOperationInProgress", "message": message}})
    };
    doc.to_string().into_bytes()
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn an_operation_uri_after_its_wording_is_extracted_verbatim(
        before in prose(),
        uri in operation_uri(),
        cue in select(vec![
            "To retrieve status of the operation use uri: ",
            "Use URI ",
            "Poll ",
            "operation status: ",
        ]),
        after in select(vec!["", ".", ". Retry later.", "\nThanks", ", then retry", ")", "\" ", "'"]),
        in_detail in any::<bool>(),
    ) {
        let message = format!("{before} {cue}{uri}{after}");
        let body = body_with_message(&message, in_detail);
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), &body);
        prop_assert_eq!(c.operation_uri.as_deref(), Some(uri.as_str()), "in {:?}", message);
        check_classification(&c, 409, &String::from_utf8_lossy(&body), None)?;
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn a_referenced_resource_is_extracted_verbatim(
        before in prose(),
        id in prose_resource_id(),
        other in prose_resource_id(),
        after in select(vec!["", ".", " was not found.", ", which is Updating.", "\nDetails follow"]),
    ) {
        let message = format!("{before} Resource {id} referenced by resource {other}{after}");
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), &body_with_message(&message, true));
        prop_assert_eq!(c.referenced_resource.as_deref(), Some(id.as_str()), "in {:?}", message);
        prop_assert!(ResourceId::parse(&id).is_ok());
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn whatever_is_extracted_appears_verbatim_in_a_message(
        parts in vec(prop_oneof![
            prose(),
            operation_uri(),
            prose_resource_id(),
            Just("use uri: ".to_owned()),
            Just("https://".to_owned()),
            Just("http://[::1".to_owned()),
            "[ -~]{0,20}",
            "\\PC{0,10}",
        ], 0..8),
        in_detail in any::<bool>(),
    ) {
        let message = parts.concat();
        let body = body_with_message(&message, in_detail);
        let c = classify(409, &HeaderMap::new(), &HeaderMap::new(), &body);
        check_classification(&c, 409, &String::from_utf8_lossy(&body), None)?;
        if let Some(uri) = &c.operation_uri {
            prop_assert!(message.contains(uri.as_str()), "{:?} not in {:?}", uri, message);
        }
        if let Some(id) = &c.referenced_resource {
            prop_assert!(message.contains(id.as_str()), "{:?} not in {:?}", id, message);
        }
    }
}
