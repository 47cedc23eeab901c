//! Body plumbing: an idle timeout for streamed bodies, so a peer that stops
//! sending mid-body (a stalled upload, a hung upstream) releases its
//! connection instead of holding it forever. The clock restarts on every frame,
//! so multi-GB transfers are fine as long as bytes keep moving. The timer is
//! armed only when the body first has to wait: a small body whose bytes are
//! already there (most metadata answers) never touches the timer wheel.

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
        // Boxed so the body stays `Unpin`, as the hyper client requires;
        // absent until the body first waits.
        deadline: Option<Pin<Box<Sleep>>>,
        // Whether the deadline counts the current wait (false after a frame).
        armed: bool,
        idle: Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            deadline: None,
            armed: false,
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
                // The next wait starts a fresh idle period.
                *this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = *this.idle;
                let until = || Instant::now() + idle;
                let deadline = match this.deadline {
                    Some(deadline) => {
                        if !*this.armed {
                            deadline.as_mut().reset(until());
                        }
                        deadline
                    }
                    None => this
                        .deadline
                        .insert(Box::pin(tokio::time::sleep_until(until()))),
                };
                *this.armed = true;
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(IdleTimeoutError(idle).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
