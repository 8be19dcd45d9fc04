//! Bounded reads of response bodies.
//!
//! Only 409/412 bodies (to classify them) and re-fetched representations are read, each up to a cap,
//! so a hostile server cannot make us allocate without bound. A peeked body is handed back whole:
//! the bytes read so far are replayed in front of the rest, so the caller loses nothing.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, timeout_at};

/// What [`read_up_to`] read: data (possibly a little over the cap, by at most one frame), and
/// the trailers if the body ended with some.
struct Read {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

/// Reads frames until `cap` bytes, the end, or `deadline` (a body that stalls).
async fn read_up_to<B>(
    body: &mut B,
    cap: usize,
    deadline: Option<Instant>,
) -> Result<Read, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::new();
    let mut trailers = None;
    while buf.len() < cap && trailers.is_none() {
        let frame = match deadline {
            Some(deadline) => match timeout_at(deadline, body.frame()).await {
                Ok(frame) => frame,
                // Stalled: what was read is all the classifier gets; the rest stays in the body.
                Err(_) => break,
            },
            None => body.frame().await,
        };
        let Some(frame) = frame else { break };
        match frame?.into_data() {
            Ok(data) => buf.extend_from_slice(&data),
            // Trailers end a body; they are kept, to be replayed.
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Read {
        data: buf.freeze(),
        trailers,
    })
}

/// Reads at most `cap` bytes of `body` and drops the rest.
pub(crate) async fn read_capped<B>(mut body: B, cap: usize) -> Result<Bytes, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut bytes = read_up_to(&mut body, cap, None).await?.data;
    bytes.truncate(cap);
    Ok(bytes)
}

/// Reads at most `cap` bytes of `body`, until `deadline` at the latest, and returns them with a
/// body that still yields everything.
pub(crate) async fn peek<B>(
    mut body: B,
    cap: usize,
    deadline: Instant,
) -> Result<(Prefixed<B>, Bytes), B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let Read { data, trailers } = read_up_to(&mut body, cap, Some(deadline)).await?;
    let peeked = data.slice(..data.len().min(cap));
    let prefix = (!data.is_empty()).then_some(data);
    let body = Prefixed {
        prefix,
        trailers,
        rest: body,
    };
    Ok((body, peeked))
}

/// A body whose first frames were already read: replays them, then the rest.
pub(crate) struct Prefixed<B> {
    prefix: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: B,
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.trailers.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + extra);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

/// A body that passes every frame through and, if it ends within `cap` bytes, hands a copy of
/// it to `done` — how representations are remembered without delaying or buffering the caller.
/// The copy handed on holds exactly its bytes: it may be kept for long (a merge-base cache), and
/// the spare room a growing buffer leaves would be kept with it.
pub(crate) struct Tee<B> {
    inner: B,
    copy: Option<Vec<u8>>,
    cap: usize,
    done: Option<Box<dyn FnOnce(Bytes) + Send + Sync>>,
}

impl<B> Tee<B> {
    pub(crate) fn new(
        inner: B,
        cap: usize,
        done: impl FnOnce(Bytes) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            copy: Some(Vec::new()),
            cap,
            done: Some(Box::new(done)),
        }
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let cap = self.cap;
                if let (Some(copy), Some(data)) = (self.copy.as_mut(), frame.data_ref()) {
                    if copy.len() + data.len() <= cap {
                        copy.extend_from_slice(data);
                    } else {
                        self.copy = None;
                    }
                }
            }
            Poll::Ready(None) => {
                if let (Some(copy), Some(done)) = (self.copy.take(), self.done.take()) {
                    done(Bytes::from(copy.into_boxed_slice()));
                }
            }
            Poll::Ready(Some(Err(_))) => self.copy = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunked(
        chunks: &[&'static [u8]],
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    #[tokio::test]
    async fn peek_replays_everything() {
        let (body, peeked) = peek(chunked(&[b"abc", b"def", b"ghi"]), 4, far())
            .await
            .unwrap();
        assert_eq!(&peeked[..], b"abcd");
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcdefghi");
    }

    #[tokio::test]
    async fn peek_of_short_and_empty_bodies() {
        let (body, peeked) = peek(Full::new(Bytes::from_static(b"xy")), 10, far())
            .await
            .unwrap();
        assert_eq!(&peeked[..], b"xy");
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"xy");
        let (body, peeked) = peek(chunked(&[]), 10, far()).await.unwrap();
        assert!(peeked.is_empty());
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn tee_copies_bodies_within_the_cap_only() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sink = seen.clone();
        let tee = Tee::new(chunked(&[b"ab", b"cd"]), 4, move |b| {
            *sink.lock().unwrap() = Some(b)
        });
        assert_eq!(&tee.collect().await.unwrap().to_bytes()[..], b"abcd");
        assert_eq!(seen.lock().unwrap().as_deref(), Some(&b"abcd"[..]));

        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sink = seen.clone();
        let tee = Tee::new(chunked(&[b"ab", b"cde"]), 4, move |b| {
            *sink.lock().unwrap() = Some(b)
        });
        assert_eq!(&tee.collect().await.unwrap().to_bytes()[..], b"abcde");
        assert!(
            seen.lock().unwrap().is_none(),
            "a body over the cap is not kept"
        );
    }

    #[tokio::test]
    async fn a_tee_copy_keeps_no_spare_capacity() {
        // Chunks of odd sizes make a growing buffer overshoot; the copy handed on must not.
        let chunks: Vec<&'static [u8]> = vec![&[7; 1000], &[8; 100], &[9; 101]];
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sink = seen.clone();
        let tee = Tee::new(chunked(&chunks), 1 << 20, move |b| {
            *sink.lock().unwrap() = Some(b)
        });
        tee.collect().await.unwrap();
        let copy = seen.lock().unwrap().take().expect("kept");
        let copy = copy.try_into_mut().expect("the only handle");
        assert_eq!((copy.len(), copy.capacity()), (1201, 1201));
    }

    #[tokio::test]
    async fn peek_replays_trailers_too() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"body"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let (body, peeked) = peek(body, 1024, far()).await.unwrap();
        assert_eq!(&peeked[..], b"body");
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(&collected.to_bytes()[..], b"body");
    }

    #[tokio::test]
    async fn read_capped_stops_at_cap() {
        let bytes = read_capped(chunked(&[b"0123", b"4567", b"89"]), 6)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"012345");
    }
}
