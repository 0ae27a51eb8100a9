//! `NodeSupervisor`: the root of a node's supervision tree, and [`Node`], the handle the HTTP
//! layer and tests hold.
//!
//! The node supervisor starts the `WorkerPool`, the `VideoSupervisor` (in that order: the
//! video supervisor's jobs need the pool) and the `SessionSupervisor`. They are infrastructure that holds references to each
//! other, so they are not restarted in place: if one fails, the node supervisor stops, [`Node`]'s
//! `stopped` future completes, and `reel serve` exits non-zero. A process supervisor (systemd,
//! Docker, Kubernetes) restarts it, and the new node recovers every unfinished video from the
//! object store. Per-video failures never reach this level.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::session_supervisor::{
    SessionSupervisor, SessionSupervisorArgs, SessionSupervisorMsg,
};
use crate::actors::video_supervisor::{VideoSupervisor, VideoSupervisorArgs, VideoSupervisorMsg};
use crate::actors::worker_pool::{PoolArgs, PoolMsg, WorkerPool};
use crate::actors::{Ctx, NodeContext};

/// The root actor.
pub struct NodeSupervisor;

/// Startup arguments.
pub struct NodeArgs {
    /// Node context.
    pub ctx: Ctx,
    /// Number of transcode workers.
    pub workers: usize,
}

/// The node's top-level actors.
#[derive(Clone)]
pub struct NodeRefs {
    /// The worker pool.
    pub pool: ActorRef<PoolMsg>,
    /// The video supervisor.
    pub videos: ActorRef<VideoSupervisorMsg>,
    /// The session supervisor.
    pub sessions: ActorRef<SessionSupervisorMsg>,
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
        let (sessions, _) = Actor::spawn_linked(
            Some(args.ctx.name("sessions")),
            SessionSupervisor,
            SessionSupervisorArgs {
                ctx: args.ctx.clone(),
                streaming: args.ctx.streaming.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        Ok(NodeRefs {
            pool,
            videos,
            sessions,
        })
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
}

impl Node {
    /// Start the supervision tree and recover unfinished videos from the object store.
    ///
    /// Errors: an actor failed to start (for instance, the node's actor names are taken because
    /// a node with the same id runs in this process).
    pub async fn start(ctx: NodeContext, workers: usize) -> Result<Self, ActorProcessingErr> {
        let ctx = Arc::new(ctx);
        let (root, handle) = Actor::spawn(
            Some(ctx.name("node")),
            NodeSupervisor,
            NodeArgs {
                ctx: ctx.clone(),
                workers,
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
        Ok(Self {
            ctx,
            root,
            refs,
            stopped,
        })
    }

    /// Completes when the node's supervision tree has stopped (a top-level actor failed).
    pub async fn stopped(&self) {
        self.stopped.notified().await
    }

    /// Stop every actor (running ffmpeg processes are killed) and wait for the tree to end.
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
