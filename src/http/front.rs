//! The front of every connection: the requests a player sends most (`GET` or `HEAD` of a
//! segment, an init segment or a playlist), read and answered without hyper (issue 11, P1).
//!
//! A node's requests are nearly all of one kind: a player's `GET` of its next segment, on a
//! keep-alive connection, with no body. hyper serves any HTTP/1.1 exchange, and pays for it on
//! each of these: a header map for the request and one more for the response, its connection
//! state machine, a timer armed and cleared for every request (`header_read_timeout`). Serving
//! cached 200 kB segments at 1,024 connections, that was about 6 us of user CPU per request
//! where nginx spends under 3, on a machine whose kernel sends the segment in about 20.
//!
//! So a connection starts here. Each request is parsed with `httparse` (hyper's own parser)
//! and given to the node's [`Front`], which answers the requests it knows
//! ([`Answer`]: at once for a cache hit, later for the rest); the answer's head is written
//! here (RFC 9112 section 4: status line, the answer's headers, `content-length`, `date`) and
//! its body handed to the socket as it is (file-backed bodies leave with `sendfile`,
//! [`super::zerocopy`]). Pipelined requests are answered in order. A client that closes its
//! connection (or its side of it) while an answer is being made has it dropped, the task
//! behind it aborted, as hyper does.
//!
//! The first request this does not take, whatever the reason (another method or path, a body,
//! HTTP/1.0, `Connection: close` or `Upgrade`, `Expect`, a header that is not text where the
//! front reads it, a malformed or oversized head), goes to hyper with every byte read so far,
//! unconsumed (`ZeroCopyStream::unread` gives them back): hyper then serves the rest of the
//! connection exactly as it would have from its start, its errors (`400`, `431`) included.
//!
//! The front closes a connection that has not sent a complete request head
//! [`FrontLimits::header_read`] after its last answer (or after it was accepted): a keep-alive
//! connection left idle, or a client sending its head a byte at a time (slowloris), as hyper's
//! `header_read_timeout` does. Its timer is armed once per connection and moved only when it
//! fires, not once per request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use warp::http::{header, Response, StatusCode};

/// Most request headers the front looks at; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;

/// The read buffer's first size (bytes): a player's request head is a few hundred.
const READ_BUFFER: usize = 4096;

/// A request head the front may answer: `GET` or `HEAD`, HTTP/1.1, no body.
#[derive(Debug)]
pub struct Head<'a> {
    /// `GET` or `HEAD`.
    pub method: &'a str,
    /// The request target as sent (origin form: path and query).
    pub target: &'a str,
    headers: &'a [httparse::Header<'a>],
}

impl<'a> Head<'a> {
    /// A head of `method`, `target` and `headers`, as [`serve`] makes them (tests of fronts).
    #[cfg(test)]
    pub fn for_test(method: &'a str, target: &'a str, headers: &'a [httparse::Header<'a>]) -> Self {
        Self {
            method,
            target,
            headers,
        }
    }

    /// The value of header `name` (ASCII case-insensitive), the first if sent more than once.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether `GET` (else `HEAD`, answered without its body).
    pub fn is_get(&self) -> bool {
        self.method == "GET"
    }
}

/// A [`Front`]'s answer to a request: `R` is what its answers ready at once are
/// ([`Front::Ready`]).
pub enum Answer<R> {
    /// Ready now (a cache hit).
    Now(R),
    /// Ready when the future is (a cache miss, a session to open, a forward); dropped unawaited
    /// if the client leaves before it is.
    Later(Pin<Box<dyn Future<Output = Response<Bytes>> + Send>>),
}

/// An answer the front writes: its status, header lines and body. `http::Response` is one;
/// a [`Front`] may answer its commonest requests with a type that writes its header lines
/// straight into the head, without building a header map for each (the map's allocation,
/// inserts, iteration and drop, with the entity tag's copy, were about 3,300 of a session
/// cache hit's 22,200 user-space instructions, counted by `scripts/bench-instructions`;
/// issue 11, P1).
pub trait Written {
    /// The status.
    fn status(&self) -> StatusCode;

    /// Append the header lines (`name: value\r\n` each, names in lower case) to `head`, and
    /// say which of `content-length` and `date` were among them (the front adds those
    /// missing).
    fn write_headers(&self, head: &mut Vec<u8>) -> WrittenHeaders;

