//! `NodeSupervisor`: the root of a node's supervision tree, and [`Node`], the handle the HTTP
//! layer and tests hold.
//!
//! The node supervisor starts, in order: the `WorkerPool`, the `VideoSupervisor` (its jobs need
//! the pool), the `UploadSupervisor` (completed uploads need the video supervisor), the
//! `SessionSupervisor` (playback sessions), the `Gateway` (it routes to the pool and the video
//! supervisor), and on a cluster the ractor_cluster `NodeServer` and the `Membership` actor that
//! dials peers and keeps the ring. They are infrastructure that holds references to each
//! other, so they are not restarted in place: if one fails, the node supervisor stops, [`Node`]'s
//! `stopped` future completes, and `reel serve` exits non-zero. A process supervisor (systemd,
//! Docker, Kubernetes) restarts it, and the new node recovers every unfinished video from the
//! object store. Per-video failures never reach this level.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::gateway::{Gateway, GatewayArgs, GatewayMsg};
use crate::actors::membership::{Membership, MembershipArgs};
use crate::actors::session::SessionTable;
use crate::actors::session_supervisor::{
    SessionSupervisor, SessionSupervisorArgs, SessionSupervisorMsg,
};
use crate::actors::upload_supervisor::{
    sweep_interval, UploadSupervisor, UploadSupervisorArgs, UploadSupervisorMsg,
};
use crate::actors::video_supervisor::{VideoSupervisor, VideoSupervisorArgs, VideoSupervisorMsg};
use crate::actors::worker_pool::{PoolArgs, PoolMsg, WorkerPool};
use crate::actors::{Ctx, NodeContext};
use crate::cluster::protocol::{Reply, Request};
use crate::config::ClusterConfig;
use crate::storage::data_dir::DataDirLock;

/// The root actor.
pub struct NodeSupervisor;

/// How long a graceful stop waits for the session and video supervisors to stop their actors
/// (a video actor waits up to 5 s for its job, then writes its lease's release).
const SUPERVISOR_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// Startup arguments.
pub struct NodeArgs {
    /// Node context.
    pub ctx: Ctx,
    /// Number of transcode workers.
    pub workers: usize,
    /// Cluster membership, when clustered.
    pub cluster: Option<ClusterConfig>,
}

/// The node's top-level actors.
#[derive(Clone)]
pub struct NodeRefs {
    /// The worker pool.
    pub pool: ActorRef<PoolMsg>,
    /// The video supervisor.
    pub videos: ActorRef<VideoSupervisorMsg>,
    /// The gateway (remote-capable).
    pub gateway: ActorRef<GatewayMsg>,
    /// The resumable upload supervisor.
    pub uploads: ActorRef<UploadSupervisorMsg>,
    /// The session supervisor.
    pub sessions: ActorRef<SessionSupervisorMsg>,
    /// The node's open playback sessions (the session supervisor writes it; session requests
    /// read it).
    pub session_table: SessionTable,
}

