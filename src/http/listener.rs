//! The accept loop: which connections a node takes, and the HTTP/1.1 settings they are served
//! with. What every server of this kind has (issue 10 "hostile clients"):
//!
//! - a cap on open connections ([`Limits::max_connections`], never more than the process's
//!   open-file limit allows) and a cap per client IP address
//!   ([`Limits::max_connections_per_address`]). A connection over either cap is answered
//!   `503 Service Unavailable` with `Retry-After: 1` and a sentence, then closed: it never
//!   reaches the routes, so one client holding thousands of sockets cannot take the node's
//!   file descriptors, and `/health` and other clients' segments keep being served;
//! - a header read timeout ([`Limits::header_read_seconds`], hyper's `header_read_timeout`,
//!   and the same at the connection's front, [`super::front`]): a client that sends its
//!   header a byte at a time (slowloris), or a keep-alive connection idle between requests, is
//!   closed after it;
//! - a header size cap ([`Limits::max_header_bytes`], hyper's `max_header_size`): `431`.
//!
//! A connection starts at its front ([`super::front`]), which answers segment requests without
//! hyper, and goes to hyper from the first request the front does not take.
//!
//! - reuse of idle keep-alive connections: when the node nears its cap, it closes idle
//!   keep-alive connections (no request in flight, none begun or ended for [`REUSE_IDLE_MS`])
//!   to make room, as nginx does when its connections run out (it marks idle keep-alive
//!   connections reusable and closes some of them; `ngx_drain_connections`).
//!   A player whose idle connection was closed opens a new one for its next request, as
//!   browsers and HLS players do (RFC 9112 section 9.3: either side may close an idle
//!   connection), and its playback session lives on: a session is named in the URL, not tied
//!   to a connection. So a node holds more playing sessions than it has descriptors (issue 11,
//!   P3), and new players are admitted rather than refused while others sit idle. A
//!   connection that finds the node at its cap while idle ones are still closing waits for a
//!   place, up to [`ADMIT_WAIT_MS`], rather than being refused
//!   ([`Admission::admit_waiting`]); the accept loop waits with it, and the connections
//!   behind it wait in the listen queue.
//!
//! Body timeouts are the handlers' ([`Limits::body_idle_seconds`]). The decision of whether to
//! admit a connection is [`Admission`], and which idle connections to close is [`pick_idle`],
//! both plain and tested without sockets.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::front::{Front, FrontLimits};
use crate::config::Limits;

/// File descriptors kept back from the connection cap for the object store, SQLite, ffmpeg's
/// pipes, the cluster links and the segment files kept open for `sendfile` (at most
/// [`crate::storage::file_bytes::MAX_LISTED_FILES`]), and for the connections admitted in the
/// place of idle ones still closing (at most [`REUSE_HEADROOM`]).
pub const FD_RESERVE: usize = 512 + REUSE_HEADROOM;

/// How many idle keep-alive connections the node has closing at most at once (connections),
/// told in batches ([`pick_idle`] picks them) once a new connection finds the node within
/// twice this of its cap and at most half of it still closing. An eighth of the cap on
/// small nodes ([`Admission::headroom`]). nginx drains 32 at a time; a player fleet
/// reconnecting every segment duration needs more (issue 11, P3).
pub const REUSE_HEADROOM: usize = 256;

/// Least time between two searches for idle connections (milliseconds): a search reads every
/// connection's [`Activity`], so a flood of connections at the cap, with none idle, must not
/// set one off for each.
const REUSE_SEARCH_MS: u64 = 10;

/// A keep-alive connection is idle, and may be closed to make room, when no request is in
/// flight on it and none has begun or ended for this long (milliseconds).
pub const REUSE_IDLE_MS: u64 = 1_000;

