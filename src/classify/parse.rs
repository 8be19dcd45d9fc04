//! Folding every shape of Azure error answer into one [`ErrorBody`].
//!
//! The reason for a 409 is rarely where one would look first: ARM hides it in `details[]` or an
//! `innererror` chain, deployments even nest a whole error document as a JSON *string* inside a
//! detail message, a failed long-running operation wraps it in `{"status": "Failed", "error":
//! ...}`, App Service answers in PascalCase with the reason in `Details[].ErrorEntity`, Blob
//! storage answers XML, Table storage answers OData JSON, and a `HEAD` request gets no body at
//! all, only `x-ms-error-code`. The parser therefore collects the top code and message plus every
//! nested one, each with how deep it sat, and the rule table decides what they mean: the
//! innermost error that a rule recognizes, since the outer ones are mostly wrappers
//! (`DeploymentFailed`, `ResourceDeploymentFailure`, a detail whose code is just `Conflict`).
//!
//! The body comes from the network and may be hostile or cut short: it is decoded lossily, walked
//! with fixed bounds on depth, visited objects and collected codes, and when it is not valid JSON
//! a forgiving scanner still picks up the `"code"` / `"message"` pairs that were readable.

use std::collections::VecDeque;

use http::HeaderMap;
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde_json::{Map, Value};

/// How deep `details[]` / `innererror` / embedded documents are followed.
const MAX_DEPTH: usize = 8;
/// How many detail codes (and, separately, detail messages) are kept.
const MAX_DETAILS: usize = 32;
/// How many error objects are visited in total, so a body of ten thousand empty details is cheap.
const MAX_NODES: usize = 256;
/// How many detail messages that are themselves JSON documents are parsed.
const MAX_EMBEDDED: usize = 4;

/// What could be read from an error response, whatever its format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// The top-level code: from the body, else from the `x-ms-error-code` header.
    pub code: Option<String>,
    /// The top-level message.
    pub message: Option<String>,
    /// The top-level `target`, when the service sent one.
    pub target: Option<String>,
    /// Codes from `details[]` and `innererror` chains, outermost first, de-duplicated
    /// (ignoring ASCII case), without the top code.
    pub detail_codes: Vec<String>,
    /// Messages from `details[]` and `innererror` chains, outermost first, de-duplicated.
    pub detail_messages: Vec<String>,
    /// Every error object of a JSON body, the top one first, then level by level, each with its
    /// own code and message: what the rule table matches, so that a code and a message are
    /// judged together and the innermost error decides. Bounded like `detail_codes` (one more,
    /// for the top). Empty when the answer does not say which code and message belong together
    /// (XML, JSON cut short, a header-only answer); the rule table then reads the fields above.
    pub errors: Vec<ErrorNode>,
}

/// One error object of a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorNode {
    /// Its code, if it has a non-empty one.
    pub code: Option<String>,
    /// Its message, if it has a non-empty one.
    pub message: Option<String>,
    /// 0 for the top error, 1 for its details and innererror, and so on; an error document
    /// embedded in a message string sits one level below that message.
    pub depth: usize,
}

/// Reads an error response. Never fails and never panics: an empty, truncated, non-UTF-8 or
/// foreign body gives whatever could be read, and `x-ms-error-code` fills in a missing code.
///
/// ```
/// use http::HeaderMap;
/// use reqwest_conflict::classify::parse;
///
/// let body = br#"{"error":{"code":"RetryableError","message":"A retryable error occurred.",
///   "details":[{"code":"ReferencedResourceNotProvisioned","message":"Cannot proceed"}]}}"#;
/// let parsed = parse(&HeaderMap::new(), body);
/// assert_eq!(parsed.code.as_deref(), Some("RetryableError"));
/// assert_eq!(parsed.detail_codes, ["ReferencedResourceNotProvisioned"]);
/// ```
pub fn parse(response_headers: &HeaderMap, body: &[u8]) -> ErrorBody {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_start_matches('\u{feff}').trim();
    let mut out = ErrorBody::default();
    let mut walked = false;
    match text.as_bytes().first() {
        Some(b'{' | b'[') => match serde_json::from_str::<Value>(text) {
            Ok(doc) => {
                Walker::new(&mut out).walk(&doc);
                walked = true;
            }
            Err(_) => scan_broken_json(text, &mut out),
        },
        Some(b'<') => read_xml(text, &mut out),
        _ => {}
    }
    if out.code.is_none() {
        out.code = response_headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .and_then(clean);
    }
    if walked {
        out.complete_top_error();
    }
    if let Some(top) = &out.code {
        out.detail_codes.retain(|c| !c.eq_ignore_ascii_case(top));
    }
    out
}

