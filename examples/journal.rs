//! Checks the journals of several processes together, and draws them as a timeline.
//!
//! ```text
//! cargo run --example journal -- verify [--skew 10ms] a.jsonl b.jsonl …
//! cargo run --example journal -- timeline a.jsonl b.jsonl … > timeline.svg
//! cargo run --example journal        # a demo on the embedded simulator
//! ```
//!
//! Each process writes its journal with `Journal::with_export` (one JSON line per write). `verify`
//! merges the files, per resource by fencing token, and exits with status 1 when two lease-held
//! intervals overlap or a token went backwards. `timeline` draws an SVG: a lane per resource, a
//! bar per write (coloured by process, its token written on it), writes that met a 409/412
//! outlined in red.
//!
//! The demo runs two "processes" (two middlewares with journals of their own, sharing one lease
//! store, as processes share Redis) writing to two VMs, exports their journals, verifies them and
//! writes `target/journal-timeline.svg`.

use std::{
    fmt::Write as _,
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arm_sim::{Sim, SimConfig};
use reqwest_conflict::{
    ConflictMiddleware, ConflictPolicy, MemoryLeases,
    journal::{Journal, JournalEntry, read_json_lines, verify},
};
use reqwest_middleware::ClientBuilder;
use serde_json::json;

const USAGE: &str = "usage: journal [verify [--skew DURATION] FILE… | timeline FILE…]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => demo().await,
        Some("verify") => check(&args[1..]),
        Some("timeline") => read_all(&args[1..]).map(|entries| print!("{}", timeline(&entries))),
        Some(_) => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// `verify [--skew D] FILE…`: the verdict, and failure when it is not clean.
fn check(args: &[String]) -> Result<(), String> {
    let (skew, files) = match args {
        [flag, value, files @ ..] if flag == "--skew" => {
            let skew = humantime::parse_duration(value).map_err(|e| format!("--skew: {e}"))?;
            (skew, files)
        }
        files => (Duration::ZERO, files),
    };
    let verdict = verify(read_all(files)?, skew);
    println!("{verdict}");
    if verdict.is_ok() {
        Ok(())
    } else {
        Err("the journals show writes that were not one at a time".to_owned())
    }
}

fn read_all(files: &[String]) -> Result<Vec<JournalEntry>, String> {
    if files.is_empty() {
        return Err(USAGE.to_owned());
    }
    let mut entries = Vec::new();
    for file in files {
        let read = File::open(file).and_then(|f| read_json_lines(BufReader::new(f)));
        entries.extend(read.map_err(|e| format!("{file}: {e}"))?);
    }
    Ok(entries)
}

/// Two writers with journals of their own and one lease store, on two VMs; then the check and
/// the picture.
async fn demo() -> Result<(), String> {
    let sim = Sim::start(SimConfig {
        transition: Duration::from_millis(40),
        ..SimConfig::default()
    })
    .await;
    let vms: Vec<String> = (1..=2)
        .map(|i| format!("/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm{i}"))
        .collect();
    for vm in &vms {
        sim.seed(vm, json!({"location": "westus", "properties": {}}));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let shared = Arc::new(MemoryLeases::new());
    let mut files = Vec::new();
    let mut writers = Vec::new();
    for name in ["writer-1", "writer-2"] {
        let path: PathBuf = dir.join(format!("journal-{name}.jsonl"));
        let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push(path.display().to_string());
        let journal = Journal::default().with_process(name).with_export(file);
        let middleware = ConflictMiddleware::new(ConflictPolicy::fast())
            .with_shared_leases(shared.clone())
            .with_journal(journal);
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(middleware)
            .build();
        for (i, vm) in vms.iter().cycle().take(6).enumerate() {
            let (client, url) = (
                client.clone(),
                sim.url(&format!("{vm}?api-version=2024-07-01")),
            );
            writers.push(tokio::spawn(async move {
                let body =
                    json!({"location": "westus", "tags": {"n": i.to_string()}, "properties": {}});
                client
                    .put(&url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status())
            }));
        }
    }
    for writer in writers {
        let status = writer
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("a write ended {status}"));
        }
    }
    println!("journals: {}", files.join(", "));
    check(&files)?;
    let svg = dir.join("journal-timeline.svg");
    std::fs::write(&svg, timeline(&read_all(&files)?)).map_err(|e| e.to_string())?;
    println!("timeline: {}", svg.display());
    Ok(())
}

