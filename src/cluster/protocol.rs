//! What nodes say to each other through their Gateways. Payloads travel as JSON strings inside
//! one remote-capable message type, so adding a variant here never breaks a peer's decoding of
//! the others (a peer that does not know a variant answers an error). Never rename a variant.
//! No video bytes travel here: they go through HTTP and the object store (frames are capped at
//! 16 MiB).

use serde::{Deserialize, Serialize};

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;

use crate::media::playlist::RenditionOutput;
use crate::tasks::{TaskFailure, TaskSpec};

/// A request to a peer's Gateway; the answer is a [`Reply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Request {
    /// Liveness: answers [`Reply::Pong`].
    Ping,
    /// Start the video's actor on the receiving node (its home), unless it runs.
    EnsureVideo {
        /// The video.
        video_id: String,
    },
    /// Live progress of a video processed on the receiving node.
    VideoProgress {
        /// The video.
        video_id: String,
    },
    /// Queue a task on the receiving node's worker pool; reports go to `job_node`.
    SubmitTask {
        /// The work.
        task: TaskSpec,
        /// Attempt number.
        attempt: u32,
        /// The node whose JobActor awaits the reports.
        job_node: String,
    },
    /// Cancel a task attempt on the receiving node.
    CancelTask {
        /// Video.
        video_id: String,
        /// Task key.
        task: String,
        /// Attempt.
        attempt: u32,
    },
    /// Cancel every task of a video on the receiving node.
    CancelVideo {
        /// Video.
        video_id: String,
    },
}

/// A Gateway's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Reply {
    /// Answer to `Ping`.
    Pong {
        /// The answering node's id.
        node: String,
    },
    /// The request was carried out.
    Ok,
    /// Progress 0.0 to 1.0, if the video is being processed there.
    Progress {
        /// Progress.
        progress: Option<f64>,
    },
    /// The request failed or was not understood.
    Error {
        /// Why.
        message: String,
    },
}

/// A one-way report about a task, sent to the Gateway of the node running its job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TaskReport {
    /// A worker began the attempt.
    Started {
        /// Video.
        video_id: String,
        /// The job instance that dispatched the attempt ([`crate::tasks::TaskSpec::instance`]);
        /// 0 from a node that predates it.
        #[serde(default)]
        instance: u64,
        /// Task key.
        task: String,
        /// Attempt.
        attempt: u32,
        /// The worker's node.
        node: String,
    },
    /// Output written so far, seconds.
    Progress {
        /// Video.
        video_id: String,
        /// The job instance that dispatched the attempt ([`crate::tasks::TaskSpec::instance`]);
        /// 0 from a node that predates it.
        #[serde(default)]
        instance: u64,
        /// Task key.
        task: String,
        /// Attempt.
        attempt: u32,
        /// Seconds of output written; negative: the task is moving bytes (downloading its
        /// inputs, storing its outputs) and has no new output seconds, which keeps it from
        /// being reclaimed as stuck without moving its progress (issue 9).
        seconds: f64,
    },
    /// The attempt ended.
    Finished {
        /// Video.
        video_id: String,
        /// The job instance that dispatched the attempt ([`crate::tasks::TaskSpec::instance`]);
        /// 0 from a node that predates it.
        #[serde(default)]
        instance: u64,
        /// Task key.
        task: String,
        /// Attempt.
        attempt: u32,
        /// The finished rendition (whole-rendition and packaging tasks; `None` for chunk and
        /// audio tasks), or the failure (`permanent`, `message`).
        result: Result<Option<RenditionOutput>, (bool, String)>,
    },
}

impl TaskReport {
    /// The video the report is about.
    pub fn video_id(&self) -> &str {
        match self {
            Self::Started { video_id, .. }
            | Self::Progress { video_id, .. }
            | Self::Finished { video_id, .. } => video_id,
        }
    }
}

/// Convert a failure for the wire.
pub fn failure_to_wire(f: TaskFailure) -> (bool, String) {
    (f.permanent, f.message)
}

/// The messages of a node's Gateway actor (`actors::gateway`), the one remote-capable actor:
/// this type crosses the cluster link. Payloads are JSON so that adding a [`Request`] kind
/// never breaks decoding of the others. Add variants, never rename.
#[derive(RactorClusterMessage)]
pub enum GatewayMsg {
    /// A JSON [`Request`]; the reply port gets a JSON [`Reply`].
    #[rpc]
    Call(String, RpcReplyPort<String>),
    /// A JSON [`TaskReport`] for a job on this node.
    Report(String),
}
