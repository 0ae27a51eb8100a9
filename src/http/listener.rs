//! The accept loop: which connections a node takes, and the HTTP/1.1 settings they are served
//! with. What every server of this kind has (issue 10 "hostile clients"):
//!
//! - a cap on open connections ([`Limits::max_connections`], never more than the process's
//!   open-file limit allows) and a cap per client IP address
//!   ([`Limits::max_connections_per_address`]). A connection over either cap is answered
//!   `503 Service Unavailable` with `Retry-After: 1` and a sentence, then closed: it never
//!   reaches the routes, so one client holding thousands of sockets cannot take the node's
//!   file descriptors, and `/health` and other clients' segments keep being served;
//! - a header read timeout ([`Limits::header_read_seconds`], hyper's `header_read_timeout`):
//!   a client that sends its header a byte at a time (slowloris), or a keep-alive connection
//!   idle between requests, is closed after it;
//! - a header size cap ([`Limits::max_header_bytes`], hyper's `max_header_size`): `431`.
//!
//! Body timeouts are the handlers' ([`Limits::body_idle_seconds`]). The decision of whether to
//! admit a connection is [`Admission`], a plain structure tested without sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Limits;

/// File descriptors kept back from the connection cap for the object store, SQLite, ffmpeg's
/// pipes, the cluster links and the segment files kept open for `sendfile` (at most
/// [`crate::storage::file_bytes::MAX_LISTED_FILES`]).
pub const FD_RESERVE: usize = 512;

/// Refusals (503 being written) in flight at once; beyond it a refused connection is closed
/// without an answer, so a flood cannot hold descriptors through its own refusals.
const MAX_REFUSING: usize = 1024;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds [`Admission::capacity`] connections.
    NodeFull,
    /// This address holds [`Limits::max_connections_per_address`] connections.
    AddressFull,
}

impl Refusal {
    /// The sentence the client reads.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NodeFull => "this node holds all the connections it can; retry in a second",
            Refusal::AddressFull => {
                "too many open connections from your address; close some and retry"
            }
        }
    }

    /// The `503` response written to the refused connection: status line, `Retry-After: 1`,
    /// `Connection: close` and a JSON body like every other error (`{"error": "..."}`).
    pub fn response(self) -> Vec<u8> {
        let body = serde_json::json!({ "error": self.message() }).to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Counts open connections, in all and per address, and admits or refuses a new one.
#[derive(Debug)]
pub struct Admission {
    capacity: usize,
    per_address: usize,
    open: AtomicUsize,
    refused: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// What `/health` says of connections: `{"open", "capacity", "per_address", "refused"}`
/// (`refused`: connections turned away since the node started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionFigures {
    /// Connections open now.
    pub open: usize,
    /// The node-wide cap.
    pub capacity: usize,
    /// The per-address cap.
    pub per_address: usize,
    /// Connections refused since start, by either cap.
    pub refused: usize,
}

/// An admitted connection's place; dropping it (when the connection ends) frees the place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

impl Admission {
    /// `capacity` connections in all, `per_address` from one IP address.
    pub fn new(capacity: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            per_address: per_address.max(1),
            open: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            by_address: Mutex::new(HashMap::new()),
        })
    }

    /// The node-wide cap.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Open, caps and refusals, for `/health`.
    pub fn figures(&self) -> ConnectionFigures {
        ConnectionFigures {
            open: self.open(),
            capacity: self.capacity,
            per_address: self.per_address,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Admit a connection from `ip`, or say why not. Errors: [`Refusal`].
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let mut by = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.capacity {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::NodeFull);
        }
        let n = by.entry(ip).or_insert(0);
        if *n >= self.per_address {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::AddressFull);
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut by = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                by.remove(&ip);
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections the kernel queues for the accept loop (`listen(2)`'s backlog; the kernel caps it
/// at `net.core.somaxconn`, 4096 on current Linux). The standard library's and tokio's `bind`
/// ask for 128: when many players connect at once (a benchmark's 1,024 connections, a page of
/// players starting together), the queue overflowed and the kernel answered the rest with SYN
/// cookies, whose connections carry a 1,448-byte MSS instead of loopback's 65,483. They sent a
/// segment in 45 times as many packets for as long as they lived (issue 11, P1). nginx asks for
/// 511.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Bind the node's HTTP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// tokio's `bind` sets, so a restarted node can bind at once). Errors: the address cannot be
/// bound (in use, not local, not permitted).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The connection cap actually applied: the configured one, or the open-file limit less
/// [`FD_RESERVE`] when that is lower (each connection is a descriptor), and at least 1.
pub fn effective_capacity(configured: usize, open_file_limit: Option<u64>) -> usize {
    let by_fds = open_file_limit
        .map(|n| (n as usize).saturating_sub(FD_RESERVE))
        .unwrap_or(usize::MAX);
    configured.min(by_fds).max(1)
}

/// The process's soft open-file limit, after raising it to the hard limit (what nginx's
/// `worker_rlimit_nofile` does by hand). `None` where it cannot be read.
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The HTTP/1.1 connection settings every admitted connection is served with.
pub fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_seconds))
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    b
}

