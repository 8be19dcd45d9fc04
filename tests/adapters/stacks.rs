//! The three HTTP stacks behind one trait, so each behaviour is written once.

use std::{convert::Infallible, sync::Arc};

use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, Request, Transport,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use reqwest_conflict::{
    AzureConflictPolicy, BoxError, ConflictLayer, ConflictMiddleware, ConflictPolicy,
    ConflictReport, ConflictReports, ConflictService, Error, PreconditionStrategy,
};
use reqwest_middleware::ClientWithMiddleware;
use tower::{Layer, ServiceExt};

/// One PUT, as every stack can express it.
#[derive(Clone, Debug, Default)]
pub struct Put {
    pub url: String,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// A per-request precondition strategy (request extensions, or the azure_core `Context`).
    pub strategy: Option<PreconditionStrategy>,
    /// Send the body as a stream the stack cannot copy.
    pub streamed: bool,
}

impl Put {
    pub fn json(url: String, body: &serde_json::Value) -> Self {
        Self {
            url,
            body: body.to_string().into_bytes(),
            ..Self::default()
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn strategy(mut self, strategy: PreconditionStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    pub fn streamed(mut self) -> Self {
        self.streamed = true;
        self
    }
}

/// What the caller got back.
#[derive(Debug)]
pub struct Outcome {
    pub status: u16,
    pub report: Option<ConflictReport>,
    pub body: Vec<u8>,
}

impl Outcome {
    pub fn report(&self) -> &ConflictReport {
        self.report
            .as_ref()
            .expect("a response that met a conflict carries a report")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Why there is no response.
#[derive(Debug)]
pub enum Failed {
    /// The crate's own error, got back out of the stack's error type.
    Conflict(Error),
    /// Anything else.
    Other(#[allow(dead_code)] String), // read through Debug, in failure messages
}

/// An HTTP stack with a conflict adapter in it.
pub trait Adapter: Sized {
    /// A stack resolving conflicts with `policy`.
    fn new(policy: ConflictPolicy) -> Self;
    /// Whether the stack has request bodies it cannot send twice.
    fn has_unclonable_bodies() -> bool;
    /// Sends `put`.
    async fn put(&self, put: Put) -> Result<Outcome, Failed>;
}

fn json_headers() -> [(&'static str, &'static str); 1] {
    [("content-type", "application/json")]
}

/// A streamed body, which no stack can copy.
fn stream(body: Vec<u8>) -> reqwest::Body {
    let frames = vec![Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(
        body,
    )))];
    reqwest::Body::wrap(StreamBody::new(futures_util::stream::iter(frames)))
}

/// `reqwest` + `reqwest-middleware` + [`ConflictMiddleware`].
pub struct ReqwestStack(ClientWithMiddleware);

impl Adapter for ReqwestStack {
    fn new(policy: ConflictPolicy) -> Self {
        Self(
            reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(ConflictMiddleware::new(policy))
                .build(),
        )
    }

    fn has_unclonable_bodies() -> bool {
        true
    }

    async fn put(&self, put: Put) -> Result<Outcome, Failed> {
        let mut request = self.0.put(&put.url);
        for (name, value) in json_headers() {
            request = request.header(name, value);
        }
        for (name, value) in &put.headers {
            request = request.header(*name, value);
        }
        if let Some(strategy) = put.strategy {
            request = request.with_extension(strategy);
        }
        request = if put.streamed {
            request.body(stream(put.body))
        } else {
            request.body(put.body)
        };
        let response = request.send().await.map_err(|error| match error {
            reqwest_middleware::Error::Middleware(error) => match error.downcast::<Error>() {
                Ok(error) => Failed::Conflict(error),
                Err(error) => Failed::Other(error.to_string()),
            },
            other => Failed::Other(other.to_string()),
        })?;
        let status = response.status().as_u16();
        let report = response.extensions().get::<ConflictReport>().cloned();
        let body = response
            .bytes()
            .await
            .map_err(|e| Failed::Other(e.to_string()))?;
        Ok(Outcome {
            status,
            report,
            body: body.to_vec(),
        })
    }
}

/// hyper-util's legacy client under [`ConflictLayer`]: `Full<Bytes>` bodies, and `reqwest::Body`
/// (a `From<Bytes>` type that can also stream) for the streamed case.
pub struct TowerStack {
    full: ConflictService<Client<HttpConnector, Full<Bytes>>>,
    streaming: ConflictService<Client<HttpConnector, reqwest::Body>>,
}

fn tower_request<B>(put: &Put, body: B) -> http::Request<B> {
    let mut builder = http::Request::put(&put.url);
    for (name, value) in json_headers() {
        builder = builder.header(name, value);
    }
    for (name, value) in &put.headers {
        builder = builder.header(*name, value);
    }
    if let Some(strategy) = put.strategy {
        builder = builder.extension(strategy);
    }
    builder.body(body).expect("a valid request")
}

/// The crate's error out of a tower `BoxError`.
pub fn from_box(error: BoxError) -> Failed {
    match error.downcast::<Error>() {
        Ok(error) => Failed::Conflict(*error),
        Err(error) => Failed::Other(error.to_string()),
    }
}

/// A tower response as an [`Outcome`].
pub async fn tower_outcome<B>(response: http::Response<B>) -> Result<Outcome, Failed>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let status = response.status().as_u16();
    let report = response.extensions().get::<ConflictReport>().cloned();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failed::Other(e.to_string()))?
        .to_bytes();
    Ok(Outcome {
        status,
        report,
        body: body.to_vec(),
    })
}

impl Adapter for TowerStack {
    fn new(policy: ConflictPolicy) -> Self {
        let layer = ConflictLayer::new(policy);
        let builder = Client::builder(TokioExecutor::new());
        Self {
            full: layer.layer(builder.build_http()),
            streaming: layer.layer(builder.build_http()),
        }
    }

    fn has_unclonable_bodies() -> bool {
        true
    }

    async fn put(&self, put: Put) -> Result<Outcome, Failed> {
        if put.streamed {
            let request = tower_request(&put, stream(put.body.clone()));
            let response = self.streaming.clone().oneshot(request).await;
            return tower_outcome(response.map_err(from_box)?).await;
        }
        let request = tower_request(&put, Full::new(Bytes::from(put.body.clone())));
        let response = self.full.clone().oneshot(request).await;
        tower_outcome(response.map_err(from_box)?).await
    }
}

/// An `azure_core` [`Pipeline`] built as Azure SDK clients build theirs — default retry policy,
/// [`AzureConflictPolicy`] among the per-call policies — over `reqwest`.
pub struct AzureStack(Pipeline);

impl AzureStack {
    pub fn pipeline(policy: ConflictPolicy) -> Pipeline {
        let options = ClientOptions {
            per_call_policies: vec![Arc::new(AzureConflictPolicy::new(policy))],
            transport: Some(Transport::new(Arc::new(reqwest::Client::new()))),
            ..ClientOptions::default()
        };
        Pipeline::new(
            Some("reqwest-conflict-tests"),
            Some("0.0.0"),
            options,
            Vec::new(),
            Vec::new(),
            None,
        )
    }

    /// An `azure_core` request for `put`, and a context carrying its report collector.
    pub fn request(put: &Put) -> (Request, Context<'static>, ConflictReports) {
        let mut request = Request::new(put.url.parse().expect("a URL"), Method::Put);
        for (name, value) in json_headers() {
            request.insert_header(name, value);
        }
        for (name, value) in &put.headers {
            // azure_core header names must be lowercase (`From<String>` lowercases).
            request.insert_header(name.to_string(), value.clone());
        }
        request.set_body(put.body.clone());
        let reports = ConflictReports::new();
        let mut ctx = Context::new().with_value(reports.clone());
        if let Some(strategy) = put.strategy {
            ctx.insert(strategy);
        }
        (request, ctx, reports)
    }
}

/// The crate's error out of an `azure_core::Error`.
pub fn from_azure(error: azure_core::Error) -> Failed {
    match error.into_downcast::<Error>() {
        Ok(error) => Failed::Conflict(error),
        Err(error) => Failed::Other(error.to_string()),
    }
}

impl Adapter for AzureStack {
    fn new(policy: ConflictPolicy) -> Self {
        Self(Self::pipeline(policy))
    }

    fn has_unclonable_bodies() -> bool {
        // A `Body::Bytes` is cloned and a seekable stream reset, as azure_core's retry policy does.
        false
    }

    async fn put(&self, put: Put) -> Result<Outcome, Failed> {
        assert!(!put.streamed, "every azure_core body can be sent again");
        let (mut request, ctx, reports) = Self::request(&put);
        // Unchecked, so a 409/412 is a response here as in the other stacks; a client library
        // would turn it into an error (see the azure_core-specific tests).
        let options = PipelineSendOptions {
            skip_checks: true,
            ..PipelineSendOptions::default()
        };
        let response = self
            .0
            .send(&ctx, &mut request, Some(options))
            .await
            .map_err(from_azure)?;
        let mut held = reports.take();
        assert!(held.len() <= 1, "one request, at most one report: {held:?}");
        Ok(Outcome {
            status: u16::from(response.status()),
            report: held.pop(),
            body: response.into_body().to_vec(),
        })
    }
}
