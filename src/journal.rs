//! A record of the mutating requests that went through one middleware, and a check that writers
//! to one resource never overlapped — in one process or across many.
//!
//! The journal answers the question leases exist for: did two writes to one resource ever run at
//! the same time? Each entry is one request **as its lease held it**: from the moment the request
//! held its leases (and the transition the previous writer left, if any, was over) to the moment
//! its final answer came back, every retry and every wait for a conflict to clear included, with
//! the fencing token it wrote under. It is not the server's record of its operations: with leases
//! off, two requests that waited for each other's 409 show as overlapping intervals although the
//! server ran their transitions one after the other.
//!
//! The journal is a bounded ring (the newest entries win), so a long-running process keeps a
//! window, not a leak. For a record of everything, and to check several processes together,
//! [`Journal::with_export`] writes each entry as one JSON line when it closes; [`read_json_lines`]
//! reads such files back and [`verify`] merges them, per resource by fencing token, and reports
//! overlapping intervals and tokens out of order.
//!
//! ```
//! use reqwest_conflict::{ConflictMiddleware, ConflictPolicy, journal::Journal};
//!
//! # fn main() -> std::io::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("journal-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let file = std::fs::File::create(dir.join("writer-1.jsonl"))?;
//! let journal = Journal::default().with_process("writer-1").with_export(file);
//! let middleware = ConflictMiddleware::new(ConflictPolicy::azure_arm()).with_journal(journal);
//! // ... writes through the middleware; later, with the files of every process:
//! let entries = reqwest_conflict::journal::read_json_lines(std::io::BufReader::new(
//!     std::fs::File::open(dir.join("writer-1.jsonl"))?,
//! ))?;
//! let verdict = reqwest_conflict::journal::verify(entries, std::time::Duration::ZERO);
//! assert!(verdict.is_ok(), "{verdict}");
//! # Ok(()) }
//! ```

mod verify;

use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Outcome;
pub use verify::{Verification, read_json_lines, verify};

/// How many entries a journal keeps by default: enough to hold the recent history of a busy
/// process, small enough that the keys it keeps alive cost little memory.
const DEFAULT_CAPACITY: usize = 1024;

/// One mutating request, as the middleware saw it: the interval its lease held it.
///
/// Serialized (by [`Journal::with_export`] and [`Journal::write_json_lines`]) as one JSON object;
/// durations and times in human-readable form (`"12ms"`, RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Which process wrote the entry ([`Journal::with_process`]; `pid N` by default).
    pub process: String,
    /// Sequence number in that process's journal.
    pub seq: u64,
    /// The resource key.
    pub resource: String,
    /// The HTTP method.
    pub method: String,
    /// The fencing token of the resource's lease, when one was held.
    pub token: Option<u64>,
    /// When the request started (its leases held), since the journal was created. Serialized
    /// as text (`"1s 250ms"`), as every duration this crate writes.
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    /// When its final answer came back; `None` while in flight.
    #[serde(with = "humantime_serde")]
    pub end: Option<Duration>,
    /// [`start`](Self::start) on the wall clock, to line up the journals of several processes.
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// [`end`](Self::end) on the wall clock.
    #[serde(with = "humantime_serde")]
    pub ended_at: Option<SystemTime>,
    /// The final status, or `None` when the request ended in an error or was dropped.
    pub status: Option<u16>,
    /// How the resolution of a 409/412 ended, when the request met one.
    pub outcome: Option<Outcome>,
    /// The id of the long-running operation the final answer started (the last path segment of
    /// its `Azure-AsyncOperation` or `Location` URI), when it names one.
    pub operation: Option<String>,
}

/// A shared, bounded journal of mutating requests. Cloning gives another handle to the same one.
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware, journal: reqwest_conflict::Journal) {
/// // `journal`: a clone of the middleware's, kept before `ClientBuilder::with`.
/// let vm = "/subscriptions/s/resourcegroups/g/providers/microsoft.compute/virtualmachines/vm1";
/// for entry in journal.for_resource(vm) {
///     println!("#{} {} token {:?}: {:?} at {:?}", entry.seq, entry.method, entry.token, entry.status, entry.start);
/// }
/// println!("{}", serde_json::to_string(&journal.entries()).unwrap());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Journal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ring: Mutex<Ring>,
    export: Export,
}

#[derive(Debug)]
struct Ring {
    origin: Instant,
    /// `origin` on the wall clock.
    origin_wall: SystemTime,
    process: Arc<str>,
    next_seq: u64,
    capacity: usize,
    entries: VecDeque<Record>,
}

