//! `SessionActor`: one playback session on its serving node (seed rules 7 to 9).
//!
//! Every request of the session (media playlists, init segments, segments) is a
//! [`SessionMsg::Serve`]. The handler only records the request and spawns the work, so a slow
//! object-store read never holds the session's mailbox: the spawned task reads through the
//! node's [`SegmentCache`](crate::streaming::cache::SegmentCache), writes the `SERVE` record,
//! triggers read-ahead of segments k+1 ..= k+depth of the same rendition (each spawned in its
//! own task, bounded by the node's prefetch permits, so triggering never waits) and answers.
//! Read-ahead goes through the same cache, so a prefetched segment is whole before anyone can
//! read it.
//!
//! The actor stops itself after `session_idle_seconds` without a request (memory stays bounded);
//! a later request with the same id starts it again, cold (see `SessionSupervisor`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::actors::Ctx;
use crate::storage::keys::{self, RenditionFile};
use crate::storage::playback::{CacheOutcome, PlaybackEvent, PlaybackRecord, RenditionTag};
use crate::storage::{Object, StorageError};
use crate::streaming::cache::Lookup;
use crate::streaming::session::SessionId;
use crate::streaming::{Streaming, VideoInfo};

/// The actor.
pub struct SessionActor;

/// Startup arguments.
pub struct SessionArgs {
    /// Node context (storage, node id).
    pub ctx: Ctx,
    /// Node-wide cache, prefetch permits and playback log.
    pub streaming: Streaming,
    /// The session's id.
    pub session: SessionId,
    /// The video it plays (renditions and segment counts).
    pub video: Arc<VideoInfo>,
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
    /// Serve `file` of `rendition`; the answer is the whole object, or `NotFound`.
    Serve {
        /// The video the request's path names: must be the session's video.
        video_id: String,
        /// Rendition name (validated by the caller, known to the video).
        rendition: String,
        /// Which file.
        file: RenditionFile,
        /// The answer.
        reply: RpcReplyPort<Result<Served, StorageError>>,
    },
    /// Timer: stop when idle for longer than the configured time.
    Tick,
    /// The session's counters.
    Snapshot(RpcReplyPort<SessionSnapshot>),
}
impl ractor::Message for SessionMsg {}

/// Mutable state.
pub struct SessionState {
    /// When the last request arrived.
    last_request: Instant,
    /// Requests received.
    requests: u64,
    /// Rendition of the latest request.
    rendition: Option<String>,
    /// The idle timer.
    ticker: Option<tokio::task::JoinHandle<()>>,
    /// The session's id and video, shared by every request's task without copying.
    session: Arc<str>,
    video_id: Arc<str>,
    /// Segments whose read-ahead this session has logged.
    read_ahead: ReadAheadLogged,
}

/// The file name of a rendition file.
pub fn file_name(file: RenditionFile) -> String {
    match file {
        RenditionFile::Init => crate::media::playlist::INIT_NAME.to_string(),
        RenditionFile::MediaPlaylist => crate::media::playlist::MEDIA_PLAYLIST_NAME.to_string(),
        RenditionFile::Segment(k) => crate::media::playlist::segment_name(k),
    }
}

/// The segments whose read-ahead a session has logged, by rendition name. Bounded by the
/// video's segment count times its renditions; a rendition's name is allocated once, not per
/// request.
type ReadAheadLogged =
    Arc<std::sync::Mutex<std::collections::HashMap<String, std::collections::HashSet<usize>>>>;

/// Everything a spawned serve or prefetch task needs.
#[derive(Clone)]
struct Job {
    ctx: Ctx,
    streaming: Streaming,
    session: Arc<str>,
    video_id: Arc<str>,
    tag: RenditionTag,
    segments: usize,
    /// The rendition's directory under `videos/{id}/` (the one its commit chose).
    dir: Arc<str>,
    read_ahead: ReadAheadLogged,
}

impl Job {
    fn record(&self, event: PlaybackEvent, segment: usize) -> PlaybackRecord {
        let mut r = PlaybackRecord::new(event, &self.video_id, &self.session, &self.ctx.node_id);
        r.rendition = Some(self.tag.clone());
        r.segment = Some(segment);
        r
    }

    fn key(&self, file: RenditionFile) -> String {
        keys::rendition_file(&self.video_id, &self.dir, &file_name(file))
    }

    async fn serve(self, file: RenditionFile, reply: RpcReplyPort<Result<Served, StorageError>>) {
        let started = Instant::now();
        let key = self.key(file);
        let res = match self.streaming.cache.get(&self.ctx.storage, &key).await {
            Ok((Some(object), lookup)) => Ok(Served { object, lookup }),
            Ok((None, _)) => Err(StorageError::NotFound(key)),
            Err(e) => Err(e),
        };
        let RenditionFile::Segment(k) = file else {
            let _ = reply.send(res);
            return;
        };
        let mut r = self.record(PlaybackEvent::Serve, k);
        r.duration_ms = Some(started.elapsed().as_millis() as u64);
        match &res {
            Ok(s) => {
                r.cache = Some(if s.lookup.is_hit() {
                    CacheOutcome::Hit
                } else {
                    CacheOutcome::Miss
                });
                r.bytes = Some(s.object.bytes.len() as u64);
                r.result = Some("ok".into());
            }
            Err(e) => {
                r.cache = Some(CacheOutcome::Miss);
                r.result = Some("error".into());
                r.detail = Some(e.to_string());
            }
        }
        self.streaming.log.record(r);
        // Triggering read-ahead only spawns (or skips) it: microseconds, no I/O. Doing it before
        // the answer makes "serving k logged PREFETCH_START for k+1" true by the time the
        // player has segment k.
        if res.is_ok() {
            let last =
                (k + self.streaming.config.prefetch_depth).min(self.segments.saturating_sub(1));
            for j in k + 1..=last {
                // A player asking for k again (a retry, a seek back) whose k+1 is still cached
                // needs no new read-ahead, and the log already proves the first one: only a
                // segment not cached, or never read ahead by this session, is triggered.
                // The bookkeeping first: for a segment never read ahead the cache need not be
                // asked here (prefetch asks it once).
                let first = self
                    .read_ahead
                    .lock()
                    .map(|mut by| match by.get_mut(self.tag.name.as_str()) {
                        Some(set) => set.insert(j),
                        None => by.entry(self.tag.name.clone()).or_default().insert(j),
                    })
                    .unwrap_or(true);
                if first
                    || !self
                        .streaming
                        .cache
                        .is_cached_or_inflight(&self.key(RenditionFile::Segment(j)))
                {
                    self.clone().prefetch(j);
                }
            }
        }
        let _ = reply.send(res);
    }

