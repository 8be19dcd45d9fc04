//! Table-driven classifier tests over the two fixture corpora:
//!
//! - `fixtures/errors/`: real 409/412 (and related) answers, each copied from the public record it
//!   names in `source`;
//! - `fixtures/constructed/`: inputs made on purpose (hostile or broken bodies, shapes no public
//!   record shows yet), which need no `source`.
//!
//! Every `*.json` file in either directory is a case: dropping a file there is enough to add one.
//! Each corpus runs as one test that checks every file and reports every file that fails, by
//! name, with what was wanted and what the classifier said; one bad file never hides another.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use reqwest_conflict::{Classification, Classifier, ConflictKind};
use serde::{Deserialize, Deserializer};

/// One response and what the classifier must make of it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    description: String,
    service: String,
    /// Where the body was copied from: required in `fixtures/errors/`.
    source: Option<String>,
    status: u16,
    #[serde(default)]
    request_headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    response_headers: serde_json::Map<String, serde_json::Value>,
    body: Option<String>,
    body_base64: Option<String>,
    expect: Expect,
}

/// Fields that are absent are not checked; `null` means "must be absent".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    kind: ConflictKind,
    #[serde(default, deserialize_with = "present")]
    code: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    rule: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    target: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    operation_uri: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    referenced_resource: Option<Option<String>>,
    #[serde(default)]
    detail_codes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    retry_after_secs: Option<Option<f64>>,
}

/// Tells a field set to `null` (`Some(None)`) from a missing one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The two corpora, and what each demands of its files.
#[derive(Clone, Copy, PartialEq)]
enum Corpus {
    /// `fixtures/errors/`: every file names its public source.
    Recorded,
    /// `fixtures/constructed/`: made on purpose, no source needed.
    Constructed,
}

impl Corpus {
    fn dir(self) -> PathBuf {
        let name = match self {
            Self::Recorded => "errors",
            Self::Constructed => "constructed",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
    }

    /// The corpus's `*.json` files, sorted.
    fn files(self) -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(self.dir())
            .unwrap()
            .map(|entry| entry.unwrap())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".json"))
            .collect();
        files.sort();
        files
    }

    fn load(self, file: &str) -> Result<Fixture, String> {
        let text = std::fs::read_to_string(self.dir().join(file)).map_err(|e| e.to_string())?;
        let fx: Fixture = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if self == Corpus::Recorded {
            let source = fx.source.as_deref().ok_or("no `source`")?;
            if !is_public_source(source) {
                return Err(format!(
                    "`source` {source:?} is neither an https URL nor owner/repo@commit:path"
                ));
            }
        }
        Ok(fx)
    }
}

/// An `https://` URL, or `owner/repo@commit:path`.
fn is_public_source(source: &str) -> bool {
    if let Some(rest) = source.strip_prefix("https://") {
        return rest.contains('/') && !rest.contains(char::is_whitespace);
    }
    let Some((repo, rest)) = source.split_once('@') else {
        return false;
    };
    let Some((commit, path)) = rest.split_once(':') else {
        return false;
    };
    repo.split('/').count() == 2
        && commit.len() >= 7
        && commit.chars().all(|c| c.is_ascii_hexdigit())
        && !path.is_empty()
}

fn headers(map: &serde_json::Map<String, serde_json::Value>) -> Result<HeaderMap, String> {
    map.iter()
        .map(|(name, value)| {
            let value = value
                .as_str()
                .ok_or_else(|| format!("header {name} is not a string"))?;
            Ok((
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?,
                HeaderValue::from_str(value).map_err(|e| format!("{name}: {e}"))?,
            ))
        })
        .collect()
}

/// Classifies one file; `Err` says everything that did not match.
fn check(corpus: Corpus, file: &str) -> Result<(), String> {
    let fx = corpus.load(file)?;
    let body = match (&fx.body, &fx.body_base64) {
        (Some(body), None) => body.clone().into_bytes(),
        (None, Some(b64)) => base64(b64).ok_or("bad body_base64")?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => return Err("both body and body_base64".into()),
    };
    let status = StatusCode::from_u16(fx.status).map_err(|e| e.to_string())?;
    let got = Classifier::azure().classify(
        status,
        &headers(&fx.request_headers)?,
        &headers(&fx.response_headers)?,
        &body,
    );
    // The classification travels in reports; it must survive a serde round trip.
    let json = serde_json::to_string(&got).unwrap();
    if serde_json::from_str::<Classification>(&json).unwrap() != got {
        return Err("the classification does not survive a serde round trip".into());
    }
    let failures = compare(&fx.expect, &got);
    if failures.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} ({}): {}\n    classified by rule {:?}, code {:?}, detail codes {:?}",
        fx.service,
        fx.description,
        failures.join("; "),
        got.rule,
        got.code,
        got.detail_codes
    ))
}

