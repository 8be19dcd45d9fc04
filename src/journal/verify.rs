//! Checking the journals of several processes together.
//!
//! Each process's journal says when its requests held their leases, on its own wall clock, and
//! under which fencing token. Merged per resource, two things must hold for writers that shared a
//! lease store: no two intervals overlap, and the tokens grow in the order the intervals began.
//! An overlap means two writers thought they held the resource at once (a lease lost, a store
//! that forgot); a token going backwards means the store handed out an older token after a newer
//! one (a store restarted empty), which is how a stale holder slips past fencing.
//!
//! Wall clocks of different machines disagree a little. `max_skew` says by how much: an overlap
//! or an inversion between two processes smaller than it is not reported. Within one process
//! the clock is one, and nothing is forgiven.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    io::{self, BufRead, Read},
    time::{Duration, SystemTime},
};

use super::JournalEntry;

/// The longest line [`read_json_lines`] accepts; an entry is a few hundred bytes.
const MAX_LINE: usize = 64 * 1024;

/// How many violations of each kind [`Verification`]'s `Display` lists.
const SHOWN: usize = 5;

/// Reads journal entries written as JSON lines ([`Journal::with_export`](super::Journal::with_export),
/// [`Journal::write_json_lines`](super::Journal::write_json_lines)). Blank lines are skipped; a
/// line that is not an entry, or longer than 64 KiB, fails with
/// [`io::ErrorKind::InvalidData`] naming its line number.
pub fn read_json_lines(mut input: impl BufRead) -> io::Result<Vec<JournalEntry>> {
    let mut entries = Vec::new();
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let limit = MAX_LINE as u64 + 1;
        if (&mut input).take(limit).read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        if content.len() > MAX_LINE {
            return Err(invalid(number, "longer than 64 KiB"));
        }
        let content = content.trim_ascii();
        if content.is_empty() {
            continue;
        }
        let entry = serde_json::from_slice(content).map_err(|e| invalid(number, e))?;
        entries.push(entry);
    }
    Ok(entries)
}

fn invalid(line: usize, why: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("line {line}: not a journal entry: {why}"),
    )
}

/// What [`verify`] found in merged journals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Entries checked (each counted once, however many files held it).
    pub entries: usize,
    /// Resources they wrote to.
    pub resources: usize,
    /// Processes that wrote them.
    pub processes: usize,
    /// Pairs of entries on one resource whose intervals overlap: the first began earlier and had
    /// not ended when the second began.
    pub overlaps: Vec<(JournalEntry, JournalEntry)>,
    /// Pairs of entries on one resource, consecutive in time, whose fencing tokens do not grow:
    /// the second began later under a token no greater than the first's.
    pub out_of_order: Vec<(JournalEntry, JournalEntry)>,
    /// Entries with no end (in flight when their journal was written): not checked.
    pub open: Vec<JournalEntry>,
}

impl Verification {
    /// Whether no overlap and no token out of order was found.
    pub fn is_ok(&self) -> bool {
        self.overlaps.is_empty() && self.out_of_order.is_empty()
    }
}

/// Merges journal entries of any number of processes and checks, per resource, that their
/// intervals never overlap and that their fencing tokens grow in the order the intervals began.
/// Differences of at most `max_skew` between two processes' clocks are forgiven (zero for
/// processes on one machine). Entries without a token (leases off) are checked for overlaps only.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use reqwest_conflict::journal::{JournalEntry, verify};
///
/// let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// let write = |process: &str, token, from_ms, to_ms| JournalEntry {
///     process: process.into(),
///     seq: token,
///     resource: "/subscriptions/s/resourcegroups/g/providers/microsoft.compute/virtualmachines/vm".into(),
///     method: "PUT".into(),
///     token: Some(token),
///     start: Duration::ZERO,
///     end: Some(Duration::ZERO),
///     started_at: t0 + Duration::from_millis(from_ms),
///     ended_at: Some(t0 + Duration::from_millis(to_ms)),
///     status: Some(200),
///     outcome: None,
///     operation: None,
/// };
/// let fine = verify([write("a", 1, 0, 100), write("b", 2, 100, 200)], Duration::ZERO);
/// assert!(fine.is_ok());
/// let overlapping = verify([write("a", 1, 0, 100), write("b", 2, 50, 200)], Duration::ZERO);
/// assert_eq!(overlapping.overlaps.len(), 1);
/// let backwards = verify([write("a", 4, 0, 100), write("b", 1, 100, 200)], Duration::ZERO);
/// assert_eq!(backwards.out_of_order.len(), 1);
/// ```
pub fn verify(entries: impl IntoIterator<Item = JournalEntry>, max_skew: Duration) -> Verification {
    let mut found = Verification::default();
    // The same file given twice, or an export and a dump of one journal: each entry once.
    let mut seen = HashSet::new();
    let mut processes = HashSet::new();
    let mut by_resource: BTreeMap<String, Vec<JournalEntry>> = BTreeMap::new();
    for entry in entries {
        if !seen.insert((entry.process.clone(), entry.seq)) {
            continue;
        }
        processes.insert(entry.process.clone());
        if entry.ended_at.is_none() {
            found.open.push(entry);
        } else {
            by_resource
                .entry(entry.resource.clone())
                .or_default()
                .push(entry);
        }
    }
    found.entries = seen.len();
    found.processes = processes.len();
    found.resources = by_resource.len();
    for entries in by_resource.values_mut() {
        entries.sort_by_key(|e| (e.started_at, e.token));
        overlaps(entries, max_skew, &mut found.overlaps);
        inversions(entries, max_skew, &mut found.out_of_order);
    }
    found
}

