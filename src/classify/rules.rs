//! The rule table: which error means which [`ConflictKind`].
//!
//! What a code means is policy, not mechanism, so the table is data (`rules.json`, compiled in)
//! and callers can put their own rules in front of it ([`super::Classifier::with_rules`]). Each
//! built-in rule says `why` it is there.
//!
//! A rule is matched against each error object of the body on its own (its code and its message
//! together), and the **innermost** error that some rule recognizes decides: deployments and
//! failed operations wrap the real reason in layers that say nothing (`DeploymentFailed`,
//! `ResourceDeploymentFailure`, a detail whose code is just `Conflict`), and the reason is at
//! the bottom. Among the rules that recognize that error, the first in the table wins, which is
//! how overlapping codes are resolved: `OperationNotAllowed` is quota (permanent) if the message
//! says "quota", a missing prerequisite if it asks to deallocate — so the specific rules come
//! first. The table lists the code rules first, then the rules that read a message's meaning
//! ("in progress", "must be deallocated", "already exists", "locked"), and last the catch-all
//! for any other 412. A response no rule recognizes stays `unknown`.
//!
//! Besides the kind, [`classify`] pulls out what the engine can act on: the operation-status URI
//! that `AnotherOperationInProgress` names and the resource ID that
//! `ReferencedResourceNotProvisioned` (or a lock, or an attached disk) names.

use std::sync::LazyLock;

use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::{Classification, ConflictKind, ErrorBody, parse, retry_after};

/// One line of the rule table. A rule matches when every condition it sets holds; an empty
/// condition holds for anything.
///
/// ```
/// use reqwest_conflict::classify::Rule;
///
/// let rule: Rule = serde_json::from_str(r#"{
///     "name": "my_service_busy", "kind": "state_conflict",
///     "status": [409], "codes": ["MyService*"], "message_contains": ["busy"]
/// }"#).unwrap();
/// assert_eq!(rule.codes, ["MyService*"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A name for reports and logs ([`Classification::rule`]).
    #[serde(default)]
    pub name: Option<String>,
    /// The verdict when the rule matches.
    pub kind: ConflictKind,
    /// HTTP statuses the rule applies to; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<u16>,
    /// Error codes, compared ignoring ASCII case, with a leading and/or trailing `*` as a
    /// wildcard (`"*AlreadyExists"`). The rule recognizes an error object (the top one or any
    /// nested one) whose code matches any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
    /// Phrases, compared ignoring case: the rule recognizes an error object whose message
    /// contains any of them. With `codes` as well, the code and the phrase must belong to the
    /// same error object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_contains: Vec<String>,
    /// The precondition the request must have carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestCondition>,
    /// Why the rule says what it says, for whoever maintains the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// A precondition on the *request*: the same 412 means "stale ETag" or "already exists"
/// depending on what the request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestCondition {
    /// The request carried `If-Match` or `If-Unmodified-Since`.
    IfMatch,
    /// The request carried `If-None-Match: *` (create only).
    IfNoneMatchStar,
    /// The request carried neither of the above.
    NoPrecondition,
}

impl RequestCondition {
    /// Whether a request with these headers satisfies the condition.
    pub fn holds_for(self, request_headers: &HeaderMap) -> bool {
        let if_match = request_headers.contains_key(header::IF_MATCH)
            || request_headers.contains_key(header::IF_UNMODIFIED_SINCE);
        let create_only = request_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim() == "*");
        match self {
            Self::IfMatch => if_match,
            Self::IfNoneMatchStar => create_only,
            Self::NoPrecondition => !if_match && !create_only,
        }
    }
}

impl Rule {
    /// Whether the rule matches a response with this status and parsed body to a request with
    /// these headers.
    pub fn matches(&self, status: u16, request_headers: &HeaderMap, body: &ErrorBody) -> bool {
        self.depth_matched(&Facts::new(status, request_headers, body))
            .is_some()
    }

    /// How deep the innermost error this rule recognizes sits, if it recognizes one. A rule
    /// about the status and the request only, with neither codes nor phrases, speaks of the
    /// response as a whole: depth 0.
    fn depth_matched(&self, facts: &Facts<'_>) -> Option<usize> {
        let applies = (self.status.is_empty() || self.status.contains(&facts.status))
            && self
                .request
                .is_none_or(|r| r.holds_for(facts.request_headers));
        if !applies {
            return None;
        }
        if self.codes.is_empty() && self.message_contains.is_empty() {
            return Some(0);
        }
        facts
            .errors
            .iter()
            .filter(|error| self.recognizes(error))
            .map(|error| error.depth)
            .max()
    }

