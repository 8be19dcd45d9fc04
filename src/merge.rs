//! Three-way JSON merge for stale preconditions.
//!
//! A 412 says another writer got in between the caller's read and its write. If the two changes
//! touch different parts of the document, both can land: apply the other writer's change to the
//! caller's body and send it again with the fresh ETag. If they touch the same part, only a human
//! (or the caller's code) can decide, so the conflicting paths are reported instead.
//!
//! Paths are JSON Pointers (`/properties/counter`). Objects are merged key by key; arrays and
//! scalars are leaves. A key the caller's body leaves out is *not* a deletion — ARM bodies omit
//! read-only fields all the time — while an explicit `null` is. Read-only ARM fields (`id`, `name`,
//! `type`, `etag`, `systemData`, `properties.provisioningState`) are never carried into the merged
//! body.

use serde_json::{Map, Value};

/// Fields the server owns; a change to them is not the other writer's change to carry over.
const READ_ONLY: [&str; 6] = [
    "/id",
    "/name",
    "/type",
    "/etag",
    "/systemData",
    "/properties/provisioningState",
];

/// Merges `ours` (the caller's body, derived from `base`) with `theirs` (the fresh representation).
/// Returns the body to send, or the JSON Pointers both sides changed differently.
pub(crate) fn three_way(base: &Value, ours: &Value, theirs: &Value) -> Result<Value, Vec<String>> {
    let mut our_changes = Vec::new();
    sets(base, ours, String::new(), &mut our_changes);
    let mut their_changes = Vec::new();
    diff(base, theirs, String::new(), &mut their_changes);
    their_changes.retain(|p| !READ_ONLY.iter().any(|r| is_under(p, r)));

    let mut conflicts: Vec<String> = Vec::new();
    for ours_path in &our_changes {
        for theirs_path in &their_changes {
            if overlaps(ours_path, theirs_path)
                && ours.pointer(ours_path) != theirs.pointer(ours_path)
            {
                conflicts.push(ours_path.clone());
                break;
            }
        }
    }
    if !conflicts.is_empty() {
        conflicts.sort();
        conflicts.dedup();
        return Err(conflicts);
    }
    let mut merged = ours.clone();
    for path in &their_changes {
        match theirs.pointer(path) {
            Some(value) => set(&mut merged, path, value.clone()),
            None => remove(&mut merged, path),
        }
    }
    Ok(merged)
}

/// Whether `fresh` already holds everything `request` sets: a write whose answer was lost but
/// which landed. With PUT, objects are replaced whole, so below the top level and `properties`
/// (where the server adds read-only fields) an object must match key for key — a PUT of
/// `{"tags":{}}` is not in place while tags remain. With a JSON merge patch, objects merge, and a
/// `null` asks for the key to be gone.
pub(crate) fn contains(fresh: &Value, request: &Value, merge_patch: bool) -> bool {
    contains_at(fresh, request, merge_patch, 0, "")
}

fn contains_at(fresh: &Value, request: &Value, patch: bool, depth: usize, key: &str) -> bool {
    match (fresh, request) {
        (Value::Object(f), Value::Object(r)) => {
            let may_hold_more = patch || depth == 0 || (depth == 1 && key == "properties");
            if !may_hold_more && f.len() != r.len() {
                return false;
            }
            r.iter().all(|(k, v)| match (f.get(k), v) {
                (None, Value::Null) => patch,
                (Some(_), Value::Null) if patch => false,
                (Some(fv), v) => contains_at(fv, v, patch, depth + 1, k),
                (None, _) => false,
            })
        }
        _ => fresh == request,
    }
}

/// The paths `ours` sets to something other than what `base` has (absent keys are not changes).
fn sets(base: &Value, ours: &Value, at: String, out: &mut Vec<String>) {
    match (base, ours) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                let path = format!("{at}/{}", escape(k));
                match b.get(k) {
                    Some(bv) => sets(bv, v, path, out),
                    None => out.push(path),
                }
            }
        }
        _ if base != ours => out.push(at),
        _ => {}
    }
}

/// Every path where `theirs` differs from `base`, additions and removals included.
fn diff(base: &Value, theirs: &Value, at: String, out: &mut Vec<String>) {
    match (base, theirs) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, bv) in b {
                let path = format!("{at}/{}", escape(k));
                match t.get(k) {
                    Some(tv) => diff(bv, tv, path, out),
                    None => out.push(path),
                }
            }
            for k in t.keys().filter(|k| !b.contains_key(*k)) {
                out.push(format!("{at}/{}", escape(k)));
            }
        }
        _ if base != theirs => out.push(at),
        _ => {}
    }
}

/// Whether one path is the other or lies under it (the root "" overlaps everything).
fn overlaps(a: &str, b: &str) -> bool {
    is_under(a, b) || is_under(b, a)
}