fn compare(want: &Expect, got: &Classification) -> Vec<String> {
    let mut failures = Vec::new();
    if want.kind != got.kind {
        failures.push(format!("kind: want {}, got {}", want.kind, got.kind));
    }
    let mut field = |name: &str, want: Option<&Option<String>>, got: &Option<String>| {
        if let Some(want) = want
            && want != got
        {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    };
    field("code", want.code.as_ref(), &got.code);
    field("rule", want.rule.as_ref(), &got.rule);
    field("target", want.target.as_ref(), &got.target);
    field(
        "operation_uri",
        want.operation_uri.as_ref(),
        &got.operation_uri,
    );
    field(
        "referenced_resource",
        want.referenced_resource.as_ref(),
        &got.referenced_resource,
    );
    if let Some(codes) = &want.detail_codes
        && codes != &got.detail_codes
    {
        failures.push(format!(
            "detail_codes: want {codes:?}, got {:?}",
            got.detail_codes
        ));
    }
    if let Some(secs) = want.retry_after_secs {
        let got_secs = got.retry_after.map(|d| d.as_secs_f64());
        let same = match (secs, got_secs) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            (a, b) => a.is_none() && b.is_none(),
        };
        if !same {
            failures.push(format!("retry_after_secs: want {secs:?}, got {got_secs:?}"));
        }
    }
    failures
}

/// Checks every file of `corpus` and fails with one line per file that does not classify as
/// its `expect` says.
fn check_corpus(corpus: Corpus) {
    let files = corpus.files();
    assert!(
        !files.is_empty(),
        "no fixtures in {}",
        corpus.dir().display()
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| check(corpus, file).err().map(|e| format!("{file}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures in {} do not classify as expected:\n{}",
        failures.len(),
        files.len(),
        corpus.dir().display(),
        failures.join("\n")
    );
}

#[test]
fn recorded_errors_classify_as_expected() {
    check_corpus(Corpus::Recorded);
}

#[test]
fn constructed_inputs_classify_as_expected() {
    check_corpus(Corpus::Constructed);
}

/// The recorded corpus is wide enough to be worth trusting: many responses, from many services,
/// with every kind represented.
#[test]
fn recorded_corpus_is_broad() {
    let files = Corpus::Recorded.files();
    let fixtures: Vec<Fixture> = files
        .iter()
        .map(|file| {
            Corpus::Recorded
                .load(file)
                .unwrap_or_else(|e| panic!("{file}: {e}"))
        })
        .collect();
    assert!(
        fixtures.len() >= 150,
        "{} recorded fixtures",
        fixtures.len()
    );
    let services: BTreeSet<&str> = fixtures.iter().map(|f| f.service.as_str()).collect();
    assert!(
        services.len() >= 25,
        "{} services: {services:?}",
        services.len()
    );
    let kinds: HashSet<ConflictKind> = fixtures.iter().map(|f| f.expect.kind).collect();
    assert_eq!(kinds.len(), 6, "every ConflictKind is recorded: {kinds:?}");
}

#[test]
fn sources_are_checked() {
    assert!(is_public_source(
        "https://github.com/Azure/azure-cli/blob/0123456789abcdef/src/x.yaml"
    ));
    assert!(is_public_source(
        "Azure/azure-cli@0123456789abcdef:src/azure-cli/x.yaml"
    ));
    assert!(!is_public_source("constructed"));
    assert!(!is_public_source("http://example.com/x"));
    assert!(!is_public_source("Azure/azure-cli@main:src/x.yaml"));
    assert!(!is_public_source("Azure/azure-cli@0123456:"));
}

/// Standard base64 (padding optional), enough for fixture bodies that are not UTF-8.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
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

#[test]
fn base64_decodes() {
    assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(base64("/w==").unwrap(), [0xff]);
    assert_eq!(base64("a*"), None);
}
