//! `SessionActor`: one playback session on its serving node (seed rules 7 to 9).
//!
//! The session's state lives in a [`SessionHandle`] that the actor owns and the node's
//! [`SessionTable`] lists. A request of the session (media playlist, init segment, segment) is
//! served by [`SessionHandle::serve`] in the request's own task, with no message to the actor:
//! it reads through the node's [`SegmentCache`](crate::streaming::cache::SegmentCache), writes
//! the `SERVE` record, triggers read-ahead of segments k+1 ..= k+depth of the same rendition
//! (each spawned in its own task, bounded by the node's prefetch permits, so triggering never
//! waits) and answers. A cache hit therefore costs a lookup (none on a connection that named
//! the session before) and atomic reads, not a mailbox round trip and a spawned task (issue
//! 11, P1). Read-ahead goes through the same cache, so a prefetched segment is whole before
//! anyone can read it.
//!
//! The actor keeps the session's lifecycle: it stops itself after `session_idle_seconds`
//! without a request (memory stays bounded), logs `SESSION_END`, and its supervisor then drops
//! it from the table; a later request with the same id starts it again, cold (see
//! `SessionSupervisor`). A request that found the handle just before it stopped is still
//! answered; one that finds it stopped opens the session again.
//!
//! Messages: [`SessionMsg::Tick`] (the idle check) and [`SessionMsg::Snapshot`]. State: the
//! handle and the idle timer. Supervision: linked to the `SessionSupervisor`, never restarted in
//! place (a session holds nothing durable).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::actors::Ctx;
use crate::storage::keys::{self, RenditionFile};
use crate::storage::playback::{
    CacheOutcome, PlaybackEvent, PlaybackRecord, RenditionTag, SegmentRecord, SessionIds,
};
use crate::storage::{Object, StorageError};
use crate::streaming::cache::Lookup;
use crate::streaming::session::SessionId;
use crate::streaming::{RenditionInfo, Streaming, VideoInfo};

/// The actor.
pub struct SessionActor;

/// Startup arguments: the session's handle, made by [`SessionHandle::new`].
pub struct SessionArgs {
    /// The state the actor owns and the session's requests use.
    pub handle: Arc<SessionHandle>,
}

/// The actor's state.
pub struct SessionState {
    handle: Arc<SessionHandle>,
    /// The idle timer.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// A served object.
#[derive(Debug, Clone)]
pub struct Served {
    /// The whole object (HTTP cuts ranges from it).
    pub object: Object,
    /// Where it came from.
    pub lookup: Lookup,
}

/// What a test can observe of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    /// The session id.
    pub session_id: String,
    /// The video.
    pub video_id: String,
    /// Requests received.
    pub requests: u64,
    /// The rendition of the latest request.
    pub rendition: Option<String>,
}

/// Messages.
pub enum SessionMsg {
    /// Timer: stop when idle for longer than the configured time.
    Tick,
    /// The session's counters.
    Snapshot(RpcReplyPort<SessionSnapshot>),
}
impl ractor::Message for SessionMsg {}

/// What a session remembers between requests, in atomics that a player's steady requests
/// only read: a session's requests are answered on both connection threads, and a lock (or a
/// value) written by every request moved its cache line between the cores each time
/// (`SessionHandle::served`, where its two locks a request were, was 3 % of a held node's
/// user CPU serving cached segments at 1,024 connections; issue 11, P1).
struct Tracking {
    /// The rendition of the latest request: its [`RenditionInfo::index`] plus 1; 0 before any.
    rendition: AtomicUsize,
    /// By [`RenditionInfo::index`], the segments whose read-ahead this session has triggered,
    /// one bit each (made at the rendition's first read-ahead: a bit per segment).
    read_ahead: Box<[OnceLock<Box<[AtomicU64]>>]>,
    /// A segment read ahead before that was then found cached or being read, with the cache's
    /// departures at that moment ([`confirmation`]): while nothing has left the cache since,
    /// it still is cached or being read, and the cache need not be asked again.
    confirmed: AtomicU64,
}

impl Tracking {
    /// For renditions whose [`RenditionInfo::index`] is below `renditions`.
    fn new(renditions: usize) -> Self {
        Self {
            rendition: AtomicUsize::new(0),
            read_ahead: (0..renditions).map(|_| OnceLock::new()).collect(),
            confirmed: AtomicU64::new(NOT_CONFIRMED),
        }
    }
}

