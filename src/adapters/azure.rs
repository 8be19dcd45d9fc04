//! The `azure_core` adapter: a per-call pipeline policy, a thin translation onto the engine.
//!
//! Azure SDK pipelines run, in order: the client library's per-call policies, the caller's
//! `ClientOptions::per_call_policies`, the retry policy, per-try policies (authentication), then the
//! transport. [`AzureConflictPolicy`] belongs in the caller's per-call policies: *above* the retry
//! policy, which never retries a 409 or 412 and hands them up as responses, so each attempt the
//! engine makes is itself retried for 429/5xx and connection errors as usual; and re-fetches and
//! polls, sent down the rest of the pipeline, are authenticated by the per-try policies.
//!
//! An `azure_core` response has no extensions, so the [`ConflictReport`](crate::ConflictReport) travels the way
//! `azure_core` passes per-call values: through the call's [`Context`]. A caller who wants it puts
//! a [`ConflictReports`] there and reads it after the call — also when the call failed, as a
//! surfaced 409 does once a client library checks the status.

mod convert;
mod reports;

pub use reports::ConflictReports;

use std::sync::Arc;

use azure_core::{
    error::ErrorKind,
    http::{
        AsyncRawResponse, Body as RequestBody, Context, Request, StatusCode as AzureStatus,
        policies::{Policy, PolicyResult},
    },
};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyDataStream;

use convert::{Frames, azure_header_map, azure_method, header_map, http_method, http_status};

use super::{adapter, prelude::*};
use crate::{ResourceId, body};

adapter! {
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
    ///   call that met a conflict leaves its [`ConflictReport`](crate::ConflictReport) there.
    /// - **Per-call settings**: a [`PolicyOverride`](crate::PolicyOverride),
    ///   [`PreconditionStrategy`](crate::PreconditionStrategy) or [`MergeBase`](crate::MergeBase) in the
    ///   `Context` applies to that call, as it does in a reqwest request's extensions.
    /// - **Errors**: the pipeline's own errors pass through untouched. When the engine gives up it
    ///   returns an `azure_core::Error` whose source is the [`crate::Error`] (get it back with
    ///   `error.downcast_ref::<reqwest_conflict::Error>()`, and its report with
    ///   [`Error::report`](crate::Error::report)); for [`Error::NotConverged`](crate::Error::NotConverged) after a conflict its
    ///   kind is `HttpResponse` with the conflict's status and code, so `http_status()` still says 409.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use azure_core::http::{ClientOptions, Context, Method, Pipeline, Request};
    /// use reqwest_conflict::{AzureConflictPolicy, ConflictPolicy, ConflictReports};
    ///
    /// # async fn demo() -> azure_core::Result<()> {
    /// // The pipeline takes an `Arc`; keep one to read the counts and the journal later.
    /// let conflicts = Arc::new(AzureConflictPolicy::new(ConflictPolicy::azure_arm()));
    /// let options = ClientOptions {
    ///     per_call_policies: vec![conflicts.clone()],
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
    /// println!("{:?}", conflicts.stats().snapshot());
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "azure-core")))]
    pub struct AzureConflictPolicy, "policy"
}