/// How long a new connection that finds the node at its cap waits for a place while idle
/// connections told to close to make room have not closed yet (milliseconds), before it is
/// refused: a place is on its way, and the client would otherwise be told to come back in a
/// second (`Retry-After: 1`). The accept loop waits meanwhile, so connections arriving behind
/// it wait in the listen queue ([`LISTEN_BACKLOG`]). When nothing is closing, the connection
/// is refused at once. Short, because a close that takes longer is stuck (its thread busy,
/// its last answer still leaving), and what queues behind a longer wait may then find no
/// idle connection and be refused in a burst: with 28,000 paced players sharing 10,232
/// places, a wait of 1 s ended in 2,382 connections closed unanswered, 250 ms in none
/// (issue 11, P3; `docs/performance.md`).
pub const ADMIT_WAIT_MS: u64 = 250;

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
    /// Idle connections closed to make room, since start.
    reused: AtomicUsize,
    /// Requests answered at the front of connections that have closed, since start (an open
    /// connection keeps its own count, [`Activity::answered`]).
    answered_by_closed: AtomicU64,
    /// Connections told to close that have not closed yet.
    closing: AtomicUsize,
    /// Told each time a connection closes and frees its place ([`Admission::admit_waiting`]).
    freed: tokio::sync::Notify,
    /// The clock [`Activity`] times count from.
    epoch: Instant,
    /// When the last search for idle connections ran ([`ms_since`] the epoch; 0: never).
    last_search: AtomicU64,
    /// Every place's [`Activity`], side by side, in chunks of [`SLOT_CHUNK`] allocated when
    /// first used: a search for idle connections reads them in order (reading 19,000
    /// connections' activities scattered over the heap took 1 to 3 ms, with the admission's
    /// lock held; issue 11, P3).
    slots: Box<[OnceLock<Box<[Activity]>>]>,
    inner: Mutex<Places>,
}

/// Places a chunk of [`Admission`]'s activities holds.
const SLOT_CHUNK: usize = 1024;

/// The open connections by address, and the free places.
#[derive(Debug, Default)]
struct Places {
    by_address: HashMap<IpAddr, usize>,
    /// Places not in use, the lowest last (taken first, so the places in use stay packed).
    free: Vec<u32>,
}

/// A place's state in [`Activity::state`].
const FREE: u8 = 0;
const OPEN: u8 = 1;
const CLOSING: u8 = 2;

/// What the node knows of one connection's use, to pick idle ones to close: updated by
/// [`Tracked`] on every request, read by [`Admission`] when it needs room.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests in flight (handler futures not yet finished).
    in_flight: AtomicU64,
    /// When a request last ended: milliseconds since [`Admission`]'s epoch, plus 1; 0 until
    /// the first request (a connection that never sent one is never reused: the header read
    /// timeout closes it).
    last: AtomicU64,
    /// [`FREE`], [`OPEN`], or [`CLOSING`] (chosen to close).
    state: AtomicU8,
    /// Requests answered at the connection's front ([`super::front`]) so far. Like
    /// `in_flight` and `last` at the front, written by the connection's own task only, so it
    /// is stored, not added to: a node-wide counter added to by every request of both
    /// connection threads moved its cache line between the cores each time, and a
    /// read-modify-write of a place not in the cache stalls until the place arrives (the front's
    /// `fetch_add` of `in_flight` alone was about 5 % of a node's user CPU serving cached
    /// segments at 1,024 connections; issue 11, P1).
    answered: AtomicU64,
    close: tokio::sync::Notify,
}

/// Milliseconds since `epoch`, plus 1 (0 means "never" in [`Activity`]).
fn ms_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64 + 1
}

/// What `/health` says of connections: `{"open", "capacity", "per_address", "refused",
/// "reused", "answered_at_front"}` (`refused`: connections turned away since the node
/// started; `reused`: idle keep-alive connections closed to make room for new ones;
/// `answered_at_front`: requests answered without hyper, [`super::front`]).
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
    /// Idle keep-alive connections closed to make room since start.
    pub reused: usize,
    /// Requests answered at their connection's front ([`super::front`], without hyper) since
    /// start.
    pub answered_at_front: u64,
}

/// An admitted connection's place; dropping it (when the connection ends) frees the place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
    place: u32,
}

impl Ticket {
    /// Completes when the node chose this connection to close to make room (at once if it
    /// already has).
    pub async fn closing(&self) {
        self.admission.slot(self.place).close.notified().await
    }

    /// Whether the connection was chosen to close ([`Ticket::closing`] completes or is about
    /// to): one atomic load of its own place.
    pub fn is_closing(&self) -> bool {
        self.admission
            .slot(self.place)
            .state
            .load(Ordering::Acquire)
            == CLOSING
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self);
    }
}

/// A request answered at the connection's front ([`super::front`]) keeps the connection's
/// activity as one answered through [`Tracked`] does. The front answers one request at a time,
/// and only before hyper has the connection, so its request in flight is set and cleared with
/// plain stores (hyper's requests, which may overlap, are counted with `fetch_add`).
impl super::front::InFlight for Ticket {
    fn begin(&self) {
        self.admission
            .slot(self.place)
            .in_flight
            .store(1, Ordering::Relaxed);
    }

