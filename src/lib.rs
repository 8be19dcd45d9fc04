#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod body;
pub mod classify;
mod engine;
mod error;
mod middleware;
mod policy;
mod report;
mod resource;

pub use classify::{Classification, Classifier, ConflictKind};
pub use error::Error;
pub use middleware::ConflictMiddleware;
pub use policy::{ConflictPolicy, PollSchedule};
pub use report::{ConflictReport, Outcome};
pub use resource::ResourceId;