/// Whether a disagreement of `by` between `a` and `b` is within what clocks may differ by.
fn forgiven(a: &JournalEntry, b: &JournalEntry, by: Duration, max_skew: Duration) -> bool {
    a.process != b.process && by <= max_skew
}

/// One sweep over entries sorted by start: each is checked against the one that ends last among
/// those before it.
fn overlaps(
    entries: &[JournalEntry],
    max_skew: Duration,
    out: &mut Vec<(JournalEntry, JournalEntry)>,
) {
    let mut latest: Option<&JournalEntry> = None;
    for b in entries {
        if let Some(a) = latest
            && let Some(a_end) = a.ended_at
            && b.started_at < a_end
        {
            let by = a_end.duration_since(b.started_at).unwrap_or_default();
            if !forgiven(a, b, by, max_skew) {
                out.push((a.clone(), b.clone()));
            }
        }
        if latest.is_none_or(|a| b.ended_at > a.ended_at) {
            latest = Some(b);
        }
    }
}

/// Consecutive entries (by start) that hold tokens must hold growing ones. Two holders with the
/// same token are never forgiven: a store hands each token out once.
fn inversions(
    entries: &[JournalEntry],
    max_skew: Duration,
    out: &mut Vec<(JournalEntry, JournalEntry)>,
) {
    let tokened: Vec<&JournalEntry> = entries.iter().filter(|e| e.token.is_some()).collect();
    for pair in tokened.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.token > a.token {
            continue;
        }
        let by = since(a.started_at, b.started_at);
        if b.token < a.token && forgiven(a, b, by, max_skew) {
            continue;
        }
        out.push((a.clone(), b.clone()));
    }
}

fn since(earlier: SystemTime, later: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entries, {} resources, {} processes: {} overlaps, {} tokens out of order",
            self.entries,
            self.resources,
            self.processes,
            self.overlaps.len(),
            self.out_of_order.len()
        )?;
        if !self.open.is_empty() {
            write!(f, ", {} still open (not checked)", self.open.len())?;
        }
        let pairs = [
            ("overlap", &self.overlaps),
            ("token out of order", &self.out_of_order),
        ];
        for (what, pairs) in pairs {
            for (a, b) in pairs.iter().take(SHOWN) {
                write!(
                    f,
                    "\n  {what} on {}: {} then {}",
                    a.resource,
                    Brief(a),
                    Brief(b)
                )?;
            }
            if pairs.len() > SHOWN {
                write!(f, "\n  … and {} more", pairs.len() - SHOWN)?;
            }
        }
        Ok(())
    }
}

/// An entry in a few words: who, which token, when.
struct Brief<'a>(&'a JournalEntry);

