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
use serde::{Deserialize, Serialize};

use crate::cluster::protocol::TaskReport;
use crate::cluster::Cluster;
use crate::config::{Limits, ProcessingConfig};
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
    /// This node's view of the cluster (a one-node view when not clustered).
    pub cluster: Cluster,
    /// How often every node re-checks which unfinished videos it should own (reconcile loop).
    pub reconcile_every: std::time::Duration,
    /// Input limits (upload size, upload expiry).
    pub limits: Limits,
    /// Segment serving: cache, read-ahead permits, playback log, cluster view.
    pub streaming: crate::streaming::Streaming,
}

/// Shared context handle.
pub type Ctx = Arc<NodeContext>;

impl NodeContext {
    /// A context with defaults, for tests and examples that run actors without a whole node:
    /// in-memory event log, default processing and limits, a one-node cluster view, streaming
    /// with its playback log under `scratch_dir`. Override fields with struct-update syntax.
    pub fn for_tests(node_id: &str, storage: Storage, scratch_dir: &std::path::Path) -> Self {
        let log = crate::storage::playback::PlaybackLog::open(scratch_dir)
            .expect("playback log in scratch dir");
        Self {
            node_id: node_id.to_string(),
            storage,
            events: EventLog::in_memory(node_id),
            processing: ProcessingConfig::default(),
            scratch_dir: scratch_dir.to_path_buf(),
            cluster: Cluster::single(node_id, std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            reconcile_every: std::time::Duration::from_secs(10),
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

/// What a task does (design brief section 8: chunks encoded in parallel, audio once, then a
/// stream-copy packaging step per rendition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Encode the whole rendition (video and audio) in one ffmpeg run: short sources.
    Rendition,
    /// Encode the video of one chunk of the rendition (whole segments) to an intermediate MP4.
    Chunk {
        /// Chunk number, from 0.
        index: usize,
        /// Where the chunk starts in the source, seconds (a multiple of the segment duration).
        start_seconds: f64,
        /// Its length, seconds.
        duration_seconds: f64,
    },
    /// Encode the whole source's audio once, at this bitrate (kbit/s), to an intermediate M4A.
    Audio {
        /// AAC bitrate, kbit/s.
        kbps: u32,
    },
    /// Stream-copy the rendition's chunks and the audio into its CMAF segments and playlist.
    Package {
        /// How many chunks.
        chunks: usize,
        /// Each chunk's span, seconds, in order: where the next one starts. Empty in tasks
        /// from a node that predates it (each chunk's own length is used).
        #[serde(default)]
        chunk_seconds: Vec<f64>,
        /// The audio intermediate's bitrate, when the source has audio.
        audio_kbps: Option<u32>,
    },
}

/// One unit of work of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The video.
    pub video_id: String,
    /// The lease epoch of the job that dispatched it. A worker writes the task's outputs only
    /// while it is still the video's newest epoch, so a deposed job's tasks (its node killed,
    /// hung or handed off) store nothing ([`crate::storage::Storage::lease_holds`]). 0 in tasks
    /// from a node that predates it, or from a job without a lease (tests): not checked.
    #[serde(default)]
    pub epoch: u64,
    /// The job instance that dispatched it (random, nonzero, drawn when a JobActor starts).
    /// Reports carry it back, and a job drops reports of another instance: a restarted job
    /// numbers attempts from 1 again, so (task, attempt) alone would let a dead instance's
    /// report count as current (issue 9). 0 from a node that predates it: not checked.
    #[serde(default)]
    pub instance: u64,
    /// The rendition the task works towards.
    pub rendition: Rendition,
    /// What the task does.
    pub kind: TaskKind,
    /// Whether the source has audio to map.
    pub has_audio: bool,
    /// Source duration, seconds (for progress).
    pub duration_seconds: f64,
    /// Source frame rate, frames per second (kept; written as `FRAME-RATE`).
    pub frame_rate: f64,
    /// Which source streams to read and how to line them up (decided once from the probe, so
    /// every chunk, the audio and every rendition share one timeline). Absent in tasks from a
    /// node that predates it: the first streams, no offsets.
    #[serde(default)]
    pub input: crate::media::transcode::InputMap,
}

impl TaskSpec {
    /// The task's key within its job: `720p` (whole rendition or its packaging step),
    /// `720p/c0003` (a chunk), `audio-128` (the audio).
    pub fn key(&self) -> String {
        match &self.kind {
            TaskKind::Rendition | TaskKind::Package { .. } => self.rendition.name.clone(),
            TaskKind::Chunk { index, .. } => format!("{}/c{index:04}", self.rendition.name),
            TaskKind::Audio { kbps } => format!("audio-{kbps}"),
        }
    }

    /// The length of source this task covers, seconds (for progress).
    pub fn span_seconds(&self) -> f64 {
        match &self.kind {
            TaskKind::Chunk {
                duration_seconds, ..
            } => *duration_seconds,
            _ => self.duration_seconds,
        }
    }
}

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

/// Why a task attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    /// True when retrying cannot help (the source cannot be decoded).
    pub permanent: bool,
    /// What happened, for events and the video's error.
    pub message: String,
}

/// How a worker's failure message begins when the task's job no longer owns the video.
pub const SUPERSEDED: &str = "superseded:";

impl TaskFailure {
    /// The task's job no longer owns the video (a newer lease epoch exists): the worker stored
    /// nothing, and the job stands down instead of retrying (no attempt is used up). Told by
    /// the message, so it crosses nodes in the existing report format.
    pub fn superseded(video_id: &str, epoch: u64) -> Self {
        Self::transient(format!(
            "{SUPERSEDED} video {video_id} has a newer owner than epoch {epoch}; nothing was stored"
        ))
    }

    /// Whether this is [`TaskFailure::superseded`].
    pub fn is_superseded(&self) -> bool {
        self.message.starts_with(SUPERSEDED)
    }

    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }
}
