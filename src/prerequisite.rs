//! Prerequisite transitions: put the resource into the state an operation needs, then retry.
//!
//! Some 409s are not about timing but about state: a VM must be deallocated before it can be
//! resized into a size its current cluster lacks; a disk must be detached before it is moved.
//! Waiting fixes nothing — someone must act. A [`Prerequisite`] says, for a resource type and an
//! error, which action brings the resource into the needed state, how to tell it got there, and
//! optionally how to put it back afterwards. They are off unless configured, because an action
//! like deallocation is visible to users of the resource (the shipped example policy,
//! `fixtures/policies/compute.json`, has the VM resize rule).
//!
//! ```
//! use reqwest_conflict::ConflictPolicy;
//!
//! let policy = ConflictPolicy::from_json(r#"{
//!   "prerequisites": [{
//!     "name": "deallocate_before_resize",
//!     "resource_type": "Microsoft.Compute/virtualMachines",
//!     "codes": ["OperationNotAllowed", "PropertyChangeNotAllowed"],
//!     "message_contains": ["not available in the current hardware cluster", "deallocat"],
//!     "action": { "path": "deallocate" },
//!     "until": { "path": "instanceView", "pointer": "/statuses", "equals": "PowerState/deallocated" },
//!     "restore": { "path": "start" },
//!     "restore_until": { "path": "instanceView", "pointer": "/statuses", "equals": "PowerState/running" }
//!   }]
//! }"#)?;
//! assert_eq!(policy.prerequisites[0].action.method, "POST");
//! # Ok::<(), reqwest_conflict::Error>(())
//! ```
//!
//! Some prerequisites act elsewhere than under the resource. A name held by a soft-deleted Key
//! Vault certificate is freed by purging the deleted record, which Key Vault keeps beside the
//! collection; the rule names that path with placeholders filled from the resource's ID, and
//! waits until the record answers 404:
//!
//! ```
//! use reqwest_conflict::ConflictPolicy;
//!
//! let policy = ConflictPolicy::from_json(r#"{
//!   "prerequisites": [{
//!     "name": "purge_soft_deleted_certificate",
//!     "resource_type": "Microsoft.KeyVault/vaults/certificates",
//!     "codes": ["ObjectIsDeletedButRecoverable"],
//!     "action": { "method": "DELETE", "path": "{parent}/deleted{type}/{name}" },
//!     "until": { "path": "{parent}/deleted{type}/{name}", "status": 404 }
//!   }]
//! }"#)?;
//! assert_eq!(policy.prerequisites[0].until.status, Some(404));
//!
//! // A placeholder the crate does not know is refused, naming the field.
//! let typo = r#"{"prerequisites": [{"resource_type": "x", "action": {"path": "{parent}/{nmae}"},
//!     "until": {"status": 404}}]}"#;
//! let error = ConflictPolicy::from_json(typo).unwrap_err().to_string();
//! assert!(error.contains("prerequisites[0].action.path"), "{error}");
//! # Ok::<(), reqwest_conflict::Error>(())
//! ```
//!
//! Purging loses the object for good, and recovering brings back what was deleted: which one a
//! tool wants is its owner's decision, so neither is configured unless a policy says so.

mod template;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use template::Template;

use crate::{Classification, classify::code_matches};

/// One prerequisite transition rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prerequisite {
    /// A name for reports.
    #[serde(default)]
    pub name: Option<String>,
    /// The ARM resource type it applies to, compared ignoring ASCII case.
    pub resource_type: String,
    /// Error codes (top-level or in details; `*` wildcards at either end); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
    /// Message fragments, ignoring case; any one must appear. Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_contains: Vec<String>,
    /// What brings the resource into the needed state.
    pub action: Action,
    /// How to know it got there.
    pub until: StateCheck,
    /// What puts it back once the original request went through (also when that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Action>,
    /// How to know the restore finished; without it, the restore's own answer is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_until: Option<StateCheck>,
}

/// A request of a prerequisite: `{method} {resource id}/{path}`, or `{method} {path}` for a path
/// of its own; same origin and `api-version` as the original request either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// The HTTP method; `POST` unless said.
    #[serde(default = "post")]
    pub method: String,
    /// The action's path under the resource, e.g. `deallocate`; or a whole path, when it starts
    /// at ARM's root (`/subscriptions/…`, `/providers/…`) or with `{id}` or `{parent}`, e.g.
    /// `{parent}/deleted{type}/{name}` to purge a soft-deleted Key Vault object.
    ///
    /// Placeholders, filled from the ID of the resource the request wrote
    /// (`/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kv1/certificates/c1`):
    /// `{id}` (that whole path) and `{parent}` (`…/vaults/kv1`), each only at the start;
    /// `{subscription}` (`s1`), `{resource_group}` (`rg1`), `{namespace}`
    /// (`Microsoft.KeyVault`), `{type}` (the last type segment: `certificates`), `{name}`
    /// (`c1`). An unknown placeholder, a query, a fragment, blanks and `.`/`..` segments are
    /// refused when the policy is validated; a resource without the part a placeholder names
    /// (a resource group has no `{namespace}`) gets no request, and the conflict is surfaced.
    pub path: String,
}

