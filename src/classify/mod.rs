//! Turning a 409/412 answer into a [`Classification`].
//!
//! Azure services disagree on how they report an error: ARM wraps it in `{"error": {...}}` and often
//! hides the real reason in `details[]` or `innererror`; some services send the bare
//! `{"code","message"}`; Table storage sends `{"odata.error": ...}`; Blob storage sends XML; some put
//! the code only in the `x-ms-error-code` header. [`parse`] folds all of these into one
//! [`ErrorBody`], and a rule table — data, not code, see [`Rule`] — maps it to a [`ConflictKind`].
//!
//! The request matters as much as the response: a 412 on a request that carried `If-None-Match: *`
//! means "already exists", while the same 412 on an `If-Match` request means the caller's ETag is
//! stale. That is why [`Classifier::classify`] takes the request headers too.

mod parse;
mod retry_after;
mod rules;

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

pub use parse::{ErrorBody, ErrorNode, parse};
pub use retry_after::retry_after;
pub(crate) use rules::code_matches;
pub use rules::{RequestCondition, Rule};

/// What a 409 or 412 means, and therefore what can be done about it.
///
/// Written in snake_case wherever it is serialized or displayed:
///
/// ```
/// use reqwest_conflict::ConflictKind;
///
/// assert_eq!(ConflictKind::StateConflict.to_string(), "state_conflict");
/// assert_eq!(serde_json::to_value(ConflictKind::AlreadyExists)?, "already_exists");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// The resource or a dependency is mid-transition; waiting for a terminal state fixes it.
    StateConflict,
    /// The request's `If-Match` ETag is stale; a re-fetch gives the fresh one.
    StalePrecondition,
    /// The operation needs the resource in another state first (deallocated, stopped, detached).
    PrerequisiteRequired,
    /// A create-only request found the resource already there.
    AlreadyExists,
    /// Nothing time fixes: locks, immutable properties, quota, missing registration.
    Permanent,
    /// No rule matched.
    #[default]
    Unknown,
}

impl ConflictKind {
    /// The snake_case name, as in serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StateConflict => "state_conflict",
            Self::StalePrecondition => "stale_precondition",
            Self::PrerequisiteRequired => "prerequisite_required",
            Self::AlreadyExists => "already_exists",
            Self::Permanent => "permanent",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the classifier learned from one 409/412 response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    /// The verdict.
    pub kind: ConflictKind,
    /// The HTTP status of the response.
    pub status: u16,
    /// The top-level error code (body, else `x-ms-error-code`).
    pub code: Option<String>,
    /// The top-level error message.
    pub message: Option<String>,
    /// The error's `target`, when the service sent one.
    pub target: Option<String>,
    /// Codes found in `details[]` and `innererror`, outermost first.
    pub detail_codes: Vec<String>,
    /// The response's `Retry-After`, uncapped (the engine applies the policy cap).
    #[serde(with = "humantime_serde", default)]
    pub retry_after: Option<Duration>,
    /// An operation-status URI named in the message ("To retrieve status of the operation use uri: …").
    pub operation_uri: Option<String>,
    /// A resource ID named in the message, as in `ReferencedResourceNotProvisioned`.
    pub referenced_resource: Option<String>,
    /// The name of the rule that decided the kind, if any did.
    pub rule: Option<String>,
}

/// Classifies 409/412 responses with a rule table.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use reqwest_conflict::{Classifier, ConflictKind};
///
/// let body = br#"{"error":{"code":"AnotherOperationInProgress","message":"Another operation on this or dependent resource is in progress."}}"#;
/// let c = Classifier::azure().classify(StatusCode::CONFLICT, &HeaderMap::new(), &HeaderMap::new(), body);
/// assert_eq!(c.kind, ConflictKind::StateConflict);
/// assert_eq!(c.code.as_deref(), Some("AnotherOperationInProgress"));
/// ```
#[derive(Clone, Debug)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::azure()
    }
}

impl Classifier {
    /// The built-in Azure rule table (`src/classify/rules.json`).
    pub fn azure() -> Self {
        Self {
            rules: rules::builtin().to_vec(),
        }
    }

    /// The built-in table with `extra` rules consulted first, so they win over built-in rules
    /// that recognize the same error (the innermost recognized error still decides).
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use reqwest_conflict::{Classifier, ConflictKind, classify::Rule};
    ///
    /// let rule: Rule = serde_json::from_str(r#"{
    ///     "name": "inhouse_busy", "why": "our service's busy code clears by itself",
    ///     "kind": "state_conflict", "status": [409], "codes": ["InHouseBusy"]
    /// }"#)?;
    /// let classifier = Classifier::with_rules([rule]);
    /// let body = br#"{"code":"InHouseBusy","message":"try later"}"#;
    /// let c = classifier.classify(StatusCode::CONFLICT, &HeaderMap::new(), &HeaderMap::new(), body);
    /// assert_eq!(c.kind, ConflictKind::StateConflict);
    /// assert_eq!(c.rule.as_deref(), Some("inhouse_busy"));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn with_rules(extra: impl IntoIterator<Item = Rule>) -> Self {
        let mut rules: Vec<Rule> = extra.into_iter().collect();
        rules.extend_from_slice(rules::builtin());
        Self { rules }
    }

    /// The rules in the order they are consulted.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Classifies one response. `body` may be empty, truncated or garbage: the result is then
    /// built from the status, the headers and whatever could be read, never a panic.
    ///
    /// The request's headers decide what a 412 means:
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue, StatusCode};
    /// use reqwest_conflict::{Classifier, ConflictKind};
    ///
    /// let classifier = Classifier::azure();
    /// let body = br#"{"error":{"code":"PreconditionFailed","message":"The condition specified using HTTP conditional header(s) is not met."}}"#;
    /// let mut request = HeaderMap::new();
    /// request.insert("if-match", HeaderValue::from_static("\"etag-1\""));
    /// let stale = classifier.classify(StatusCode::PRECONDITION_FAILED, &request, &HeaderMap::new(), body);
    /// assert_eq!(stale.kind, ConflictKind::StalePrecondition);
    ///
    /// let mut create_only = HeaderMap::new();
    /// create_only.insert("if-none-match", HeaderValue::from_static("*"));
    /// let exists = classifier.classify(StatusCode::PRECONDITION_FAILED, &create_only, &HeaderMap::new(), body);
    /// assert_eq!(exists.kind, ConflictKind::AlreadyExists);
    /// ```
    pub fn classify(
        &self,
        status: StatusCode,
        request_headers: &HeaderMap,
        response_headers: &HeaderMap,
        body: &[u8],
    ) -> Classification {
        rules::classify(&self.rules, status, request_headers, response_headers, body)
    }
}