/// [`Tracking::confirmed`] before any confirmation ([`confirmation`] never makes it).
const NOT_CONFIRMED: u64 = u64::MAX;

/// Set bit `j` of `bits`; whether it was clear. Only reads when it is already set, so the
/// requests that find it set share its cache line instead of taking it in turn.
fn set_bit(bits: &[AtomicU64], j: usize) -> bool {
    let (word, bit) = (&bits[j / 64], 1u64 << (j % 64));
    word.load(Ordering::Relaxed) & bit == 0 && word.fetch_or(bit, Ordering::Relaxed) & bit == 0
}

/// Segment `segment` of the rendition at `rendition` ([`RenditionInfo::index`]) found in the
/// cache when its departures count ([`SegmentCache::departures`]) was `departures`, as one
/// value for [`Tracking::confirmed`]: 8 bits of rendition, 24 of segment, the low 32 of the
/// count. `None` beyond 255 renditions or 16,777,216 segments (then the cache is asked); never
/// [`NOT_CONFIRMED`].
///
/// [`SegmentCache::departures`]: crate::streaming::cache::SegmentCache::departures
fn confirmation(rendition: usize, segment: usize, departures: u64) -> Option<u64> {
    (rendition < (1 << 8) - 1 && segment < 1 << 24)
        .then_some((rendition as u64) << 56 | (segment as u64) << 32 | (departures & 0xffff_ffff))
}

/// One playback session's state, shared by its actor (lifecycle) and its requests (serving).
/// Holds the ids, two counters and the read-ahead bookkeeping: a few hundred bytes, plus a bit
/// per segment of each rendition it has read ahead in.
pub struct SessionHandle {
    ctx: Ctx,
    streaming: Streaming,
    video: Arc<VideoInfo>,
    session: SessionId,
    /// The session's id, its video and this node, shared by every record of the session.
    ids: Arc<SessionIds>,
    /// When the handle was made; `last_request_ms` counts milliseconds from it.
    born: Instant,
    last_request_ms: AtomicU64,
    requests: AtomicU64,
    /// Set when the actor stops: a request that finds a stopped handle opens the session again.
    stopped: AtomicBool,
    tracking: Tracking,
}

impl SessionHandle {
    /// The state of session `session` playing `video` on the node of `ctx`.
    pub fn new(
        ctx: Ctx,
        streaming: Streaming,
        session: SessionId,
        video: Arc<VideoInfo>,
    ) -> Arc<Self> {
        Arc::new(Self {
            ids: Arc::new(SessionIds::new(
                video.video_id.clone(),
                session.to_string(),
                ctx.node_id.clone(),
            )),
            ctx,
            streaming,
            session,
            born: Instant::now(),
            last_request_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            tracking: Tracking::new(
                video
                    .renditions
                    .values()
                    .map(|r| r.index + 1)
                    .max()
                    .unwrap_or(0),
            ),
            video,
        })
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.session
    }

    /// The session's id as text (`{home}-{random}`).
    pub fn session_id(&self) -> &str {
        self.ids.session_id()
    }

    /// The video the session plays.
    pub fn video(&self) -> &Arc<VideoInfo> {
        &self.video
    }

    /// Whether its actor still runs (false once it has stopped).
    pub fn is_open(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
    }