    fn end(&self) {
        let a = self.admission.slot(self.place);
        a.answered
            .store(a.answered.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.admission.touch(self.place);
        a.in_flight.store(0, Ordering::Relaxed);
    }
}

/// The numbers of the `want` connections to close to make room: among `places` (a
/// connection's number, its requests in flight, and its [`Activity`] time: 0 before its first
/// request), those with no request in flight and a first request behind them, idle for at
/// least `idle_ms` at `now_ms`; of those, the most recently active first. A player paced by
/// its segment duration is then the furthest from its next request, and sees the close long
/// before it. Closing the longest idle first (nginx's order) picks exactly the players about
/// to ask for their next segment, whose requests then cross the close on the wire: with
/// 28,000 paced players on 19,232 places, one request in three had to be sent again
/// (issue 11, P3).
pub fn pick_idle(
    places: impl Iterator<Item = (u64, u64, u64)>,
    now_ms: u64,
    idle_ms: u64,
    want: usize,
) -> Vec<u64> {
    let mut idle: Vec<(u64, u64)> = places
        .filter(|&(_, in_flight, last)| {
            in_flight == 0 && last != 0 && now_ms.saturating_sub(last) >= idle_ms
        })
        .map(|(number, _, last)| (last, number))
        .collect();
    if want == 0 {
        return Vec::new();
    }
    let by_recent = |a: &(u64, u64), b: &(u64, u64)| b.cmp(a);
    if idle.len() > want {
        idle.select_nth_unstable_by(want - 1, by_recent);
        idle.truncate(want);
    }
    idle.sort_unstable_by(by_recent);
    idle.into_iter().map(|(_, number)| number).collect()
}

impl Admission {
    /// `capacity` connections in all, `per_address` from one IP address.
    pub fn new(capacity: usize, per_address: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        // The cap, and the places of connections admitted while others close.
        let places = capacity + Self::headroom_for(capacity);
        let slots = (0..places.div_ceil(SLOT_CHUNK))
            .map(|_| OnceLock::new())
            .collect();
        Arc::new(Self {
            capacity,
            per_address: per_address.max(1),
            open: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            reused: AtomicUsize::new(0),
            answered_by_closed: AtomicU64::new(0),
            closing: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            epoch: Instant::now(),
            last_search: AtomicU64::new(0),
            slots,
            inner: Mutex::new(Places {
                by_address: HashMap::new(),
                free: (0..places as u32).rev().collect(),
            }),
        })
    }

    /// Place `i`'s activity. Only places handed out by an admission (whose chunk
    /// exists) are asked for.
    fn slot(&self, i: u32) -> &Activity {
        let i = i as usize;
        &self.slots[i / SLOT_CHUNK].get_or_init(Self::chunk)[i % SLOT_CHUNK]
    }

    fn chunk() -> Box<[Activity]> {
        (0..SLOT_CHUNK).map(|_| Activity::default()).collect()
    }

    /// Every place allocated so far, in order, with its activity (free ones too: their
    /// state says so).
    fn allocated_places(&self) -> impl Iterator<Item = (u32, &Activity)> {
        self.slots
            .iter()
            .filter_map(|c| c.get())
            .flat_map(|c| c.iter())
            .enumerate()
            .map(|(i, a)| (i as u32, a))
    }

    /// A request on place `i` ended now.
    fn touch(&self, i: u32) {
        self.slot(i)
            .last
            .store(ms_since(self.epoch), Ordering::Relaxed);
    }

    /// The node-wide cap.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Open, caps and refusals, for `/health`. `answered_at_front` adds up every place's
    /// count (a connection closing meanwhile may be missed once).
    pub fn figures(&self) -> ConnectionFigures {
        let open_answered: u64 = self
            .allocated_places()
            .map(|(_, a)| a.answered.load(Ordering::Relaxed))
            .sum();
        ConnectionFigures {
            open: self.open(),
            capacity: self.capacity,
            per_address: self.per_address,
            refused: self.refused.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            answered_at_front: self.answered_by_closed.load(Ordering::Relaxed) + open_answered,
        }
    }

