//! Between `azure_core`'s HTTP types and `http`'s, which the engine speaks.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use azure_core::http::{
    AsyncResponseBody, Method as AzureMethod, StatusCode as AzureStatus, headers::Headers,
};
use bytes::Bytes;
use futures_core::Stream;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body::{Body, Frame};

/// An `azure_core` response body as an `http_body::Body`, so the crate's bounded reads apply.
pub(super) struct Frames(pub(super) AsyncResponseBody);

impl Body for Frames {
    type Data = Bytes;
    type Error = azure_core::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, azure_core::Error>>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}

pub(super) fn http_method(method: AzureMethod) -> Method {
    match method {
        AzureMethod::Get => Method::GET,
        AzureMethod::Head => Method::HEAD,
        AzureMethod::Put => Method::PUT,
        AzureMethod::Post => Method::POST,
        AzureMethod::Patch => Method::PATCH,
        AzureMethod::Delete => Method::DELETE,
        // A method azure_core adds later: not known to be safe, so treated as a write.
        other => Method::from_bytes(other.as_str().as_bytes()).unwrap_or(Method::POST),
    }
}

pub(super) fn azure_method(method: &Method) -> azure_core::Result<AzureMethod> {
    Ok(match *method {
        Method::GET => AzureMethod::Get,
        Method::HEAD => AzureMethod::Head,
        Method::PUT => AzureMethod::Put,
        Method::POST => AzureMethod::Post,
        Method::PATCH => AzureMethod::Patch,
        Method::DELETE => AzureMethod::Delete,
        ref other => other.as_str().parse()?,
    })
}

pub(super) fn http_status(status: AzureStatus) -> StatusCode {
    // azure_core's status is any u16; one outside 100..=999 is no conflict, and the caller still
    // gets the response with its own status.
    StatusCode::from_u16(u16::from(status)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `azure_core` headers as an `http` map; a name or value `http` rejects is left out.
pub(super) fn header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_str(value.as_str()),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// An `http` map as `azure_core` headers, which hold one value per name: repeated values are
/// joined with commas; values that are not visible ASCII are left out.
pub(super) fn azure_header_map(map: &HeaderMap) -> Headers {
    let mut headers = Headers::new();
    for name in map.keys() {
        let values: Vec<&str> = map
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            headers.insert(name.as_str().to_owned(), values.join(", "));
        }
    }
    headers
}