    /// Mark the session stopped: requests no longer use this handle (its actor stopped or
    /// failed).
    pub(crate) fn close(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Time since the latest request (or since the session started, before any).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    /// The session's counters.
    pub fn snapshot(&self) -> SessionSnapshot {
        SessionSnapshot {
            session_id: self.ids.session_id().to_string(),
            video_id: self.video.video_id.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            rendition: self.rendition_now().map(|r| r.tag.name.clone()),
        }
    }

    /// Serve `file` of `rendition` of `video_id` for this session, in the caller's task.
    ///
    /// Answers the whole object (HTTP cuts ranges from it). A segment is logged (`SERVE`, with
    /// the cache outcome and bytes) and triggers read-ahead of the next `prefetch_depth`
    /// segments; playlists and init segments are not logged. Never waits for read-ahead.
    ///
    /// Errors: `NotFound` when `video_id` is not the session's video (without naming it), the
    /// rendition is unknown or the segment is past the last; the store's error when the object
    /// cannot be read.
    pub async fn serve(
        self: &Arc<Self>,
        video_id: &str,
        rendition: &str,
        file: RenditionFile,
    ) -> Result<Served, StorageError> {
        // One reading of the clock for the request's time and the lookup's start.
        let started = Instant::now();
        self.note_request(started);
        let info = self.rendition_info(video_id, rendition, file)?;
        let key = self.key(info, file);
        let res = match self.streaming.cache.get(&self.ctx.storage, &key).await {
            Ok((Some(object), lookup)) => Ok(Served { object, lookup }),
            Ok((None, _)) => Err(StorageError::NotFound(key)),
            Err(e) => Err(e),
        };
        self.served(info, file, started.elapsed(), res)
    }

    /// [`SessionHandle::serve`] for an object the node's cache holds now, without waiting:
    /// the same counters, `SERVE` record (a hit) and read-ahead. `None` when the object is not
    /// cached or the request is not valid for this session; then nothing was counted or logged,
    /// and the caller goes on to `serve`, which answers it (issue 11, P1: a cache hit needs no
    /// `await`, so the request needs no future of its own).
    pub fn serve_cached(
        self: &Arc<Self>,
        video_id: &str,
        rendition: &str,
        file: RenditionFile,
    ) -> Option<Served> {
        let info = self.rendition_info(video_id, rendition, file).ok()?;
        let started = Instant::now();
        let object = self
            .streaming
            .cache
            .get_cached(&self.lookup_key(info, file))?;
        // One reading of the clock for the request's time and the lookup's duration: each
        // reading is a system clock call and a subtraction (issue 11, P1).
        let now = Instant::now();
        self.note_request(now);
        let served = Served {
            object,
            lookup: Lookup::Hit,
        };
        self.served(info, file, now - started, Ok(served)).ok()
    }

    /// The rendition of the latest request.
    fn rendition_now(&self) -> Option<&RenditionInfo> {
        let index = self
            .tracking
            .rendition
            .load(Ordering::Relaxed)
            .checked_sub(1)?;
        self.video.renditions.values().find(|r| r.index == index)
    }

    /// Count a request and note its time, `at` (written only when the millisecond changed).
    fn note_request(&self, at: Instant) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = at.saturating_duration_since(self.born).as_millis() as u64;
        if self.last_request_ms.load(Ordering::Relaxed) != now {
            self.last_request_ms.store(now, Ordering::Relaxed);
        }
    }

    /// The rendition `file` belongs to, if the request names this session's video, one of its
    /// renditions and (for a segment) one of its segments; else `NotFound`, never naming
    /// another video.
    fn rendition_info(
        &self,
        video_id: &str,
        rendition: &str,
        file: RenditionFile,
    ) -> Result<&RenditionInfo, StorageError> {
        if video_id != self.video.video_id {
            // Never name the other video: a session id is no key to it.
            return Err(StorageError::NotFound(format!(
                "no such session {} for this video",
                self.ids.session_id()
            )));
        }
        let Some(info) = self.video.renditions.get(rendition) else {
            return Err(StorageError::NotFound(format!(
                "rendition {rendition} of video {}",
                self.video.video_id
            )));
        };
        if let RenditionFile::Segment(k) = file {
            if k >= info.segments {
                return Err(StorageError::NotFound(format!(
                    "segment {k} of {rendition}: it has {} segments",
                    info.segments
                )));
            }
        }
        Ok(info)
    }