    /// One try to admit a connection, a refusal counted: the synchronous admission the tests
    /// drive (the accept loop uses [`Admission::admit_waiting`]).
    #[cfg(test)]
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        self.try_admit(ip).inspect_err(|_| {
            self.refused.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Admit a connection from `ip`, or say why not. Within twice [`Admission::headroom`] of
    /// the cap, first tell idle keep-alive connections to close ([`pick_idle`]), so that room
    /// is made before the cap is reached; at the cap, a connection is admitted in the place
    /// of one told to close that has not closed yet (so open connections may exceed the cap by
    /// the headroom, which [`FD_RESERVE`] keeps descriptors for). A connection finding the
    /// node at its cap while connections told to close have not closed yet waits for a place,
    /// up to `wait` (the accept loop uses [`ADMIT_WAIT_MS`]), instead of being refused at
    /// once; a place freed by any connection closing is taken.
    ///
    /// Errors: [`Refusal`]: at once for the address's cap, or when the node is full and
    /// nothing is closing (every connection busy, or active within [`REUSE_IDLE_MS`]); else
    /// after `wait`. A connection that waited and was refused counts as one refusal.
    pub async fn admit_waiting(
        self: &Arc<Self>,
        ip: IpAddr,
        wait: Duration,
    ) -> Result<Ticket, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let refused = loop {
            // Listening before trying: a place freed between the try and the wait wakes it.
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            match self.try_admit(ip) {
                Err(Refusal::NodeFull) if self.closing.load(Ordering::Relaxed) > 0 => {}
                Err(refusal) => break refusal,
                Ok(ticket) => return Ok(ticket),
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break Refusal::NodeFull;
            }
        };
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(refused)
    }

    /// One try of [`Admission::admit_waiting`]'s admission, without waiting and without
    /// counting a refusal.
    fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let open = self.open.load(Ordering::Relaxed);
        if open + 2 * self.headroom() >= self.capacity {
            // Outside the lock: the activities are atomics, and connections keep closing
            // (and taking the lock) meanwhile.
            self.make_room();
        }
        let mut places = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.open.load(Ordering::Relaxed);
        if open >= self.capacity + self.closing.load(Ordering::Relaxed) {
            return Err(Refusal::NodeFull);
        }
        if places.by_address.get(&ip).copied().unwrap_or(0) >= self.per_address {
            return Err(Refusal::AddressFull);
        }
        // Never empty: open connections stay under the cap plus those closing, at most the
        // headroom, and there are that many places.
        let Some(place) = places.free.pop() else {
            return Err(Refusal::NodeFull);
        };
        *places.by_address.entry(ip).or_insert(0) += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        let a = self.slot(place);
        // A close told to the place's last connection after it stopped listening.
        let _ = futures::FutureExt::now_or_never(a.close.notified());
        a.in_flight.store(0, Ordering::Relaxed);
        a.last.store(0, Ordering::Relaxed);
        a.answered.store(0, Ordering::Relaxed);
        a.state.store(OPEN, Ordering::Release);
        Ok(Ticket {
            admission: self.clone(),
            ip,
            place,
        })
    }

    /// How many connections may be closing at once (reuse begins at twice this below the
    /// cap): [`REUSE_HEADROOM`], or an eighth of the cap when that is less, and at least 1.
    pub fn headroom(&self) -> usize {
        Self::headroom_for(self.capacity)
    }

    fn headroom_for(capacity: usize) -> usize {
        REUSE_HEADROOM.min(capacity / 8).max(1)
    }