/// Where closed entries are written as JSON lines, if anywhere.
#[derive(Default)]
struct Export {
    /// Set once a writer is given: a write checks it without taking the lock.
    on: AtomicBool,
    out: Mutex<Option<Box<dyn Write + Send>>>,
    /// Whether a failed write was logged already (one warning, not one per write).
    warned: AtomicBool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("on", &self.on.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// An entry as kept: the key shared with the request's resource ID, the method as parsed, so a
/// write's journaling copies no string. Made a [`JournalEntry`] when read.
#[derive(Debug)]
struct Record {
    seq: u64,
    resource: Arc<str>,
    method: http::Method,
    token: Option<u64>,
    start: Duration,
    end: Option<Duration>,
    status: Option<u16>,
    outcome: Option<Outcome>,
    operation: Option<Box<str>>,
}

impl Ring {
    fn entry(&self, record: &Record) -> JournalEntry {
        JournalEntry {
            process: self.process.to_string(),
            seq: record.seq,
            resource: record.resource.to_string(),
            method: record.method.to_string(),
            token: record.token,
            start: record.start,
            end: record.end,
            started_at: self.origin_wall + record.start,
            ended_at: record.end.map(|end| self.origin_wall + end),
            status: record.status,
            outcome: record.outcome,
            operation: record.operation.as_deref().map(str::to_owned),
        }
    }
}

/// How a journaled request ended.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    pub status: Option<u16>,
    pub outcome: Option<Outcome>,
    pub operation: Option<String>,
}

impl Default for Journal {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Journal {
    /// A journal keeping the newest `capacity` entries (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(Ring {
                    origin: Instant::now(),
                    origin_wall: SystemTime::now(),
                    process: format!("pid {}", std::process::id()).into(),
                    next_seq: 0,
                    capacity: capacity.max(1),
                    entries: VecDeque::new(),
                }),
                export: Export::default(),
            }),
        }
    }

    /// Names the process in every entry (`pid N` by default): a host name and a role, say, so
    /// that the journals of several machines read clearly once merged.
    pub fn with_process(self, name: impl Into<String>) -> Self {
        self.ring().process = name.into().into();
        self
    }

    /// Also writes every entry, when it closes, to `out` as one JSON line (see [`JournalEntry`]),
    /// flushed at once: a record of every write, beyond the ring's window, that [`verify`] can
    /// check together with other processes' files. A failed write is logged once as a warning
    /// and changes no request's outcome. Replaces any earlier writer. An entry pushed out of the
    /// ring while still in flight (more than its capacity of writes at once) is not exported.
    pub fn with_export(self, out: impl Write + Send + 'static) -> Self {
        let export = &self.inner.export;
        *lock(&export.out) = Some(Box::new(out));
        export.on.store(true, Ordering::Release);
        self
    }

    /// Writes every entry kept, oldest first, as JSON lines.
    pub fn write_json_lines(&self, mut out: impl Write) -> io::Result<()> {
        for entry in self.entries() {
            serde_json::to_writer(&mut out, &entry)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        lock(&self.inner.ring)
    }

    /// Every entry kept, oldest first.
    pub fn entries(&self) -> Vec<JournalEntry> {
        let ring = self.ring();
        ring.entries.iter().map(|r| ring.entry(r)).collect()
    }

    /// The entries of one resource (by key), oldest first.
    pub fn for_resource(&self, key: &str) -> Vec<JournalEntry> {
        let ring = self.ring();
        ring.entries
            .iter()
            .filter(|e| &*e.resource == key)
            .map(|r| ring.entry(r))
            .collect()
    }

    /// Pairs of entries on the same resource whose intervals overlap (an entry still in flight
    /// extends to now).
    ///
    /// An entry's interval is its request's time in the middleware, not the server's operation:
    /// from when it held its leases (and the previous writer's transition, if it left one, was
    /// over) to its final answer, every retry and every wait for a conflict to clear included.
    /// With leases on, each interval runs under the resource's lease, so this is empty. With
    /// leases off, two writers overlap here as soon as the second is sent while the first is
    /// still in the middleware — waiting out a 409, say — even if the server never ran their
    /// operations at the same time.
    ///
    /// ```
    /// # async fn f() -> Result<(), reqwest_middleware::Error> {
    /// use reqwest_conflict::ConflictMiddleware;
    /// use reqwest_middleware::ClientBuilder;
    ///
    /// let middleware = ConflictMiddleware::default();
    /// // A clone shares the journal; the original goes into the client.
    /// let journal = middleware.journal().clone();
    /// let client = ClientBuilder::new(reqwest::Client::new()).with(middleware).build();
    /// // … writes through `client` …
    /// for (a, b) in journal.overlaps() {
    ///     eprintln!("{} {}: writes {} and {} overlapped", a.method, a.resource, a.seq, b.seq);
    /// }
    /// # drop(client);
    /// # Ok(()) }
    /// ```
    pub fn overlaps(&self) -> Vec<(JournalEntry, JournalEntry)> {
        let ring = self.ring();
        let now = ring.origin.elapsed();
        let mut sorted: Vec<&Record> = ring.entries.iter().collect();
        sorted.sort_by(|a, b| (&a.resource, a.start).cmp(&(&b.resource, b.start)));
        let mut pairs = Vec::new();
        for (i, a) in sorted.iter().enumerate() {
            let a_end = a.end.unwrap_or(now);
            for b in sorted[i + 1..]
                .iter()
                .take_while(|b| b.resource == a.resource)
            {
                if b.start >= a_end {
                    break;
                }
                pairs.push((ring.entry(a), ring.entry(b)));
            }
        }
        pairs
    }

    pub(crate) fn begin(
        &self,
        resource: &Arc<str>,
        method: &http::Method,
        token: Option<u64>,
    ) -> u64 {
        let mut ring = self.ring();
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let start = ring.origin.elapsed();
        if ring.entries.len() == ring.capacity {
            ring.entries.pop_front();
        }
        ring.entries.push_back(Record {
            seq,
            resource: resource.clone(),
            method: method.clone(),
            token,
            start,
            end: None,
            status: None,
            outcome: None,
            operation: None,
        });
        seq
    }

    /// Opens an entry, as [`begin`](Self::begin) does, that closes itself (with no status) if it
    /// is dropped open: a write whose future is dropped mid-way must not stay open forever, or
    /// it would "overlap" every later write to its resource.
    pub(crate) fn open(
        &self,
        resource: &Arc<str>,
        method: &http::Method,
        token: Option<u64>,
    ) -> OpenEntry<'_> {
        OpenEntry {
            journal: self,
            seq: Some(self.begin(resource, method, token)),
        }
    }

    /// Closes entry `seq`: its request's final answer came back `at`, and ended as `ending` says.
    pub(crate) fn end(&self, seq: u64, ending: Ending, at: Instant) {
        let exporting = self.inner.export.on.load(Ordering::Acquire);
        let closed = {
            let mut ring = self.ring();
            let now = at.saturating_duration_since(ring.origin);
            // Entries are in seq order, so the one to close is found by its distance from the
            // front.
            let front = ring.entries.front().map_or(seq, |e| e.seq);
            let Some(record) = seq
                .checked_sub(front)
                .and_then(|i| ring.entries.get_mut(i as usize))
            else {
                return;
            };
            record.end = Some(now);
            record.status = ending.status;
            record.outcome = ending.outcome;
            record.operation = ending.operation.map(String::into_boxed_str);
            let record = &ring.entries[(seq - front) as usize];
            exporting.then(|| ring.entry(record))
        };
        if let Some(entry) = closed {
            self.export(&entry);
        }
    }

    /// Writes a closed entry to the export, outside the ring's lock.
    fn export(&self, entry: &JournalEntry) {
        let export = &self.inner.export;
        let mut out = lock(&export.out);
        let Some(out) = out.as_mut() else {
            return;
        };
        let mut line = serde_json::to_vec(entry).unwrap_or_default();
        line.push(b'\n');
        if let Err(error) = out.write_all(&line).and_then(|()| out.flush())
            && !export.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(%error, "could not write the journal export; later failures are not logged");
        }
    }
}