    /// After the object was looked up (`res`, in `took`): note the rendition, and for a
    /// segment write its `SERVE` record and trigger read-ahead.
    fn served(
        self: &Arc<Self>,
        info: &RenditionInfo,
        file: RenditionFile,
        took: Duration,
        res: Result<Served, StorageError>,
    ) -> Result<Served, StorageError> {
        let now = info.index + 1;
        if self.tracking.rendition.load(Ordering::Relaxed) != now {
            self.tracking.rendition.store(now, Ordering::Relaxed);
        }
        let RenditionFile::Segment(k) = file else {
            return res;
        };
        let mut r = SegmentRecord::new(PlaybackEvent::Serve, &self.ids, &info.tag, k);
        r.duration_ms = Some(took.as_millis() as u64);
        match &res {
            Ok(s) => {
                r.cache = Some(if s.lookup.is_hit() {
                    CacheOutcome::Hit
                } else {
                    CacheOutcome::Miss
                });
                r.bytes = Some(s.object.bytes.len() as u64);
                r.result = Some("ok");
                self.streaming.log.record_segment(r);
            }
            Err(e) => {
                r.cache = Some(CacheOutcome::Miss);
                r.result = Some("error");
                let mut r = r.into_record();
                r.detail = Some(e.to_string());
                self.streaming.log.record(r);
            }
        }
        // Triggering read-ahead only spawns (or skips) it: microseconds, no I/O. Doing it before
        // the answer makes "serving k logged PREFETCH_START for k+1" true by the time the
        // player has segment k.
        if res.is_ok() {
            let last =
                (k + self.streaming.config.prefetch_depth).min(info.segments.saturating_sub(1));
            let bits = self.tracking.read_ahead[info.index].get_or_init(|| {
                (0..info.segments.div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect()
            });
            for j in k + 1..=last {
                // A player asking for k again (a retry, a seek back) whose k+1 is still cached
                // needs no new read-ahead, and the log already proves the first one: only a
                // segment not cached, or never read ahead by this session, is triggered.
                // The bookkeeping first: for a segment never read ahead the cache need not be
                // asked here (prefetch asks it once).
                if set_bit(bits, j) || !self.still_cached(info, j) {
                    self.prefetch(info, j);
                }
            }
        }
        res
    }

    /// Whether segment `j`, read ahead by this session before, is still cached or being read:
    /// known without asking the cache while nothing has left it since this session last found
    /// `j` there (the cache's lock is then not taken; a player asking for one segment again
    /// and again is the benchmark's case, a retry or seek back a player's).
    fn still_cached(&self, info: &RenditionInfo, j: usize) -> bool {
        let cache = &self.streaming.cache;
        // Read before the cache is asked: a departure meanwhile makes the confirmation stale.
        let confirmed = confirmation(info.index, j, cache.departures());
        if confirmed.is_some_and(|c| self.tracking.confirmed.load(Ordering::Relaxed) == c) {
            return true;
        }
        if !cache.is_cached_or_inflight(&self.lookup_key(info, RenditionFile::Segment(j))) {
            return false;
        }
        if let Some(c) = confirmed {
            self.tracking.confirmed.store(c, Ordering::Relaxed);
        }
        true
    }

    fn record(
        &self,
        event: PlaybackEvent,
        tag: &Arc<RenditionTag>,
        segment: usize,
    ) -> SegmentRecord {
        SegmentRecord::new(event, &self.ids, tag, segment)
    }

    fn key(&self, info: &RenditionInfo, file: RenditionFile) -> String {
        keys::rendition_file_of(self.ids.video_id(), &info.dir, file)
    }

    /// [`Self::key`] for a lookup, built on the stack.
    fn lookup_key(&self, info: &RenditionInfo, file: RenditionFile) -> keys::FileKey {
        keys::rendition_file_key(self.ids.video_id(), &info.dir, file)
    }

    /// Start read-ahead of segment `j` unless it is cached or being read (then log that), or
    /// the node runs too many prefetches (then log the skip). Never waits.
    fn prefetch(self: &Arc<Self>, info: &RenditionInfo, j: usize) {
        let key = self.key(info, RenditionFile::Segment(j));
        let tag = &info.tag;
        if self.streaming.cache.is_cached_or_inflight(&key) {
            let mut s = self.record(PlaybackEvent::PrefetchStart, tag, j);
            s.cache = Some(CacheOutcome::Hit);
            self.streaming.log.record_segment(s);
            let mut r = self.record(PlaybackEvent::PrefetchResult, tag, j);
            r.cache = Some(CacheOutcome::Hit);
            r.result = Some("cached");
            self.streaming.log.record_segment(r);
            return;
        }
        let Ok(permit) = self.streaming.prefetch_slots.clone().try_acquire_owned() else {
            let mut r = self.record(PlaybackEvent::PrefetchResult, tag, j);
            r.result = Some("skipped_busy");
            self.streaming.log.record_segment(r);
            return;
        };
        let mut s = self.record(PlaybackEvent::PrefetchStart, tag, j);
        s.cache = Some(CacheOutcome::Miss);
        self.streaming.log.record_segment(s);
        let this = self.clone();
        let tag = tag.clone();
        // The read starts here, before the task runs: the next request of this session already
        // finds segment j in flight and starts no second read-ahead of it.
        let started = Instant::now();
        let read = self.streaming.cache.get(&self.ctx.storage, &key);
        self.streaming.tasks.spawn(async move {
            let res = read.await;
            drop(permit);
            let mut r = this.record(PlaybackEvent::PrefetchResult, &tag, j);
            r.duration_ms = Some(started.elapsed().as_millis() as u64);
            match res {
                Ok((Some(o), lookup)) => {
                    r.bytes = Some(o.bytes.len() as u64);
                    r.cache = Some(if lookup.is_hit() {
                        CacheOutcome::Hit
                    } else {
                        CacheOutcome::Miss
                    });
                    r.result = Some(if lookup.is_hit() { "cached" } else { "fetched" });
                }
                Ok((None, _)) => r.result = Some("not_found"),
                Err(e) => {
                    r.result = Some("error");
                    let mut r = r.into_record();
                    r.detail = Some(e.to_string());
                    this.streaming.log.record(r);
                    return;
                }
            }
            this.streaming.log.record_segment(r);
        });
    }
}

/// The node's open sessions by id, so that a request finds its [`SessionHandle`] without a
/// message. Written by the `SessionSupervisor` only (a listed session's actor runs, or is
/// stopping); read by every session request. Cheap to clone.
#[derive(Clone, Default)]
pub struct SessionTable(Arc<RwLock<HashMap<String, Arc<SessionHandle>>>>);

impl SessionTable {
    /// The open session `id`, if this node runs it.
    pub fn get(&self, id: &str) -> Option<Arc<SessionHandle>> {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        g.get(id).filter(|h| h.is_open()).cloned()
    }