fn post() -> String {
    "POST".to_owned()
}

/// A condition on a GET of the resource (or of a sub-path such as `instanceView`, or of a path
/// of its own): some string under `pointer` equals `equals`, ignoring case; or the answer has
/// the status `status` (`404`: the thing is gone); or both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateCheck {
    /// A sub-path to GET under the resource (`instanceView`); empty for the resource itself; a
    /// whole path with placeholders as in [`Action::path`]
    /// (`{parent}/deleted{type}/{name}`).
    #[serde(default)]
    pub path: String,
    /// A JSON Pointer into the answer (`/statuses`, `/properties/provisioningState`); empty for
    /// the whole document.
    #[serde(default)]
    pub pointer: String,
    /// The string some value under the pointer must equal; empty when `status` alone decides.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub equals: String,
    /// The status the answer must have (`404` once a purged record is gone); with `equals`
    /// too, its body must also match. Without it, only a successful answer is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl Prerequisite {
    /// Whether this rule handles `classification` on a resource of `resource_type`.
    pub fn matches(&self, resource_type: Option<&str>, classification: &Classification) -> bool {
        let type_matches =
            resource_type.is_some_and(|t| t.eq_ignore_ascii_case(&self.resource_type));
        let mut codes = classification
            .code
            .iter()
            .chain(&classification.detail_codes);
        let code_ok =
            self.codes.is_empty() || codes.any(|c| self.codes.iter().any(|p| code_matches(p, c)));
        let message = classification
            .message
            .as_deref()
            .unwrap_or_default()
            .to_lowercase();
        let message_ok = self.message_contains.is_empty()
            || self
                .message_contains
                .iter()
                .any(|m| message.contains(&m.to_lowercase()));
        type_matches && code_ok && message_ok
    }
}

impl Prerequisite {
    /// What is wrong with the rule, as (the field's path under the rule, the problem): a path
    /// that is no template, a check that checks nothing.
    pub(crate) fn problem(&self) -> Option<(String, String)> {
        let paths = [
            ("action.path", Some(&self.action.path)),
            ("until.path", Some(&self.until.path)),
            ("restore.path", self.restore.as_ref().map(|a| &a.path)),
            (
                "restore_until.path",
                self.restore_until.as_ref().map(|c| &c.path),
            ),
        ];
        for (field, path) in paths {
            if let Some(path) = path
                && let Err(problem) = Template::parse(path)
            {
                let shown: String = path.chars().take(64).collect();
                return Some((field.to_owned(), format!("{shown:?} {problem}")));
            }
        }
        let checks = [
            ("until", Some(&self.until)),
            ("restore_until", self.restore_until.as_ref()),
        ];
        for (field, check) in checks {
            let Some(check) = check else { continue };
            if check.equals.is_empty() && check.status.is_none() {
                let problem = "says nothing to wait for: give `equals`, `status` or both";
                return Some((field.to_owned(), problem.to_owned()));
            }
            if let Some(status) = check.status
                && StatusCode::from_u16(status).is_err()
            {
                let problem = format!("must be an HTTP status (100 to 999), not {status}");
                return Some((format!("{field}.status"), problem));
            }
        }
        None
    }
}

impl StateCheck {
    /// Whether an answer of `status` is one this check reads: a successful one, or the one it
    /// waits for.
    pub(crate) fn reads(&self, status: StatusCode) -> bool {
        status.is_success() || self.status == Some(status.as_u16())
    }

    /// How the check is written in reports: `PowerState/deallocated`, `HTTP 404`.
    pub(crate) fn describe(&self) -> String {
        match (self.status, self.equals.as_str()) {
            (Some(status), "") => format!("HTTP {status}"),
            (Some(status), equals) => format!("HTTP {status} with {equals}"),
            (None, equals) => equals.to_owned(),
        }
    }

    /// What an answer of `status` with `body` says, as `(satisfied, observed)`. With `status`
    /// set, an answer of another status is observed as `HTTP {status}`; otherwise the observed
    /// value is the string under the pointer that shares `equals`' prefix (`PowerState/…`),
    /// else the first string there.
    pub(crate) fn evaluate(&self, status: StatusCode, body: &[u8]) -> (bool, Option<String>) {
        if let Some(wanted) = self.status {
            let reached = status.as_u16() == wanted;
            if !reached || self.equals.is_empty() {
                return (reached, Some(format!("HTTP {}", status.as_u16())));
            }
        }
        self.evaluate_body(body)
    }

