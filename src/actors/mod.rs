//! Actors: orchestration on ractor. One actor per file, each with its `Args`, `State` and `Msg`.
//!
//! The supervision tree of one node (what actually runs; see `docs/architecture.md`):
//!
//! ```text
//! NodeSupervisor                    (node.rs) a failed child stops the node: the process exits
//!  │                                 and the restarted node recovers from the object store
//!  ├─ WorkerPool                    (worker_pool.rs) queue of tasks; restarts crashed workers
//!  │   └─ TranscodeWorker × N       (transcode_worker.rs) runs ffmpeg for one task at a time
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

pub mod job;
pub mod node;
pub mod session;
pub mod session_supervisor;
pub mod transcode_worker;
pub mod video;
pub mod video_supervisor;
pub mod worker_pool;

use std::path::PathBuf;
use std::sync::Arc;

use ractor::ActorRef;
use serde::{Deserialize, Serialize};

use crate::config::ProcessingConfig;
use crate::media::ladder::Rendition;
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
    /// Segment serving: cache, read-ahead permits, playback log, cluster view.
    pub streaming: crate::streaming::Streaming,
}

/// Shared context handle.
pub type Ctx = Arc<NodeContext>;

impl NodeContext {
    /// The registry name of an actor of this node: `{node}/{what}`. Names are unique per process,
    /// so the node id keeps two in-process nodes (tests) apart.
    pub fn name(&self, what: &str) -> String {
        format!("{}/{}", self.node_id, what)
    }
}

/// One unit of work: encode one rendition of one video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The video.
    pub video_id: String,
    /// The rendition to produce; its name is the task's key within the job.
    pub rendition: Rendition,
    /// Whether the source has audio to map.
    pub has_audio: bool,
    /// Source duration, seconds (for progress).
    pub duration_seconds: f64,
    /// Source frame rate, frames per second (kept; written as `FRAME-RATE`).
    pub frame_rate: f64,
}

/// A task handed to the pool: the spec, which attempt this is, and whom to report to.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The work.
    pub task: TaskSpec,
    /// Attempt number, from 1. Reports about other attempts are stale and ignored.
    pub attempt: u32,
    /// The job to report progress and the outcome to.
    pub job: ActorRef<job::JobMsg>,
}

impl Assignment {
    /// The task's key within its job (the rendition name).
    pub fn key(&self) -> &str {
        &self.task.rendition.name
    }
}

/// Why a task attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    /// True when retrying cannot help (the source cannot be decoded).
    pub permanent: bool,
    /// What happened, for events and the video's error.
    pub message: String,
}

impl TaskFailure {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }
}