    /// The body.
    fn into_body(self) -> Bytes;
}

/// Which of the headers the front adds itself a [`Written`] answer wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WrittenHeaders {
    /// `content-length` was written.
    pub content_length: bool,
    /// `date` was written.
    pub date: bool,
}

impl Written for Response<Bytes> {
    fn status(&self) -> StatusCode {
        Response::status(self)
    }

    fn write_headers(&self, head: &mut Vec<u8>) -> WrittenHeaders {
        let mut written = WrittenHeaders::default();
        for (name, value) in self.headers() {
            written.content_length |= name == header::CONTENT_LENGTH;
            written.date |= name == header::DATE;
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        written
    }

    fn into_body(self) -> Bytes {
        Response::into_body(self)
    }
}

/// What answers requests at a connection's front. `None` sends the request, and the rest of
/// its connection, to hyper.
pub trait Front: Clone + Send + Sync + 'static {
    /// What the front keeps of one connection between its requests, made empty when the
    /// connection starts and dropped when it leaves the front. A player's connection asks for
    /// one session's segments, one after the other: what the first request looked up in the
    /// node's shared tables (its session) serves the next ones without looking again.
    type Memo: Default + Send;

    /// What its answers ready at once are.
    type Ready: Written + Send;

    /// The answer to `head`, or `None` to leave it to hyper. `memo` is the connection's.
    fn answer(&self, memo: &mut Self::Memo, head: &Head<'_>) -> Option<Answer<Self::Ready>>;
}

/// A front that takes nothing: every connection goes to hyper from its first byte.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFront;

impl Front for NoFront {
    type Memo = ();
    type Ready = Response<Bytes>;

    fn answer(&self, _memo: &mut (), _head: &Head<'_>) -> Option<Answer<Response<Bytes>>> {
        None
    }
}

/// The front's limits, the connection settings hyper has for the same purpose.
#[derive(Debug, Clone, Copy)]
pub struct FrontLimits {
    /// Longest wait for a complete request head after the last answer (hyper's
    /// `header_read_timeout`).
    pub header_read: Duration,
    /// Largest request head read here (bytes); a larger one goes to hyper, which answers `431`
    /// (hyper's `max_header_size`).
    pub max_header_bytes: usize,
}

/// How the front left a connection.
#[derive(Debug)]
pub enum Next {
    /// Closed: the client closed or went silent, a write failed, or `stop` completed.
    Close,
    /// For hyper, with the bytes read and not answered (the start of the next request).
    Hyper(Bytes),
}

/// What the front tells the connection's owner as requests begin and end (the admission's
/// record of the connection's activity, to pick idle connections to close).
pub trait InFlight {
    /// A request was read and its answer begun.
    fn begin(&self);
    /// The answer was handed to the socket.
    fn end(&self);
}

/// Serve `io`'s requests at the front until one goes to hyper, the connection closes, or
/// `stop` completes between requests (the node closing the connection to make room, or
/// stopping: an answer being written is finished first, as hyper's graceful close does).
///
/// `stopped` says whether `stop` may have completed, cheaply (an atomic load): it must turn
/// true before whatever completes `stop` wakes it. Once `stop` has been polled, it is polled
/// again only when `stopped()` is true (or this task's waker changed).
pub async fn serve<F, S, A>(
    front: &F,
    io: &mut S,
    activity: &A,
    limits: FrontLimits,
    mut stop: Pin<&mut impl Future<Output = ()>>,
    stopped: impl Fn() -> bool,
) -> Next
where
    F: Front,
    S: AsyncRead + AsyncWrite + Unpin,
    A: InFlight,
{
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut head_buf = Vec::with_capacity(512);
    let mut memo = F::Memo::default();
    let mut last = tokio::time::Instant::now();
    let timer = tokio::time::sleep_until(last + limits.header_read);
    tokio::pin!(timer);
    // The waker the timer and `stop` last saw, while they keep it (see the wait below).
    let mut waiting_with: Option<std::task::Waker> = None;
    loop {
        // Answer every complete request read so far.
        while !buf.is_empty() {
            let (answer, is_get, len) = {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let Some(head) = head_of(&req) else {
                            return Next::Hyper(buf.freeze());
                        };
                        let Some(answer) = front.answer(&mut memo, &head) else {
                            return Next::Hyper(buf.freeze());
                        };
                        (answer, head.is_get(), len)
                    }
                    Ok(httparse::Status::Partial) if buf.len() < limits.max_header_bytes => break,
                    // Malformed, too many headers, or too large: hyper says so.
                    _ => return Next::Hyper(buf.freeze()),
                }
            };
            buf.advance(len);
            activity.begin();
            let written = match answer {
                Answer::Now(r) => write_response(io, &mut head_buf, r, is_get).await,
                Answer::Later(f) => {
                    match unless_gone(io, &mut buf, f, limits.max_header_bytes).await {
                        Some(r) => write_response(io, &mut head_buf, r, is_get).await,
                        None => Err(io::ErrorKind::ConnectionAborted.into()),
                    }
                }
            };
            activity.end();
            if written.is_err() {
                return Next::Close;
            }
            last = tokio::time::Instant::now();
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUFFER);
        }
        // Wait for the next bytes, the header read timer, or `stop`. The timer and `stop` are
        // polled when the wait first finds nothing to read (which leaves this task's waker
        // with them) and afterwards only once they may be ready: the timer once it has
        // elapsed, `stop` once `stopped` says so. Polling them at every wait cost more than the
        // request's own work: `stop`'s futures lock what every connection of the node shares
        // (the node's cancellation token and its `Notify`) to check that their waker is still
        // the same (issue 11, P1).
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(read) =
                tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut buf)
            {
                return Poll::Ready(Woke::Read(read));
            }
            let fresh = !waiting_with
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            if (fresh || timer.is_elapsed()) && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Timer);
            }
            if (fresh || stopped()) && stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Stop);
            }
            if fresh {
                waiting_with = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Read(Ok(0) | Err(_)) | Woke::Stop => return Next::Close,
            Woke::Read(Ok(_)) => {}
            Woke::Timer => {
                let deadline = last + limits.header_read;
                if tokio::time::Instant::now() >= deadline {
                    return Next::Close;
                }
                timer.as_mut().reset(deadline);
                // The timer must be polled again to wait for its new deadline.
                waiting_with = None;
            }
        }
    }
}

