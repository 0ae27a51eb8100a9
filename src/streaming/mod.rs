//! Segment serving (issue 4; seed rules 7, 8, 9): playback sessions, the node-local segment
//! cache with single-flight misses, read-ahead, the playback log's timeline.
//!
//! - [`session`]: session ids that name their home node, and [`session::route_session`], the
//!   one function that decides which node serves a session (the cluster wires its ring there).
//! - [`cache`]: the byte-bounded LRU shared by every session of a node.
//! - [`playlist`]: rewriting the multivariant playlist onto session paths.
//! - [`timeline`]: reading a session's records back and proving its rendition switches.
//!
//! The `SessionActor` that serves a session lives in `actors/session.rs`; [`Streaming`] is the
//! handle on the node-wide services it shares with the HTTP layer. The playback log itself is in
//! `storage/playback.rs`.

pub mod cache;
pub mod playlist;
pub mod session;
pub mod timeline;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::config::StreamingConfig;
use crate::model::{VideoRecord, VideoState};
use crate::storage::playback::{PlaybackLog, RenditionTag};

use self::cache::SegmentCache;
use self::session::{ClusterView, SingleNode};

/// Where the streaming side's own tasks run (a cache read, a read-ahead): on the runtime that
/// was current when their owner ([`Streaming`], [`SegmentCache`]) was made, the node's, even
/// when the request that starts them is answered on one of the listener's connection threads
/// (`http::listener::serve_connections`). A task must not end with the connection's thread, nor
/// take that thread's time from the connections it serves.
#[derive(Debug, Clone)]
pub struct NodeTasks(Option<tokio::runtime::Handle>);

impl NodeTasks {
    /// The current runtime's tasks; outside any runtime (a plain unit test), `spawn` uses the
    /// caller's runtime.
    pub fn current() -> Self {
        Self(tokio::runtime::Handle::try_current().ok())
    }

    /// Spawn `task` on the node's runtime. Panics as `tokio::spawn` does when there is no
    /// runtime to spawn on at all.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }
}

/// What a session needs to know about one rendition of a ready video.
#[derive(Debug, Clone, PartialEq)]
pub struct RenditionInfo {
    /// Its place in the video's ladder (0 the first rung listed in the video's record).
    pub index: usize,
    /// Name, resolution and `BANDWIDTH` (bit/s) for log records (shared by them).
    pub tag: Arc<RenditionTag>,
    /// Number of segments (`00000.m4s` .. ): read-ahead stops at the last.
    pub segments: usize,
    /// The directory under `videos/{id}/` its files are read from (the one the commit chose:
    /// `{rendition}/{attempt token}`, or the rendition's name for videos stored before).
    pub dir: Arc<str>,
}

/// The renditions of a ready video (immutable once ready).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// The video.
    pub video_id: String,
    /// By rendition name.
    pub renditions: RenditionMap,
}

/// Renditions by name. Hashed with foldhash, not SipHash: every segment request looks its
/// rendition up here, and the names are the ladder's own, not chosen by a client (issue 11,
/// P1).
pub type RenditionMap = HashMap<String, RenditionInfo, foldhash::fast::RandomState>;

impl VideoInfo {
    /// From a ready video's record; `None` unless the record is `ready`.
    pub fn from_record(r: &VideoRecord) -> Option<Self> {
        if r.state != VideoState::Ready {
            return None;
        }
        let renditions = r
            .renditions
            .iter()
            .enumerate()
            .map(|(index, s)| {
                (
                    s.name.clone(),
                    RenditionInfo {
                        index,
                        tag: Arc::new(RenditionTag {
                            name: s.name.clone(),
                            width: s.width,
                            height: s.height,
                            bandwidth: s.bandwidth,
                        }),
                        segments: s.segments.unwrap_or(0),
                        dir: s
                            .dir
                            .clone()
                            .filter(|d| crate::storage::keys::valid_rendition_dir(d))
                            .unwrap_or_else(|| s.name.clone())
                            .into(),
                    },
                )
            })
            .collect();
        Some(Self {
            video_id: r.video_id.clone(),
            renditions,
        })
    }
}

/// Node-wide streaming services, shared by the HTTP layer and every `SessionActor`. Cheap to
/// clone.
#[derive(Clone)]
pub struct Streaming {
    /// Settings (cache size, read-ahead depth, limits).
    pub config: StreamingConfig,
    /// The node-local segment cache.
    pub cache: Arc<SegmentCache>,
    /// Permits for prefetches running at once (`max_prefetches`); a prefetch that finds none
    /// is skipped.
    pub prefetch_slots: Arc<tokio::sync::Semaphore>,
    /// The playback log (JSON lines and SQLite).
    pub log: PlaybackLog,
    /// Where the node's tasks that requests start run: the node's runtime (read-ahead here,
    /// and every request handler but a cache hit's, `http::Service`).
    pub tasks: NodeTasks,
    /// What this node knows about the cluster, for [`session::route_session`].
    cluster: Arc<RwLock<Arc<dyn ClusterView>>>,
    /// Renditions of ready videos, by id (bounded; a fact that never changes).
    videos: Arc<Mutex<lru::LruCache<String, Arc<VideoInfo>>>>,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("config", &self.config)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Streaming {
    /// Services for node `node_id`, alone until [`Streaming::set_cluster`] says otherwise.
    pub fn new(node_id: &str, config: StreamingConfig, log: PlaybackLog) -> Self {
        let cap = std::num::NonZeroUsize::new(10_000).expect("non-zero");
        Self {
            cache: SegmentCache::new(config.cache_bytes()),
            prefetch_slots: Arc::new(tokio::sync::Semaphore::new(config.max_prefetches)),
            config,
            log,
            tasks: NodeTasks::current(),
            cluster: Arc::new(RwLock::new(Arc::new(SingleNode {
                node_id: node_id.to_string(),
            }))),
            videos: Arc::new(Mutex::new(lru::LruCache::new(cap))),
        }
    }

    /// Replace the cluster view (the cluster's membership calls this when it starts).
    pub fn set_cluster(&self, view: Arc<dyn ClusterView>) {
        *self.cluster.write().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// The current cluster view.
    pub fn cluster(&self) -> Arc<dyn ClusterView> {
        self.cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The renditions of a ready video, if already known.
    pub fn video(&self, id: &str) -> Option<Arc<VideoInfo>> {
        self.videos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Remember the renditions of a ready video.
    pub fn remember_video(&self, info: VideoInfo) -> Arc<VideoInfo> {
        let info = Arc::new(info);
        self.videos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(info.video_id.clone(), info.clone());
        info
    }
}

#[cfg(test)]
mod tests {
    use super::NodeTasks;

    /// A task started from another runtime's thread (a connection thread) runs on the runtime
    /// the `NodeTasks` were taken from.
    #[test]
    fn tasks_run_on_the_runtime_they_were_taken_from() {
        let node = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("node-runtime")
            .enable_all()
            .build()
            .unwrap();
        let tasks = node.block_on(async { NodeTasks::current() });
        let ran_on = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    tasks
                        .spawn(async { std::thread::current().name().map(str::to_string) })
                        .await
                        .unwrap()
                })
        })
        .join()
        .unwrap();
        assert_eq!(ran_on.as_deref(), Some("node-runtime"));
    }
}
