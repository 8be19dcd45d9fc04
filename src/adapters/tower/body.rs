//! [`ConflictBody`]: what a [`ConflictService`](super::ConflictService) answers with.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// The body of a response from [`ConflictService`](super::ConflictService): the wrapped service's body, passed through
/// untouched — or, when the engine read the start of a 409/412 body to classify it, that body
/// with the bytes read replayed in front. Either way it yields every byte the server sent.
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub struct ConflictBody<B: Body<Data = Bytes>> {
    inner: Inner<B>,
}

enum Inner<B: Body<Data = Bytes>> {
    /// A response the engine did not touch: the common case, with no allocation.
    Passed(B),
    /// A response whose body was peeked at, tee'd, or made by the engine.
    Boxed(UnsyncBoxBody<Bytes, B::Error>),
}

impl<B: Body<Data = Bytes>> ConflictBody<B> {
    pub(super) fn new(body: B) -> Self {
        Self {
            inner: Inner::Passed(body),
        }
    }

    pub(super) fn boxed(body: impl Body<Data = Bytes, Error = B::Error> + Send + 'static) -> Self {
        Self {
            inner: Inner::Boxed(UnsyncBoxBody::new(body)),
        }
    }

    pub(super) fn full(bytes: Bytes) -> Self
    where
        B::Error: 'static,
    {
        Self::boxed(Full::new(bytes).map_err(|never| match never {}))
    }
}

impl<B> Body for ConflictBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Passed(body) => Pin::new(body).poll_frame(cx),
            Inner::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Passed(body) => body.is_end_stream(),
            Inner::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Passed(body) => body.size_hint(),
            Inner::Boxed(body) => body.size_hint(),
        }
    }
}

impl<B: Body<Data = Bytes>> fmt::Debug for ConflictBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.inner {
            Inner::Passed(_) => "passed",
            Inner::Boxed(_) => "replayed",
        };
        f.debug_struct("ConflictBody")
            .field("body", &state)
            .finish_non_exhaustive()
    }
}
