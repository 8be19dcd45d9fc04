//! A record of the mutating operations that went through one middleware.
//!
//! The journal answers the question leases exist for: did two writes to one resource ever run at
//! the same time? Each entry is one request — from the moment it held its leases to the moment its
//! final answer came back — with the fencing token it wrote under. It is a bounded ring (the newest
//! entries win), so a long-running process keeps a window, not a leak.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;

/// How many entries a journal keeps by default: enough to hold the recent history of a busy
/// process, small enough that the keys it keeps alive cost little memory.
const DEFAULT_CAPACITY: usize = 1024;

/// One mutating request, as the middleware saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    /// Sequence number in this journal.
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
    /// The final status, or `None` when the request ended in an error.
    pub status: Option<u16>,
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
    inner: Arc<Mutex<Ring>>,
}

#[derive(Debug)]
struct Ring {
    origin: Instant,
    next_seq: u64,
    capacity: usize,
    entries: VecDeque<Record>,
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
}

impl Record {
    fn entry(&self) -> JournalEntry {
        JournalEntry {
            seq: self.seq,
            resource: self.resource.to_string(),
            method: self.method.to_string(),
            token: self.token,
            start: self.start,
            end: self.end,
            status: self.status,
        }
    }
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
            inner: Arc::new(Mutex::new(Ring {
                origin: Instant::now(),
                next_seq: 0,
                capacity: capacity.max(1),
                entries: VecDeque::new(),
            })),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding this lock cannot leave the ring inconsistent: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every entry kept, oldest first.
    pub fn entries(&self) -> Vec<JournalEntry> {
        self.ring().entries.iter().map(Record::entry).collect()
    }

    /// The entries of one resource (by key), oldest first.
    pub fn for_resource(&self, key: &str) -> Vec<JournalEntry> {
        self.ring()
            .entries
            .iter()
            .filter(|e| &*e.resource == key)
            .map(Record::entry)
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
                pairs.push((a.entry(), b.entry()));
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
        });
        seq
    }

    /// When the last write to `resource` that this journal still holds got its final answer:
    /// the moment a transition that write left began. Asked only by a writer about to wait for
    /// one, so it may look through the whole window.
    pub(crate) fn last_end(&self, resource: &str) -> Option<Instant> {
        let ring = self.ring();
        let last = ring
            .entries
            .iter()
            .rev()
            .find(|e| &*e.resource == resource)?;
        Some(ring.origin + last.end?)
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

    /// Closes entry `seq`: its request's final answer came back `at`.
    pub(crate) fn end(&self, seq: u64, status: Option<u16>, at: Instant) {
        let mut ring = self.ring();
        let now = at.saturating_duration_since(ring.origin);
        // Entries are in seq order, so the one to close is found by its distance from the front.
        let Some(front) = ring.entries.front().map(|e| e.seq) else {
            return;
        };
        if let Some(entry) = seq
            .checked_sub(front)
            .and_then(|i| ring.entries.get_mut(i as usize))
        {
            entry.end = Some(now);
            entry.status = status;
        }
    }
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

    /// Closes the entry: the request's final answer came back `at`.
    pub(crate) fn close(mut self, status: Option<u16>, at: Instant) {
        if let Some(seq) = self.seq.take() {
            self.journal.end(seq, status, at);
        }
    }
}

impl Drop for OpenEntry<'_> {
    fn drop(&mut self) {
        if let Some(seq) = self.seq.take() {
            self.journal.end(seq, None, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_end_of_a_resource() {
        let j = Journal::default();
        assert_eq!(j.last_end("r1"), None);
        let t0 = Instant::now();
        let a = j.begin(&"r1".into(), &http::Method::PUT, None);
        j.end(a, Some(201), t0 + Duration::from_millis(5));
        let b = j.begin(&"r2".into(), &http::Method::PUT, None);
        j.end(b, Some(201), t0 + Duration::from_millis(9));
        assert_eq!(j.last_end("r1"), Some(t0 + Duration::from_millis(5)));
        let open = j.begin(&"r1".into(), &http::Method::PUT, None);
        assert_eq!(j.last_end("r1"), None, "the last write is still open");
        j.end(open, Some(200), t0 + Duration::from_millis(12));
        assert_eq!(j.last_end("r1"), Some(t0 + Duration::from_millis(12)));
    }

    #[test]
    fn finds_overlaps_per_resource_only() {
        let j = Journal::default();
        let a = j.begin(&"r1".into(), &http::Method::PUT, Some(1));
        let b = j.begin(&"r1".into(), &http::Method::PUT, Some(2)); // starts while a is open
        let c = j.begin(&"r2".into(), &http::Method::PUT, None);
        j.end(a, Some(200), Instant::now());
        j.end(b, Some(200), Instant::now());
        j.end(c, Some(200), Instant::now());
        let d = j.begin(&"r1".into(), &http::Method::PATCH, Some(3)); // after both ended
        j.end(d, Some(200), Instant::now());
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
        j.end(a, Some(200), t0 + Duration::from_millis(1_250));
        let open = j.begin(&"r1".into(), &http::Method::PUT, Some(5));
        let json = serde_json::to_value(j.entries()).unwrap();
        assert_eq!(json[0]["end"], "1s 250ms");
        assert!(json[0]["start"].is_string(), "{json}");
        assert!(json[1]["end"].is_null(), "{json}");
        j.end(open, None, Instant::now());
    }

    #[test]
    fn ring_is_bounded() {
        let j = Journal::with_capacity(3);
        for _ in 0..10 {
            let s = j.begin(&"r".into(), &http::Method::PUT, None);
            j.end(s, Some(200), Instant::now());
        }
        let seqs: Vec<u64> = j.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [7, 8, 9]);
        assert!(j.overlaps().is_empty());
    }
}
