//! reel: a distributed video platform. It accepts uploads, stores them in an object store,
//! transcodes them into an adaptive-bitrate ladder with ffmpeg, and serves HLS to third-party
//! players.
//!
//! # Layout (modules follow the data's path)
//!
//! - [`http`]: warp routes; translates requests to storage reads and actor messages, errors to
//!   statuses.
//! - [`actors`]: orchestration on ractor; the supervision tree is drawn in its module doc.
//! - [`media`]: sniffing, ffprobe validation, the ladder, ffmpeg arguments, playlists. Knows
//!   nothing of actors, HTTP or the object store.
//! - [`storage`]: the object store (system of record, key layout) and the node-local SQLite
//!   event log. The only module that names `object_store` or `rusqlite`.
//! - [`ingest`]: received bytes become a video (content address, create-once record); shared
//!   by `POST /upload` and resumable (tus) uploads.
//! - [`model`]: the video record and lifecycle states that pass between the others.
//! - [`config`]: `cluster.toml` and the typed per-node configuration.
//! - [`streaming`]: playback sessions, the node-local segment cache, read-ahead and the
//!   session timeline (`reel session`); see `docs/streaming.md`.
//! - [`client`]: the `reel upload` and `reel status` commands.
//!
//! # Glossary
//!
//! - **upload**: the bytes a client sends; becomes a **source** at `sources/{video_id}`. A
//!   **resumable upload** (tus 1.0.0, `/files/{upload_id}`) arrives in **parts** and keeps its
//!   state in the object store until it completes or expires (see `docs/uploads.md`).
//! - **video**: a source plus its record and outputs; `video_id` is its content address.
//! - **ladder**: the renditions configured; **rendition**: one encoding (resolution, bitrate).
//! - **segment**: a CMAF fragment (`NNNNN.m4s`) of fixed duration; the **init segment**
//!   (`init.mp4`) precedes them. A **media playlist** lists a rendition's segments; the
//!   **multivariant playlist** (`master.m3u8`) lists the **variant streams**.
//! - **job**: the processing of one video; **task**: one rendition of it, run by a worker.
//! - **session**: one player's playback, from its multivariant playlist request on; its id
//!   (`{home_node}-{16 hex}`) names the node that serves it.

pub mod actors;
pub mod client;
pub mod cluster;
pub mod config;
pub mod http;
pub mod ingest;
pub mod media;
pub mod model;
pub mod storage;
pub mod streaming;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::actors::node::Node;
use crate::actors::NodeContext;
use crate::config::Config;
use crate::storage::events::EventLog;
use crate::storage::Storage;

/// Most I/O events a runtime worker takes from the kernel in one poll. Each event wakes a
/// connection's task into the worker's local run queue, which holds 256 tasks; tokio's
/// default of 1,024 events overflows it when many connections are ready at once (1,024 players
/// each waiting for a segment), and the overflow goes to the shared queue, which workers check
/// only now and then: those requests wait behind later ones, and the latency's tail grows
/// (tokio's `Builder::max_io_events_per_busy_tick` documentation). Events beyond the batch
/// stay in the kernel until the next poll. Measured in `docs/performance.md`, P1.
pub(crate) const IO_EVENTS_PER_TICK: usize = 128;

/// Most I/O events a worker takes when it polls between tasks it still has to run: a small
/// batch, so that newly ready connections queue behind the ones already waiting.
const IO_EVENTS_PER_BUSY_TICK: usize = 16;

/// The tokio runtime every reel process runs on (`reel` and the `reel-load` benchmark client):
/// multi-threaded, a worker per core, I/O and timers on, with the small I/O batches above so
/// that connections are served in the order they became ready.
///
/// Errors: the operating system refused the runtime's threads or its epoll instance.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_io_events_per_tick(IO_EVENTS_PER_TICK)
        .max_io_events_per_busy_tick(IO_EVENTS_PER_BUSY_TICK)
        .build()
}

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// ffmpeg or ffprobe is missing.
    #[error("{0}")]
    MissingTool(String),
    /// The data directory cannot be opened or another node holds it, or the object store or
    /// the event log cannot be opened.
    #[error("{0}")]
    Setup(String),
    /// The actor tree failed to start or stopped on a failure.
    #[error("node failed: {0}")]
    Node(String),
}

/// Open storage and the event log and start the node's actors (no HTTP).
///
/// Errors: see [`RunError`].
pub async fn start_node(config: &Config) -> Result<Node, RunError> {
    let storage = Storage::open(&config.storage)
        .map_err(|e| RunError::Setup(format!("object store: {e}")))?;
    start_node_with(config, storage).await
}