/// The id of the long-running operation an ARM answer's headers name: the last path segment of
/// its `Azure-AsyncOperation` (else `Location`) URI — never its query, which may carry a
/// signature.
pub(crate) fn operation_id(headers: &http::HeaderMap) -> Option<String> {
    let uri = headers
        .get(crate::shared::AZURE_ASYNC_OPERATION)
        .or_else(|| headers.get(http::header::LOCATION))?
        .to_str()
        .ok()?;
    crate::report::operation_id_in(uri)
}

/// Locks a journal mutex. A panic while one was held cannot leave it inconsistent (every
/// critical section is a few field writes, or one line written), so a poisoned one is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// An entry of the journal not closed yet; see [`Journal::open`].
pub(crate) struct OpenEntry<'j> {
    journal: &'j Journal,
    /// `None` once closed.
    seq: Option<u64>,
}

impl OpenEntry<'_> {
    /// The entry's sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.seq.unwrap_or_default()
    }

    /// Closes the entry: its request ended `at`, as `ending` says.
    pub(crate) fn close(mut self, ending: Ending, at: Instant) {
        if let Some(seq) = self.seq.take() {
            self.journal.end(seq, ending, at);
        }
    }
}

impl Drop for OpenEntry<'_> {
    fn drop(&mut self) {
        if let Some(seq) = self.seq.take() {
            self.journal.end(seq, Ending::default(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(status: u16) -> Ending {
        Ending {
            status: Some(status),
            ..Ending::default()
        }
    }

    #[test]
    fn finds_overlaps_per_resource_only() {
        let j = Journal::default();
        let a = j.begin(&"r1".into(), &http::Method::PUT, Some(1));
        let b = j.begin(&"r1".into(), &http::Method::PUT, Some(2)); // starts while a is open
        let c = j.begin(&"r2".into(), &http::Method::PUT, None);
        j.end(a, ok(200), Instant::now());
        j.end(b, ok(200), Instant::now());
        j.end(c, ok(200), Instant::now());
        let d = j.begin(&"r1".into(), &http::Method::PATCH, Some(3)); // after both ended
        j.end(d, ok(200), Instant::now());
        let overlaps = j.overlaps();
        assert_eq!(overlaps.len(), 1);
        assert_eq!((overlaps[0].0.seq, overlaps[0].1.seq), (a, b));
        assert_eq!(j.for_resource("r1").len(), 3);
    }

    #[test]
    fn times_serialize_as_text() {
        let j = Journal::default();
        let t0 = j.ring().origin;
        let a = j.begin(&"r1".into(), &http::Method::PUT, Some(4));
        j.end(a, ok(200), t0 + Duration::from_millis(1_250));
        let open = j.begin(&"r1".into(), &http::Method::PUT, Some(5));
        let json = serde_json::to_value(j.entries()).unwrap();
        assert_eq!(json[0]["end"], "1s 250ms");
        assert!(json[0]["start"].is_string(), "{json}");
        assert!(json[1]["end"].is_null(), "{json}");
        j.end(open, Ending::default(), Instant::now());
    }

    #[test]
    fn ring_is_bounded() {
        let j = Journal::with_capacity(3);
        for _ in 0..10 {
            let s = j.begin(&"r".into(), &http::Method::PUT, None);
            j.end(s, ok(200), Instant::now());
        }
        let seqs: Vec<u64> = j.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [7, 8, 9]);
        assert!(j.overlaps().is_empty());
    }

    #[test]
    fn operation_ids_come_from_the_path_only() {
        let id = |name: &'static str, value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(name, http::HeaderValue::from_static(value));
            operation_id(&headers)
        };
        let op = "https://management.azure.com/subscriptions/s/providers/Microsoft.Network/locations/westeurope/operations/5d66a0e0-e08b?api-version=2023-04-01&sig=SECRET";
        assert_eq!(
            id("azure-asyncoperation", op).as_deref(),
            Some("5d66a0e0-e08b")
        );
        assert_eq!(id("location", "https://h/ops/abc/").as_deref(), Some("abc"));
        assert_eq!(id("location", "https://host-only"), None);
        assert_eq!(
            id("location", "https://h/ops/a%0Ab"),
            None,
            "nothing but plain ids"
        );
        assert_eq!(id("etag", "\"1\""), None);
    }

    /// A `Write` whose bytes the test can read after handing it to the journal.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_closed_entry_is_exported_as_a_line_that_reads_back() {
        let out = Shared::default();
        let j = Journal::with_capacity(1)
            .with_process("host-1/writer")
            .with_export(out.clone());
        let a = j.begin(&"r1".into(), &http::Method::PUT, Some(1));
        let b = j.begin(&"r1".into(), &http::Method::PUT, Some(2));
        j.end(a, ok(202), Instant::now()); // already out of the ring: not closed, not exported
        j.end(
            b,
            Ending {
                status: Some(200),
                outcome: Some(Outcome::Resolved),
                operation: Some("op-1".into()),
            },
            Instant::now(),
        );
        let open = j.open(&"r2".into(), &http::Method::DELETE, None);
        drop(open);
        let text = lock(&out.0).clone();
        let entries = read_json_lines(&text[..]).unwrap();
        assert_eq!(entries.len(), 2, "{}", String::from_utf8_lossy(&text));
        assert_eq!(entries[0].process, "host-1/writer");
        assert_eq!(
            (
                entries[0].token,
                entries[0].outcome,
                entries[0].operation.as_deref()
            ),
            (Some(2), Some(Outcome::Resolved), Some("op-1"))
        );
        assert_eq!(
            (entries[1].resource.as_str(), entries[1].status),
            ("r2", None)
        );
        assert!(entries.iter().all(|e| e.ended_at >= Some(e.started_at)));
        assert_eq!(entries[1], j.entries()[0]);

        let mut dump = Vec::new();
        j.write_json_lines(&mut dump).unwrap();
        assert_eq!(read_json_lines(&dump[..]).unwrap(), j.entries());
    }
}