/// Messages.
pub enum NodeMsg {
    /// The top-level actors.
    Refs(RpcReplyPort<NodeRefs>),
}
impl ractor::Message for NodeMsg {}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeRefs;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeRefs, ActorProcessingErr> {
        let (pool, _) = Actor::spawn_linked(
            Some(args.ctx.name("worker-pool")),
            WorkerPool,
            PoolArgs {
                ctx: args.ctx.clone(),
                workers: args.workers,
            },
            myself.get_cell(),
        )
        .await?;
        let (videos, _) = Actor::spawn_linked(
            Some(args.ctx.name("videos")),
            VideoSupervisor,
            VideoSupervisorArgs {
                ctx: args.ctx.clone(),
                pool: pool.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let (uploads, _) = Actor::spawn_linked(
            Some(args.ctx.name("uploads")),
            UploadSupervisor,
            UploadSupervisorArgs {
                ctx: args.ctx.clone(),
                videos: videos.clone(),
                sweep_every: sweep_interval(args.ctx.limits.upload_expiry_seconds),
            },
            myself.get_cell(),
        )
        .await?;
        let session_table = SessionTable::default();
        let (sessions, _) = Actor::spawn_linked(
            Some(args.ctx.name("sessions")),
            SessionSupervisor,
            SessionSupervisorArgs {
                ctx: args.ctx.clone(),
                streaming: args.ctx.streaming.clone(),
                table: session_table.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        let (gateway, _) = Actor::spawn_linked(
            Some(args.ctx.name("gateway")),
            Gateway,
            GatewayArgs {
                ctx: args.ctx.clone(),
                pool: pool.clone(),
                videos: videos.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        if let Some(cluster) = args.cluster {
            let server = ractor_cluster::NodeServer::new(
                cluster.listen.port(),
                cluster.cookie.expose().to_string(),
                args.ctx.node_id.clone(),
                cluster.listen.ip().to_string(),
                None,
                Some(ractor_cluster::node::NodeConnectionMode::Isolated),
            )
            .with_listen_addr(cluster.listen.ip());
            let (node_server, _) = Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
            Actor::spawn_linked(
                Some(args.ctx.name("membership")),
                Membership,
                MembershipArgs {
                    ctx: args.ctx.clone(),
                    node_server,
                    heartbeat: cluster.heartbeat,
                    fence_after: cluster.fence_after,
                },
                myself.get_cell(),
            )
            .await?;
        }
        Ok(NodeRefs {
            pool,
            videos,
            gateway,
            uploads,
            sessions,
            session_table,
        })
    }

    /// A graceful stop (`reel serve` on Ctrl-C or SIGTERM, [`Node::shutdown`]): stop the
    /// session and video supervisors, and wait, before this actor's own end kills what is
    /// left. ractor kills a stopping actor's children without their `post_stop`; stopped
    /// this way instead, every session logs its `SESSION_END`, and every video actor stops its
    /// job (its tasks cancelled on every node) and releases its lease, so the video's next
    /// holder claims it at once instead of after the lease's time. The pool and the gateway
    /// stay up meanwhile: a job's stop cancels its tasks through them.
    async fn post_stop(
        &self,
        _myself: ActorRef<NodeMsg>,
        state: &mut NodeRefs,
    ) -> Result<(), ActorProcessingErr> {
        let reason = || Some("node stopping".to_string());
        let _ = futures::join!(
            state
                .sessions
                .stop_and_wait(reason(), Some(SUPERVISOR_STOP_WAIT)),
            state
                .videos
                .stop_and_wait(reason(), Some(SUPERVISOR_STOP_WAIT)),
        );
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeRefs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Refs(reply) => {
                let _ = reply.send(state.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        event: SupervisionEvent,
        _state: &mut NodeRefs,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = ?cell.get_name(), "node actor failed: {err}; stopping node");
                myself.stop(Some(format!("{:?} failed: {err}", cell.get_name())));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::error!(actor = ?cell.get_name(), ?reason, "node actor stopped; stopping node");
                myself.stop(Some("a node actor stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A running node's actors and context.
#[derive(Clone)]
pub struct Node {
    /// Shared context (storage, events, settings).
    pub ctx: Ctx,
    /// The root actor.
    pub root: ActorRef<NodeMsg>,
    /// Top-level actors.
    pub refs: NodeRefs,
    stopped: Arc<tokio::sync::Notify>,
    /// The lock on the node's data directory ([`crate::storage::data_dir`]), from
    /// [`Node::hold_data_dir`] until [`Node::release_data_dir`], the drop of the last clone of
    /// this value, or the end of the process.
    data_dir: Arc<std::sync::Mutex<Option<DataDirLock>>>,
}

impl Node {
    /// Start the supervision tree and recover unfinished videos from the object store.
    ///
    /// Errors: an actor failed to start (for instance, the node's actor names are taken because
    /// a node with the same id runs in this process).
    pub async fn start(
        ctx: NodeContext,
        workers: usize,
        cluster: Option<ClusterConfig>,
    ) -> Result<Self, ActorProcessingErr> {
        let ctx = Arc::new(ctx);
        let (root, handle) = Actor::spawn(
            Some(ctx.name("node")),
            NodeSupervisor,
            NodeArgs {
                ctx: ctx.clone(),
                workers,
                cluster,
            },
        )
        .await?;
        let stopped = Arc::new(tokio::sync::Notify::new());
        let notify = stopped.clone();
        tokio::spawn(async move {
            let _ = handle.await;
            notify.notify_waiters();
            notify.notify_one();
        });
        let refs = ractor::call!(root, NodeMsg::Refs)?;
        refs.videos.cast(VideoSupervisorMsg::Recover)?;
        // Videos stored before the catalog existed get their entries, once per store.
        let storage = ctx.storage.clone();
        tokio::spawn(async move {
            match storage.build_catalog().await {
                Ok(0) => {}
                Ok(n) => tracing::info!("catalog: {n} stored videos listed"),
                Err(e) => tracing::warn!("catalog: cannot list the stored videos yet: {e}"),
            }
        });
        Ok(Self {
            ctx,
            root,
            refs,
            stopped,
            data_dir: Arc::default(),
        })
    }

    /// Make sure the video is being processed by its home node (see [`ensure_video`]).
    pub async fn ensure_video(&self, video_id: &str) {
        ensure_video(&self.ctx, &self.refs.videos, video_id).await
    }

    /// After [`crate::ingest::Ingest`] accepted bytes: hand a video that
    /// [`needs_processing`](crate::ingest::Accepted::needs_processing) to its home node.
    pub async fn after_ingest(&self, accepted: &crate::ingest::Accepted) {
        if accepted.needs_processing {
            self.ensure_video(&accepted.video_id).await;
        }
    }

    /// Completes when the node's supervision tree has stopped (a top-level actor failed).
    pub async fn stopped(&self) {
        self.stopped.notified().await
    }

    /// Keep `lock` (taken before the node touched its data directory) while the node runs.
    pub fn hold_data_dir(&self, lock: DataDirLock) {
        *self.data_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
    }

    /// Give up the data directory's lock: the last step of a stop, after everything the node
    /// writes there is written, so that a node started next in this process can take it.
    pub fn release_data_dir(&self) {
        self.data_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Stop every actor (running ffmpeg processes are killed) and wait for the tree to end:
    /// sessions and video actors stop gracefully first (see `NodeSupervisor`'s `post_stop`).
    pub async fn shutdown(&self) {
        let _ = self
            .root
            .stop_and_wait(
                Some("shutdown".into()),
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
    }
}

/// Make sure a video is being processed by its home node: a local message when this node is
/// home (on its ring view), else a request to the home's Gateway. A failure is logged, not
/// raised: the home's periodic reconcile finds every unfinished video anyway.
pub async fn ensure_video(
    ctx: &NodeContext,
    videos: &ActorRef<VideoSupervisorMsg>,
    video_id: &str,
) {
    let home = ctx.cluster.home(&crate::cluster::ring::video_key(video_id));
    if home == ctx.node_id {
        let _ = videos.cast(VideoSupervisorMsg::Ensure {
            video_id: video_id.to_string(),
        });
        return;
    }
    let req = Request::EnsureVideo {
        video_id: video_id.to_string(),
    };
    match ctx
        .cluster
        .request(&home, &req, std::time::Duration::from_secs(5))
        .await
    {
        Ok(Reply::Ok) => {}
        other => tracing::warn!(
            video_id,
            home,
            "could not ask the home node to start the video: {other:?}"
        ),
    }
}
