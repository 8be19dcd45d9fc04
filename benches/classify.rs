//! Classifier throughput over every recorded error in `fixtures/errors/`.
//!
//! ```text
//! cargo bench --bench classify
//! ```
//!
//! The fixtures are read once, at start, and each is checked to classify as its `expect.kind`
//! says, so the bench measures the paths the tests prove correct. `all_fixtures` classifies the
//! whole set per iteration (`Throughput::Elements` = number of fixtures, so criterion reports
//! classifications per second); a few single cases show the spread between a bare header-only
//! answer and a long ARM body with nested details.

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::Duration,
};

use criterion::{Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use reqwest_conflict::{Classifier, ConflictKind};
use serde_json::Value;

/// One recorded 409/412 as the classifier sees it.
struct Case {
    file: String,
    status: StatusCode,
    request_headers: HeaderMap,
    response_headers: HeaderMap,
    body: Vec<u8>,
    kind: ConflictKind,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/errors")
}

fn headers(doc: &Value, field: &str) -> HeaderMap {
    doc.get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, value)| {
            (
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value.as_str().expect("header value is a string"))
                    .expect("header value"),
            )
        })
        .collect()
}

fn load() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("fixtures/errors")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let doc: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read fixture"))
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
            let body = match (doc.get("body"), doc.get("body_base64")) {
                (Some(b), _) => b.as_str().expect("body").as_bytes().to_vec(),
                (None, Some(b)) => base64(b.as_str().expect("body_base64")),
                (None, None) => Vec::new(),
            };
            let kind = serde_json::from_value(doc["expect"]["kind"].clone())
                .unwrap_or_else(|e| panic!("{file}: expect.kind: {e}"));
            Case {
                status: StatusCode::from_u16(doc["status"].as_u64().expect("status") as u16)
                    .expect("status"),
                request_headers: headers(&doc, "request_headers"),
                response_headers: headers(&doc, "response_headers"),
                body,
                kind,
                file,
            }
        })
        .collect()
}

/// Standard base64 (padding optional): the few fixture bodies that are not UTF-8.
fn base64(text: &str) -> Vec<u8> {
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
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
            _ => panic!("bad base64"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn classify(classifier: &Classifier, case: &Case) -> ConflictKind {
    classifier
        .classify(
            case.status,
            &case.request_headers,
            &case.response_headers,
            black_box(&case.body),
        )
        .kind
}

fn main() {
    let cases = load();
    let classifier = Classifier::azure();
    for case in &cases {
        let got = classify(&classifier, case);
        assert_eq!(
            got, case.kind,
            "{}: the bench would measure a wrong path",
            case.file
        );
    }
    let bytes: usize = cases.iter().map(|c| c.body.len()).sum();

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();

    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(cases.len() as u64));
    group.bench_function(format!("all_fixtures_{}", cases.len()), |b| {
        b.iter(|| {
            for case in &cases {
                black_box(classify(&classifier, case));
            }
        })
    });
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("all_fixtures_bytes", |b| {
        b.iter(|| {
            for case in &cases {
                black_box(classify(&classifier, case));
            }
        })
    });
    group.finish();

    // The extremes: no body at all, the commonest ARM 409, XML, a failed operation's status,
    // the longest body.
    let longest = cases.iter().max_by_key(|c| c.body.len()).expect("fixtures");
    let named = |name: &str| cases.iter().find(|c| c.file == format!("{name}.json"));
    let mut singles: Vec<&Case> = [
        "blob_head_if_match_stale_header_only",
        "network_another_operation_in_progress_vpn_connection",
        "blob_lease_already_present",
        "network_operation_status_failed_invalid_sku",
    ]
    .into_iter()
    .filter_map(named)
    .collect();
    singles.push(longest);
    let mut group = c.benchmark_group("classify_one");
    group.throughput(Throughput::Elements(1));
    for case in singles {
        let id = format!(
            "{} ({} B)",
            case.file.trim_end_matches(".json"),
            case.body.len()
        );
        group.bench_function(id, |b| b.iter(|| classify(&classifier, case)));
    }
    group.finish();

    c.final_summary();
}
