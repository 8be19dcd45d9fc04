//! The `azure_core` adapter: a per-call pipeline policy, a thin translation onto the engine.
//!
//! Azure SDK pipelines run, in order: the client library's per-call policies, the caller's
//! `ClientOptions::per_call_policies`, the retry policy, per-try policies (authentication), then the
//! transport. [`AzureConflictPolicy`] belongs in the caller's per-call policies: *above* the retry
//! policy, which never retries a 409 or 412 and hands them up as responses, so each attempt the
//! engine makes is itself retried for 429/5xx and connection errors as usual; and re-fetches and
//! polls, sent down the rest of the pipeline, are authenticated by the per-try policies.
//!
//! An `azure_core` response has no extensions, so the [`ConflictReport`] travels the way
//! `azure_core` passes per-call values: through the call's [`Context`]. A caller who wants it puts
//! a [`ConflictReports`] there and reads it after the call — also when the call failed, as a
//! surfaced 409 does once a client library checks the status.

mod convert;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use azure_core::{
    error::ErrorKind,
    http::{
        AsyncRawResponse, Body as RequestBody, Context, Request, StatusCode as AzureStatus,
        headers as azure_headers,
        policies::{Policy, PolicyResult},
    },
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyDataStream;
use url::Url;

use convert::{Frames, azure_header_map, azure_method, header_map, http_method, http_status};

use crate::{
    ConflictPolicy, ConflictReport, MergeBase, PolicyOverride, PreconditionStrategy, ResourceId,
    body,
    engine::{
        BoxFuture, Engine, Failure, Fetched, Original, Overrides, Peeked, Transport,
        engine_accessors, is_safe,
    },
    resource::Target,
};

/// Resolves 409 Conflict and 412 Precondition Failed answers in an `azure_core` pipeline.
///
/// Add it to [`ClientOptions::per_call_policies`](azure_core::http::ClientOptions) of any Azure SDK
/// client (or of a [`Pipeline`](azure_core::http::Pipeline) of your own). Safe methods pass
/// straight through, and so does a write whose answer is not a 409/412. Otherwise the engine
/// classifies the conflict and, for a state conflict, waits until the resource converges and sends
/// the request again — any request: a `Body::Bytes` as it is, a seekable stream after `reset()`,
/// as `azure_core`'s own retry policy does. Re-fetches are new GET requests sent down the rest of
/// the pipeline with the original's headers (less those describing its body or preconditions).
///
/// - **The report**: put a [`ConflictReports`] into the call's [`Context`]; every request of the
///   call that met a conflict leaves its [`ConflictReport`] there.
/// - **Per-call settings**: a [`PolicyOverride`], [`PreconditionStrategy`] or [`MergeBase`] in the
///   `Context` applies to that call, as it does in a reqwest request's extensions.
/// - **Errors**: the pipeline's own errors pass through untouched. When the engine gives up it
///   returns an `azure_core::Error` whose source is the [`crate::Error`] (get it back with
///   `downcast_ref`); for [`Error::NotConverged`](crate::Error::NotConverged) after a conflict its
///   kind is `HttpResponse` with the conflict's status and code, so `http_status()` still says 409.
///
/// ```no_run
/// use std::sync::Arc;
/// use azure_core::http::{ClientOptions, Context, Method, Pipeline, Request};
/// use reqwest_conflict::{AzureConflictPolicy, ConflictPolicy, ConflictReports};
///
/// # async fn demo() -> azure_core::Result<()> {
/// let options = ClientOptions {
///     per_call_policies: vec![Arc::new(AzureConflictPolicy::new(ConflictPolicy::azure_arm()))],
///     ..Default::default()
/// };
/// let pipeline = Pipeline::new(Some("my-tool"), Some("1.0.0"), options, Vec::new(), Vec::new(), None);
///
/// let reports = ConflictReports::new();
/// let ctx = Context::new().with_value(reports.clone());
/// let url = "https://management.azure.com/subscriptions/…?api-version=2024-07-01".parse()?;
/// let mut request = Request::new(url, Method::Put);
/// request.set_body(r#"{"location":"westus"}"#);
/// let result = pipeline.send(&ctx, &mut request, None).await;
/// for report in reports.take() {
///     println!("{}: {:?} after {} attempt(s)", report.kind, report.outcome, report.attempts);
/// }
/// result?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AzureConflictPolicy {
    engine: Engine,
}