    /// Start read-ahead of segment `j` unless it is cached or being read (then log that), or
    /// the node runs too many prefetches (then log the skip). Never waits.
    fn prefetch(self, j: usize) {
        let key = self.key(RenditionFile::Segment(j));
        if self.streaming.cache.is_cached_or_inflight(&key) {
            let mut s = self.record(PlaybackEvent::PrefetchStart, j);
            s.cache = Some(CacheOutcome::Hit);
            self.streaming.log.record(s);
            let mut r = self.record(PlaybackEvent::PrefetchResult, j);
            r.cache = Some(CacheOutcome::Hit);
            r.result = Some("cached".into());
            self.streaming.log.record(r);
            return;
        }
        let Ok(permit) = self.streaming.prefetch_slots.clone().try_acquire_owned() else {
            let mut r = self.record(PlaybackEvent::PrefetchResult, j);
            r.result = Some("skipped_busy".into());
            self.streaming.log.record(r);
            return;
        };
        let mut s = self.record(PlaybackEvent::PrefetchStart, j);
        s.cache = Some(CacheOutcome::Miss);
        self.streaming.log.record(s);
        tokio::spawn(async move {
            let started = Instant::now();
            let res = self.streaming.cache.get(&self.ctx.storage, &key).await;
            drop(permit);
            let mut r = self.record(PlaybackEvent::PrefetchResult, j);
            r.duration_ms = Some(started.elapsed().as_millis() as u64);
            match res {
                Ok((Some(o), lookup)) => {
                    r.bytes = Some(o.bytes.len() as u64);
                    r.cache = Some(if lookup.is_hit() {
                        CacheOutcome::Hit
                    } else {
                        CacheOutcome::Miss
                    });
                    r.result = Some(if lookup.is_hit() { "cached" } else { "fetched" }.into());
                }
                Ok((None, _)) => r.result = Some("not_found".into()),
                Err(e) => {
                    r.result = Some("error".into());
                    r.detail = Some(e.to_string());
                }
            }
            self.streaming.log.record(r);
        });
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = (SessionArgs, SessionState);
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let idle = Duration::from_secs(args.streaming.config.session_idle_seconds);
        let period = (idle / 4).max(Duration::from_millis(250));
        let ticker = myself.send_interval(period, || SessionMsg::Tick);
        let session: Arc<str> = args.session.to_string().into();
        let video_id: Arc<str> = args.video.video_id.as_str().into();
        Ok((
            args,
            SessionState {
                last_request: Instant::now(),
                requests: 0,
                rendition: None,
                ticker: Some(ticker),
                session,
                video_id,
                read_ahead: Default::default(),
            },
        ))
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        (args, state): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        let mut r = PlaybackRecord::new(
            PlaybackEvent::SessionEnd,
            &args.video.video_id,
            &args.session.to_string(),
            &args.ctx.node_id,
        );
        r.detail = Some(format!("{} requests", state.requests));
        args.streaming.log.record(r);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        (args, state): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Serve {
                video_id,
                rendition,
                file,
                reply,
            } => {
                state.last_request = Instant::now();
                state.requests += 1;
                if video_id != args.video.video_id {
                    // Never name the other video: a session id is no key to it.
                    let _ = reply.send(Err(StorageError::NotFound(format!(
                        "no such session {} for this video",
                        args.session
                    ))));
                    return Ok(());
                }
                let Some(info) = args.video.renditions.get(&rendition) else {
                    let _ = reply.send(Err(StorageError::NotFound(format!(
                        "rendition {rendition} of video {}",
                        args.video.video_id
                    ))));
                    return Ok(());
                };
                if let RenditionFile::Segment(k) = file {
                    if k >= info.segments {
                        let _ = reply.send(Err(StorageError::NotFound(format!(
                            "segment {k} of {rendition}: it has {} segments",
                            info.segments
                        ))));
                        return Ok(());
                    }
                }
                state.rendition = Some(rendition);
                let job = Job {
                    ctx: args.ctx.clone(),
                    streaming: args.streaming.clone(),
                    session: state.session.clone(),
                    video_id: state.video_id.clone(),
                    tag: info.tag.clone(),
                    segments: info.segments,
                    dir: info.dir.clone(),
                    read_ahead: state.read_ahead.clone(),
                };
                tokio::spawn(job.serve(file, reply));
            }
            SessionMsg::Tick => {
                let idle = Duration::from_secs(args.streaming.config.session_idle_seconds);
                if state.last_request.elapsed() >= idle {
                    myself.stop(Some("idle".into()));
                }
            }
            SessionMsg::Snapshot(reply) => {
                let _ = reply.send(SessionSnapshot {
                    session_id: args.session.to_string(),
                    video_id: args.video.video_id.clone(),
                    requests: state.requests,
                    rendition: state.rendition.clone(),
                });
            }
        }
        Ok(())
    }
}