    /// Tell idle connections to close until [`Admission::headroom`] are closing, once at most
    /// half of it is. After a search that found fewer than it wanted, the next waits
    /// [`REUSE_SEARCH_MS`].
    fn make_room(&self) {
        let headroom = self.headroom();
        let closing = self.closing.load(Ordering::Relaxed);
        let now = ms_since(self.epoch);
        let last = self.last_search.load(Ordering::Relaxed);
        // Only once at most half the headroom is still closing: a search reads every
        // connection, so it is done for a batch, not for each connection that closed.
        if closing > headroom / 2 || (last != 0 && now < last + REUSE_SEARCH_MS) {
            return;
        }
        let want = headroom - closing;
        let candidates = self
            .allocated_places()
            .filter(|(_, a)| a.state.load(Ordering::Acquire) == OPEN)
            .map(|(i, a)| {
                (
                    u64::from(i),
                    a.in_flight.load(Ordering::Relaxed),
                    a.last.load(Ordering::Relaxed),
                )
            });
        let picked = pick_idle(candidates, now, REUSE_IDLE_MS, want);
        if picked.len() < want {
            self.last_search.store(now, Ordering::Relaxed);
        }
        for i in picked {
            let a = self.slot(i as u32);
            // Unless it closed meanwhile.
            if a.state
                .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                a.close.notify_one();
                self.closing.fetch_add(1, Ordering::Relaxed);
                self.reused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn release(&self, ticket: &Ticket) {
        let mut places = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = places.by_address.get_mut(&ticket.ip) {
            *n -= 1;
            if *n == 0 {
                places.by_address.remove(&ticket.ip);
            }
        }
        let a = self.slot(ticket.place);
        self.answered_by_closed
            .fetch_add(a.answered.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        if a.state.swap(FREE, Ordering::AcqRel) == CLOSING {
            self.closing.fetch_sub(1, Ordering::Relaxed);
        }
        places.free.push(ticket.place);
        self.open.fetch_sub(1, Ordering::Relaxed);
        drop(places);
        self.freed.notify_waiters();
    }
}

/// A connection's service, wrapped to keep its [`Activity`]: a request in flight from the
/// call until its future finishes (the answer's head is ready; a body still being sent does
/// not count, and a connection closed then finishes sending it first).
#[derive(Clone, Debug)]
pub struct Tracked<S> {
    inner: S,
    admission: Arc<Admission>,
    place: u32,
}

impl<S> Tracked<S> {
    /// `inner`, keeping `ticket`'s activity.
    pub fn new(inner: S, ticket: &Ticket) -> Self {
        Self {
            inner,
            admission: ticket.admission.clone(),
            place: ticket.place,
        }
    }
}

/// [`Tracked`]'s future: counts its request in flight until it finishes or is dropped.
pub struct TrackedFuture<F> {
    fut: F,
    admission: Arc<Admission>,
    place: u32,
}

impl<F> Drop for TrackedFuture<F> {
    fn drop(&mut self) {
        self.admission.touch(self.place);
        self.admission
            .slot(self.place)
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl<F: Future + Unpin> Future for TrackedFuture<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.fut).poll(cx)
    }
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        self.admission
            .slot(self.place)
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        TrackedFuture {
            fut: self.inner.call(req),
            admission: self.admission.clone(),
            place: self.place,
        }
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

/// The limits of a connection's front ([`super::front`]), the same as hyper's
/// ([`http1_builder`]).
pub fn front_limits(limits: &Limits) -> FrontLimits {
    FrontLimits {
        header_read: Duration::from_secs(limits.header_read_seconds),
        max_header_bytes: limits.max_header_bytes,
    }
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

/// How many connection threads a node serves its connections on: one per core, as nginx runs
/// one worker process per core (`worker_processes auto`); 1 where the core count is unknown.
pub fn connection_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A job for a connection thread: make the connection's future there (its socket registers
/// with that thread's reactor) and spawn it.
type ConnectionJob = Box<dyn FnOnce() + Send>;

/// The connection threads of one listener (see [`serve_connections`]): each runs a
/// single-threaded tokio runtime with its own reactor (one `epoll` instance) and serves the
/// connections handed to it, for as long as they live.
struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
}

/// One connection thread, as the accept loop sees it.
struct ConnectionThread {
    /// Where to hand it a connection. The channel has no bound of its own: every job in it
    /// holds an admitted connection's [`Ticket`], so the connection cap bounds it.
    jobs: tokio::sync::mpsc::UnboundedSender<ConnectionJob>,
    /// How many connections it holds open now.
    open: Arc<AtomicUsize>,
}

impl ConnectionThreads {
    /// Start `n` threads; `None` (serve on the caller's runtime) when `n` is 0 or a thread or
    /// its runtime cannot be made, which is logged.
    fn start(n: usize) -> Option<Self> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ConnectionJob>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_io_events_per_tick(crate::IO_EVENTS_PER_TICK)
                .build();
            let started = runtime.and_then(|rt| {
                std::thread::Builder::new()
                    .name(format!("reel-conn-{i}"))
                    .spawn(move || {
                        // Ends when the listener's side drops its sender: the accept loop has
                        // stopped and every connection it handed over has finished, or the
                        // stop's drain ran out; the runtime's end drops what is left.
                        rt.block_on(async move {
                            while let Some(job) = rx.recv().await {
                                job();
                            }
                        });
                    })
            });
            if let Err(e) = started {
                tracing::warn!("no connection thread ({e}); serving on the node's runtime");
                return None;
            }
            threads.push(ConnectionThread {
                jobs: tx,
                open: Arc::new(AtomicUsize::new(0)),
            });
        }
        (!threads.is_empty()).then_some(Self { threads })
    }

    /// The thread holding the fewest open connections.
    fn least_loaded(&self) -> &ConnectionThread {
        self.threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
            .expect("at least one connection thread")
    }
}

/// Serve `service` on `listener` until `shutdown` completes, admitting connections through
/// `admission` and serving each with [`http1_builder`]. A connection the admission chooses to
/// close to make room ([`Ticket::closing`]) gets hyper's graceful close: at once when idle,
/// after the answer it is sending otherwise. On shutdown the listener closes and open
/// connections finish their current request the same way, for at most `drain`
/// ([`crate::config::Limits::shutdown_drain_seconds`]); then what is left is cut.
///
/// With `threads` above 0, the accept loop hands each admitted connection to the least loaded
/// of that many connection threads, each with its own single-threaded runtime, as nginx's
/// worker processes each poll their own connections. On a node's multi-threaded runtime the
/// workers share one reactor: at 1,024 connections it nearly always had an event ready, so
/// they never slept and waited for the load's CPU slices instead of preempting them; with a
/// reactor each, a cached segment's p99 at 1,024 connections fell by 10 to 15 ms, to within
/// 0 to 4 ms of nginx's, at the same rate (issue 11, P1; `docs/performance.md`). `service`
/// then runs on the connection's thread, and whatever must outlive a connection belongs on
/// the node's runtime: `http::serve`'s service moves every request but a cache hit there.
/// With 0 every connection is served on the caller's runtime.
#[allow(clippy::too_many_arguments)]
pub async fn serve_connections<S, B, F>(
    listener: tokio::net::TcpListener,
    admission: Arc<Admission>,
    builder: hyper::server::conn::http1::Builder,
    front: F,
    front_limits: FrontLimits,
    service: S,
    threads: usize,
    drain: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + Unpin + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: Front,
{
    let stopping = tokio_util::sync::CancellationToken::new();
    // Set before `stopping` is cancelled: what the front reads between requests instead of
    // polling `stopping` (whose every poll locks what all connections share).
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connections = tokio_util::task::TaskTracker::new();
    let refuser = Refuser {
        in_flight: Arc::new(AtomicUsize::new(0)),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_error: Option<tokio::time::Instant> = None;
    let pool = ConnectionThreads::start(threads);
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
        // At the cap while idle connections close to make room, wait for a place here, with
        // the connections behind this one in the listen queue.
        let admitted = tokio::select! {
            a = admission.admit_waiting(peer.ip(), Duration::from_millis(ADMIT_WAIT_MS)) => a,
            _ = &mut shutdown => break,
        };
        let ticket = match admitted {
            Ok(t) => t,
            Err(refusal) => {
                refuser.refuse(stream, refusal);
                continue;
            }
        };
        // Serve the connection until it ends, the admission closes it to make room, or the
        // node stops (the last two with hyper's graceful close), wherever `stream` is
        // registered: here or on a connection thread.
        let builder = builder.clone();
        let service = Tracked::new(service.clone(), &ticket);
        let stopping = stopping.clone();
        let stopped = stopped.clone();
        let front = front.clone();
        let serve = move |stream: TcpStream| async move {
            // File-backed segment bodies leave with sendfile(2) ([`super::zerocopy`]).
            let mut io = super::zerocopy::ZeroCopyStream::new(stream);
            // The requests the front takes are answered there; the rest of the connection,
            // from the first request it does not take, is hyper's.
            let next = {
                let stop = async {
                    tokio::select! {
                        _ = ticket.closing() => {}
                        _ = stopping.cancelled() => {}
                    }
                };
                let stop = std::pin::pin!(stop);
                let signalled = || ticket.is_closing() || stopped.load(Ordering::Acquire);
                super::front::serve(&front, &mut io, &ticket, front_limits, stop, signalled).await
            };
            let read = match next {
                super::front::Next::Close => return drop(ticket),
                super::front::Next::Hyper(read) => read,
            };
            io.unread(read);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = ticket.closing() => None,
                _ = stopping.cancelled() => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!("connection from {peer} ended: {e}");
            }
            drop(ticket);
        };
        let Some(pool) = &pool else {
            connections.spawn(serve(stream));
            continue;
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("connection from {peer} lost before it was handed over: {e}");
                continue;
            }
        };
        let thread = pool.least_loaded();
        thread.open.fetch_add(1, Ordering::Relaxed);
        let open = thread.open.clone();
        let served = connections.track_future(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::debug!("connection from {peer} lost: {e}"),
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
        // The thread runs until this loop's pool is dropped, so the send cannot fail while
        // the loop runs; were it to, the job (and the connection) is dropped and closed.
        let _ = thread.jobs.send(Box::new(move || {
            tokio::spawn(served);
        }));
    }
    drop(listener);
    stopped.store(true, Ordering::Release);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "stopping: requests still running after {} s are cut (a tus upload keeps what \
             arrived and resumes)",
            drain.as_secs()
        );
        // Ending the connection threads drops their runtimes, and with them every
        // connection still being served: nothing is added to a request's path for this. On
        // the node's runtime (no connection thread could start, which was logged) they are
        // left to end with the process.
        let served_on_threads = pool.is_some();
        drop(pool);
        if served_on_threads {
            connections.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

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
        assert!(!a
            .inner
            .lock()
            .unwrap()
            .by_address
            .contains_key(&ip("10.0.0.1")));
    }

