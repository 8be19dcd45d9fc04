//! README's figures stay true to the code that makes them.
//!
//! README's Rust snippets are the crate's root documentation (`src/lib.rs` includes the file), so
//! `cargo test --doc` compiles each one. These tests hold the rest: every block of program output
//! names the command that regenerates it and the policy it ran with, the setup it states matches
//! that program, and the profile table matches the profiles.

use std::time::Duration;

use reqwest_conflict::ConflictPolicy;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Each ```text block of README with the paragraph just before it.
fn output_blocks(readme: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find("```text\n") {
        let before = &rest[..start];
        let paragraph = before
            .trim_end()
            .rsplit("\n\n")
            .next()
            .unwrap_or_default()
            .to_owned();
        let body = &rest[start + "```text\n".len()..];
        let end = body.find("```").expect("a closed block");
        blocks.push((paragraph, body[..end].to_owned()));
        rest = &body[end + 3..];
    }
    blocks
}

#[test]
fn every_output_block_names_its_command_and_policy() {
    let readme = read("README.md");
    let blocks = output_blocks(&readme);
    assert!(!blocks.is_empty(), "README shows the contention table");
    for (paragraph, block) in blocks {
        let example = paragraph
            .split("`cargo run --example ")
            .nth(1)
            .and_then(|s| s.split(|c: char| c == '`' || c.is_whitespace()).next())
            .unwrap_or_else(|| panic!("no `cargo run --example` before:\n{block}"));
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let file = std::path::Path::new(examples).join(format!("{example}.rs"));
        let dir = std::path::Path::new(examples).join(example).join("main.rs");
        assert!(
            file.exists() || dir.exists(),
            "README names examples/{example}, which does not exist"
        );
        assert!(
            paragraph.contains("Policy:"),
            "no policy named before:\n{block}"
        );
    }
}

/// The number in `source` after `prefix` (the first occurrence), up to the first non-digit.
fn number_after(source: &str, prefix: &str) -> u64 {
    let at = source
        .find(prefix)
        .unwrap_or_else(|| panic!("`{prefix}` not found"));
    let digits: String = source[at + prefix.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[test]
fn the_contention_table_states_the_examples_setup_and_policy() {
    let readme = read("README.md");
    let example = read("examples/contention/main.rs");
    let writers = number_after(&example, "const WRITERS: usize = ");
    let transition = number_after(
        &example,
        "const TRANSITION: Duration = Duration::from_millis(",
    );
    let header = format!(
        "{writers} concurrent PUTs to one VM, transition {transition} ms, ideal makespan {} ms",
        writers * transition
    );
    assert!(readme.contains(&header), "README lacks `{header}`");
    assert!(readme.contains(&format!("take {transition} ms")));

    // The policy README names is the one the example builds.
    assert!(example.contains("ConflictPolicy::fast()"));
    assert!(example.contains(".max_attempts(4 * WRITERS as u32)"));
    assert!(readme.contains(&format!("`max_attempts({})`", 4 * writers)));
    let deadline = number_after(&example, ".deadline(Duration::from_secs(");
    assert!(readme.contains(&format!("`deadline({deadline}s)`")));
}

fn ms(d: Duration) -> String {
    match d.as_millis() {
        n if n >= 60_000 && n % 60_000 == 0 => format!("{} min", n / 60_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{} s", n / 1_000),
        n => format!("{n} ms"),
    }
}

#[test]
fn the_profile_table_matches_the_profiles() {
    let readme = read("README.md");
    for (name, policy) in [
        ("ConflictPolicy::azure_arm()", ConflictPolicy::azure_arm()),
        ("ConflictPolicy::fast()", ConflictPolicy::fast()),
    ] {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}`")))
            .unwrap_or_else(|| panic!("no profile row for {name}"));
        let factor = if policy.poll.factor.fract() == 0.0 {
            format!("{}", policy.poll.factor as u32)
        } else {
            format!("{}", policy.poll.factor)
        };
        let schedule = format!(
            "polls {} → {} ×{factor}, `Retry-After` up to {}, {} attempts in {}",
            ms(policy.poll.min_delay),
            ms(policy.poll.max_delay),
            ms(policy.retry_after_cap),
            policy.max_attempts,
            ms(policy.deadline),
        );
        assert!(
            row.contains(&schedule),
            "{name}: `{schedule}` not in\n{row}"
        );
    }
}