/// `answer`'s output, unless the client leaves first (`None`; `answer` is dropped, which
/// aborts the task behind it). While `answer` is pending the connection is still read, into
/// `buf` until it holds `max` bytes (pipelined requests wait there for their turn): its end
/// (the client closed it, or shut down its side) or an error means the client has gone, as
/// hyper takes it with half-closures off, its default. So a player that gave up on a segment
/// (it seeked, or its own timeout fired) does not keep a store read or a forward to another
/// node going for nobody.
async fn unless_gone<S: AsyncRead + Unpin, T>(
    io: &mut S,
    buf: &mut BytesMut,
    mut answer: Pin<Box<dyn Future<Output = T> + Send>>,
    max: usize,
) -> Option<T> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        while buf.len() < max {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUFFER);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// What ended [`serve`]'s wait between requests.
enum Woke {
    /// Bytes read (or the connection's end or error).
    Read(io::Result<usize>),
    /// The header read timer fired.
    Timer,
    /// `stop` completed.
    Stop,
}

/// `req`'s head if the front may answer it: `GET` or `HEAD`, HTTP/1.1, no body
/// (`Content-Length` absent or 0, no `Transfer-Encoding`), no `Expect` or `Upgrade`, and a
/// `Connection` header, if any, of `keep-alive` only (RFC 9112 section 9.3: the connection
/// persists).
fn head_of<'a>(req: &'a httparse::Request<'a, 'a>) -> Option<Head<'a>> {
    let method = req.method?;
    if req.version != Some(1) || !(method == "GET" || method == "HEAD") {
        return None;
    }
    for h in req.headers.iter() {
        let n = h.name;
        let ok = if n.eq_ignore_ascii_case("content-length") {
            h.value == b"0"
        } else if n.eq_ignore_ascii_case("connection") {
            h.value
                .split(|&c| c == b',')
                .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
        } else {
            !(n.eq_ignore_ascii_case("transfer-encoding")
                || n.eq_ignore_ascii_case("expect")
                || n.eq_ignore_ascii_case("upgrade"))
        };
        if !ok {
            return None;
        }
    }
    Some(Head {
        method,
        target: req.path?,
        headers: req.headers,
    })
}

