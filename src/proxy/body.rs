//! Body plumbing: an idle timeout for streamed bodies, so a peer that stops
//! sending mid-body (a stalled upload, a hung upstream) releases its
//! connection instead of holding it forever. The clock restarts on every frame,
//! so multi-GB transfers are fine as long as bytes keep moving.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("body idle for more than {0:?}")]
pub struct IdleTimeoutError(Duration);

pin_project! {
    /// A body that fails when no frame arrives within `idle`.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // Boxed so the body stays `Unpin`, as the hyper client requires.
        deadline: Pin<Box<Sleep>>,
        idle: Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            deadline: Box::pin(tokio::time::sleep(idle)),
            idle,
        }
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
                let idle = *this.idle;
                this.deadline.as_mut().reset(Instant::now() + idle);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(IdleTimeoutError(*this.idle).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