    /// An admission of capacity 8 (headroom 1) whose 8 connections have each answered one
    /// request and sat idle since (their activity dated a minute back). With `close_when_told`
    /// each closes when told to, on a task of its own, and none is returned; without, their
    /// tickets are returned and none ever closes.
    fn full_of_idle_connections(close_when_told: bool) -> (Arc<Admission>, Vec<Ticket>) {
        let mut a = Admission::new(8, 100);
        Arc::get_mut(&mut a).unwrap().epoch = Instant::now() - Duration::from_secs(60);
        let mut held = Vec::new();
        for n in 0..8 {
            let t = a.admit(ip(&format!("10.0.0.{n}"))).unwrap();
            a.slot(t.place).last.store(1, Ordering::Relaxed);
            if close_when_told {
                tokio::spawn(async move {
                    t.closing().await;
                    drop(t);
                });
            } else {
                held.push(t);
            }
        }
        (a, held)
    }

    /// At the cap, with an idle connection told to close but not closed yet, a plain admit
    /// is refused (what a player got as a `503` in issue 11's P3 on a slow day), while
    /// `admit_waiting` waits for the close and takes the place it frees.
    #[tokio::test(start_paused = true)]
    async fn at_the_cap_a_connection_waits_for_an_idle_one_closing_instead_of_a_503() {
        let (a, _) = full_of_idle_connections(true);
        // The ninth is let in in the place of the idle connection told to close (the
        // headroom); that connection's task has not run yet.
        let _ninth = a.admit(ip("10.0.1.1")).unwrap();
        assert_eq!(a.closing.load(Ordering::Relaxed), 1);
        assert_eq!(a.admit(ip("10.0.1.2")).unwrap_err(), Refusal::NodeFull);
        assert_eq!(a.figures().refused, 1);
        let t0 = tokio::time::Instant::now();
        let tenth = a
            .admit_waiting(ip("10.0.1.2"), Duration::from_secs(1))
            .await
            .expect("admitted once the idle connection closed");
        assert!(
            tokio::time::Instant::now() - t0 < Duration::from_secs(1),
            "admitted on the close, not at the deadline"
        );
        assert_eq!(
            a.open(),
            9,
            "eight less the one closed, plus the ninth and tenth"
        );
        assert_eq!(a.figures().refused, 1, "the tenth's wait was no refusal");
        assert_eq!(
            a.figures().reused,
            2,
            "a second idle connection was told to close"
        );
        drop(tenth);
    }

