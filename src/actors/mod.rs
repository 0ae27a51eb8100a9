//! Actors: orchestration on ractor. One actor per file, each with its `Args`, `State` and `Msg`.
//!
//! The supervision tree of one node (what actually runs; see `docs/architecture.md`):
//!
//! ```text
//! NodeSupervisor                    (node.rs) a failed child stops the node: the process exits
//!  │                                 and the restarted node recovers from the object store
//!  ├─ WorkerPool                    (worker_pool.rs) queue of tasks; restarts crashed workers
//!  │   └─ TranscodeWorker × N       (transcode_worker.rs) runs ffmpeg for one task at a time
//!  ├─ UploadSupervisor              (upload_supervisor.rs) one UploadActor per resumable upload
//!  │   └─ UploadActor               (upload.rs) owns uploads/{id}/info.json; serialises PATCHes;
//!  │                                 completes the upload through `ingest::accept`
//!  ├─ SessionSupervisor             (session_supervisor.rs) one SessionActor per playback session
//!  │   │                             served here; forgets a stopped or crashed one (the next
//!  │   │                             request reopens it cold)
//!  │   └─ SessionActor              (session.rs) serves the session's requests through the
//!  │                                 node's SegmentCache, logs them, starts read-ahead; stops
//!  │                                 when idle
//!  └─ VideoSupervisor               (video_supervisor.rs) one VideoActor per active video;
//!      │                             restarts a crashed VideoActor; recovers videos at start
//!      └─ VideoActor                (video.rs) lifecycle state machine, owner of record.json;
//!          │                         restarts a crashed JobActor, which resumes from outputs
//!          └─ JobActor              (job.rs) validate, plan, dispatch, retry with backoff,
//!                                    reclaim stuck tasks, finalize (multivariant playlist last)
//! ```
//!
//! The node's segment cache is deliberately not an actor: it is a plain shared struct
//! (`streaming::cache::SegmentCache`, reached through `NodeContext::streaming`) so a cache hit
//! never waits in a mailbox; only the session's own actor sits on the request path.
//!
//! Messages here are local-only: with ractor's `cluster` feature each message type implements
//! [`ractor::Message`] with its default (non-serialising) methods.

pub mod gateway;
pub mod job;
pub mod membership;
pub mod node;
pub mod session;
pub mod session_supervisor;
#[cfg(test)]
pub mod testing;
pub mod transcode_worker;
pub mod upload;
pub mod upload_supervisor;
pub mod video;
pub mod video_supervisor;
pub mod worker_pool;

use std::path::PathBuf;
use std::sync::Arc;

use ractor::ActorRef;

use crate::cluster::protocol::TaskReport;
use crate::cluster::Cluster;
use crate::config::{Limits, ProcessingConfig};
use crate::storage::events::EventLog;
use crate::storage::Storage;

/// What every actor of a node shares: immutable configuration and handles.
#[derive(Debug)]
pub struct NodeContext {
    /// This node's id (events, names).
    pub node_id: String,
    /// The object store.
    pub storage: Storage,
    /// The node-local event log.
    pub events: EventLog,
    /// How videos are processed.
    pub processing: ProcessingConfig,
    /// Node-local scratch directory for ffmpeg outputs and downloaded sources.
    pub scratch_dir: PathBuf,
    /// This node's view of the cluster (a one-node view when not clustered).
    pub cluster: Cluster,
    /// How often every node re-checks which unfinished videos it should own (reconcile loop).
    pub reconcile_every: std::time::Duration,
    /// A video lease's time to live (see [`crate::storage::lease`]).
    pub lease_ttl: std::time::Duration,
    /// Input limits (upload size, upload expiry).
    pub limits: Limits,
    /// Segment serving: cache, read-ahead permits, playback log, cluster view.
    pub streaming: crate::streaming::Streaming,
}

/// Shared context handle.
pub type Ctx = Arc<NodeContext>;