    /// Whether one error object has a code this rule names and a message with one of its
    /// phrases (each condition only if the rule sets it).
    fn recognizes(&self, error: &Node<'_>) -> bool {
        let code = self.codes.is_empty()
            || error
                .code
                .is_some_and(|code| self.codes.iter().any(|p| code_matches(p, code)));
        let message = self.message_contains.is_empty()
            || error.message.as_deref().is_some_and(|message| {
                self.message_contains
                    .iter()
                    .any(|phrase| message.contains(&phrase.to_lowercase()))
            });
        code && message
    }
}

/// What every rule is checked against.
struct Facts<'a> {
    status: u16,
    request_headers: &'a HeaderMap,
    errors: Vec<Node<'a>>,
}

/// One error object of the body, its message lower-cased once for phrase matching.
struct Node<'a> {
    code: Option<&'a str>,
    message: Option<String>,
    depth: usize,
}

impl<'a> Facts<'a> {
    fn new(status: u16, request_headers: &'a HeaderMap, body: &'a ErrorBody) -> Self {
        let error = |code: Option<&'a String>, message: Option<&'a String>, depth| Node {
            code: code.map(String::as_str),
            message: message.map(|m| m.to_lowercase()),
            depth,
        };
        let errors = if body.errors.is_empty() {
            // No error objects (XML, JSON cut short, a header-only answer, or a body built by
            // hand): the top code and message belong together, each detail stands alone.
            let top = (body.code.is_some() || body.message.is_some())
                .then(|| error(body.code.as_ref(), body.message.as_ref(), 0));
            let codes = body.detail_codes.iter().map(|c| error(Some(c), None, 1));
            let messages = body.detail_messages.iter().map(|m| error(None, Some(m), 1));
            top.into_iter().chain(codes).chain(messages).collect()
        } else {
            body.errors
                .iter()
                .map(|e| error(e.code.as_ref(), e.message.as_ref(), e.depth))
                .collect()
        };
        Self {
            status,
            request_headers,
            errors,
        }
    }

    fn deepest(&self) -> usize {
        self.errors.iter().map(|e| e.depth).max().unwrap_or(0)
    }
}

/// The rule that decides: the one that recognizes the innermost error, the first in `rules`
/// among equals.
fn deciding_rule<'r>(rules: &'r [Rule], facts: &Facts<'_>) -> Option<&'r Rule> {
    let deepest = facts.deepest();
    let mut best: Option<(usize, &Rule)> = None;
    for rule in rules {
        let Some(depth) = rule.depth_matched(facts) else {
            continue;
        };
        if best.is_none_or(|(best_depth, _)| depth > best_depth) {
            best = Some((depth, rule));
            if depth == deepest {
                // Nothing can recognize an error deeper than the deepest one.
                break;
            }
        }
    }
    best.map(|(_, rule)| rule)
}

/// `pattern` against `code`, ignoring ASCII case; `*` at either end is a wildcard.
pub(crate) fn code_matches(pattern: &str, code: &str) -> bool {
    let (any_prefix, rest) = match pattern.strip_prefix('*') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let (any_suffix, core) = match rest.strip_suffix('*') {
        Some(core) => (true, core),
        None => (false, rest),
    };
    let code = code.to_ascii_lowercase();
    let core = core.to_ascii_lowercase();
    match (any_prefix, any_suffix) {
        (false, false) => code == core,
        (true, false) => code.ends_with(&core),
        (false, true) => code.starts_with(&core),
        (true, true) => code.contains(&core),
    }
}

static BUILTIN: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    load(include_str!("rules.json")).expect("rules.json is checked by the unit tests")
});

/// The built-in Azure table, in order.
pub(crate) fn builtin() -> &'static [Rule] {
    &BUILTIN
}

/// Parses a rule table: a JSON array of rules.
fn load(json: &str) -> Result<Vec<Rule>, serde_json::Error> {
    serde_json::from_str(json)
}

/// Classifies one response with `rules`; see [`super::Classifier::classify`].
pub(crate) fn classify(
    rules: &[Rule],
    status: StatusCode,
    request_headers: &HeaderMap,
    response_headers: &HeaderMap,
    body: &[u8],
) -> Classification {
    let parsed = parse(response_headers, body);
    let facts = Facts::new(status.as_u16(), request_headers, &parsed);
    let rule = deciding_rule(rules, &facts);
    let messages: Vec<&str> = parsed
        .message
        .iter()
        .chain(&parsed.detail_messages)
        .map(String::as_str)
        .collect();
    let (operation_uri, referenced_resource) = references(&messages);
    Classification {
        kind: rule.map_or(ConflictKind::Unknown, |r| r.kind),
        status: status.as_u16(),
        rule: rule.and_then(|r| r.name.clone()),
        retry_after: retry_after(response_headers),
        operation_uri,
        referenced_resource,
        code: parsed.code,
        message: parsed.message,
        target: parsed.target,
        detail_codes: parsed.detail_codes,
    }
}

