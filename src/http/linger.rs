//! Lingering close for request bodies refused before their end (RFC 9112 section 9.6;
//! nginx's `lingering_close`).
//!
//! An upload can be answered before its body has all arrived: `415` for a text file after its
//! first 4 KiB, `413` past the size limit, a forward that failed. hyper then closes the
//! connection with the rest of the body unread, and the kernel answers the client's next
//! bytes with a reset. A client still sending sees its write fail and may never read the
//! answer: `curl -T` of a 40 MB text file printed `curl: (55) Send failure: Broken pipe`
//! (exit 55, no status) in 10 of 30 tries, instead of the `415` and its reason.
//!
//! So an upload's body is read through [`body`]: when the handler lets go of a body it had
//! started to read but not finished, the rest is read and thrown away in a task of its own,
//! while hyper sends the answer. The client reads the answer, stops sending (curl does once
//! it sees an error status) and closes, or sends the rest, which is discarded. Reading stops
//! after [`LINGER_IDLE`] without a byte or [`LINGER_TOTAL`] in all (nginx's
//! `lingering_timeout` and `lingering_time`), or at the body's end; nothing read is kept.
//!
//! A body never polled is dropped as it is: a client that sent `Expect: 100-continue` has sent
//! nothing, and reading would ask it for the whole body (an upload refused by its declared
//! digest, `crate::http::upload`, must not be sent at all).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};

/// Longest wait for the next piece of a refused body (nginx's `lingering_timeout`: 5 s).
pub const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Longest time a refused body is read for in all (nginx's `lingering_time`: 30 s).
pub const LINGER_TOTAL: Duration = Duration::from_secs(30);

/// An upload's request body as `Bytes` pieces (without a copy where the buffer is already
/// `Bytes`).
pub type Body = BoxStream<'static, Result<Bytes, warp::Error>>;

/// `stream` (warp's request body) as a [`Body`] that lingers when let go of early (module doc).
pub fn body(stream: impl Stream<Item = Result<impl Buf, warp::Error>> + Send + 'static) -> Body {
    Lingering {
        inner: Some(
            stream
                .map_ok(|mut b| {
                    let n = b.remaining();
                    b.copy_to_bytes(n)
                })
                .boxed(),
        ),
        started: false,
        ended: false,
    }
    .boxed()
}

/// A body that, dropped after it was first polled and before its end, is read to its end
/// (within the bounds above) by a task of its own.
struct Lingering<S: Stream + Unpin + Send + 'static> {
    inner: Option<S>,
    /// Polled at least once: the client was asked for the body (or sent it unasked).
    started: bool,
    /// The body ended, or failed: nothing is left to read.
    ended: bool,
}

impl<S, T, E> Stream for Lingering<S>
where
    S: Stream<Item = Result<T, E>> + Unpin + Send + 'static,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.started = true;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let next = inner.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.ended = true;
        }
        next
    }
}

impl<S: Stream + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if !self.started || self.ended {
            return;
        }
        // Outside a runtime (never, for a request body), the body is dropped as it is.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(discard(inner, LINGER_IDLE, LINGER_TOTAL));
        }
    }
}

/// Read `body` and throw its pieces away until it ends or fails, no piece comes for `idle`,
/// or `total` has passed. Returns how many pieces were read (tests).
async fn discard<S: Stream + Unpin>(mut body: S, idle: Duration, total: Duration) -> usize {
    let mut pieces = 0;
    let _ = tokio::time::timeout(total, async {
        while let Ok(Some(_)) = tokio::time::timeout(idle, body.next()).await {
            pieces += 1;
        }
    })
    .await;
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A stream of `n` pieces that counts those taken.
    fn counted(n: usize, taken: Arc<AtomicUsize>) -> impl Stream<Item = Result<u8, ()>> + Unpin {
        futures::stream::iter((0..n).map(move |_| {
            taken.fetch_add(1, Ordering::SeqCst);
            Ok(0u8)
        }))
    }

    fn lingering<S: Stream + Unpin + Send + 'static>(s: S) -> Lingering<S> {
        Lingering {
            inner: Some(s),
            started: false,
            ended: false,
        }
    }

    #[tokio::test]
    async fn a_body_let_go_of_midway_is_read_to_its_end() {
        let taken = Arc::new(AtomicUsize::new(0));
        let mut body = lingering(counted(100, taken.clone()));
        body.next().await.unwrap().unwrap();
        drop(body);
        // The discarding task runs on this runtime: wait for it with a bounded poll.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while taken.load(Ordering::SeqCst) < 100 && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(taken.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn a_body_never_polled_is_not_read() {
        let taken = Arc::new(AtomicUsize::new(0));
        drop(lingering(counted(100, taken.clone())));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(taken.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn discarding_stops_when_the_client_goes_quiet_or_at_the_total_bound() {
        // A client that sends one piece and then nothing: one idle wait, then it stops.
        let quiet = futures::stream::iter([0u8]).chain(futures::stream::pending());
        let t = tokio::time::Instant::now();
        assert_eq!(discard(quiet, LINGER_IDLE, LINGER_TOTAL).await, 1);
        assert_eq!(t.elapsed(), LINGER_IDLE);
        // A client that sends a piece every second for ever: stopped at the total bound.
        let steady = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((0u8, ()))
        })
        .boxed();
        let t = tokio::time::Instant::now();
        let pieces = discard(steady, LINGER_IDLE, LINGER_TOTAL).await;
        assert_eq!(t.elapsed(), LINGER_TOTAL);
        assert!((29..=30).contains(&pieces), "{pieces}");
    }
}