    /// List `handle` under its id (replacing a stopped one).
    pub fn insert(&self, handle: Arc<SessionHandle>) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        g.insert(handle.ids.session_id().to_string(), handle);
    }

    /// Drop session `id` if the listed handle is `handle` (a session opened again under the
    /// same id is kept).
    pub fn remove(&self, id: &str, handle: &Arc<SessionHandle>) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        if g.get(id).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            g.remove(id);
        }
    }

    /// Sessions listed.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let idle = Duration::from_secs(args.handle.streaming.config.session_idle_seconds);
        let period = (idle / 4).max(Duration::from_millis(250));
        let ticker = myself.send_interval(period, || SessionMsg::Tick);
        Ok(SessionState {
            handle: args.handle,
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        let h = &state.handle;
        h.close();
        let mut r = PlaybackRecord::new(
            PlaybackEvent::SessionEnd,
            h.ids.video_id(),
            h.ids.session_id(),
            h.ids.node_id(),
        );
        r.detail = Some(format!("{} requests", h.requests.load(Ordering::Relaxed)));
        h.streaming.log.record(r);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Tick => {
                let idle = Duration::from_secs(state.handle.streaming.config.session_idle_seconds);
                if state.handle.idle_for() >= idle {
                    myself.stop(Some("idle".into()));
                }
            }
            SessionMsg::Snapshot(reply) => {
                let _ = reply.send(state.handle.snapshot());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bit_is_new_once_whichever_word_it_is_in() {
        let bits: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        for j in [0, 63, 64, 127] {
            assert!(set_bit(&bits, j), "{j} is new");
            assert!(!set_bit(&bits, j), "{j} is set already");
        }
        assert_eq!(bits[0].load(Ordering::Relaxed), 1 | 1 << 63);
        assert_eq!(bits[1].load(Ordering::Relaxed), 1 | 1 << 63);
        assert!(set_bit(&bits, 1));
    }

    #[test]
    fn a_confirmation_names_its_rendition_segment_and_departures() {
        let c = |r, s, d| confirmation(r, s, d).unwrap();
        assert_ne!(c(0, 1, 7), c(1, 1, 7), "rendition");
        assert_ne!(c(0, 1, 7), c(0, 2, 7), "segment");
        assert_ne!(c(0, 1, 7), c(0, 1, 8), "departures");
        let last = c(254, (1 << 24) - 1, u64::MAX);
        assert_eq!(last, u64::MAX - (1 << 56), "the extremes");
        assert_ne!(last, NOT_CONFIRMED);
        assert_eq!(
            c(0, 0, 1 << 32),
            c(0, 0, 0),
            "the low 32 bits of departures"
        );
        assert!(confirmation(255, 0, 0).is_none());
        assert!(confirmation(0, 1 << 24, 0).is_none());
    }
}
