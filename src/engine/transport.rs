//! What the engine needs from an HTTP stack, and what it knows of the request it runs.
//!
//! An adapter (reqwest-middleware, tower, azure_core) only translates: it tells the engine the
//! request's head and body once ([`Original`]), and implements [`Transport`] — five functions in
//! its own types. Everything else (when to resend, what a resend changes, which bodies are read)
//! is decided and done once, in the engine.

use std::{
    fmt::Display,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;
use url::Url;

use crate::shared::BoxFuture;
use crate::{ConflictReport, Error, MergeBase, PolicyOverride, PreconditionStrategy, ResourceId};

/// An HTTP stack, seen from the engine.
pub(crate) trait Transport: Send {
    /// The stack's response type, handed back to the caller.
    type Response: Send;
    /// The stack's error type, passed through untouched.
    type Error: Send + Display;

    /// The response's status and headers.
    fn head(response: &Self::Response) -> (StatusCode, &HeaderMap);

    /// Sends the original request through the rest of the stack: the request itself the first
    /// time, a copy later — with `changes` applied when given. The engine asks for a copy only
    /// when [`Original::body`] says one can be made.
    fn send(
        &mut self,
        changes: Option<Changes>,
    ) -> BoxFuture<'_, Result<Self::Response, Self::Error>>;

    /// Reads up to `cap` bytes of the body, stopping at `deadline` if it stalls, and returns them
    /// with the response, whose body still yields every byte to the caller.
    fn peek(
        response: Self::Response,
        cap: usize,
        deadline: Instant,
    ) -> BoxFuture<'static, Peeked<Self::Response, Self::Error>>;

    /// Sends a bodiless request through the rest of the stack, reading at most `exchange.cap`
    /// bytes of the answer: re-fetches, polls, prerequisite actions.
    fn call(&mut self, exchange: Exchange) -> BoxFuture<'_, Result<Fetched, Self::Error>>;

    /// A response made here (a write found already applied is answered with the fresh
    /// representation).
    fn respond(&self, status: StatusCode, headers: HeaderMap, body: Bytes) -> Self::Response;
}

/// A response whose body was peeked at, with the bytes read.
pub(crate) type Peeked<R, E> = Result<(R, Bytes), E>;

/// What a resend changes of the original request.
#[derive(Debug)]
pub(crate) struct Changes {
    /// The headers to send instead of the original's.
    pub headers: HeaderMap,
    /// The body to send instead of the original's, if another.
    pub body: Option<Bytes>,
}

/// A bodiless request the engine makes of its own: `method url` with `headers`, its answer read
/// up to `cap` bytes.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub cap: usize,
}

/// Whether the HTTP stack was seen following a redirect to another origin on one of the engine's
/// own requests. Shared by an engine and its clones; once set, it stays set.
///
/// No stack lets a request of ours turn its client's redirects off, and a hop to another origin
/// carries what the client adds to it (reqwest: a `Referer` with the poll's URL, SAS and all).
/// The first such hop can only be seen once it happened; from then on the engine sends no
/// request of its own, since each would be followed the same way.
#[derive(Clone, Debug, Default)]
pub(crate) struct Redirects(Arc<AtomicBool>);

impl Redirects {
    /// Whether a redirect to another origin was followed.
    pub(crate) fn followed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Records that the stack followed a redirect to another origin.
    pub(crate) fn record(&self) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the HTTP client followed a redirect to another origin on a re-fetch or poll; \
                 no more re-fetches, polls or prerequisite actions are sent through it \
                 (build the client without redirects: see SECURITY.md)"
            );
        }
    }
}

/// The answer to a bodiless exchange, read up to a cap.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the engine knows of the original request.
pub(crate) struct Original<'a> {
    pub method: &'a Method,
    pub url: &'a Url,
    pub headers: &'a HeaderMap,
    pub body: Replay,
    pub resource: ResourceId,
    /// Per-request settings from the request's extensions.
    pub overrides: Overrides,
}

impl<'a> Original<'a> {
    /// The request `method url` with `headers` and `body`, and its per-request settings.
    pub(crate) fn new(
        method: &'a Method,
        url: &'a Url,
        headers: &'a HeaderMap,
        body: Replay,
        overrides: Overrides,
    ) -> Self {
        Self {
            method,
            url,
            headers,
            body,
            resource: ResourceId::from_url(url),
            overrides,
        }
    }
}

/// Whether, and how, the original request can be sent again.
#[derive(Clone, Debug)]
pub(crate) enum Replay {
    /// Its body is in memory (empty for a bodiless request): it can be copied, and read.
    Bytes(Bytes),
    /// Its body is a stream the stack can rewind (azure_core's seekable streams): it can be
    /// sent again, but not read.
    #[cfg_attr(not(feature = "azure-core"), allow(dead_code))]
    Rewind,
    /// Its body is a stream that can be read once: the request is sent once.
    Once,
}

impl Replay {
    /// Whether the request can be sent again.
    pub(crate) fn resendable(&self) -> bool {
        !matches!(self, Self::Once)
    }

    /// The body, when it is in memory.
    pub(crate) fn bytes(&self) -> Option<&Bytes> {
        match self {
            Self::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// What a single request may change of the policy, through its extensions (or, in azure_core,
/// its call's context). Most requests change nothing, so the override is boxed: a request
/// without one does not carry its room through every future of the write.
#[derive(Clone, Debug, Default)]
pub(crate) struct Overrides {
    pub policy: Option<Box<PolicyOverride>>,
    pub merge_base: Option<serde_json::Value>,
}

impl Overrides {
    /// Reads [`PolicyOverride`], [`PreconditionStrategy`] (a shorthand for an override of just
    /// that) and [`MergeBase`] wherever the stack keeps per-request values.
    pub(crate) fn read(
        policy: Option<&PolicyOverride>,
        strategy: Option<&PreconditionStrategy>,
        merge_base: Option<&MergeBase>,
    ) -> Self {
        let mut policy = policy.cloned().map(Box::new);
        if let Some(strategy) = strategy {
            policy.get_or_insert_default().precondition = Some(*strategy);
        }
        Self {
            policy,
            merge_base: merge_base.map(|base| base.0.clone()),
        }
    }

    /// [`read`](Self::read) from an `http` request's extensions.
    pub(crate) fn from_extensions(extensions: &http::Extensions) -> Self {
        Self::read(extensions.get(), extensions.get(), extensions.get())
    }
}

/// The response for the caller, with the report of the conflict it met, if any.
pub(crate) struct Answered<R> {
    pub response: R,
    pub report: Option<Box<ConflictReport>>,
}

/// Why a write did not end with a response.
pub(crate) enum Failure<E> {
    /// The stack failed; its error is returned as is.
    Transport(E),
    /// The engine gave up (a lease not taken, a state that did not converge, a bad override).
    Conflict(Error),
}
