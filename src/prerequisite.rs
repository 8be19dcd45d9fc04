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

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// A request on the resource: `{method} {resource id}/{path}`, same host and `api-version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// The HTTP method; `POST` unless said.
    #[serde(default = "post")]
    pub method: String,
    /// The action's path under the resource, e.g. `deallocate`.
    pub path: String,
}

fn post() -> String {
    "POST".to_owned()
}

/// A condition on a GET of the resource (or of a sub-path such as `instanceView`): some string
/// under `pointer` equals `equals`, ignoring case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateCheck {
    /// A sub-path to GET under the resource (`instanceView`); empty for the resource itself.
    #[serde(default)]
    pub path: String,
    /// A JSON Pointer into the answer (`/statuses`, `/properties/provisioningState`); empty for
    /// the whole document.
    #[serde(default)]
    pub pointer: String,
    /// The string some value under the pointer must equal.
    pub equals: String,
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

impl StateCheck {
    /// What `body` says, as `(satisfied, observed)`: the observed value is the string under the
    /// pointer that shares `equals`' prefix (`PowerState/…`), else the first string there.
    pub(crate) fn evaluate(&self, body: &[u8]) -> (bool, Option<String>) {
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

    fn check() -> StateCheck {
        StateCheck {
            path: "instanceView".into(),
            pointer: "/statuses".into(),
            equals: "PowerState/deallocated".into(),
        }
    }

    #[test]
    fn evaluates_instance_view_statuses() {
        let running = json!({"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}]});
        let (done, seen) = check().evaluate(running.to_string().as_bytes());
        assert!(!done);
        assert_eq!(seen.as_deref(), Some("PowerState/running"));
        let stopped = json!({"statuses": [{"code": "PowerState/deallocated"}]});
        assert!(check().evaluate(stopped.to_string().as_bytes()).0);
        assert_eq!(check().evaluate(b"<html>"), (false, None));
        assert_eq!(check().evaluate(b"{}"), (false, None));
    }
}