impl fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        let token = e.token.map_or_else(|| "-".to_owned(), |t| t.to_string());
        write!(
            f,
            "[{} #{} token {token} {}",
            e.process,
            e.seq,
            humantime::format_rfc3339_micros(e.started_at)
        )?;
        match e.ended_at {
            Some(end) => write!(f, " +{:?}]", since(e.started_at, end)),
            None => write!(f, " open]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "/subscriptions/s/resourcegroups/g/providers/microsoft.network/virtualnetworks/v";

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms)
    }

    fn entry(
        process: &str,
        seq: u64,
        token: Option<u64>,
        from: u64,
        to: Option<u64>,
    ) -> JournalEntry {
        JournalEntry {
            process: process.into(),
            seq,
            resource: KEY.into(),
            method: "PUT".into(),
            token,
            start: Duration::from_millis(from),
            end: to.map(Duration::from_millis),
            started_at: at(from),
            ended_at: to.map(at),
            status: Some(200),
            outcome: None,
            operation: None,
        }
    }

    #[test]
    fn back_to_back_writes_of_two_processes_pass() {
        let found = verify(
            [
                entry("a", 0, Some(1), 0, Some(100)),
                entry("b", 0, Some(2), 100, Some(150)),
                entry("a", 1, Some(3), 150, Some(300)),
            ],
            Duration::ZERO,
        );
        assert!(found.is_ok(), "{found}");
        assert_eq!((found.entries, found.resources, found.processes), (3, 1, 2));
    }

    #[test]
    fn an_interval_inside_a_long_one_is_an_overlap() {
        // The second entry ends first: the third still overlaps the first, which the sweep keeps.
        let found = verify(
            [
                entry("a", 0, Some(1), 0, Some(500)),
                entry("b", 0, Some(2), 100, Some(200)),
                entry("b", 1, Some(3), 300, Some(400)),
            ],
            Duration::ZERO,
        );
        let pairs: Vec<(u64, u64)> = found
            .overlaps
            .iter()
            .map(|(a, b)| (a.token.unwrap(), b.token.unwrap()))
            .collect();
        assert_eq!(pairs, [(1, 2), (1, 3)]);
        assert!(found.out_of_order.is_empty());
    }

    #[test]
    fn a_token_going_backwards_is_reported_even_without_overlap() {
        // A store restarted empty: 4 was handed out, then 1.
        let found = verify(
            [
                entry("a", 0, Some(4), 0, Some(100)),
                entry("b", 0, Some(1), 200, Some(300)),
            ],
            Duration::ZERO,
        );
        assert!(found.overlaps.is_empty());
        assert_eq!(found.out_of_order.len(), 1);
        assert!(found.to_string().contains("token out of order"), "{found}");
    }

    #[test]
    fn a_token_handed_out_twice_is_never_forgiven() {
        let found = verify(
            [
                entry("a", 0, Some(7), 0, Some(100)),
                entry("b", 0, Some(7), 101, Some(200)),
            ],
            Duration::from_secs(1),
        );
        assert_eq!(found.out_of_order.len(), 1);
    }

    #[test]
    fn skew_is_forgiven_between_processes_only() {
        let across = [
            entry("a", 0, Some(1), 0, Some(100)),
            entry("b", 0, Some(2), 98, Some(200)),
        ];
        assert_eq!(verify(across.clone(), Duration::ZERO).overlaps.len(), 1);
        assert!(verify(across, Duration::from_millis(5)).is_ok());
        let within = [
            entry("a", 0, Some(1), 0, Some(100)),
            entry("a", 1, Some(2), 98, Some(200)),
        ];
        assert_eq!(verify(within, Duration::from_millis(5)).overlaps.len(), 1);
    }

    #[test]
    fn open_entries_and_duplicates_are_set_apart() {
        let first = entry("a", 0, Some(1), 0, Some(100));
        let found = verify(
            [
                first.clone(),
                first,
                entry("a", 1, Some(2), 150, None),
                entry("b", 0, None, 150, Some(160)),
            ],
            Duration::ZERO,
        );
        assert!(found.is_ok(), "{found}");
        assert_eq!((found.entries, found.open.len()), (3, 1));
    }

    #[test]
    fn writes_without_tokens_are_checked_for_overlaps() {
        let found = verify(
            [
                entry("a", 0, None, 0, Some(100)),
                entry("a", 1, None, 50, Some(120)),
            ],
            Duration::ZERO,
        );
        assert_eq!(found.overlaps.len(), 1);
        assert!(found.out_of_order.is_empty());
    }

    #[test]
    fn reads_back_what_a_journal_writes_and_names_a_bad_line() {
        let entries = [
            entry("a", 0, Some(1), 0, Some(100)),
            entry("a", 1, Some(2), 100, None),
        ];
        let mut text = Vec::new();
        for e in &entries {
            serde_json::to_writer(&mut text, e).unwrap();
            text.extend_from_slice(b"\n\n");
        }
        assert_eq!(read_json_lines(&text[..]).unwrap(), entries);

        text.extend_from_slice(b"{\"process\": 1}\n");
        let error = read_json_lines(&text[..]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().starts_with("line 5:"), "{error}");

        let long = vec![b' '; MAX_LINE + 10];
        let error = read_json_lines(&long[..]).unwrap_err();
        assert!(error.to_string().contains("64 KiB"), "{error}");
    }
}
