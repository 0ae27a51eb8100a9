//! The work a job hands out: what a task does ([`TaskKind`]), its full description
//! ([`TaskSpec`], which crosses the cluster link inside an assignment) and why an attempt
//! failed ([`TaskFailure`]). Plain data, shared by the actors that plan and run tasks
//! (`actors::job`, `actors::transcode_worker`) and by the cluster protocol that carries them
//! (`cluster::protocol`), so that `cluster/` needs nothing from `actors/`.

use serde::{Deserialize, Serialize};

use crate::media::ladder::Rendition;

/// What a task does (design brief section 8: chunks encoded in parallel, audio once, then a
/// stream-copy packaging step per rendition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Encode the whole rendition (video and audio) in one ffmpeg run: short sources.
    Rendition,
    /// Encode the video of one chunk (whole segments) for every rendition in `renditions`,
    /// decoding it once, each to its own intermediate MP4 (issue 11, P2).
    Chunk {
        /// Chunk number, from 0.
        index: usize,
        /// Where the chunk starts in the source, seconds (a multiple of the segment duration).
        start_seconds: f64,
        /// Its length, seconds.
        duration_seconds: f64,
        /// The renditions whose chunk this task encodes, in ladder order (those not yet
        /// stored). The task's own `rendition` is the first. Empty in a task from a node that
        /// predates it: that task's own `rendition` alone.
        #[serde(default)]
        renditions: Vec<Rendition>,
        /// For a source without an index: how far before the chunk's seek point to seek,
        /// milliseconds, to land just before the keyframe at or before its start
        /// (`transcode::ChunkSeek::Keyframe`), found when the job was planned
        /// (`transcode::keyframe_back_ms`). `None`: none found, an indexed source, or a task
        /// from a node that predates it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keyframe_back_ms: Option<u32>,
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
    /// `chunk-0003` (a chunk, for every rendition), `audio-128` (the audio).
    pub fn key(&self) -> String {
        match &self.kind {
            TaskKind::Rendition | TaskKind::Package { .. } => self.rendition.name.clone(),
            TaskKind::Chunk { index, .. } => format!("chunk-{index:04}"),
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

/// How a worker's failure message begins when the object store did not answer or failed.
pub const STORE_UNAVAILABLE: &str = "object store unavailable:";

impl TaskFailure {
    /// The task's job no longer owns the video (a newer lease epoch exists): the worker stored
    /// nothing, and the job stands down instead of retrying (no attempt is used up). Told by
    /// the message, so it crosses nodes in the existing report format.
    pub fn superseded(video_id: &str, epoch: u64) -> Self {
        Self::transient(format!(
            "{SUPERSEDED} video {video_id} has a newer owner than epoch {epoch}; nothing was stored"
        ))
    }

    /// The video's outputs were chosen (it is committed) while this attempt still ran: what it
    /// stored was taken back. Told apart like [`TaskFailure::superseded`].
    pub fn already_committed(video_id: &str) -> Self {
        Self::transient(format!(
            "{SUPERSEDED} video {video_id} was committed from other outputs; this attempt's were deleted"
        ))
    }

    /// Whether this is [`TaskFailure::superseded`] or [`TaskFailure::already_committed`].
    pub fn is_superseded(&self) -> bool {
        self.message.starts_with(SUPERSEDED)
    }

    /// The object store failed or did not answer while the task read or wrote it: the
    /// infrastructure failed, not the task. The job retries it after a backoff without using
    /// up an attempt; an outage that outlasts the lease stops the job (its owner stands down)
    /// and the video resumes when the store is back (issue 9). Told by the message, like
    /// [`TaskFailure::superseded`].
    pub fn store_unavailable(what: &str, e: &dyn std::fmt::Display) -> Self {
        Self::transient(format!("{STORE_UNAVAILABLE} {what}: {e}"))
    }

    /// Whether this is [`TaskFailure::store_unavailable`].
    pub fn is_store_unavailable(&self) -> bool {
        self.message.starts_with(STORE_UNAVAILABLE)
    }

    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }
}