/// Trims and drops empty strings.
fn clean(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

impl ErrorBody {
    /// Records one error object, unless it says nothing or the list is full.
    fn push_error(&mut self, code: Option<String>, message: Option<String>, depth: usize) {
        if (code.is_some() || message.is_some()) && self.errors.len() <= MAX_DETAILS {
            self.errors.push(ErrorNode {
                code,
                message,
                depth,
            });
        }
    }

    /// After a JSON walk: the top error also carries a code that came only from the
    /// `x-ms-error-code` header.
    fn complete_top_error(&mut self) {
        match self.errors.first_mut() {
            Some(top) if top.depth == 0 => {
                if top.code.is_none() {
                    top.code.clone_from(&self.code);
                }
            }
            _ => {
                if self.code.is_some() || self.message.is_some() {
                    let top = ErrorNode {
                        code: self.code.clone(),
                        message: self.message.clone(),
                        depth: 0,
                    };
                    self.errors.insert(0, top);
                }
            }
        }
    }

    fn push_code(&mut self, code: Option<String>) {
        let Some(code) = code else { return };
        let seen = self
            .detail_codes
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&code));
        if !seen && self.detail_codes.len() < MAX_DETAILS {
            self.detail_codes.push(code);
        }
    }

    fn push_message(&mut self, message: Option<String>) {
        let Some(message) = message else { return };
        let seen =
            self.message.as_ref() == Some(&message) || self.detail_messages.contains(&message);
        if !seen && self.detail_messages.len() < MAX_DETAILS {
            self.detail_messages.push(message);
        }
    }
}

