//! The `reqwest-middleware` adapter: a thin translation onto the engine.

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Middleware, Next};
use url::Url;

use crate::{
    ConflictPolicy, ResourceId, body,
    engine::{
        BoxFuture, Engine, Failure, Fetched, Original, Overrides, Peeked, Transport,
        engine_accessors, is_safe,
    },
    resource::Target,
};

/// Resolves 409 Conflict and 412 Precondition Failed answers for a `reqwest-middleware` client.
///
/// Safe methods (GET, HEAD, OPTIONS, TRACE) pass straight through. A write whose answer is not a
/// 409/412 passes through too, untouched and unbuffered. Otherwise the engine classifies the
/// conflict and, for a state conflict, waits until the resource converges and retries — re-fetches
/// and polls go through the rest of the middleware chain, so authentication added by earlier
/// middleware applies to them. The response carries a [`ConflictReport`](crate::ConflictReport) in
/// its extensions; a wait that outlives the policy's deadline fails with
/// [`Error::NotConverged`](crate::Error::NotConverged) inside
/// `reqwest_middleware::Error::Middleware`.
///
/// ```no_run
/// use reqwest_conflict::{ConflictMiddleware, ConflictPolicy};
/// use reqwest_middleware::ClientBuilder;
///
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(ConflictMiddleware::new(ConflictPolicy::azure_arm()))
///     .build();
/// ```
#[derive(Clone, Debug)]
pub struct ConflictMiddleware {
    engine: Engine,
}

impl ConflictMiddleware {
    /// A middleware applying `policy`.
    pub fn new(policy: ConflictPolicy) -> Self {
        Self {
            engine: Engine::new(policy),
        }
    }

    engine_accessors!("middleware");

    /// When the policy merges stale writes, copies a successful JSON representation with an ETag
    /// as it streams to the caller, to serve as a later merge base. Otherwise returns `response`
    /// untouched.
    fn remember(&self, resource: Option<ResourceId>, response: Response) -> Response {
        if !self.engine.remembers() {
            return response;
        }
        let etag = response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok());
        let Some((cap, sink)) = self
            .engine
            .merge_base_sink(resource, response.status(), etag)
        else {
            return response;
        };
        let url = response.url().clone();
        let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
        let tee = body::Tee::new(body, cap, sink);
        rebuild(parts, reqwest::Body::wrap(tee), url)
    }
}

impl Default for ConflictMiddleware {
    fn default() -> Self {
        Self::new(ConflictPolicy::default())
    }
}

impl Middleware for ConflictMiddleware {
    // Written out rather than through `#[async_trait]`: a read the policy does not remember goes
    // straight down the chain, with no future of this crate's around it, and a write's future is
    // built to stay small (see `write`).
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        req: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> BoxFuture<'async_trait, reqwest_middleware::Result<Response>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let method = req.method();
        if is_safe(method) {
            // Only a policy that merges wants reads remembered; the rest pass untouched.
            if *method != Method::GET || !self.engine.remembers() {
                return next.run(req, extensions);
            }
            let resource = Some(ResourceId::from_url(req.url()));
            let response = next.run(req, extensions);
            return Box::pin(async move { Ok(self.remember(resource, response.await?)) });
        }
        Box::pin(self.write(req, extensions, next))
    }
}

impl ConflictMiddleware {
    /// A write, through the engine. Everything that can be is prepared before the future is
    /// made, and what it holds is held once: the future is allocated on every write, and one
    /// that outgrows the allocator's small-size caches costs more than the rest of this crate's
    /// work on the happy path.
    fn write<'a>(
        &'a self,
        req: Request,
        extensions: &'a mut Extensions,
        next: Next<'a>,
    ) -> impl Future<Output = reqwest_middleware::Result<Response>> + Send + 'a {
        let overrides = Overrides::from_extensions(extensions);
        let (kept, first) = Kept::new(req);
        let mut chain = Chain {
            next,
            extensions,
            first,
        };
        async move {
            let (method, url, headers) = kept.head();
            let original = Original {
                method,
                resource: Target::of(url),
                url,
                headers,
                overrides,
            };
            let mut transport = ReqwestTransport {
                chain: &mut chain,
                retry: kept.resendable(),
            };
            // Boxed apart, for the same reason (and in a statement of its own: a future built
            // in the expression that awaits it keeps its size in this one's state).
            let execute = Box::pin(self.engine.execute(&mut transport, &original));
            match execute.await {
                Ok((mut response, report)) => {
                    if let Some(report) = report {
                        response.extensions_mut().insert(*report);
                    }
                    let resource = self.engine.to_remember(original.resource);
                    Ok(self.remember(resource, response))
                }
                Err(Failure::Transport(error)) => Err(error),
                Err(Failure::Conflict(error)) => Err(reqwest_middleware::Error::middleware(error)),
            }
        }
    }
}

/// What is kept of a request while the engine runs: the request itself when its body can be
/// copied (every send, the first included, is then a copy of it, so the write's future holds
/// one request, not two); else its head alone, the request being sent once, as it is.
// The large variant is the common one: boxing it would add an allocation to every write.
#[allow(clippy::large_enum_variant)]
enum Kept {
    Resendable(Request),
    Head(Box<(Method, Url, HeaderMap)>),
}

