//! Types every part of the crate uses, kept here so no module depends on another for them.

use std::{future::Future, pin::Pin};

/// A boxed, sendable future, as the adapters' own stacks use.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// ARM's header naming a long-running operation's status URI.
pub(crate) const AZURE_ASYNC_OPERATION: http::HeaderName =
    http::HeaderName::from_static("azure-asyncoperation");
