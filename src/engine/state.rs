//! Reading a resource's or an operation's state out of a re-fetched body.

/// ARM's terminal states. Services spell `Canceled` both ways; all compare case-insensitively.
const TERMINAL: [&str; 4] = ["Succeeded", "Failed", "Canceled", "Cancelled"];

/// Whether `state` ends a transition.
pub(crate) fn is_terminal(state: &str) -> bool {
    TERMINAL.iter().any(|t| t.eq_ignore_ascii_case(state))
}

/// What a poll target reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A resource: `properties.provisioningState` (or a top-level `provisioningState`); absent
    /// means `Succeeded` by the ARM contract.
    Resource,
    /// An `Azure-AsyncOperation` / operations URI: the `status` field.
    Operation,
}

/// The state named in `body`. A resource body without a state is `Succeeded` (ARM contract); a
/// body that is not JSON at all yields `None`, since nothing was learned from it.
pub(crate) fn read_state(source: Source, body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let found = match source {
        Source::Resource => value
            .pointer("/properties/provisioningState")
            .or_else(|| value.get("provisioningState")),
        Source::Operation => value.get("status").or_else(|| value.get("Status")),
    };
    match (found.and_then(|v| v.as_str()), source) {
        (Some(s), _) => Some(s.chars().take(64).collect()),
        (None, Source::Resource) if value.is_object() => Some("Succeeded".to_owned()),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_any_case() {
        for s in ["Succeeded", "failed", "CANCELED", "Cancelled"] {
            assert!(is_terminal(s), "{s}");
        }
        for s in [
            "Updating",
            "Creating",
            "Deleting",
            "Accepted",
            "InProgress",
            "",
        ] {
            assert!(!is_terminal(s), "{s}");
        }
    }

    #[test]
    fn reads_states() {
        let r = |b: &str| read_state(Source::Resource, b.as_bytes());
        assert_eq!(
            r(r#"{"properties":{"provisioningState":"Updating"}}"#).as_deref(),
            Some("Updating")
        );
        assert_eq!(
            r(r#"{"provisioningState":"Deleting"}"#).as_deref(),
            Some("Deleting")
        );
        assert_eq!(r(r#"{"properties":{}}"#).as_deref(), Some("Succeeded"));
        assert_eq!(r("<html>"), None);
        assert_eq!(r("[1]"), None);
        let o = |b: &str| read_state(Source::Operation, b.as_bytes());
        assert_eq!(
            o(r#"{"status":"InProgress"}"#).as_deref(),
            Some("InProgress")
        );
        assert_eq!(o(r#"{"id":"x"}"#), None);
    }
}
