//! Classify recorded 409/412 responses from the command line.
//!
//! Operators meet an Azure conflict in a log and want to know what this crate would make of it —
//! wait, refresh the ETag, run a prerequisite, or give up — without writing a program. This reads
//! JSON Lines on stdin, one response per line, and writes one JSON line per response to stdout:
//!
//! ```text
//! $ echo '{"status":409,"body":"{\"error\":{\"code\":\"AnotherOperationInProgress\",\"message\":\"Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: https://management.azure.com/subscriptions/s/providers/Microsoft.Network/locations/westeurope/operations/1?api-version=2023-04-01.\"}}"}' \
//!     | cargo run -q --example classify
//! {"code":"AnotherOperationInProgress","detail_codes":[],"kind":"state_conflict","message":"Another operation …","operation_uri":"https://management.azure.com/subscriptions/s/providers/Microsoft.Network/locations/westeurope/operations/1?api-version=2023-04-01","referenced_resource":null,"retry_after_secs":null,"rule":"another_operation_in_progress","status":409,"target":null,"why":"The resource or a dependency is mid-operation; …"}
//! ```
//!
//! Input fields: `status` (required); `request_headers` and `response_headers` (objects, names
//! case-insensitive, values strings or arrays of strings); `body` (text) or `body_base64` (for
//! bodies that are not UTF-8); `id` (echoed back). The files in `fixtures/errors/` and
//! `fixtures/constructed/` are valid input too
//! (`jq -c . fixtures/errors/*.json | cargo run -q --example classify`); their `description`,
//! `service`, `source` and `expect` are ignored.
//!
//! Each output line says what the classifier made of the response; `rule` names the rule of
//! `src/classify/rules.json` that decided and `why` is that rule's reason (both `null` when no
//! rule did and the kind is the conservative `unknown`).
//!
//! A line that cannot be used gets `{"error": "…"}` and the run goes on; blank lines are skipped.
//! The exit status is 0 unless stdin cannot be read or stdout cannot be written (a closed pipe,
//! as with `| head`, just ends the run).

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use reqwest_conflict::Classifier;
use serde::Deserialize;
use serde_json::{Value, json};

/// One input line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    status: u16,
    #[serde(default)]
    request_headers: serde_json::Map<String, Value>,
    #[serde(default)]
    response_headers: serde_json::Map<String, Value>,
    body: Option<String>,
    body_base64: Option<String>,
    id: Option<Value>,
    // Present in fixture files; accepted so they can be piped through unchanged.
    #[allow(dead_code)]
    description: Option<Value>,
    #[allow(dead_code)]
    service: Option<Value>,
    #[allow(dead_code)]
    source: Option<Value>,
    #[allow(dead_code)]
    expect: Option<Value>,
}

fn main() -> ExitCode {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                eprintln!("classify: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        }
        let result = match std::str::from_utf8(&line) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => classify_line(text),
            Err(e) => json!({ "error": format!("line is not UTF-8: {e}") }),
        };
        if let Err(e) = writeln!(output, "{result}") {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("classify: cannot write stdout: {e}");
            return ExitCode::FAILURE;
        }
    }
}

/// Classifies one input line; any problem with the line becomes `{"error": …}`.
fn classify_line(line: &str) -> Value {
    match run(line) {
        Ok(value) => value,
        Err(error) => json!({ "error": error }),
    }
}

fn run(line: &str) -> Result<Value, String> {
    let case: Case = serde_json::from_str(line).map_err(|e| format!("bad input line: {e}"))?;
    let status =
        StatusCode::from_u16(case.status).map_err(|_| format!("bad status {}", case.status))?;
    let body = match (case.body, case.body_base64) {
        (Some(_), Some(_)) => return Err("give either body or body_base64, not both".into()),
        (Some(body), None) => body.into_bytes(),
        (None, Some(b64)) => base64(&b64).ok_or("body_base64 is not valid base64")?,
        (None, None) => Vec::new(),
    };
    let request_headers = headers("request_headers", &case.request_headers)?;
    let response_headers = headers("response_headers", &case.response_headers)?;
    let classifier = Classifier::azure();
    let c = classifier.classify(status, &request_headers, &response_headers, &body);
    // Which rule decided, and why it says what it says: the first thing an operator asks.
    let why = c.rule.as_deref().and_then(|name| {
        classifier
            .rules()
            .iter()
            .find(|rule| rule.name.as_deref() == Some(name))
            .and_then(|rule| rule.why.clone())
    });
    let retry_after_secs = c.retry_after.map(|d| {
        if d.subsec_nanos() == 0 {
            json!(d.as_secs())
        } else {
            json!(d.as_secs_f64())
        }
    });
    let mut out = json!({
        "kind": c.kind,
        "status": c.status,
        "code": c.code,
        "message": c.message,
        "target": c.target,
        "detail_codes": c.detail_codes,
        "retry_after_secs": retry_after_secs,
        "operation_uri": c.operation_uri,
        "referenced_resource": c.referenced_resource,
        "rule": c.rule,
        "why": why,
    });
    if let Some(id) = case.id {
        out["id"] = id;
    }
    Ok(out)
}

