//! Who blocked a write: what the error and the operation status say of the operation in the way,
//! and what ARM's Activity Log says ran on the resource.
//!
//! Everything here comes from servers, so every string is cut to a bounded length and every list
//! to a bounded count; none of it decides what the engine does, it only explains it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::{Classification, ResourceId};

/// The longest string kept from a server's answer (an id, a name, a time).
const MAX_TEXT: usize = 256;

/// How many operations of the Activity Log a report lists.
pub(crate) const MAX_ACTIVITY: usize = 16;

/// The API version of the Activity Log's event listing.
const ACTIVITY_API: &str = "2015-04-01";

/// What is known of the operation that blocked a write: from the error (an operation-status URI,
/// App Service's `Details: Id: …, OperationName: …, CreatedTime: …`, Network's "the last operation
/// that updated/is updating the resource is …") and from polling its status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    /// Its operation-status URI, as the error named it, without its query.
    pub status_uri: Option<String>,
    /// Its id: the status URI's last segment, or the id the message names.
    pub id: Option<String>,
    /// Its name, where the service says it (`Update`, `PutVirtualNetworkOperation`).
    pub name: Option<String>,
    /// When it started, as the service wrote it (`CreatedTime`, an operation status's
    /// `startTime`).
    pub started: Option<String>,
    /// Its status as last polled (`InProgress`, `Succeeded`, …).
    pub status: Option<String>,
}

impl Blocker {
    /// What the conflict's error says of its blocker; `None` when it says nothing.
    pub(crate) fn from_error(classification: &Classification) -> Option<Self> {
        let mut blocker = Blocker::default();
        if let Some(uri) = &classification.operation_uri {
            let without_query = uri.split(['?', '#']).next().unwrap_or_default();
            blocker.status_uri = Some(bounded(without_query));
            blocker.id = operation_id_in(uri);
        }
        if let Some(message) = &classification.message {
            blocker.read_message(message);
        }
        (blocker != Blocker::default()).then_some(blocker)
    }

    /// Reads the blocker's description out of an error message, in the wordings services use.
    fn read_message(&mut self, message: &str) {
        // App Service: "… Details: Id: 52866c8e-…, OperationName: Update, CreatedTime: 12/28/2022
        // 8:57:50 PM, RequestId: …, EntityType: 3".
        if let Some((_, details)) = message.split_once("Details: ") {
            for pair in details.split(", ") {
                let Some((key, value)) = pair.split_once(": ") else {
                    continue;
                };
                let slot = match key.trim() {
                    "Id" => &mut self.id,
                    "OperationName" => &mut self.name,
                    "CreatedTime" => &mut self.started,
                    _ => continue,
                };
                slot.get_or_insert_with(|| bounded(value.trim()));
            }
        }
        // Network: "… the last operation that updated/is updating the resource is
        // PutVirtualNetworkOperation." and "… was canceled and superseded by operation
        // PutSubnetOperation (id)."
        for marker in [
            "the last operation that updated/is updating the resource is ",
            "superseded by operation ",
        ] {
            if let Some((_, rest)) = message.split_once(marker) {
                let name: String = rest
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                if !name.is_empty() {
                    self.name.get_or_insert_with(|| bounded(&name));
                }
                if let Some(id) = rest
                    .strip_prefix(name.as_str())
                    .and_then(|r| r.trim_start().strip_prefix('('))
                    .and_then(|r| r.split_once(')'))
                    .map(|(id, _)| id)
                {
                    self.id.get_or_insert_with(|| bounded(id));
                }
            }
        }
    }

    /// Takes in what an operation-status answer says: its status, and the name and start time
    /// its body may carry (`{"name": …, "status": …, "startTime": …}`).
    pub(crate) fn observe_status(&mut self, status: &str, body: &[u8]) {
        self.status = Some(bounded(status));
        let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice(body) else {
            return;
        };
        let text = |key: &str| doc.get(key).and_then(|v| v.as_str()).map(bounded);
        if let Some(name) = text("name").filter(|name| Some(name) != self.id.as_ref()) {
            self.name.get_or_insert(name);
        }
        if let Some(started) = text("startTime") {
            self.started.get_or_insert(started);
        }
    }
}

/// One operation ARM's Activity Log lists on the resource, its events folded into one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// `Microsoft.Compute/virtualMachines/write`, `…/deallocate/action`, …
    pub operation: String,
    /// Who started it (a user, an application id).
    pub caller: Option<String>,
    /// Its latest status in the window (`Started`, `Accepted`, `Succeeded`, `Failed`).
    pub status: Option<String>,
    /// Its correlation id: the one to quote to the service, or to find in its own logs.
    pub correlation_id: Option<String>,
    /// Its operation id.
    pub operation_id: Option<String>,
    /// When its first event in the window happened.
    pub started: Option<String>,
    /// When its latest event in the window happened.
    pub last_event: Option<String>,
}