/// Write `response` on `io`: its head (built in `head`, reused), then its body unless the
/// request was a `HEAD` (`is_get` false) or the status has none (RFC 9110 sections 15.3.5 and
/// 15.4.5: `204` and `304`). The head is hyper's for the same answer: the status line, the
/// answer's headers, `content-length` (the body's, for `HEAD` too unless empty; none for
/// `204` and `304`) and `date` (RFC 9110 section 6.6.1).
async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    head: &mut Vec<u8>,
    response: impl Written,
    is_get: bool,
) -> io::Result<()> {
    let status = response.status();
    let no_body = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    head.clear();
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let written = response.write_headers(head);
    let body = response.into_body();
    // hyper's rule: the body's length, but for a `HEAD` with an empty body none (the length
    // of the `GET`'s body is unknown then).
    let length_known = is_get || !body.is_empty();
    if !no_body && length_known && !written.content_length {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !written.date {
        head.extend_from_slice(b"date: ");
        DATE.with(|d| head.extend_from_slice(d.borrow_mut().now()));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let body: &[u8] = if is_get && !no_body { &body } else { &[] };
    write_both(io, head, body).await
}

/// Write `head` then `body` on `io`, the two offered together (one vectored write) while both
/// have bytes left, so a file-backed body goes out corked behind its head
/// ([`super::zerocopy`]). tokio's `write_all_buf` of the chain did the same, but filled an
/// array of 64 empty slices on every write (issue 11, P1).
///
/// Errors: `io`'s, and `WriteZero` if it accepts nothing.
async fn write_both<S: AsyncWrite + Unpin>(
    io: &mut S,
    mut head: &[u8],
    mut body: &[u8],
) -> io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let n = if head.is_empty() {
            io.write(body).await?
        } else {
            io.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

thread_local! {
    /// This thread's `date` value, made at most once a second.
    static DATE: std::cell::RefCell<CachedDate> = const {
        std::cell::RefCell::new(CachedDate { second: u64::MAX, text: Vec::new() })
    };
}

/// An IMF-fixdate (RFC 9110 section 5.6.7) and the Unix second it names.
struct CachedDate {
    second: u64,
    text: Vec<u8>,
}

impl CachedDate {
    /// The date now.
    fn now(&mut self) -> &[u8] {
        let now = std::time::SystemTime::now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A writer that takes at most `step` bytes a write (vectored or not), as a socket with a
    /// full buffer does; `step` 0 takes nothing.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        vectored: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored += 1;
            // Across the buffers, as a socket's writev does.
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &all)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Head and body reach the writer whole and in order however few bytes each write takes,
    /// offered together while the head lasts; a writer that takes nothing is an error, not a
    /// loop.
    #[tokio::test]
    async fn head_and_body_are_written_whole_in_order_by_partial_writes() {
        let (head, body) = (
            b"HTTP/1.1 200 OK\r\n\r\n".as_slice(),
            b"0123456789".as_slice(),
        );
        for step in [1, 3, 7, head.len(), head.len() + 4, 1000] {
            let mut w = Trickle {
                got: Vec::new(),
                step,
                vectored: 0,
            };
            write_both(&mut w, head, body).await.unwrap();
            assert_eq!(w.got, [head, body].concat(), "step {step}");
            assert_eq!(w.vectored, head.len().div_ceil(step), "step {step}");
        }
        let mut w = Trickle {
            got: Vec::new(),
            step: 0,
            vectored: 0,
        };
        let e = write_both(&mut w, head, body).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }

    /// Answers `GET`/`HEAD /seg` with "segment" (at once), `/slow` with "later" (from a
    /// future), `/gate` with "gated" once `gate` is notified, `/hang` never (its future counts
    /// its drop in `hung_dropped`) and `/memo` with how many requests its connection has asked
    /// (its memo); leaves everything else to hyper.
    #[derive(Clone, Default)]
    struct TestFront {
        asked: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
        hung_dropped: Arc<AtomicUsize>,
    }

    /// Counts its drop.
    struct DropCount(Arc<AtomicUsize>);

    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Front for TestFront {
        type Memo = usize;
        type Ready = Response<Bytes>;

        fn answer(&self, memo: &mut usize, head: &Head<'_>) -> Option<Answer<Response<Bytes>>> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            *memo += 1;
            let answer = |body: &str| {
                let mut r = Response::new(Bytes::copy_from_slice(body.as_bytes()));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
                r
            };
            match head.target {
                "/seg" => Some(Answer::Now(answer("segment"))),
                "/slow" => Some(Answer::Later(Box::pin(async move { answer("later") }))),
                "/gate" => {
                    let gate = self.gate.clone();
                    Some(Answer::Later(Box::pin(async move {
                        gate.notified().await;
                        answer("gated")
                    })))
                }
                "/hang" => {
                    let guard = DropCount(self.hung_dropped.clone());
                    Some(Answer::Later(Box::pin(async move {
                        let _guard = guard;
                        std::future::pending().await
                    })))
                }
                "/memo" => Some(Answer::Now(answer(&memo.to_string()))),
                "/none" => {
                    let mut r = answer("");
                    *r.status_mut() = StatusCode::NOT_MODIFIED;
                    Some(Answer::Now(r))
                }
                _ => None,
            }
        }
    }

    /// Counts requests in flight, and answers ended.
    #[derive(Default)]
    struct Counted {
        in_flight: AtomicI64,
        ended: AtomicUsize,
    }

    impl InFlight for Counted {
        fn begin(&self) {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        fn end(&self) {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.ended.fetch_add(1, Ordering::Relaxed);
        }
    }

    const LIMITS: FrontLimits = FrontLimits {
        header_read: Duration::from_secs(30),
        max_header_bytes: 1024,
    };

    /// A header read limit short enough to see it act.
    const SHORT: FrontLimits = FrontLimits {
        header_read: Duration::from_millis(300),
        ..LIMITS
    };

    /// A loopback connection: the client side, and the front serving the server side, its
    /// outcome and what the activity saw. `stopped` is what the front reads for `stop`.
    async fn front_with(
        limits: FrontLimits,
        stop: impl Future<Output = ()> + Send + 'static,
        stopped: Arc<std::sync::atomic::AtomicBool>,
    ) -> (TcpStream, tokio::task::JoinHandle<Next>, Arc<Counted>) {
        front_of(TestFront::default(), limits, stop, stopped).await
    }

    /// [`front_with`] serving with `front`.
    async fn front_of(
        front: TestFront,
        limits: FrontLimits,
        stop: impl Future<Output = ()> + Send + 'static,
        stopped: Arc<std::sync::atomic::AtomicBool>,
    ) -> (TcpStream, tokio::task::JoinHandle<Next>, Arc<Counted>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        let mut server = accepted.unwrap().0;
        let activity = Arc::new(Counted::default());
        let a = activity.clone();
        let served = tokio::spawn(async move {
            let stop = std::pin::pin!(stop);
            let signalled = || stopped.load(Ordering::Acquire);
            serve(&front, &mut server, &*a, limits, stop, signalled).await
        });
        (client.unwrap(), served, activity)
    }

    async fn front() -> (TcpStream, tokio::task::JoinHandle<Next>, Arc<Counted>) {
        front_with(LIMITS, std::future::pending(), Default::default()).await
    }

    /// Send `requests` on `client` and read `n` answers (none to a `HEAD`).
    async fn ask(client: &mut TcpStream, requests: &[u8], n: usize) -> Vec<(String, String)> {
        client.write_all(requests).await.unwrap();
        answers(client, n, &[]).await
    }

    /// Read `n` answers (heads and bodies, by `content-length`) from `client`.
    async fn answers(client: &mut TcpStream, n: usize, heads: &[bool]) -> Vec<(String, String)> {
        let mut got = Vec::new();
        let mut buf = Vec::new();
        for i in 0..n {
            let end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                let mut chunk = [0u8; 4096];
                let k = client.read(&mut chunk).await.unwrap();
                assert!(k > 0, "closed before answer {i}");
                buf.extend_from_slice(&chunk[..k]);
            };
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            buf.drain(..end);
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.parse::<usize>().unwrap());
            let len = if heads.get(i).copied().unwrap_or(false) {
                0
            } else {
                len
            };
            while buf.len() < len {
                let mut chunk = [0u8; 4096];
                let k = client.read(&mut chunk).await.unwrap();
                assert!(k > 0, "closed in body {i}");
                buf.extend_from_slice(&chunk[..k]);
            }
            let body = String::from_utf8(buf.drain(..len).collect()).unwrap();
            got.push((head, body));
        }
        got
    }

    #[tokio::test]
    async fn a_get_is_answered_with_hypers_head_and_the_body() {
        let (mut client, served, activity) = front().await;
        let request = b"GET /seg HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
        let got = ask(&mut client, request, 1).await;
        let (head, body) = &got[0];
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: text/plain\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-length: 7\r\n"), "{head}");
        let date = head.lines().find_map(|l| l.strip_prefix("date: ")).unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert_eq!(body, "segment");
        drop(client);
        assert!(matches!(served.await.unwrap(), Next::Close));
        assert_eq!(activity.ended.load(Ordering::Relaxed), 1);
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_connections_memo_lasts_from_its_first_request_to_its_last() {
        const MEMO: &[u8] = b"GET /memo HTTP/1.1\r\n\r\n";
        let (mut first, _, _) = front().await;
        let got = ask(
            &mut first,
            &[b"GET /seg HTTP/1.1\r\n\r\n", MEMO].concat(),
            2,
        )
        .await;
        assert_eq!(got[1].1, "2", "the second request sees the first's memo");
        assert_eq!(ask(&mut first, MEMO, 1).await[0].1, "3");
        let (mut second, _, _) = front().await;
        assert_eq!(
            ask(&mut second, MEMO, 1).await[0].1,
            "1",
            "a new connection starts with an empty memo"
        );
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_head_without_body() {
        let (mut client, served, activity) = front().await;
        client
            .write_all(
                b"GET /slow HTTP/1.1\r\n\r\nHEAD /seg HTTP/1.1\r\n\r\nGET /none HTTP/1.1\r\n\r\nGET /seg?x=1 HTTP/1.1\r\n\r\n",
            )
            .await
            .unwrap();
        let got = answers(&mut client, 3, &[false, true, false]).await;
        assert_eq!(got[0].1, "later");
        assert!(
            got[1].0.contains("content-length: 7\r\n"),
            "HEAD keeps the length"
        );
        assert_eq!(got[1].1, "", "HEAD has no body");
        assert!(got[2].0.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(!got[2].0.contains("content-length"), "304 has no length");
        // "/seg?x=1" is not "/seg" to this front, which leaves it to hyper: the 4th
        // request's bytes are hyper's.
        match served.await.unwrap() {
            Next::Hyper(rest) => assert_eq!(&rest[..], b"GET /seg?x=1 HTTP/1.1\r\n\r\n"),
            Next::Close => panic!("closed instead of handed over"),
        }
        assert_eq!(activity.ended.load(Ordering::Relaxed), 3);
    }

    /// A connection served by `front` that has sent `GET {target}` and waits for its answer:
    /// returns once the front has begun the request (a bounded poll of the activity).
    async fn pending_at(
        front: TestFront,
        target: &str,
    ) -> (TcpStream, tokio::task::JoinHandle<Next>, Arc<Counted>) {
        let (mut client, served, activity) =
            front_of(front, LIMITS, std::future::pending(), Default::default()).await;
        let request = format!("GET {target} HTTP/1.1\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while activity.in_flight.load(Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{target} never asked"
            );
            tokio::task::yield_now().await;
        }
        (client, served, activity)
    }

    #[tokio::test]
    async fn requests_pipelined_behind_a_pending_answer_wait_their_turn() {
        let test_front = TestFront::default();
        let gate = test_front.gate.clone();
        let (mut client, _served, _) = pending_at(test_front, "/gate").await;
        // The second request arrives while the first's answer is pending (the front reads it
        // then, to see whether the client leaves); it is answered after the first.
        client
            .write_all(b"GET /seg HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        gate.notify_one();
        let got = answers(&mut client, 2, &[]).await;
        assert_eq!(got[0].1, "gated");
        assert_eq!(got[1].1, "segment");
    }

    #[tokio::test]
    async fn a_client_that_leaves_before_its_answer_drops_it() {
        for how in ["closed", "shut down its side"] {
            let test_front = TestFront::default();
            let dropped = test_front.hung_dropped.clone();
            let (mut client, served, activity) = pending_at(test_front, "/hang").await;
            assert_eq!(
                dropped.load(Ordering::Relaxed),
                0,
                "{how}: dropped too soon"
            );
            if how == "closed" {
                drop(client);
            } else {
                client.shutdown().await.unwrap();
            }
            let next = tokio::time::timeout(Duration::from_secs(10), served)
                .await
                .unwrap_or_else(|_| panic!("{how}: the front still waits for the answer"))
                .unwrap();
            assert!(matches!(next, Next::Close), "{how}");
            assert_eq!(
                dropped.load(Ordering::Relaxed),
                1,
                "{how}: the answer not dropped"
            );
            assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0, "{how}");
        }
    }

    /// What the front hands to hyper for `request` sent after one it answers: exactly the
    /// bytes from that request's start.
    async fn handed_over(request: &[u8]) -> Option<Bytes> {
        let (mut client, served, _) = front().await;
        let mut sent = b"GET /seg HTTP/1.1\r\n\r\n".to_vec();
        sent.extend_from_slice(request);
        client.write_all(&sent).await.unwrap();
        answers(&mut client, 1, &[]).await;
        let next = tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the front decides once it has the head")
            .unwrap();
        match next {
            Next::Hyper(b) => Some(b),
            Next::Close => None,
        }
    }

    #[tokio::test]
    async fn what_the_front_does_not_take_goes_to_hyper_unconsumed() {
        let cases: [&[u8]; 9] = [
            b"GET /other HTTP/1.1\r\n\r\n",
            b"POST /seg HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            b"GET /seg HTTP/1.0\r\n\r\n",
            b"GET /seg HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /seg HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"GET /seg HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /seg HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /seg HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ];
        for case in cases {
            let got = handed_over(case).await;
            assert_eq!(
                got.as_deref(),
                Some(case),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_head_goes_to_hyper() {
        let mut big = b"GET /seg HTTP/1.1\r\nx-big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2 * LIMITS.max_header_bytes));
        let got = handed_over(&big).await.expect("handed over, not closed");
        assert!(got.len() >= LIMITS.max_header_bytes);
        assert!(big.starts_with(&got));
    }

    #[tokio::test]
    async fn a_client_that_does_not_finish_its_head_in_time_is_closed() {
        let limits = SHORT;
        let (mut client, served, _) =
            front_with(limits, std::future::pending(), Default::default()).await;
        // A slowloris: a byte of its head every 50 ms, for twice the limit.
        let started = tokio::time::Instant::now();
        for b in b"GET /seg HTTP/1.1\r\nHost: xx" {
            if client.write_all(&[*b]).await.is_err() || served.is_finished() {
                break;
            }
            if started.elapsed() > 2 * limits.header_read {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let next = tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("closed within the limit, not left open")
            .unwrap();
        assert!(matches!(next, Next::Close));
        assert!(started.elapsed() >= limits.header_read);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "closed unanswered");
    }

    #[tokio::test]
    async fn an_idle_connection_stays_open_while_it_keeps_asking() {
        let limits = SHORT;
        let (mut client, served, activity) =
            front_with(limits, std::future::pending(), Default::default()).await;
        // Requests 100 ms apart, for three times the limit: each answer restarts its clock.
        let mut answered = tokio::time::Instant::now();
        for _ in 0..9 {
            client
                .write_all(b"GET /seg HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            answers(&mut client, 1, &[]).await;
            answered = tokio::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!served.is_finished());
        assert_eq!(activity.ended.load(Ordering::Relaxed), 9);
        // Then idle: closed once the limit has passed since the last answer (the timer,
        // moved when it fired during the requests, waits for its new deadline).
        let next = tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("closed once idle")
            .unwrap();
        assert!(matches!(next, Next::Close));
        let idle = answered.elapsed();
        assert!(
            idle >= limits.header_read - Duration::from_millis(20),
            "{idle:?}"
        );
    }

    #[tokio::test]
    async fn stop_closes_between_requests() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = async move {
            let _ = rx.await;
        };
        let (mut client, served, _) = front_with(LIMITS, stop, stopped.clone()).await;
        // Waits between requests before the stop: `stop` is polled at the first only.
        for _ in 0..3 {
            ask(&mut client, b"GET /seg HTTP/1.1\r\n\r\n", 1).await;
        }
        // As the listener does: the flag first, then the wake-up.
        stopped.store(true, Ordering::Release);
        tx.send(()).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("stopped")
            .unwrap();
        assert!(matches!(next, Next::Close));
    }
}