/// Looks a key up ignoring ASCII case: services disagree on `code` vs `Code`.
fn field<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A code is a string, though a few services send a number.
fn code_of(obj: &Map<String, Value>) -> Option<String> {
    match field(obj, "code")? {
        Value::String(s) => clean(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A message is a string, or OData's `{"lang": "en-US", "value": "..."}`.
fn message_of(obj: &Map<String, Value>) -> Option<String> {
    match field(obj, "message")? {
        Value::String(s) => clean(s),
        Value::Object(m) => field(m, "value").and_then(Value::as_str).and_then(clean),
        _ => None,
    }
}

/// Finds the error object of a document: ARM's `error`, Table's `odata.error`, or the document
/// itself for services that send the bare `{"code", "message"}`.
fn error_object(doc: &Value) -> Option<&Map<String, Value>> {
    let obj = match doc {
        Value::Object(obj) => obj,
        Value::Array(items) => items.iter().find_map(Value::as_object)?,
        _ => return None,
    };
    ["error", "odata.error"]
        .iter()
        .find_map(|key| field(obj, key).and_then(Value::as_object))
        .or(Some(obj))
}

/// Breadth-first walk over the error tree, so codes come outermost first.
struct Walker<'o> {
    out: &'o mut ErrorBody,
    visited: usize,
    /// Detail messages that look like JSON documents, with the depth they were found at.
    embedded: VecDeque<(String, usize)>,
    embedded_taken: usize,
}

impl<'o> Walker<'o> {
    fn new(out: &'o mut ErrorBody) -> Self {
        Self {
            out,
            visited: 0,
            embedded: VecDeque::new(),
            embedded_taken: 0,
        }
    }

    fn walk(mut self, doc: &Value) {
        if let Some(top) = error_object(doc) {
            self.out.code = code_of(top);
            self.out.message = message_of(top);
            self.out.target = field(top, "target").and_then(Value::as_str).and_then(clean);
            self.out
                .push_error(self.out.code.clone(), self.out.message.clone(), 0);
            // A deployment's detail, read on its own, is such a top error with a document as
            // its message.
            let message = self.out.message.clone();
            self.embed(message.as_deref(), 0);
            self.visited = 1;
            self.visit(children_of(top).take(MAX_NODES).map(|c| (c, 1)).collect());
        }
        // Deployment errors carry a whole error document as a detail message string.
        while let Some((text, depth)) = self.embedded.pop_front() {
            if let Ok(doc) = serde_json::from_str::<Value>(&text)
                && let Some(obj) = error_object(&doc)
            {
                self.visit(VecDeque::from([(obj, depth)]));
            }
        }
    }

    /// Queues a message that is itself an error document, to be read one level below the
    /// error that carried it.
    fn embed(&mut self, message: Option<&str>, depth: usize) {
        if let Some(m) = message
            && m.starts_with('{')
            && depth + 1 < MAX_DEPTH
            && self.embedded_taken < MAX_EMBEDDED
        {
            self.embedded_taken += 1;
            self.embedded.push_back((m.to_owned(), depth + 1));
        }
    }

    /// Visits the queued nested errors and everything below them, level by level.
    fn visit(&mut self, mut queue: VecDeque<(&Map<String, Value>, usize)>) {
        while let Some((node, depth)) = queue.pop_front() {
            if self.visited >= MAX_NODES {
                return;
            }
            self.visited += 1;
            let code = code_of(node);
            let message = message_of(node);
            self.out.push_error(code.clone(), message.clone(), depth);
            self.out.push_code(code);
            self.embed(message.as_deref(), depth);
            self.out.push_message(message);
            if depth + 1 < MAX_DEPTH {
                let room = MAX_NODES.saturating_sub(self.visited + queue.len());
                queue.extend(children_of(node).take(room).map(|child| (child, depth + 1)));
            }
        }
    }
}

/// The nested errors of one error object: its `innererror`, its `details[]`, and App Service's
/// `ErrorEntity` (an object, sometimes an array), which holds the same error as its parent
/// detail with the code and message the service meant.
fn children_of(node: &Map<String, Value>) -> impl Iterator<Item = &Map<String, Value>> {
    ["innererror", "details", "errorentity"]
        .into_iter()
        .flat_map(|key| objects(field(node, key)))
}

/// The objects a field holds: itself if it is one, the objects among its items if it is an array.
fn objects(value: Option<&Value>) -> impl Iterator<Item = &Map<String, Value>> {
    let (one, many) = match value {
        Some(Value::Object(obj)) => (Some(obj), None),
        Some(Value::Array(items)) => (None, Some(items.iter().filter_map(Value::as_object))),
        _ => (None, None),
    };
    one.into_iter().chain(many.into_iter().flatten())
}

/// Picks `"code"`, `"message"` and `"target"` string pairs out of JSON that does not parse
/// (typically a body cut short). The first of each is the top one, later codes and messages are
/// details, in document order — which for ARM bodies is outermost first.
fn scan_broken_json(text: &str, out: &mut ErrorBody) {
    let bytes = text.as_bytes();
    let mut i = 0;
    // OData puts the message text under `"message": {"value": ...}`.
    let mut message_object = false;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let (key, after_key) = json_string(text, i);
        i = after_key;
        let colon = skip_space(bytes, i);
        if bytes.get(colon) != Some(&b':') {
            continue;
        }
        let value_at = skip_space(bytes, colon + 1);
        if bytes.get(value_at) != Some(&b'"') {
            message_object = key.eq_ignore_ascii_case("message");
            i = value_at;
            continue;
        }
        let (value, after_value) = json_string(text, value_at);
        i = after_value;
        let value = clean(&value);
        if key.eq_ignore_ascii_case("code") {
            if out.code.is_none() && out.detail_codes.is_empty() {
                out.code = value;
            } else {
                out.push_code(value);
            }
        } else if key.eq_ignore_ascii_case("message")
            || (message_object && key.eq_ignore_ascii_case("value"))
        {
            message_object = false;
            if out.message.is_none() && out.detail_messages.is_empty() {
                out.message = value;
            } else {
                out.push_message(value);
            }
        } else if key.eq_ignore_ascii_case("target")
            && out.target.is_none()
            && out.detail_codes.is_empty()
        {
            out.target = value;
        }
    }
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Decodes the JSON string starting at the quote at `start`; returns it and the index after its
/// closing quote. An unterminated string yields what was there, up to the end of the text.
fn json_string(text: &str, start: usize) -> (String, usize) {
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return (out, start + 1 + at + 1),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                    let unit = u32::from_str_radix(&hex, 16)
                        .ok()
                        .filter(|_| hex.len() == 4);
                    // Surrogate pairs are rare in error text; a lone half becomes U+FFFD.
                    out.push(unit.and_then(char::from_u32).unwrap_or('\u{fffd}'));
                }
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    (out, text.len())
}

/// Reads Storage's `<Error><Code/><Message/></Error>` (and Service Bus's `<Detail/>`). Stops at
/// the first malformed construct, keeping what was read, including a cut-off last element.
fn read_xml(text: &str, out: &mut ErrorBody) {
    #[derive(Clone, Copy, PartialEq)]
    enum Field {
        Code,
        Message,
        Detail,
    }
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    let mut in_error = false;
    let mut field = None;
    let mut buf = String::new();
    let mut detail = None;
    let mut store = |field: Field, buf: &str, out: &mut ErrorBody| {
        let value = clean(buf);
        match field {
            Field::Code if out.code.is_none() => out.code = value,
            Field::Message if out.message.is_none() => out.message = value,
            Field::Detail if detail.is_none() => detail = value,
            _ => {}
        }
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                let name = e.local_name();
                let name: &str = name.as_ref();
                if depth == 1 {
                    in_error = name.eq_ignore_ascii_case("error");
                } else if depth == 2 && in_error {
                    buf.clear();
                    field = [
                        ("code", Field::Code),
                        ("message", Field::Message),
                        ("detail", Field::Detail),
                    ]
                    .into_iter()
                    .find(|(n, _)| name.eq_ignore_ascii_case(n))
                    .map(|(_, f)| f);
                }
            }
            Ok(Event::End(_)) => {
                if depth == 2
                    && let Some(f) = field.take()
                {
                    store(f, &buf, out);
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Text(t)) if depth == 2 && field.is_some() => buf.push_str(&t.xml10_content()),
            Ok(Event::CData(t)) if depth == 2 && field.is_some() => {
                buf.push_str(&t.xml10_content())
            }
            Ok(Event::GeneralRef(r)) if depth == 2 && field.is_some() => {
                match r.resolve_char_ref() {
                    Ok(Some(c)) => buf.push(c),
                    _ => match quick_xml::escape::resolve_predefined_entity(&r) {
                        Some(s) => buf.push_str(s),
                        None => {
                            buf.push('&');
                            buf.push_str(&r);
                            buf.push(';');
                        }
                    },
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if let Some(f) = field {
        store(f, &buf, out);
    }
    if out.message.is_none() {
        out.message = detail;
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