/// How much of one message is searched for URIs and resource IDs.
const SCAN_LIMIT: usize = 64 * 1024;
/// How many `http` / `/subscriptions/` occurrences per message are looked at.
const MAX_CANDIDATES: usize = 64;
/// Longer "URIs" or resource IDs are noise, not something to poll; this also keeps a message
/// made of one endless URI from costing quadratic time.
const MAX_REFERENCE_LEN: usize = 4096;
/// How far before a URI its "use uri:" wording may start.
const CUE_WINDOW: usize = 80;
/// Wording that introduces an operation-status URI.
const CUES: [&str; 5] = [
    "use uri",
    "operation uri",
    "operation status",
    "status of the operation",
    "poll",
];
/// Path segments of ARM operation-status URIs.
const OPERATION_PATHS: [&str; 3] = ["/operations/", "/operationresults/", "/operationstatuses/"];

/// The operation-status URI and the referenced resource ID named in `messages` (top first).
fn references(messages: &[&str]) -> (Option<String>, Option<String>) {
    let mut operation: Option<(usize, std::ops::Range<usize>, String)> = None;
    'messages: for (index, message) in messages.iter().enumerate() {
        let text = prefix(message);
        let lower = text.to_ascii_lowercase();
        for (range, uri) in uris(text, &lower) {
            let window = &lower.as_bytes()[range.start.saturating_sub(CUE_WINDOW)..range.start];
            let cued = CUES.iter().any(|cue| contains(window, cue.as_bytes()));
            let path = uri.path().to_ascii_lowercase();
            if cued || OPERATION_PATHS.iter().any(|p| path.contains(p)) {
                let found = text[range.clone()].to_owned();
                operation = Some((index, range, found));
                break 'messages;
            }
        }
    }
    let resource = messages.iter().enumerate().find_map(|(index, message)| {
        let skip = operation
            .as_ref()
            .filter(|(at, _, _)| *at == index)
            .map(|(_, range, _)| range.clone());
        resource_id(prefix(message), skip)
    });
    (operation.map(|(_, _, uri)| uri), resource)
}

/// At most [`SCAN_LIMIT`] bytes of `s`, cut at a character boundary.
fn prefix(s: &str) -> &str {
    bounded(s, SCAN_LIMIT)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn bounded(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The text from the start of `s` up to the first character `stop` accepts (or the end), if
/// that is at most [`MAX_REFERENCE_LEN`] bytes.
fn token(s: &str, stop: impl Fn(char) -> bool) -> Option<&str> {
    let window = bounded(s, MAX_REFERENCE_LEN + 1);
    match window.find(stop) {
        Some(len) => Some(&s[..len]),
        None if window.len() == s.len() && s.len() <= MAX_REFERENCE_LEN => Some(s),
        None => None,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Characters that end a URI or resource ID embedded in prose or in JSON-in-a-string.
fn is_stop(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '\\')
}

/// The `http(s)://` URIs in `text` (`lower` is its ASCII-lowercased copy), as byte ranges.
fn uris<'t>(
    text: &'t str,
    lower: &'t str,
) -> impl Iterator<Item = (std::ops::Range<usize>, url::Url)> + 't {
    lower
        .match_indices("http")
        .take(MAX_CANDIDATES)
        .filter_map(move |(start, _)| {
            let rest = &lower[start + 4..];
            if !(rest.starts_with("://") || rest.starts_with("s://")) {
                return None;
            }
            let candidate = token(&text[start..], is_stop)?
                .trim_end_matches(['.', ',', ';', ':', ')', ']', '!']);
            let url = url::Url::parse(candidate).ok().filter(|u| u.has_host())?;
            Some((start..start + candidate.len(), url))
        })
}

/// The first `/subscriptions/…` resource ID in `text` that does not start inside `skip`.
fn resource_id(text: &str, skip: Option<std::ops::Range<usize>>) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    lower
        .match_indices("/subscriptions/")
        .take(MAX_CANDIDATES)
        .filter(|(start, _)| !skip.as_ref().is_some_and(|r| r.contains(start)))
        .find_map(|(start, _)| {
            let id = token(&text[start..], |c| is_stop(c) || matches!(c, ',' | '?'))?;
            let id = id.trim_end_matches(['.', ':', ';', '/']);
            (id.len() > "/subscriptions/".len()).then(|| id.to_owned())
        })
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