/// Builds a header map; values may be a string or an array of strings (repeated header).
fn headers(what: &str, map: &serde_json::Map<String, Value>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in map {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{what}: bad header name {name:?}"))?;
        let values = match value {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().ok_or(()))
                .collect::<Result<_, _>>()
                .map_err(|()| format!("{what}: {name}: values must be strings"))?,
            _ => return Err(format!("{what}: {name}: value must be a string")),
        };
        for v in values {
            let v = HeaderValue::from_str(v)
                .map_err(|_| format!("{what}: {name}: bad header value {v:?}"))?;
            headers.append(header.clone(), v);
        }
    }
    Ok(headers)
}

/// Standard base64 (padding optional); `None` on any character outside the alphabet.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_a_line() {
        let line = r#"{"id":7,"status":409,"response_headers":{"Retry-After":"20"},
            "body":"{\"error\":{\"code\":\"AnotherOperationInProgress\",\"message\":\"Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: https://management.azure.com/subscriptions/s/providers/Microsoft.Network/locations/westeurope/operations/1?api-version=2023-04-01.\"}}"}"#;
        let out = classify_line(line);
        assert_eq!(out["kind"], "state_conflict");
        assert_eq!(out["code"], "AnotherOperationInProgress");
        assert_eq!(out["retry_after_secs"], 20);
        assert_eq!(out["rule"], "another_operation_in_progress");
        assert!(out["why"].as_str().unwrap().contains("mid-operation"));
        assert_eq!(out["id"], 7);
        assert_eq!(
            out["operation_uri"],
            "https://management.azure.com/subscriptions/s/providers/Microsoft.Network/locations/westeurope/operations/1?api-version=2023-04-01"
        );
        assert!(out["referenced_resource"].is_null());
        assert_eq!(out["detail_codes"], json!([]));
    }

    #[test]
    fn request_headers_decide_412() {
        let create = classify_line(r#"{"status":412,"request_headers":{"IF-NONE-MATCH":"*"}}"#);
        assert_eq!(create["kind"], "already_exists");
        let update = classify_line(r#"{"status":412,"request_headers":{"if-match":["\"1\""]}}"#);
        assert_eq!(update["kind"], "stale_precondition");
    }

    #[test]
    fn millisecond_delays_are_fractional() {
        let out = classify_line(r#"{"status":409,"response_headers":{"retry-after-ms":"1500"}}"#);
        assert_eq!(out["retry_after_secs"], 1.5);
        assert_eq!(out["kind"], "unknown");
        assert!(
            out["rule"].is_null() && out["why"].is_null(),
            "no rule decided"
        );
    }

    #[test]
    fn base64_bodies() {
        // {"code":"ScopeLocked","message":"verrouill\xe9e"} in Latin-1
        let out = classify_line(
            r#"{"status":409,"body_base64":"eyJjb2RlIjoiU2NvcGVMb2NrZWQiLCJtZXNzYWdlIjoidmVycm91aWxs6WUifQ=="}"#,
        );
        assert_eq!(out["kind"], "permanent");
        assert_eq!(out["message"], "verrouill\u{fffd}e");
    }

    #[test]
    fn bad_lines_become_errors() {
        for bad in [
            "not json",
            r#"{"body":"x"}"#,
            r#"{"status":42}"#,
            r#"{"status":409,"bodyy":""}"#,
            r#"{"status":409,"request_headers":{"bad name":"x"}}"#,
            r#"{"status":409,"request_headers":{"x":"line\nbreak"}}"#,
            r#"{"status":409,"request_headers":{"x":1}}"#,
            r#"{"status":409,"body":"","body_base64":""}"#,
            r#"{"status":409,"body_base64":"!!"}"#,
        ] {
            let out = classify_line(bad);
            assert!(out["error"].is_string(), "{bad}: {out}");
            assert!(out.get("kind").is_none(), "{bad}: {out}");
        }
    }

    #[test]
    fn fixture_files_are_valid_input() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        for dir in ["errors", "constructed"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "json") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let fixture: Value = serde_json::from_str(&text).unwrap();
                    let out = classify_line(&fixture.to_string());
                    assert_eq!(out["kind"], fixture["expect"]["kind"], "{}", path.display());
                }
            }
        }
    }
}