    fn evaluate_body(&self, body: &[u8]) -> (bool, Option<String>) {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return (false, None);
        };
        let Some(at) = doc.pointer(&self.pointer) else {
            return (false, None);
        };
        let mut strings = Vec::new();
        collect_strings(at, &mut strings, 0);
        let satisfied = strings.iter().any(|s| s.eq_ignore_ascii_case(&self.equals));
        let family = self
            .equals
            .split('/')
            .next()
            .unwrap_or_default()
            .to_lowercase();
        let observed = strings
            .iter()
            .find(|s| !family.is_empty() && s.to_lowercase().starts_with(&family))
            .or(strings.first())
            .map(|s| s.chars().take(64).collect());
        (satisfied, observed)
    }
}

/// Every string value under `value`, bounded in depth and count against hostile documents.
fn collect_strings<'v>(value: &'v Value, out: &mut Vec<&'v str>, depth: usize) {
    if depth > 16 || out.len() >= 256 {
        return;
    }
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_strings(v, out, depth + 1)),
        Value::Object(map) => map
            .values()
            .for_each(|v| collect_strings(v, out, depth + 1)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OK: StatusCode = StatusCode::OK;

    fn check() -> StateCheck {
        StateCheck {
            path: "instanceView".into(),
            pointer: "/statuses".into(),
            equals: "PowerState/deallocated".into(),
            status: None,
        }
    }

    /// A check that the thing at `path` is gone.
    fn gone() -> StateCheck {
        StateCheck {
            path: "{parent}/deleted{type}/{name}".into(),
            pointer: String::new(),
            equals: String::new(),
            status: Some(404),
        }
    }

    #[test]
    fn evaluates_instance_view_statuses() {
        let running = json!({"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}]});
        let (done, seen) = check().evaluate(OK, running.to_string().as_bytes());
        assert!(!done);
        assert_eq!(seen.as_deref(), Some("PowerState/running"));
        let stopped = json!({"statuses": [{"code": "PowerState/deallocated"}]});
        assert!(check().evaluate(OK, stopped.to_string().as_bytes()).0);
        assert_eq!(check().evaluate(OK, b"<html>"), (false, None));
        assert_eq!(check().evaluate(OK, b"{}"), (false, None));
        assert!(check().reads(OK));
        assert!(!check().reads(StatusCode::NOT_FOUND));
        assert_eq!(check().describe(), "PowerState/deallocated");
    }

    #[test]
    fn a_status_check_waits_for_that_answer() {
        let record = json!({"id": "…/deletedcertificates/c1"}).to_string();
        assert!(gone().reads(OK));
        assert!(gone().reads(StatusCode::NOT_FOUND));
        assert!(!gone().reads(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(
            gone().evaluate(OK, record.as_bytes()),
            (false, Some("HTTP 200".to_owned()))
        );
        assert_eq!(
            gone().evaluate(StatusCode::NOT_FOUND, b""),
            (true, Some("HTTP 404".to_owned()))
        );
        assert_eq!(gone().describe(), "HTTP 404");
        // With `equals` too, the body must match as well.
        let both = StateCheck {
            pointer: "/status".into(),
            equals: "Purged".into(),
            status: Some(200),
            ..gone()
        };
        assert!(both.evaluate(OK, br#"{"status":"Purged"}"#).0);
        assert!(!both.evaluate(OK, br#"{"status":"Deleted"}"#).0);
        assert!(
            !both
                .evaluate(StatusCode::ACCEPTED, br#"{"status":"Purged"}"#)
                .0
        );
    }

    #[test]
    fn rules_whose_paths_or_checks_say_nothing_usable_are_refused_by_field() {
        let rule = |action: &str, until: StateCheck| Prerequisite {
            name: None,
            resource_type: "Microsoft.KeyVault/vaults/certificates".into(),
            codes: Vec::new(),
            message_contains: Vec::new(),
            action: Action {
                method: "DELETE".into(),
                path: action.into(),
            },
            until,
            restore: None,
            restore_until: None,
        };
        assert_eq!(
            rule("{parent}/deleted{type}/{name}", gone()).problem(),
            None
        );
        assert_eq!(rule("deallocate", check()).problem(), None);
        let (field, problem) = rule("{parent}/{nmae}", gone()).problem().unwrap();
        assert_eq!(field, "action.path");
        assert!(problem.contains("unknown placeholder"), "{problem}");
        let bad_until = StateCheck {
            path: "{parent}/../x".into(),
            ..gone()
        };
        let (field, _) = rule("deallocate", bad_until).problem().unwrap();
        assert_eq!(field, "until.path");
        let empty = StateCheck {
            status: None,
            ..gone()
        };
        let (field, _) = rule("deallocate", empty).problem().unwrap();
        assert_eq!(field, "until");
        let odd = StateCheck {
            status: Some(42),
            ..gone()
        };
        let (field, _) = rule("deallocate", odd).problem().unwrap();
        assert_eq!(field, "until.status");
        let mut restore = rule("deallocate", check());
        restore.restore = Some(Action {
            method: "POST".into(),
            path: "{id}/x?y".into(),
        });
        assert_eq!(restore.problem().unwrap().0, "restore.path");
    }
}