    /// Nothing closing (every connection busy): refused at once, without waiting; a close
    /// that never comes: refused at the end of the wait, counted once.
    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_only_for_a_close_under_way_and_only_so_long() {
        let a = Admission::new(2, 100);
        let busy: Vec<_> = (0..2)
            .map(|n| {
                let t = a.admit(ip(&format!("10.0.0.{n}"))).unwrap();
                super::super::front::InFlight::begin(&t);
                t
            })
            .collect();
        let t0 = tokio::time::Instant::now();
        let refused = a
            .admit_waiting(ip("10.0.1.1"), Duration::from_secs(60))
            .await;
        assert_eq!(refused.unwrap_err(), Refusal::NodeFull);
        assert_eq!(
            tokio::time::Instant::now(),
            t0,
            "no wait when nothing is closing"
        );
        assert_eq!(a.figures().refused, 1);
        drop(busy);

        // A connection told to close that never closes.
        let (a, held) = full_of_idle_connections(false);
        let _ninth = a.admit(ip("10.0.1.1")).unwrap();
        let t0 = tokio::time::Instant::now();
        let refused = a
            .admit_waiting(ip("10.0.1.2"), Duration::from_secs(1))
            .await;
        assert_eq!(refused.unwrap_err(), Refusal::NodeFull);
        assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(1));
        assert_eq!(a.figures().refused, 1, "one refusal for one connection");
        drop(held);
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
    fn idle_connections_are_picked_most_recent_first_and_busy_or_fresh_ones_kept() {
        // (number, requests in flight, last activity ms)
        let places = [
            (1, 0, 100),   // idle since 100: the oldest
            (2, 1, 50),    // a request in flight (an upload): kept, however old
            (3, 0, 0),     // never sent a request: kept (the header timeout's to close)
            (4, 0, 2_500), // idle since 2,500
            (5, 0, 9_500), // active 500 ms ago: kept
            (6, 0, 1_000), // idle since 1,000
        ];
        assert_eq!(
            pick_idle(places.into_iter(), 10_000, 1_000, 2),
            vec![4, 6],
            "the two idle connections active most recently, most recent first"
        );
        assert_eq!(
            pick_idle(places.into_iter(), 10_000, 1_000, 10),
            vec![4, 6, 1]
        );
        assert!(pick_idle(places.into_iter(), 10_000, 1_000, 0).is_empty());
        assert_eq!(pick_idle(places.into_iter(), 1_150, 1_000, 5), vec![1]);
    }

