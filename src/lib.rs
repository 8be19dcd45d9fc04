#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod adapters;
mod body;
pub mod classify;
mod engine;
mod error;
pub mod journal;
pub mod lease;
mod merge;
mod policy;
mod prerequisite;
mod redact;
mod report;
mod resource;
mod shared;
mod stats;
mod update;

#[cfg(feature = "azure-core")]
pub use adapters::azure::{AzureConflictPolicy, ConflictReports};
pub use adapters::reqwest::ConflictMiddleware;
#[cfg(feature = "tower")]
pub use adapters::tower::{ConflictBody, ConflictLayer, ConflictService};
pub use classify::{Classification, Classifier, ConflictKind};
pub use error::Error;
pub use journal::{Journal, JournalEntry};
#[cfg(feature = "azure-blob")]
pub use lease::BlobLeases;
#[cfg(feature = "redis")]
pub use lease::RedisLeases;
pub use lease::{Lease, LeaseStore, MemoryLeases, ParseEstimateError, TransitionEstimate};
pub use policy::{
    ConflictPolicy, DiagnosePolicy, LeasePolicy, Lro, MergeBase, PolicyOverride, PollSchedule,
    PreconditionStrategy,
};
pub use prerequisite::{Action, Prerequisite, StateCheck};
pub use report::{Activity, Blocker, ConflictReport, Outcome};
pub use resource::ResourceId;
pub use stats::{ConflictCount, ConflictStats, StatsSnapshot};
pub use update::{BoxError, UpdateError, UpdateOptions, update, update_as, update_with};
