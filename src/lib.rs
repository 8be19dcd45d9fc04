#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

#[cfg(feature = "azure-core")]
mod azure;
mod body;
pub mod classify;
mod engine;
mod error;
mod journal;
pub mod lease;
mod merge;
mod middleware;
mod policy;
mod prerequisite;
mod report;
mod resource;
mod stats;
#[cfg(feature = "tower")]
mod tower;
mod update;

#[cfg(feature = "tower")]
pub use crate::tower::{ConflictBody, ConflictLayer, ConflictService};
#[cfg(feature = "azure-core")]
pub use azure::{AzureConflictPolicy, ConflictReports};
pub use classify::{Classification, Classifier, ConflictKind};
pub use error::Error;
pub use journal::{Journal, JournalEntry};
#[cfg(feature = "azure-blob")]
pub use lease::BlobLeases;
#[cfg(feature = "redis")]
pub use lease::RedisLeases;
pub use lease::{Lease, LeaseStore, MemoryLeases};
pub use middleware::ConflictMiddleware;
pub use policy::{
    ConflictPolicy, LeasePolicy, MergeBase, PolicyOverride, PollSchedule, PreconditionStrategy,
};
pub use prerequisite::{Action, Prerequisite, StateCheck};
pub use report::{ConflictReport, Outcome};
pub use resource::ResourceId;
pub use stats::{ConflictCount, ConflictStats, StatsSnapshot};
pub use update::{BoxError, UpdateOptions, update, update_as, update_with};