impl Kept {
    /// What to keep of `request`, and the request to send first when it cannot be copied
    /// (boxed: a streamed body is rare, and the write's future stays small without it).
    fn new(request: Request) -> (Self, Option<Box<Request>>) {
        // reqwest copies a body exactly when it holds its bytes (`as_bytes`); told apart without
        // making a copy here, which the first send makes.
        if request.body().is_none_or(|body| body.as_bytes().is_some()) {
            debug_assert!(
                request.try_clone().is_some(),
                "a body in memory can be copied"
            );
            return (Self::Resendable(request), None);
        }
        let head = (
            request.method().clone(),
            request.url().clone(),
            request.headers().clone(),
        );
        (Self::Head(Box::new(head)), Some(Box::new(request)))
    }

    fn head(&self) -> (&Method, &Url, &HeaderMap) {
        match self {
            Self::Resendable(r) => (r.method(), r.url(), r.headers()),
            Self::Head(head) => (&head.0, &head.1, &head.2),
        }
    }

    fn resendable(&self) -> Option<&Request> {
        match self {
            Self::Resendable(r) => Some(r),
            Self::Head(..) => None,
        }
    }
}

/// The rest of the middleware chain, with the request itself until it is sent when it cannot
/// be copied.
struct Chain<'n, 'e> {
    next: Next<'n>,
    extensions: &'e mut Extensions,
    first: Option<Box<Request>>,
}

struct ReqwestTransport<'c, 'n, 'e> {
    chain: &'c mut Chain<'n, 'e>,
    /// The request every attempt is a copy of, when its body can be copied.
    retry: Option<&'c Request>,
}

impl Transport for ReqwestTransport<'_, '_, '_> {
    type Response = Response;
    type Error = reqwest_middleware::Error;

    fn status(response: &Response) -> StatusCode {
        response.status()
    }

    fn headers(response: &Response) -> &HeaderMap {
        response.headers()
    }

    fn peek_body(
        response: Response,
        cap: usize,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, Peeked<Response, Self::Error>> {
        Box::pin(async move {
            let url = response.url().clone();
            let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
            let (body, peeked) = body::peek(body, cap, deadline).await?;
            Ok((rebuild(parts, reqwest::Body::wrap(body), url), peeked))
        })
    }

    fn can_resend(&self) -> bool {
        self.retry.is_some()
    }

    fn body(&self) -> Option<Bytes> {
        let bytes = self.retry?.body()?.as_bytes()?;
        Some(Bytes::copy_from_slice(bytes))
    }

    fn send_variant(
        &mut self,
        if_match: HeaderValue,
        body: Option<Bytes>,
    ) -> Option<BoxFuture<'_, Result<Response, Self::Error>>> {
        let mut request = self.retry?.try_clone()?;
        request
            .headers_mut()
            .insert(http::header::IF_MATCH, if_match);
        if let Some(body) = body {
            // The length is the new body's, set when it is sent.
            request.headers_mut().remove(http::header::CONTENT_LENGTH);
            *request.body_mut() = Some(reqwest::Body::from(body));
        }
        let next = self.chain.next.clone();
        let extensions = &mut *self.chain.extensions;
        Some(Box::pin(next.run(request, extensions)))
    }

    fn respond(&self, status: StatusCode, headers: HeaderMap, body: Bytes) -> Option<Response> {
        let url = self.retry?.url().clone();
        let mut response = http::Response::new(reqwest::Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let (parts, body) = response.into_parts();
        Some(rebuild(parts, body, url))
    }

    fn send(&mut self) -> impl Future<Output = Result<Response, Self::Error>> + Send + '_ {
        let request = self
            .chain
            .first
            .take()
            .map(|first| *first)
            .or_else(|| self.retry.and_then(Request::try_clone));
        let next = self.chain.next.clone();
        let extensions = &mut *self.chain.extensions;
        // The chain's own boxed future, as is: the request moves straight into it.
        match request {
            Some(request) => next.run(request, extensions),
            None => Box::pin(std::future::ready(Err(
                reqwest_middleware::Error::middleware(NotCloneable),
            ))),
        }
    }

    fn call(
        &mut self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        cap: usize,
    ) -> BoxFuture<'_, Result<Fetched, Self::Error>> {
        let origin = url.origin();
        let mut request = Request::new(method, url);
        *request.headers_mut() = headers;
        let next = self.chain.next.clone();
        let extensions = &mut *self.chain.extensions;
        Box::pin(async move {
            let response = next.run(request, extensions).await?;
            // The client followed a redirect elsewhere: whatever answered there is not the
            // resource's state. (Clients should not follow redirects at all; see SECURITY.md.)
            if response.url().origin() != origin {
                return Err(reqwest_middleware::Error::middleware(RedirectedAway));
            }
            let status = response.status();
            let headers = response.headers().clone();
            let body = http::Response::<reqwest::Body>::from(response).into_body();
            let body = body::read_capped(body, cap).await?;
            Ok(Fetched {
                status,
                headers,
                body,
            })
        })
    }
}

/// A `reqwest::Response` again, with its URL, from parts taken apart to peek at the body.
fn rebuild(parts: http::response::Parts, body: reqwest::Body, url: Url) -> Response {
    let mut response = http::Response::from_parts(parts, body);
    // reqwest keeps the URL in a private extension that only its builder extension can set.
    if let Some(with_url) = http::Response::builder().url(url).extensions_mut() {
        response.extensions_mut().extend(std::mem::take(with_url));
    }
    Response::from(response)
}

/// A re-fetch or poll was redirected to another origin by the client.
#[derive(Debug, thiserror::Error)]
#[error("the answer came from another origin (the client follows redirects); it is not trusted")]
struct RedirectedAway;

/// The engine asked to resend a request that could not be copied; it never does.
#[derive(Debug, thiserror::Error)]
#[error("the request body cannot be cloned, so it cannot be sent again")]
struct NotCloneable;