/// The Activity Log query for `resource` between `from` and `to`, at the request's own origin
/// (ARM's), so it goes through the same chain and credentials. `None` for a non-ARM resource.
pub(crate) fn activity_log_url(
    request: &Url,
    resource: &ResourceId,
    from: SystemTime,
    to: SystemTime,
) -> Option<Url> {
    let subscription = resource.subscription()?;
    let mut url = request.clone();
    url.set_path(&format!(
        "/subscriptions/{subscription}/providers/Microsoft.Insights/eventtypes/management/values"
    ));
    url.set_fragment(None);
    let filter = format!(
        "eventTimestamp ge '{}' and eventTimestamp le '{}' and resourceUri eq '{}'",
        humantime::format_rfc3339_seconds(from),
        humantime::format_rfc3339_seconds(to + Duration::from_secs(1)),
        resource.path()
    );
    url.query_pairs_mut()
        .clear()
        .append_pair("api-version", ACTIVITY_API)
        .append_pair("$filter", &filter);
    Some(url)
}

/// The operations of an Activity Log answer (`{"value": [event, …]}`), events of one operation
/// folded together, newest first, at most [`MAX_ACTIVITY`].
pub(crate) fn read_activity(body: &[u8]) -> Result<Vec<Activity>, String> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        value: Vec<serde_json::Value>,
    }
    let page: Page =
        serde_json::from_slice(body).map_err(|e| format!("not an Activity Log answer: {e}"))?;
    let mut operations: Vec<Activity> = Vec::new();
    for event in &page.value {
        let text = |pointer: &str| event.pointer(pointer).and_then(|v| v.as_str()).map(bounded);
        let Some(operation) = text("/operationName/value").or_else(|| text("/operationName"))
        else {
            continue;
        };
        let operation_id = text("/operationId");
        let correlation_id = text("/correlationId");
        let at = text("/eventTimestamp");
        let status = text("/status/value").or_else(|| text("/status"));
        let same = |a: &Activity| {
            a.operation == operation
                && match (&operation_id, &a.operation_id) {
                    (Some(x), Some(y)) => x == y,
                    _ => correlation_id.is_some() && a.correlation_id == correlation_id,
                }
        };
        if let Some(known) = operations.iter_mut().find(|a| same(a)) {
            // Events come newest first, but do not rely on it: keep the earliest and latest.
            if at > known.last_event {
                known.last_event = at.clone();
                known.status = status.or(known.status.take());
            }
            if at.is_some() && (known.started.is_none() || at < known.started) {
                known.started = at;
            }
        } else if operations.len() < MAX_ACTIVITY {
            operations.push(Activity {
                operation,
                caller: text("/caller"),
                status,
                correlation_id,
                operation_id,
                started: at.clone(),
                last_event: at,
            });
        }
    }
    operations.sort_by(|a, b| b.last_event.cmp(&a.last_event));
    Ok(operations)
}

/// An operation id longer than this is not taken (real ones are GUIDs or short tokens).
const MAX_OPERATION_ID: usize = 128;

/// The id an operation URI names: its last path segment — never its query, which may carry a
/// signature — when it is a plain token (letters, digits, `-`, `_`, `.`).
pub(crate) fn operation_id_in(uri: &str) -> Option<String> {
    let without_query = uri.split(['?', '#']).next()?;
    let after_scheme = without_query
        .split_once("://")
        .map_or(without_query, |(_, rest)| rest);
    let (_host, path) = after_scheme.split_once('/')?;
    let id = path.trim_end_matches('/').rsplit('/').next()?;
    let plain = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (plain && !id.is_empty() && id.len() <= MAX_OPERATION_ID).then(|| id.to_owned())
}

