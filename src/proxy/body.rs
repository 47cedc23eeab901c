//! Body plumbing: an idle timeout for streamed bodies, so a peer that stops
//! sending mid-body (a stalled upload, a hung upstream) releases its
//! connection instead of holding it forever. The clock restarts on every frame,
//! so multi-GB transfers are fine as long as bytes keep moving. The timer is
//! armed only when the body first has to wait: a small body whose bytes are
//! already there (most metadata answers) never touches the timer wheel.
//!
//! And bodies the proxy holds in memory (its own answers, rewritten
//! metadata), which may carry a share of the metadata budget until sent.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("body idle for more than {0:?}")]
pub struct IdleTimeoutError(Duration);

/// When a request body last moved: the upstream's answer is due within
/// `upstream_response_timeout` of its last byte, not of its first, so an
/// upload of any length that keeps moving is not cut, and an upstream that
/// stops reading it (hyper then stops asking for more) still times out.
pub struct Progress {
    since: std::time::Instant,
    /// Milliseconds after `since` of the latest frame.
    last: AtomicU64,
}

impl Progress {
    /// Progress of a body whose request went out at `since`.
    pub fn new(since: std::time::Instant) -> Progress {
        Progress {
            since,
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.since.elapsed().as_millis();
        self.last
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When the latest frame went by (the start if none has).
    pub fn last(&self) -> std::time::Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// The idle deadline of [`IdleTimeout`] and [`WriteStall`]: armed only when
/// a wait begins, restarted by every step of progress.
struct IdleClock {
    // Boxed so its owner stays `Unpin`, as the hyper client requires of
    // bodies; absent until the first wait.
    deadline: Option<Pin<Box<Sleep>>>,
    // Whether the deadline counts the current wait (false after progress).
    armed: bool,
    idle: Duration,
}

impl IdleClock {
    fn new(idle: Duration) -> IdleClock {
        IdleClock {
            deadline: None,
            armed: false,
            idle,
        }
    }

    /// Progress: the next wait starts a fresh idle period.
    fn progressed(&mut self) {
        self.armed = false;
    }

    /// A wait: whether it has lasted `idle` (else `cx` is woken when it has).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let until = || Instant::now() + self.idle;
        let deadline = match &mut self.deadline {
            Some(deadline) => {
                if !self.armed {
                    deadline.as_mut().reset(until());
                }
                deadline
            }
            None => self
                .deadline
                .insert(Box::pin(tokio::time::sleep_until(until()))),
        };
        self.armed = true;
        deadline.as_mut().poll(cx).is_ready()
    }
}

pin_project! {
    /// A body that fails when no frame arrives within `idle`.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // Told of every frame, for request bodies (see `Progress`).
        progress: Option<Arc<Progress>>,
        clock: IdleClock,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            progress: None,
            clock: IdleClock::new(idle),
        }
    }

    /// Also tells `progress` of every frame.
    pub fn reporting(mut self, progress: Arc<Progress>) -> IdleTimeout<B> {
        self.progress = Some(progress);
        self
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.clock.progressed();
                if let Some(progress) = this.progress {
                    progress.touch();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.clock.expired(cx) => {
                Poll::Ready(Some(Err(IdleTimeoutError(this.clock.idle).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body in memory, handed to hyper in slices: hyper asks for the next one
/// only when its write buffer has room, so the reservation held with the
/// body lasts until the client has taken all but the last few slices.
pub struct Buffered {
    rest: Bytes,
    held: Option<OwnedSemaphorePermit>,
}

/// Small enough that hyper's write buffer (about 400 KiB) holds a few slices.
const SLICE: usize = 64 << 10;

impl Buffered {
    /// A body of `bytes` that holds no reservation (the proxy's own answers).
    pub fn new(bytes: impl Into<Bytes>) -> Buffered {
        Buffered {
            rest: bytes.into(),
            held: None,
        }
    }

    /// A body that releases `held` once its last slice is handed over.
    pub fn holding(bytes: Bytes, held: OwnedSemaphorePermit) -> Buffered {
        Buffered {
            rest: bytes,
            held: Some(held),
        }
    }
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self.held = None;
            return Poll::Ready(None);
        }
        let len = self.rest.len().min(SLICE);
        let slice = self.rest.split_to(len);
        if self.rest.is_empty() {
            self.held = None;
        }
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

pin_project! {
    /// A client connection whose writes fail once one has waited `idle` for
    /// the client to take bytes (the kernel wakes a waiting write when about
    /// a third of the send buffer has drained, so a client reading slower
    /// than that per `idle` is cut too). hyper asks a response body for more only when it can
    /// write, so a client that stops reading would otherwise hold the
    /// response — its upstream connection, a rewritten document's share of
    /// the metadata budget — for as long as it keeps the socket open. The
    /// timer is armed only when a write has to wait.
    pub struct WriteStall<S> {
        #[pin]
        inner: S,
        clock: IdleClock,
    }
}

impl<S> WriteStall<S> {
    pub fn new(inner: S, idle: Duration) -> WriteStall<S> {
        WriteStall {
            inner,
            clock: IdleClock::new(idle),
        }
    }
}

impl<S: AsyncWrite> WriteStall<S> {
    /// A write's outcome, with a wait past `idle` turned into an error.
    fn watch<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let clock = self.project().clock;
        if polled.is_ready() {
            clock.progressed();
            return polled;
        }
        if clock.expired(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for the body idle timeout",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead> AsyncRead for WriteStall<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = self.as_mut().project().inner.poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = self.as_mut().project().inner.poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = self.as_mut().project().inner.poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn a_buffered_body_comes_in_slices_and_releases_its_share_at_the_end() {
        let budget = Arc::new(Semaphore::new(10));
        let held = budget.clone().try_acquire_many_owned(10).unwrap();
        let mut body = Buffered::holding(Bytes::from(vec![7u8; SLICE * 2 + 1]), held);
        assert_eq!(body.size_hint().exact(), Some(SLICE as u64 * 2 + 1));
        let mut lens = Vec::new();
        while let Some(frame) = body.frame().await {
            lens.push(frame.unwrap().into_data().unwrap().len());
            let released = budget.available_permits() == 10;
            assert_eq!(released, body.is_end_stream(), "held while slices are left");
        }
        assert_eq!(lens, [SLICE, SLICE, 1]);
    }
}