/// Whether `path` is `ancestor` or lies under it.
fn is_under(path: &str, ancestor: &str) -> bool {
    path.starts_with(ancestor)
        && (path.len() == ancestor.len() || path.as_bytes()[ancestor.len()] == b'/')
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Sets `path` in `doc`, creating objects on the way (a non-object on the way is replaced).
fn set(doc: &mut Value, path: &str, value: Value) {
    if path.is_empty() {
        *doc = value;
        return;
    }
    let mut node = doc;
    let segments: Vec<String> = path[1..].split('/').map(unescape).collect();
    for (i, segment) in segments.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if i + 1 == segments.len() {
            map.insert(segment.clone(), value);
            return;
        }
        node = map.entry(segment.clone()).or_insert(Value::Null);
    }
}

fn remove(doc: &mut Value, path: &str) {
    let Some((parent, last)) = path.rsplit_once('/') else {
        return;
    };
    let parent = if parent.is_empty() {
        Some(doc)
    } else {
        doc.pointer_mut(parent)
    };
    if let Some(Value::Object(map)) = parent {
        map.remove(&unescape(last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "id": "/subscriptions/s/x", "etag": "\"1\"",
            "tags": {"env": "dev"},
            "properties": {"provisioningState": "Succeeded", "size": "S", "counter": 1}
        })
    }

    #[test]
    fn disjoint_changes_merge() {
        let ours = json!({"tags": {"env": "dev", "owner": "me"}, "properties": {"size": "S", "counter": 1}});
        let mut theirs = base();
        theirs["properties"]["size"] = json!("M");
        theirs["etag"] = json!("\"2\"");
        let merged = three_way(&base(), &ours, &theirs).unwrap();
        assert_eq!(
            merged,
            json!({"tags": {"env": "dev", "owner": "me"}, "properties": {"size": "M", "counter": 1}})
        );
    }

    #[test]
    fn overlapping_changes_name_the_paths() {
        let ours = json!({"properties": {"counter": 2, "size": "L"}});
        let mut theirs = base();
        theirs["properties"]["counter"] = json!(5);
        let err = three_way(&base(), &ours, &theirs).unwrap_err();
        assert_eq!(err, ["/properties/counter"]);
        // The same change on both sides is no conflict.
        theirs["properties"]["counter"] = json!(2);
        assert!(three_way(&base(), &ours, &theirs).is_ok());
    }

    #[test]
    fn a_subtree_against_a_leaf_conflicts() {
        let ours = json!({"tags": {"env": "prod"}});
        let mut theirs = base();
        theirs["tags"] = json!(null);
        assert_eq!(
            three_way(&base(), &ours, &theirs).unwrap_err(),
            ["/tags/env"]
        );
    }

    #[test]
    fn removals_by_the_other_writer_carry_over() {
        let ours = json!({"properties": {"size": "XL"}, "tags": {"env": "dev"}});
        let mut theirs = base();
        theirs["tags"].as_object_mut().unwrap().remove("env");
        let merged = three_way(&base(), &ours, &theirs).unwrap();
        assert_eq!(merged, json!({"properties": {"size": "XL"}, "tags": {}}));
    }

    #[test]
    fn keys_with_slashes_and_tildes() {
        let b = json!({"tags": {"a/b": 1, "c~d": 1}});
        let ours = json!({"tags": {"a/b": 2}});
        let theirs = json!({"tags": {"a/b": 1, "c~d": 3}});
        assert_eq!(
            three_way(&b, &ours, &theirs).unwrap(),
            json!({"tags": {"a/b": 2, "c~d": 3}})
        );
    }

    #[test]
    fn containment() {
        let fresh = base();
        let put = |r: Value| contains(&fresh, &r, false);
        assert!(put(
            json!({"properties": {"size": "S"}, "tags": {"env": "dev"}})
        ));
        assert!(!put(json!({"properties": {"size": "M"}})));
        assert!(!put(json!({"location": "westus"})));
        assert!(put(json!({})));
        // A PUT replaces `tags` whole: clearing or shrinking them is not in place yet.
        assert!(!put(json!({"tags": {}})));
        let mut more_tags = base();
        more_tags["tags"]["owner"] = json!("ci");
        assert!(!contains(
            &more_tags,
            &json!({"tags": {"env": "dev"}}),
            false
        ));
        // A merge patch merges, and `null` asks for removal.
        assert!(contains(&more_tags, &json!({"tags": {"env": "dev"}}), true));
        assert!(!contains(
            &more_tags,
            &json!({"tags": {"owner": null}}),
            true
        ));
        assert!(contains(&fresh, &json!({"tags": {"owner": null}}), true));
    }
}