/// [`start_node`] over a given object store instead of `config.storage` (tests wrap a store to
/// count or slow its reads).
pub async fn start_node_with(config: &Config, storage: Storage) -> Result<Node, RunError> {
    config.validate()?;
    let storage = storage
        .with_answer_timeout(config.limits.store_answer())
        .with_write_budget(storage::WriteBudget::new(
            config.limits.upload_buffer_bytes(),
            config.limits.body_idle(),
        ));
    let storage = match config.limits.upload_spool_bytes() {
        0 => storage,
        bytes => storage.with_spool(storage::Spool::new(&config.data_dir, bytes)),
    };
    media::transcode::check_tools().map_err(RunError::MissingTool)?;
    let setup = |what: &str, e: &dyn std::fmt::Display| RunError::Setup(format!("{what}: {e}"));
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        setup(
            &format!("cannot create data directory {:?}", config.data_dir),
            &e,
        )
    })?;
    // Before anything in the directory is touched: a second node there would clear the first
    // one's scratch below, and share its logs (`storage::data_dir`).
    let lock = storage::data_dir::DataDirLock::acquire(&config.data_dir)
        .map_err(|e| RunError::Setup(e.to_string()))?;
    if !lock.held() {
        tracing::warn!(
            "the file system of data directory {} has no locks: nothing stops a second node \
             from using it, so make sure only this one does",
            config.data_dir.display()
        );
    }
    let scratch_dir = config.data_dir.join("scratch");
    // Scratch holds only unfinished ffmpeg outputs and source copies: safe to clear at start.
    let _ = std::fs::remove_dir_all(&scratch_dir);
    std::fs::create_dir_all(&scratch_dir)
        .map_err(|e| setup("cannot create scratch directory", &e))?;
    let events = EventLog::open(&config.data_dir.join("reel.sqlite"), &config.node_id)
        .map_err(|e| setup("event log", &e))?;
    let view = match &config.cluster {
        Some(c) => cluster::Cluster::new(
            &config.node_id,
            c.members
                .iter()
                .map(|(id, http, cl)| (id.clone(), *http, Some(*cl)))
                .collect(),
        ),
        None => cluster::Cluster::single(&config.node_id, config.listen),
    };
    let playback =
        storage::playback::PlaybackLog::open(&config.data_dir, config.streaming.log_retention())
            .map_err(|e| setup("playback log", &e))?;
    let ctx = NodeContext {
        node_id: config.node_id.clone(),
        storage,
        events,
        processing: config.processing.clone(),
        scratch_dir,
        cluster: view,
        reconcile_every: config.reconcile_every,
        lease_ttl: config.lease_ttl,
        limits: config.limits.clone(),
        streaming: streaming::Streaming::new(&config.node_id, config.streaming.clone(), playback),
    };
    // Playback sessions follow the same view of the cluster as everything else.
    ctx.streaming.set_cluster(Arc::new(ctx.cluster.clone()));
    let node = Node::start(ctx, config.workers, config.cluster.clone())
        .await
        .map_err(|e| RunError::Node(e.to_string()))?;
    node.hold_data_dir(lock);
    Ok(node)
}

/// A node serving HTTP in this process: what tests and examples start.
pub struct RunningNode {
    /// The HTTP address actually bound.
    pub addr: SocketAddr,
    /// The node's actors.
    pub node: Node,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// `http://{addr}`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop HTTP, then the actors, then write what the playback log still holds (the open
    /// sessions' `SESSION_END` records, written as their actors stop) before returning: the
    /// process may end right after. Last, give up the data directory's lock.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
        self.node.shutdown().await;
        self.node.ctx.streaming.log.flush().await;
        self.node.release_data_dir();
    }
}

/// Start a node and serve HTTP on `listener` in the background.
pub async fn spawn(
    config: Config,
    listener: tokio::net::TcpListener,
) -> Result<RunningNode, RunError> {
    let storage = Storage::open(&config.storage)
        .map_err(|e| RunError::Setup(format!("object store: {e}")))?;
    spawn_with_storage(config, storage, listener).await
}

/// [`spawn`] over a given object store instead of `config.storage`.
pub async fn spawn_with_storage(
    config: Config,
    storage: Storage,
    listener: tokio::net::TcpListener,
) -> Result<RunningNode, RunError> {
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Setup(format!("listener: {e}")))?;
    // The address actually bound (a test binds port 0): what the node says it listens on.
    let mut config = config;
    config.listen = addr;
    let node = start_node_with(&config, storage).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = http::App::new(node.clone(), Arc::new(config));
    let server = tokio::spawn(http::serve(app, listener, async {
        let _ = rx.await;
    }));
    Ok(RunningNode {
        addr,
        node,
        shutdown: Some(tx),
        server,
    })
}

/// Run one node until `shutdown` completes (`reel serve`). Binds `config.listen`.
///
/// Errors: see [`RunError`]; also when the node's actor tree stops on a failure.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener = http::listener::bind(config.listen)
        .map_err(|e| RunError::Setup(format!("cannot listen on {}: {e}", config.listen)))?;
    let running = spawn(config, listener).await?;
    tracing::info!(
        "reel node {} serving on {}",
        running.node.ctx.node_id,
        running.url()
    );
    let node = running.node.clone();
    let id = node.ctx.node_id.clone();
    let failed = tokio::select! {
        _ = shutdown => false,
        _ = node.stopped() => true,
    };
    if !failed {
        tracing::info!("reel node {id} stopping (Ctrl-C or SIGTERM)");
    }
    running.stop().await;
    tracing::info!("reel node {id} stopped");
    if failed {
        return Err(RunError::Node(
            "the supervision tree stopped; see the log".into(),
        ));
    }
    Ok(())
}
