//! The `reqwest-middleware` adapter: a thin translation onto the engine.

use http::{Extensions, HeaderMap, Method, StatusCode};
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Middleware, Next};
use url::Url;

use crate::{
    ConflictPolicy, ResourceId, body,
    engine::{BoxFuture, Engine, Failure, Fetched, Original, Peeked, Transport, is_conflict},
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

    /// The policy in force (after clamping values that would make the engine spin).
    pub fn policy(&self) -> &ConflictPolicy {
        self.engine.policy()
    }
}

impl Default for ConflictMiddleware {
    fn default() -> Self {
        Self::new(ConflictPolicy::default())
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[async_trait::async_trait]
impl Middleware for ConflictMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if is_safe(req.method()) {
            return next.run(req, extensions).await;
        }
        let kept = Kept::from(&req);
        let response = next.clone().run(req, extensions).await?;
        if !is_conflict(response.status()) {
            return Ok(response);
        }
        let (url, headers) = kept.head();
        let original = Original {
            resource: ResourceId::from_url(url),
            url,
            headers,
        };
        let mut transport = ReqwestTransport {
            next,
            extensions,
            retry: kept.copy(),
        };
        match self
            .engine
            .resolve(&mut transport, &original, response)
            .await
        {
            Ok((mut response, report)) => {
                if let Some(report) = report {
                    response.extensions_mut().insert(report);
                }
                Ok(response)
            }
            Err(Failure::Transport(error)) => Err(error),
            Err(Failure::Conflict(error)) => Err(reqwest_middleware::Error::middleware(error)),
        }
    }
}

/// What is kept of a request before it is sent: a copy to retry with, which also records the URL
/// and headers; or, when the body is a stream and cannot be copied, the URL and headers alone.
enum Kept {
    Copy(Request),
    Head(Url, HeaderMap),
}

impl Kept {
    fn from(request: &Request) -> Self {
        match request.try_clone() {
            Some(copy) => Self::Copy(copy),
            None => Self::Head(request.url().clone(), request.headers().clone()),
        }
    }

    fn head(&self) -> (&Url, &HeaderMap) {
        match self {
            Self::Copy(r) => (r.url(), r.headers()),
            Self::Head(url, headers) => (url, headers),
        }
    }

    fn copy(&self) -> Option<&Request> {
        match self {
            Self::Copy(r) => Some(r),
            Self::Head(..) => None,
        }
    }
}

struct ReqwestTransport<'a, 'e, 'k> {
    next: Next<'a>,
    extensions: &'e mut Extensions,
    retry: Option<&'k Request>,
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
    ) -> BoxFuture<'static, Peeked<Response, Self::Error>> {
        Box::pin(async move {
            let url = response.url().clone();
            let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
            let (body, peeked) = body::peek(body, cap).await?;
            Ok((rebuild(parts, reqwest::Body::wrap(body), url), peeked))
        })
    }

    fn can_resend(&self) -> bool {
        self.retry.is_some()
    }

    fn resend(&mut self) -> BoxFuture<'_, Result<Response, Self::Error>> {
        let request = self.retry.and_then(Request::try_clone);
        let next = self.next.clone();
        let extensions = &mut *self.extensions;
        Box::pin(async move {
            match request {
                Some(request) => next.run(request, extensions).await,
                None => Err(reqwest_middleware::Error::middleware(NotCloneable)),
            }
        })
    }

    fn fetch(
        &mut self,
        url: Url,
        headers: HeaderMap,
        cap: usize,
    ) -> BoxFuture<'_, Result<Fetched, Self::Error>> {
        let mut request = Request::new(Method::GET, url);
        *request.headers_mut() = headers;
        let next = self.next.clone();
        let extensions = &mut *self.extensions;
        Box::pin(async move {
            let response = next.run(request, extensions).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = body::read_capped(
                http::Response::<reqwest::Body>::from(response).into_body(),
                cap,
            )
            .await?;
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

/// The engine asked to resend a request that could not be copied; it never does.
#[derive(Debug, thiserror::Error)]
#[error("the request body cannot be cloned, so it cannot be sent again")]
struct NotCloneable;