impl AzureConflictPolicy {
    /// A policy applying `policy`.
    pub fn new(policy: ConflictPolicy) -> Self {
        Self {
            engine: Engine::new(policy),
        }
    }

    engine_accessors!("policy");

    /// When the policy merges stale writes, copies a successful representation with an ETag as it
    /// streams to the caller, to serve as a later merge base. Otherwise returns `response` untouched.
    fn remember(
        &self,
        resource: Option<ResourceId>,
        response: AsyncRawResponse,
    ) -> AsyncRawResponse {
        if !self.engine.remembers() {
            return response;
        }
        let etag = response.headers().get_optional_str(&azure_headers::ETAG);
        let status = http_status(response.status());
        let Some((cap, sink)) = self.engine.merge_base_sink(resource, status, etag) else {
            return response;
        };
        let (status, headers, body) = response.deconstruct();
        let tee = body::Tee::new(Frames(body), cap, sink);
        AsyncRawResponse::new(status, headers, Box::pin(BodyDataStream::new(tee)))
    }
}

impl Default for AzureConflictPolicy {
    fn default() -> Self {
        Self::new(ConflictPolicy::default())
    }
}

#[async_trait::async_trait]
impl Policy for AzureConflictPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let method = http_method(request.method());
        if is_safe(&method) {
            let resource = (method == Method::GET && self.engine.remembers())
                .then(|| ResourceId::from_url(request.url()));
            let response = forward(ctx, request, next).await?;
            return Ok(self.remember(resource, response));
        }
        let url = request.url().clone();
        let headers = header_map(request.headers());
        let original = Original {
            method: &method,
            resource: Target::of(&url),
            url: &url,
            headers: &headers,
            overrides: overrides(ctx),
        };
        let mut transport = AzureTransport {
            ctx,
            request,
            next,
            sent: false,
        };
        match self.engine.execute(&mut transport, &original).await {
            Ok((answer, report)) => {
                if let (Some(report), Some(reports)) = (report, ctx.value::<ConflictReports>()) {
                    reports.push(*report);
                }
                let resource = self.engine.to_remember(original.resource);
                Ok(self.remember(resource, answer.raw))
            }
            Err(Failure::Transport(error)) => Err(error),
            Err(Failure::Conflict(error)) => Err(error.into()),
        }
    }
}

/// Converts the crate's error for an `azure_core` caller, keeping it as the source (get it back
/// with `downcast_ref::<reqwest_conflict::Error>()`). A wait that gave up after a conflict is an
/// `HttpResponse` error with the conflict's status and code; anything else is `Other`.
impl From<crate::Error> for azure_core::Error {
    fn from(error: crate::Error) -> Self {
        let kind = match &error {
            crate::Error::NotConverged {
                classification: Some(classification),
                ..
            } => ErrorKind::HttpResponse {
                status: AzureStatus::from(classification.status),
                error_code: classification.code.clone(),
                raw_response: None,
            },
            _ => ErrorKind::Other,
        };
        azure_core::Error::new(kind, error)
    }
}

/// How many reports a [`ConflictReports`] keeps; the oldest go first.
const MAX_REPORTS: usize = 64;

/// Where [`AzureConflictPolicy`] leaves the [`ConflictReport`] of every request that met a
/// conflict, for the caller to read after the call. Put one into the call's [`Context`]
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

    fn push(&self, report: ConflictReport) {
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

/// The per-call settings in `ctx`, read as the other adapters read a request's extensions.
fn overrides(ctx: &Context<'_>) -> Overrides {
    let mut extensions = http::Extensions::new();
    if let Some(policy) = ctx.value::<PolicyOverride>() {
        extensions.insert(policy.clone());
    }
    if let Some(strategy) = ctx.value::<PreconditionStrategy>() {
        extensions.insert(*strategy);
    }
    if let Some(base) = ctx.value::<MergeBase>() {
        extensions.insert(base.clone());
    }
    Overrides::from_extensions(&extensions)
}

/// Sends `request` down the rest of the pipeline.
async fn forward(
    ctx: &Context<'_>,
    request: &mut Request,
    next: &[Arc<dyn Policy>],
) -> PolicyResult {
    let Some((first, rest)) = next.split_first() else {
        return Err(azure_core::Error::with_message(
            ErrorKind::Other,
            "AzureConflictPolicy needs a transport after it; add it to per_call_policies",
        ));
    };
    first.send(ctx, request, rest).await
}

/// A response with its status and headers as the engine reads them.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    raw: AsyncRawResponse,
}