/// Answer a refused connection: read the request's header (up to 8 KiB, for at most 250 ms),
/// write `refusal`'s 503, close. Answering after the header, as any HTTP exchange goes, is what
/// lets an ordinary client read the answer; a client that does not finish its header in time
/// (a slowloris) is closed unanswered. Bounded: at most [`MAX_REFUSING`] at once (see
/// [`Refuser`]); under a flood the rest are closed unanswered.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 2048];
        while head.len() < 8 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        stream.write_all(&refusal.response()).await?;
        stream.shutdown().await?;
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Bounds the refusals in flight.
struct Refuser {
    in_flight: Arc<AtomicUsize>,
}

impl Refuser {
    fn refuse(&self, stream: TcpStream, refusal: Refusal) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(stream);
            return;
        }
        let in_flight = self.in_flight.clone();
        tokio::spawn(async move {
            refuse(stream, refusal).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Serve `service` on `listener` until `shutdown` completes, admitting connections through
/// `admission` and serving each with [`http1_builder`]. On shutdown the listener closes and
/// open connections finish their current request (hyper's graceful shutdown).
pub async fn serve_connections<S, B>(
    listener: tokio::net::TcpListener,
    admission: Arc<Admission>,
    builder: hyper::server::conn::http1::Builder,
    service: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let refuser = Refuser {
        in_flight: Arc::new(AtomicUsize::new(0)),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_error: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset while queued: say
                // so at most once a second, and let descriptors free before accepting again.
                let now = tokio::time::Instant::now();
                if last_accept_error.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                    tracing::warn!("accept failed: {e}");
                    last_accept_error = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(refusal) => {
                refuser.refuse(stream, refusal);
                continue;
            }
        };
        // File-backed segment bodies leave with sendfile(2) ([`super::zerocopy`]).
        let conn = builder.serve_connection(
            TokioIo::new(super::zerocopy::ZeroCopyStream::new(stream)),
            service.clone(),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ticket = ticket;
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_place() {
        let a = Admission::new(4, 2);
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let _t2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::AddressFull);
        // Others still get in.
        let _t3 = a.admit(ip("10.0.0.2")).unwrap();
        drop(t1);
        let _t4 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.open(), 3);
        assert_eq!(a.figures().refused, 1);
    }

    #[test]
    fn the_node_cap_refuses_everybody_once_reached_and_frees_on_close() {
        let a = Admission::new(2, 10);
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let _t2 = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::NodeFull);
        drop(t1);
        assert!(a.admit(ip("10.0.0.3")).is_ok());
        assert!(a.by_address.lock().unwrap().get(&ip("10.0.0.1")).is_none());
    }

    /// 300 clients connect at once to a listener nobody accepts from yet; then the accept loop
    /// starts. With the backlog of 128 that `TcpListener::bind` asks for, only 129 handshakes
    /// complete into the queue and the rest wait for a retransmission a second later (or never
    /// reach the queue: their final ACK was dropped); with [`LISTEN_BACKLOG`] every one is
    /// there at once. (The kernel's `somaxconn`, 4096 here, must allow 300.)
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_listen_queue() {
        const N: usize = 300;
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..N {
            // A connect completes when the server's SYN-ACK arrives, queued or not.
            clients.push(
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                    .await
                    .expect("the kernel queues the connection (the listen backlog holds the burst)")
                    .unwrap(),
            );
        }
        let mut accepted = 0;
        // Bounded: stop at N, or when no connection arrives for 300 ms (well under the 1 s
        // retransmission that would bring a dropped one back).
        while accepted < N {
            match tokio::time::timeout(Duration::from_millis(300), listener.accept()).await {
                Ok(Ok(_)) => accepted += 1,
                _ => break,
            }
        }
        assert_eq!(accepted, N, "connections queued by the kernel");
        drop(clients);
    }

    #[test]
    fn the_cap_never_exceeds_the_descriptors() {
        assert_eq!(effective_capacity(30_000, Some(1024)), 1024 - FD_RESERVE);
        assert_eq!(effective_capacity(100, Some(1_048_576)), 100);
        assert_eq!(effective_capacity(30_000, Some(100)), 1);
        assert_eq!(effective_capacity(7, None), 7);
    }

    #[test]
    fn refusals_are_well_formed_http() {
        for r in [Refusal::NodeFull, Refusal::AddressFull] {
            let bytes = r.response();
            let text = std::str::from_utf8(&bytes).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{head}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(v["error"].as_str().unwrap().contains("retry"));
            assert!(head.starts_with("HTTP/1.1 503 "));
            assert!(head.contains("Retry-After: 1"));
        }
    }
}
