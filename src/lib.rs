#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod body;
pub mod classify;
mod engine;
mod error;
mod journal;
pub mod lease;
mod merge;
mod middleware;
mod policy;
mod report;
mod resource;

pub use classify::{Classification, Classifier, ConflictKind};
pub use error::Error;
pub use lease::{Lease, LeaseStore, MemoryLeases};
pub use middleware::ConflictMiddleware;
pub use journal::{Journal, JournalEntry};
pub use policy::{ConflictPolicy, LeasePolicy, MergeBase, PollSchedule, PreconditionStrategy};
pub use report::{ConflictReport, Outcome};
pub use resource::ResourceId;
