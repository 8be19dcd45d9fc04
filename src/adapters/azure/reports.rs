//! [`ConflictReports`]: where [`AzureConflictPolicy`](super::AzureConflictPolicy) leaves its
//! reports, since an `azure_core` response has no extensions to carry them.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use crate::ConflictReport;

/// How many reports a [`ConflictReports`] keeps; the oldest go first.
const MAX_REPORTS: usize = 64;

/// Where [`AzureConflictPolicy`](super::AzureConflictPolicy) leaves the [`ConflictReport`] of every request that met a
/// conflict, for the caller to read after the call. Put one into the call's
/// [`Context`](azure_core::http::Context)
/// (`Context::with_value`, or `ClientMethodOptions::context` of an SDK client method); clones share
/// the same reports. It keeps the latest 64.
///
/// ```
/// use azure_core::http::Context;
/// use reqwest_conflict::ConflictReports;
///
/// let reports = ConflictReports::new();
/// let ctx = Context::new().with_value(reports.clone());
/// // ... send the request with `ctx` ...
/// assert!(reports.take().is_empty());
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "azure-core")))]
#[derive(Clone, Debug, Default)]
pub struct ConflictReports(Arc<Mutex<VecDeque<ConflictReport>>>);

impl ConflictReports {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes and returns the reports, oldest first.
    pub fn take(&self) -> Vec<ConflictReport> {
        self.lock().drain(..).collect()
    }

    /// The latest report, if any.
    pub fn last(&self) -> Option<ConflictReport> {
        self.lock().back().cloned()
    }

    /// How many reports are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no report is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub(super) fn push(&self, report: ConflictReport) {
        let mut reports = self.lock();
        if reports.len() >= MAX_REPORTS {
            reports.pop_front();
        }
        reports.push_back(report);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ConflictReport>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