impl Answer {
    fn new(raw: AsyncRawResponse) -> Self {
        Self {
            status: http_status(raw.status()),
            headers: header_map(raw.headers()),
            raw,
        }
    }
}

struct AzureTransport<'a, 'c> {
    ctx: &'a Context<'c>,
    request: &'a mut Request,
    next: &'a [Arc<dyn Policy>],
    /// Whether the request was sent once already (its stream body must then be reset).
    sent: bool,
}

impl Transport for AzureTransport<'_, '_> {
    type Response = Answer;
    type Error = azure_core::Error;

    fn status(response: &Answer) -> StatusCode {
        response.status
    }

    fn headers(response: &Answer) -> &HeaderMap {
        &response.headers
    }

    fn peek_body(
        response: Answer,
        cap: usize,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, Peeked<Answer, azure_core::Error>> {
        Box::pin(async move {
            let Answer {
                status,
                headers,
                raw,
            } = response;
            let (raw_status, raw_headers, body) = raw.deconstruct();
            let (body, peeked) = body::peek(Frames(body), cap, deadline).await?;
            let raw =
                AsyncRawResponse::new(raw_status, raw_headers, Box::pin(BodyDataStream::new(body)));
            Ok((
                Answer {
                    status,
                    headers,
                    raw,
                },
                peeked,
            ))
        })
    }

    async fn send(&mut self) -> Result<Answer, azure_core::Error> {
        if self.sent {
            // As azure_core's retry policy does before it sends a request again.
            self.request.body_mut().reset().await?;
        }
        self.sent = true;
        forward(self.ctx, self.request, self.next)
            .await
            .map(Answer::new)
    }

    fn can_resend(&self) -> bool {
        // Bytes are cloned by the transport; a seekable stream is reset first.
        true
    }

    fn body(&self) -> Option<Bytes> {
        match self.request.body() {
            RequestBody::Bytes(bytes) => Some(bytes.clone()),
            RequestBody::SeekableStream(_) => None,
        }
    }

    fn send_variant(
        &mut self,
        if_match: HeaderValue,
        body: Option<Bytes>,
    ) -> Option<BoxFuture<'_, Result<Answer, azure_core::Error>>> {
        let if_match = if_match.to_str().ok()?.to_owned();
        let mut request = self.request.clone();
        request.insert_header(azure_headers::IF_MATCH, if_match);
        let changed = body.is_some();
        if let Some(body) = body {
            // The length is the new body's, set when it is sent.
            request.headers_mut().remove(azure_headers::CONTENT_LENGTH);
            request.set_body(body);
        }
        Some(Box::pin(async move {
            if !changed {
                request.body_mut().reset().await?;
            }
            forward(self.ctx, &mut request, self.next)
                .await
                .map(Answer::new)
        }))
    }

    fn respond(&self, status: StatusCode, headers: HeaderMap, body: Bytes) -> Option<Answer> {
        let raw = AsyncRawResponse::from_bytes(
            AzureStatus::from(status.as_u16()),
            azure_header_map(&headers),
            body,
        );
        Some(Answer {
            status,
            headers,
            raw,
        })
    }

    fn call(
        &mut self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        cap: usize,
    ) -> BoxFuture<'_, Result<Fetched, azure_core::Error>> {
        Box::pin(self.exchange(method, url, headers, cap))
    }
}

impl AzureTransport<'_, '_> {
    /// A new bodiless request (a re-fetch, a poll, a prerequisite action) down the rest of the
    /// pipeline, its answer read up to `cap` bytes.
    async fn exchange(
        &mut self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        cap: usize,
    ) -> Result<Fetched, azure_core::Error> {
        let mut request = Request::new(url, azure_method(&method)?);
        *request.headers_mut() = azure_header_map(&headers);
        let (status, headers, body) = forward(self.ctx, &mut request, self.next)
            .await?
            .deconstruct();
        let body = body::read_capped(Frames(body), cap).await?;
        Ok(Fetched {
            status: http_status(status),
            headers: header_map(&headers),
            body,
        })
    }
}