/// The entries as an SVG timeline: a lane per resource, a bar per write.
fn timeline(entries: &[JournalEntry]) -> String {
    const WIDTH: f64 = 960.0;
    const LABEL: f64 = 240.0;
    const LANE: f64 = 30.0;
    const COLOURS: [&str; 6] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948",
    ];

    let mut resources: Vec<&str> = entries.iter().map(|e| e.resource.as_str()).collect();
    resources.sort_unstable();
    resources.dedup();
    let mut processes: Vec<&str> = entries.iter().map(|e| e.process.as_str()).collect();
    processes.sort_unstable();
    processes.dedup();
    let first = entries
        .iter()
        .map(|e| e.started_at)
        .min()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let last = entries
        .iter()
        .map(|e| e.ended_at.unwrap_or(e.started_at))
        .max()
        .unwrap_or(first);
    let span = last
        .duration_since(first)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-3);
    let x = |t: SystemTime| {
        LABEL
            + t.duration_since(first).unwrap_or_default().as_secs_f64() / span
                * (WIDTH - LABEL - 10.0)
    };
    let height = LANE * (resources.len() + processes.len()) as f64 + 50.0;

    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="4" y="14" font-weight="bold">{} writes, {} resources, {:.0} ms</text>"#,
        entries.len(),
        resources.len(),
        span * 1e3
    );
    for (lane, resource) in resources.iter().enumerate() {
        let y = 30.0 + LANE * lane as f64;
        let short: String = resource
            .rsplit('/')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("/");
        let _ = write!(
            svg,
            r##"<line x1="0" x2="{WIDTH}" y1="{}" y2="{}" stroke="#ddd"/><text x="4" y="{}"><title>{}</title>{}</text>"##,
            y + LANE - 2.0,
            y + LANE - 2.0,
            y + 18.0,
            xml(resource),
            xml(&short)
        );
        for e in entries.iter().filter(|e| e.resource == *resource) {
            let colour = COLOURS
                [processes.iter().position(|p| *p == e.process).unwrap_or(0) % COLOURS.len()];
            let (x0, x1) = (x(e.started_at), x(e.ended_at.unwrap_or(last)));
            let stroke = if e.outcome.is_some() {
                r##"stroke="#d62728" stroke-width="2""##
            } else {
                ""
            };
            let token = e.token.map_or_else(|| "-".to_owned(), |t| t.to_string());
            let _ = write!(
                svg,
                r#"<rect x="{x0:.1}" y="{}" width="{:.1}" height="{}" fill="{colour}" {stroke}><title>{} #{} {} token {token} status {:?} outcome {:?} operation {:?}</title></rect>"#,
                y + 4.0,
                (x1 - x0).max(1.0),
                LANE - 10.0,
                xml(&e.process),
                e.seq,
                e.method,
                e.status,
                e.outcome,
                e.operation.as_deref().map(xml),
            );
            if x1 - x0 > 24.0 {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{}" fill="white">{token}</text>"#,
                    x0 + 3.0,
                    y + 18.0
                );
            }
        }
    }
    for (i, process) in processes.iter().enumerate() {
        let y = 30.0 + LANE * (resources.len() + i) as f64 + 10.0;
        let colour = COLOURS[i % COLOURS.len()];
        let _ = write!(
            svg,
            r#"<rect x="4" y="{y}" width="14" height="14" fill="{colour}"/><text x="24" y="{}">{}</text>"#,
            y + 11.0,
            xml(process)
        );
    }
    let y = 30.0 + LANE * (resources.len() + processes.len()) as f64 + 10.0;
    let _ = write!(
        svg,
        r##"<rect x="4" y="{y}" width="14" height="14" fill="none" stroke="#d62728" stroke-width="2"/><text x="24" y="{}">met a 409/412 (resolved, surfaced, …)</text></svg>"##,
        y + 11.0
    );
    svg
}

/// Text made safe inside SVG: resource keys and process names come from outside.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}