impl AzureConflictPolicy {
    /// Copies a successful answer's body as it streams to the caller, when it may serve as a
    /// merge base; otherwise returns `response` untouched.
    fn remember(&self, resource: &ResourceId, response: AzureResponse) -> AsyncRawResponse {
        let AzureResponse {
            status,
            headers,
            raw,
        } = response;
        let Some((cap, sink)) = self.engine.merge_base_sink(resource, status, &headers) else {
            return raw;
        };
        let (status, headers, body) = raw.deconstruct();
        let tee = body::Tee::new(Frames(body), cap, sink);
        AsyncRawResponse::new(status, headers, Box::pin(BodyDataStream::new(tee)))
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
        match self.engine.route(&method) {
            Route::Pass => return forward(ctx, request, next).await,
            Route::Remember => {
                let resource = ResourceId::from_url(request.url());
                let response = AzureResponse::new(forward(ctx, request, next).await?);
                return Ok(self.remember(&resource, response));
            }
            Route::Write => {}
        }
        let url = request.url().clone();
        let headers = header_map(request.headers());
        let replay = match request.body() {
            RequestBody::Bytes(bytes) => Replay::Bytes(bytes.clone()),
            // Reset before each resend, as azure_core's own retry policy does.
            RequestBody::SeekableStream(_) => Replay::Rewind,
        };
        let overrides = Overrides::read(ctx.value(), ctx.value(), ctx.value());
        let original = Original::new(&method, &url, &headers, replay, overrides);
        let mut transport = AzureTransport {
            ctx,
            request,
            next,
            sent: false,
        };
        match self.engine.execute(&mut transport, &original).await {
            Ok(answered) => {
                if let (Some(report), Some(reports)) =
                    (answered.report, ctx.value::<ConflictReports>())
                {
                    reports.push(*report);
                }
                Ok(self.remember(&original.resource, answered.response))
            }
            Err(Failure::Transport(error)) => Err(error),
            Err(Failure::Conflict(error)) => Err(error.into()),
        }
    }
}

/// Converts the crate's error for an `azure_core` caller, keeping it as the source (get it back
/// with `downcast_ref::<reqwest_conflict::Error>()`). A wait that gave up after a conflict is an
/// `HttpResponse` error with the conflict's status and code; anything else is `Other`.
#[cfg_attr(docsrs, doc(cfg(feature = "azure-core")))]
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
struct AzureResponse {
    status: StatusCode,
    headers: HeaderMap,
    raw: AsyncRawResponse,
}

impl AzureResponse {
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
    type Response = AzureResponse;
    type Error = azure_core::Error;

    fn head(response: &AzureResponse) -> (StatusCode, &HeaderMap) {
        (response.status, &response.headers)
    }

    fn send(
        &mut self,
        changes: Option<Changes>,
    ) -> BoxFuture<'_, Result<AzureResponse, azure_core::Error>> {
        Box::pin(async move {
            let response = match changes {
                None => {
                    if self.sent {
                        self.request.body_mut().reset().await?;
                    }
                    self.sent = true;
                    forward(self.ctx, self.request, self.next).await
                }
                Some(changes) => {
                    let mut copy = self.request.clone();
                    *copy.headers_mut() = azure_header_map(&changes.headers);
                    match changes.body {
                        Some(body) => copy.set_body(body),
                        None => copy.body_mut().reset().await?,
                    }
                    forward(self.ctx, &mut copy, self.next).await
                }
            };
            response.map(AzureResponse::new)
        })
    }

    fn peek(
        response: AzureResponse,
        cap: usize,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, Peeked<AzureResponse, azure_core::Error>> {
        Box::pin(async move {
            let (raw_status, raw_headers, body) = response.raw.deconstruct();
            let (body, peeked) = body::peek(Frames(body), cap, deadline).await?;
            let stream = Box::pin(BodyDataStream::new(body));
            let raw = AsyncRawResponse::new(raw_status, raw_headers, stream);
            Ok((AzureResponse { raw, ..response }, peeked))
        })
    }

    fn call(&mut self, exchange: Exchange) -> BoxFuture<'_, Result<Fetched, azure_core::Error>> {
        Box::pin(async move {
            let mut request = Request::new(exchange.url, azure_method(&exchange.method)?);
            *request.headers_mut() = azure_header_map(&exchange.headers);
            let (status, headers, body) = forward(self.ctx, &mut request, self.next)
                .await?
                .deconstruct();
            let body = body::read_capped(Frames(body), exchange.cap).await?;
            Ok(Fetched {
                status: http_status(status),
                headers: header_map(&headers),
                body,
            })
        })
    }

    fn respond(&self, status: StatusCode, headers: HeaderMap, body: Bytes) -> AzureResponse {
        let azure_headers = azure_header_map(&headers);
        let raw =
            AsyncRawResponse::from_bytes(AzureStatus::from(status.as_u16()), azure_headers, body);
        AzureResponse {
            status,
            headers,
            raw,
        }
    }
}
