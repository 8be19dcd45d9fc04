//! Stale preconditions: the caller's `If-Match` ETag no longer matches.
//!
//! The first step is always the same: re-fetch the resource for its fresh ETag and
//! representation. Then, in order: a write that is already in the fresh representation was
//! applied before (its answer was lost), so it is success; otherwise the strategy decides —
//! surface the 412 with the fresh state attached, merge the two writers' changes when they are
//! disjoint, or (explicitly) overwrite.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use lru::LruCache;
use serde_json::Value;

use super::{
    Changes, Fetched, Transport,
    converge::{Called, OFFSITE},
    run::Run,
};
use crate::{ConflictReport, PreconditionStrategy, merge, redact::scrub, report::Outcome};

/// Representations the caller has seen, by (resource key, ETag): the bases of three-way merges.
#[derive(Debug)]
pub(crate) struct Remembered(Mutex<LruCache<(String, String), Bytes>>);

impl Remembered {
    pub(crate) fn new(capacity: usize) -> Option<Arc<Self>> {
        NonZeroUsize::new(capacity).map(|c| Arc::new(Self(Mutex::new(LruCache::new(c)))))
    }

    pub(crate) fn put(&self, resource: &str, etag: &str, body: Bytes) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.put((resource.to_owned(), etag.to_owned()), body);
    }

    fn get(&self, resource: &str, etag: &str) -> Option<Bytes> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&(resource.to_owned(), etag.to_owned())).cloned()
    }
}

/// What became of a stale precondition.
pub(super) enum Refreshed<R> {
    /// Return the conflict response with this outcome.
    Surface(Outcome),
    /// The write is already in place; answer with the fresh representation.
    AlreadyApplied(R),
    /// Send the request again with these changes (the fresh ETag, perhaps a merged body).
    Resend(Changes),
}

impl Run<'_> {
    /// Re-fetches the resource, then: a write already in place is success; otherwise `strategy`
    /// decides whether (and with what body) to send again under the fresh ETag.
    pub(super) async fn refresh<T: Transport>(
        &self,
        transport: &mut T,
        report: &mut ConflictReport,
        strategy: PreconditionStrategy,
    ) -> Refreshed<T::Response> {
        let Some(fresh) = self.refetch(transport, report).await else {
            return Refreshed::Surface(Outcome::Surfaced);
        };
        let fresh_json: Option<Value> = serde_json::from_slice(&fresh.body).ok();
        let etag = fresh
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                let etag = fresh_json.as_ref()?.get("etag")?.as_str()?;
                Some(etag.to_owned())
            });
        report.fresh_etag.clone_from(&etag);
        report.fresh.clone_from(&fresh_json);

        let ours: Option<Value> = self
            .original
            .body
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok());
        let patch = *self.original.method == http::Method::PATCH;
        if let (Some(fresh_json), Some(ours)) = (&fresh_json, &ours)
            && ours.as_object().is_some_and(|o| !o.is_empty())
            && merge::contains(fresh_json, ours, patch)
        {
            let mut headers = HeaderMap::new();
            for name in [header::CONTENT_TYPE, header::ETAG] {
                if let Some(value) = fresh.headers.get(&name) {
                    headers.insert(name, value.clone());
                }
            }
            return Refreshed::AlreadyApplied(transport.respond(
                StatusCode::OK,
                headers,
                fresh.body,
            ));
        }

        let body = match strategy {
            PreconditionStrategy::Surface => return Refreshed::Surface(Outcome::Surfaced),
            PreconditionStrategy::Overwrite => None,
            PreconditionStrategy::Merge => {
                match self.merge(report, ours.as_ref(), fresh_json.as_ref()) {
                    Some(merged) => Some(Bytes::from(merged.to_string())),
                    None => return Refreshed::Surface(Outcome::Surfaced),
                }
            }
        };
        if let Some(outcome) = self.blocked(report) {
            return Refreshed::Surface(outcome);
        }
        let Some(if_match) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) else {
            report.note("the fresh representation carries no usable ETag".to_owned());
            return Refreshed::Surface(Outcome::Surfaced);
        };
        Refreshed::Resend(self.changes(if_match, body))
    }

    /// GETs the resource's fresh state, within the deadline. `None` (noted) when it cannot.
    async fn refetch<T: Transport>(
        &self,
        transport: &mut T,
        report: &mut ConflictReport,
    ) -> Option<Fetched> {
        let exchange = self.exchange(http::Method::GET, self.resource_url());
        report.polls += 1;
        match self.call(transport, exchange, self.deadline).await {
            Called::Answered(fresh) if fresh.status.is_success() => Some(fresh),
            Called::Answered(fresh) => {
                report.note(format!("re-fetch answered HTTP {}", fresh.status.as_u16()));
                None
            }
            Called::Failed(error) => {
                report.note(format!("re-fetch failed: {}", scrub(&error.to_string())));
                None
            }
            Called::CutOff => {
                report.note("re-fetch cut off by the deadline".to_owned());
                None
            }
            Called::Offsite => {
                report.note(OFFSITE.to_owned());
                None
            }
        }
    }

    /// The merged body, or `None` with the reason in the report.
    fn merge(
        &self,
        report: &mut ConflictReport,
        ours: Option<&Value>,
        fresh: Option<&Value>,
    ) -> Option<Value> {
        let (Some(ours), Some(fresh)) = (ours, fresh) else {
            report.note("merge needs JSON bodies on both sides".to_owned());
            return None;
        };
        let original = self.original;
        let base = original.overrides.merge_base.clone().or_else(|| {
            let sent = original.headers.get(header::IF_MATCH)?.to_str().ok()?;
            let remembered = self.engine.remembered.as_ref()?;
            let bytes = remembered.get(original.resource.key(), sent)?;
            serde_json::from_slice(&bytes).ok()
        });
        let Some(base) = base else {
            report.note(
                "no merge base: the representation for the sent ETag was not seen".to_owned(),
            );
            return None;
        };
        match merge::three_way(&base, ours, fresh) {
            Ok(merged) => Some(merged),
            Err(paths) => {
                report.conflicting_paths = paths;
                None
            }
        }
    }
}