    /// A node at its cap, its connections idle for half a minute: a new connection is
    /// admitted in the place of an idle one, which is told to close; a busy one is not.
    #[tokio::test]
    async fn at_the_cap_an_idle_connection_makes_room() {
        let mut a = Admission::new(16, 16);
        // Opened a minute ago.
        Arc::get_mut(&mut a).unwrap().epoch = Instant::now() - Duration::from_secs(60);
        assert_eq!(a.headroom(), 2);
        let tickets: Vec<Ticket> = (0..16).map(|_| a.admit(ip("10.0.0.1")).unwrap()).collect();
        let now = ms_since(a.epoch);
        for (i, t) in tickets.iter().enumerate() {
            // Idle since 30 s ago less i ms, except #3 (a request in flight) and #5 (just
            // active).
            let a = a.slot(t.place);
            a.last.store(30_000 - i as u64, Ordering::Relaxed);
            if i == 3 {
                a.in_flight.store(1, Ordering::Relaxed);
            }
            if i == 5 {
                a.last.store(now, Ordering::Relaxed);
            }
        }
        a.slot(tickets[3].place)
            .last
            .store(30_000, Ordering::Relaxed);
        // The admissions above searched (near the cap) and found none idle: as if that were
        // longer than REUSE_SEARCH_MS ago.
        a.last_search.store(0, Ordering::Relaxed);
        let closing = |t: &Ticket| a.slot(t.place).state.load(Ordering::Relaxed) == CLOSING;
        // The 17th: the two idle ones active most recently (#0 and #1; not #3, as recent but
        // busy, nor #5, active just now) are told to close, and it is admitted in one's place.
        let t17 = a
            .admit(ip("10.0.0.2"))
            .expect("admitted in an idle one's place");
        let told: Vec<usize> = (0..16).filter(|&i| closing(&tickets[i])).collect();
        assert_eq!(told, vec![0, 1]);
        tokio::time::timeout(Duration::from_secs(5), tickets[0].closing())
            .await
            .expect("the connection is told at once");
        assert_eq!(a.figures().reused, 2);
        assert_eq!(a.open(), 17);
        // The 18th takes the other place still closing; the 19th finds none (as many are
        // closing as the headroom allows, and none has closed yet).
        let t18 = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.2")).unwrap_err(), Refusal::NodeFull);
        // Once they close, the count of places closing is back to none.
        let mut tickets = tickets.into_iter();
        drop(tickets.next());
        drop(tickets.next());
        assert_eq!(a.closing.load(Ordering::Relaxed), 0);
        assert_eq!(a.open(), 16);
        // #1's place is taken again: the close told to #1 (which it never heard) is not
        // heard by the new connection.
        let t19 = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(t19.place, 1);
        assert!(futures::FutureExt::now_or_never(t19.closing()).is_none());
        drop((t17, t18, t19));
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

    /// Read one `Connection: keep-alive` answer's body from `stream` (the test service's
    /// answers are short and carry `Content-Length`).
    async fn ask(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before its answer");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.parse().ok())
                    .expect("content-length");
                if body.len() >= len {
                    return body.to_string();
                }
            }
        }
    }

    /// With connection threads, each admitted connection is served on one of them (the service
    /// runs there), open connections are spread evenly, and on shutdown the accept loop
    /// returns once they have closed, however many threads held them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_spread_over_the_connection_threads() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Boxed: the listener's services answer with `Unpin` futures.
        let service = hyper::service::service_fn(|_req| {
            Box::pin(async {
                let name = std::thread::current().name().unwrap_or("").to_string();
                Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(name),
                )))
            })
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_connections(
            listener,
            Admission::new(64, 64),
            http1_builder(&Limits::default()),
            super::super::front::NoFront,
            front_limits(&Limits::default()),
            service,
            2,
            Limits::default().shutdown_drain(),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut clients = Vec::new();
        let mut names = Vec::new();
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            // Asked while the earlier ones stay open: the thread with fewer open takes it.
            names.push(ask(&mut c).await);
            // A second request on the same connection is served on the same thread.
            assert_eq!(ask(&mut c).await, *names.last().unwrap());
            clients.push(c);
        }
        names.sort();
        assert_eq!(
            names,
            ["reel-conn-0", "reel-conn-0", "reel-conn-1", "reel-conn-1"]
        );
        stop.send(()).unwrap();
        // Open connections are closed gracefully (they are idle), then the loop returns.
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the accept loop stops once its connections have closed")
            .unwrap();
        for mut c in clients {
            let mut buf = [0u8; 16];
            assert_eq!(c.read(&mut buf).await.unwrap(), 0, "closed by the node");
        }
    }
}