/// The `post_stop` of a supervisor whose actors must run their own `post_stop` when the node
/// stops gracefully: stop them and wait, at most `wait`. ractor kills a stopping actor's
/// children without their `post_stop` otherwise (`NodeSupervisor`'s `post_stop`).
pub(crate) async fn stop_children_gracefully(
    supervisor: &ractor::ActorCell,
    wait: std::time::Duration,
) {
    supervisor
        .stop_children_and_wait(Some("node stopping".into()), Some(wait))
        .await;
}

/// Whether a supervised actor in `status` still counts as running: running, or still starting.
/// `spawn_linked` returns before the new actor's own task marks it running, so a message
/// queued behind the one that started it finds it starting; only stopping and stopped actors
/// are gone (their termination event is on its way to the supervisor).
pub(crate) fn is_live(status: ractor::ActorStatus) -> bool {
    matches!(
        status,
        ractor::ActorStatus::Starting | ractor::ActorStatus::Running
    )
}

impl NodeContext {
    /// Ingest on this node's store, event log and profile ([`crate::ingest::Ingest`]).
    pub fn ingest(&self) -> crate::ingest::Ingest<'_> {
        crate::ingest::Ingest {
            storage: &self.storage,
            events: &self.events,
            profile: &self.processing.profile,
        }
    }

    /// A context with defaults, for tests and examples that run actors without a whole node:
    /// in-memory event log, default processing and limits, a one-node cluster view, streaming
    /// with its playback log under `scratch_dir`. Override fields with struct-update syntax.
    pub fn for_tests(node_id: &str, storage: Storage, scratch_dir: &std::path::Path) -> Self {
        let log = crate::storage::playback::PlaybackLog::open(scratch_dir, Default::default())
            .expect("playback log in scratch dir");
        Self {
            node_id: node_id.to_string(),
            storage,
            events: EventLog::in_memory(node_id),
            processing: ProcessingConfig::default(),
            scratch_dir: scratch_dir.to_path_buf(),
            cluster: Cluster::single(node_id, std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            reconcile_every: std::time::Duration::from_secs(10),
            lease_ttl: std::time::Duration::from_secs(6),
            limits: Limits::default(),
            streaming: crate::streaming::Streaming::new(node_id, Default::default(), log),
        }
    }

    /// The registry name of an actor of this node: `{node}/{what}`. Names are unique per process,
    /// so the node id keeps two in-process nodes (tests) apart.
    pub fn name(&self, what: &str) -> String {
        format!("{}/{}", self.node_id, what)
    }
}

pub use crate::tasks::{TaskFailure, TaskKind, TaskSpec, SUPERSEDED};

/// Where a task's reports go: the job's actor on this node, or the Gateway of the node that
/// runs the job.
#[derive(Debug, Clone)]
pub enum TaskReply {
    /// The job runs on this node.
    Local(ActorRef<job::JobMsg>),
    /// The job runs on `node`; reports travel through its Gateway.
    Remote {
        /// The job's node.
        node: String,
        /// How to reach it.
        cluster: Cluster,
    },
}

impl TaskReply {
    /// Deliver a report (best effort: a lost report is covered by the job's liveness checks).
    pub fn send(&self, report: TaskReport) {
        match self {
            TaskReply::Local(job) => {
                let _ = job.cast(job::JobMsg::from(report));
            }
            TaskReply::Remote { node, cluster } => cluster.report(node, &report),
        }
    }
}

/// A task handed to a pool: the spec, which attempt this is, and whom to report to.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The work.
    pub task: TaskSpec,
    /// Attempt number, from 1. Reports about other attempts are stale and ignored.
    pub attempt: u32,
    /// Where progress and the outcome go.
    pub reply: TaskReply,
}

impl Assignment {
    /// The task's key within its job (see [`TaskSpec::key`]).
    pub fn key(&self) -> String {
        self.task.key()
    }
}
