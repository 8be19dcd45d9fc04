//! The adapters: each translates one HTTP stack's types onto the engine, and nothing more.
//!
//! | adapter | stack | file |
//! |---|---|---|
//! | [`ConflictMiddleware`](crate::ConflictMiddleware) | `reqwest-middleware` | `reqwest.rs` |
//! | [`ConflictLayer`](crate::ConflictLayer) | any `tower::Service` over `http` | `tower.rs` |
//! | [`AzureConflictPolicy`](crate::AzureConflictPolicy) | an `azure_core` pipeline | `azure.rs` |
//!
//! Each implements the engine's five-function `Transport` for its request and response types,
//! routes reads past the engine, and hands writes to `Engine::execute`.

#[cfg(feature = "azure-core")]
pub(crate) mod azure;
pub(crate) mod reqwest;
#[cfg(feature = "tower")]
pub(crate) mod tower;

/// A re-fetch or poll was answered from another origin: the stack followed a redirect.
#[derive(Debug, thiserror::Error)]
#[error("the answer came from another origin (the client follows redirects); it is not trusted")]
pub(crate) struct RedirectedAway;

/// What every adapter takes from the engine.
mod prelude {
    pub(crate) use super::RedirectedAway;
    pub(crate) use crate::{
        engine::{
            Changes, Exchange, Failure, Fetched, Original, Overrides, Peeked, Redirects, Replay,
            Route, Transport,
        },
        shared::BoxFuture,
    };
}

/// An adapter's type (its documentation given), holding the engine, with the constructor,
/// builder and accessor methods every adapter shares, and its `Default` (the
/// [`azure_arm`](crate::ConflictPolicy::azure_arm) policy).
macro_rules! adapter {
    ($(#[$doc:meta])* pub struct $adapter:ident, $name:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $adapter {
            engine: crate::engine::Engine,
        }

        impl Default for $adapter {
            fn default() -> Self {
                Self::new(crate::ConflictPolicy::default())
            }
        }

        impl $adapter {
        #[doc = concat!("A ", $name, " applying `policy`.")]
        pub fn new(policy: crate::ConflictPolicy) -> Self {
            Self {
                engine: crate::engine::Engine::new(policy),
            }
        }

        #[doc = concat!("The same ", $name, " with another lease store, e.g. `RedisLeases` to serialize writers")]
        /// across processes. The default is a [`MemoryLeases`](crate::MemoryLeases) of its own.
        pub fn with_leases(self, store: impl crate::LeaseStore) -> Self {
            self.with_shared_leases(std::sync::Arc::new(store))
        }

        #[doc = concat!("The same ", $name, " sharing `store` with others (several clients in one process).")]
        ///
        /// ```
        /// use std::sync::Arc;
        #[doc = concat!("use reqwest_conflict::{", stringify!($adapter), ", ConflictPolicy, LeaseStore, MemoryLeases};")]
        ///
        /// let store: Arc<dyn LeaseStore> = Arc::new(MemoryLeases::new());
        #[doc = concat!("let deploy = ", stringify!($adapter), "::new(ConflictPolicy::azure_arm()).with_shared_leases(store.clone());")]
        #[doc = concat!("let tagger = ", stringify!($adapter), "::new(ConflictPolicy::fast()).with_shared_leases(store);")]
        /// // Writes to one resource through `deploy` and `tagger` now go one at a time.
        /// ```
        pub fn with_shared_leases(mut self, store: std::sync::Arc<dyn crate::LeaseStore>) -> Self {
            self.engine = self.engine.with_leases(store);
            self
        }

        /// The policy in force (after clamping values that would make the engine spin).
        ///
        /// ```
        /// use std::time::Duration;
        #[doc = concat!("use reqwest_conflict::{", stringify!($adapter), ", ConflictPolicy};")]
        ///
        /// // Built by hand past the bounds `from_json` enforces: clamped, with a warning.
        /// let spinning = ConflictPolicy { max_attempts: 0, ..ConflictPolicy::fast() };
        #[doc = concat!("assert_eq!(", stringify!($adapter), "::new(spinning).policy().max_attempts, 1);")]
        /// ```
        pub fn policy(&self) -> &crate::ConflictPolicy {
            self.engine.policy()
        }

        #[doc = concat!("Conflict counts by resource type, kind and code, for this ", $name, " and its clones.")]
        pub fn stats(&self) -> &crate::ConflictStats {
            self.engine.stats()
        }

        #[doc = concat!("The journal of the writes that went through this ", $name, " and its clones.")]
        pub fn journal(&self) -> &crate::Journal {
            self.engine.journal()
        }

        #[doc = concat!("The same ", $name, " writing to `journal`: one with a window of another size")]
        /// ([`Journal::with_capacity`](crate::Journal::with_capacity)), or one shared with other
        /// clients. The default keeps the last 1,024 writes.
        ///
        /// ```
        #[doc = concat!("use reqwest_conflict::{", stringify!($adapter), ", Journal};")]
        ///
        /// let journal = Journal::with_capacity(4_096);
        #[doc = concat!("let one = ", stringify!($adapter), "::default().with_journal(journal.clone());")]
        #[doc = concat!("let other = ", stringify!($adapter), "::default().with_journal(journal.clone());")]
        /// // Both record their writes in `journal`, so its overlaps span the two.
        /// assert!(journal.overlaps().is_empty());
        /// ```
        pub fn with_journal(mut self, journal: crate::Journal) -> Self {
            self.engine = self.engine.with_journal(journal);
            self
        }
        }
    };
}
pub(crate) use adapter;