/// `text`, cut to [`MAX_TEXT`] bytes on a character boundary.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classification(message: &str, operation_uri: Option<&str>) -> Classification {
        Classification {
            message: Some(message.to_owned()),
            operation_uri: operation_uri.map(str::to_owned),
            ..Classification::default()
        }
    }

    #[test]
    fn app_service_names_its_blocker_in_the_message() {
        // hashicorp/terraform-provider-azurerm issue text quoting App Service's 409.
        let message = "Cannot modify this site because another operation is in progress. Details: Id: 52866c8e-dabe-488d-95fe-503b3b75cb09, OperationName: Update, CreatedTime: 12/28/2022 8:57:50 PM, RequestId: b1b7ebc3-8882-4bd7-94bd-004da4056451, EntityType: 3";
        let blocker = Blocker::from_error(&classification(message, None)).unwrap();
        assert_eq!(
            blocker,
            Blocker {
                id: Some("52866c8e-dabe-488d-95fe-503b3b75cb09".into()),
                name: Some("Update".into()),
                started: Some("12/28/2022 8:57:50 PM".into()),
                ..Blocker::default()
            }
        );
    }

    #[test]
    fn network_names_the_operation_in_the_way() {
        let uri = "https://management.azure.com/subscriptions/s/providers/Microsoft.Network/locations/westeurope/operations/5d66a0e0-e08b?api-version=2023-04-01&sig=SECRET";
        let message = "Cannot proceed with operation because resource /subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v used by resource /subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v/subnets/a is not in Succeeded state. Resource is in Updating state and the last operation that updated/is updating the resource is PutVirtualNetworkOperation.";
        let blocker = Blocker::from_error(&classification(message, Some(uri))).unwrap();
        assert_eq!(blocker.id.as_deref(), Some("5d66a0e0-e08b"));
        assert_eq!(blocker.name.as_deref(), Some("PutVirtualNetworkOperation"));
        let status_uri = blocker.status_uri.unwrap();
        assert!(!status_uri.contains("sig="), "{status_uri}");

        let superseded = "Operation PutSubnetOperation (a1) was canceled and superseded by operation PutVirtualNetworkOperation (b2-c3).";
        let blocker = Blocker::from_error(&classification(superseded, None)).unwrap();
        assert_eq!(
            (blocker.name.as_deref(), blocker.id.as_deref()),
            (Some("PutVirtualNetworkOperation"), Some("b2-c3"))
        );
        assert_eq!(Blocker::from_error(&classification("busy", None)), None);
    }

    #[test]
    fn an_operation_status_fills_in_status_name_and_start() {
        let mut blocker = Blocker {
            id: Some("op-1".into()),
            ..Blocker::default()
        };
        let body = br#"{"id":"/x/operations/op-1","name":"op-1","status":"InProgress","startTime":"2026-12-01T10:00:00Z"}"#;
        blocker.observe_status("InProgress", body);
        assert_eq!(blocker.status.as_deref(), Some("InProgress"));
        assert_eq!(blocker.name, None, "a name that is the id says nothing new");
        assert_eq!(blocker.started.as_deref(), Some("2026-12-01T10:00:00Z"));
        blocker.observe_status("Succeeded", b"not json");
        assert_eq!(blocker.status.as_deref(), Some("Succeeded"));
    }

    #[test]
    fn the_activity_log_query_names_the_resource_and_window() {
        let request = Url::parse("https://management.azure.com/subscriptions/S1/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/vm/start?api-version=2024-07-01&x=1").unwrap();
        let vm = ResourceId::from_url(&request);
        let to = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let url = activity_log_url(&request, &vm, to - Duration::from_secs(3600), to).unwrap();
        assert_eq!(
            url.path(),
            "/subscriptions/S1/providers/Microsoft.Insights/eventtypes/management/values"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("api-version".into(), "2015-04-01".into()));
        assert_eq!(
            pairs[1].1,
            "eventTimestamp ge '2027-01-15T07:00:00Z' and eventTimestamp le '2027-01-15T08:00:01Z' and resourceUri eq '/subscriptions/S1/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/vm'"
        );
        let plain = Url::parse("https://example.com/items/1").unwrap();
        assert!(activity_log_url(&plain, &ResourceId::from_url(&plain), to, to).is_none());
    }

    #[test]
    fn activity_events_fold_into_operations_newest_first() {
        let body = br#"{"value":[
            {"operationName":{"value":"Microsoft.Compute/virtualMachines/write"},"caller":"bob","status":{"value":"Started"},"correlationId":"c2","operationId":"o2","eventTimestamp":"2026-12-01T10:00:05Z"},
            {"operationName":{"value":"Microsoft.Compute/virtualMachines/write"},"caller":"alice","status":{"value":"Succeeded"},"correlationId":"c1","operationId":"o1","eventTimestamp":"2026-12-01T10:00:04Z"},
            {"operationName":{"value":"Microsoft.Compute/virtualMachines/write"},"caller":"alice","status":{"value":"Started"},"correlationId":"c1","operationId":"o1","eventTimestamp":"2026-12-01T10:00:01Z"},
            {"caller":"nobody"}
        ]}"#;
        let operations = read_activity(body).unwrap();
        assert_eq!(operations.len(), 2);
        assert_eq!(operations[0].caller.as_deref(), Some("bob"));
        let alice = &operations[1];
        assert_eq!(alice.status.as_deref(), Some("Succeeded"));
        assert_eq!(alice.started.as_deref(), Some("2026-12-01T10:00:01Z"));
        assert_eq!(alice.last_event.as_deref(), Some("2026-12-01T10:00:04Z"));
        assert!(read_activity(b"<html>").is_err());

        let many: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    r#"{{"operationName":{{"value":"w"}},"operationId":"o{i}","caller":"{}"}}"#,
                    "x".repeat(1000)
                )
            })
            .collect();
        let body = format!(r#"{{"value":[{}]}}"#, many.join(","));
        let operations = read_activity(body.as_bytes()).unwrap();
        assert_eq!(operations.len(), MAX_ACTIVITY);
        assert!(
            operations
                .iter()
                .all(|a| a.caller.as_ref().unwrap().len() == MAX_TEXT)
        );
    }
}
