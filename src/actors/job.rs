//! `JobActor`: one processing job of one video — validate, plan, dispatch, retry, finalize.
//!
//! Supervised by its `VideoActor`, which restarts it after a crash. A job keeps nothing that
//! matters in memory: on every start it reads the record and lists the outputs already in the
//! object store, and dispatches only the renditions that are missing. So a restarted job, or a
//! job on a restarted node, finishes the work without repeating what was done (design brief
//! section 5, "Recovery").
//!
//! Steps:
//! 1. Validate (once per video): sniff the first bytes, ffprobe (`media::probe`). A source
//!    too short to be split into chunks is also decoded whole here (`probe::decode_check`: a
//!    damaged middle is named, not published frozen). An invalid source fails the video at
//!    once, never retried.
//! 2. Plan the ladder (`media::ladder::plan`); tell the `VideoActor` (it stores the plan).
//! 3. The tasks of every rendition whose media playlist does not exist yet: one whole-rendition
//!    task each for a short source; otherwise chunk tasks (each decodes its span once for all
//!    renditions), the audio, and one packaging task per rendition. Hand out those whose
//!    inputs are done. What earlier attempts stored is found by one listing of `work/{id}`
//!    (`chunks_to_run`). For a source without an index (MPEG-TS, MPEG-PS) with chunks still
//!    to encode, the job first lists its keyframes (`probe::keyframe_times`, no decoding, but
//!    a read of the whole file), so that each chunk task seeks to just before the keyframe
//!    before its span (`transcode::keyframe_back_ms`).
//! 4. The damage check of a chunked source, decoded once (issue 11, P2): when every chunk is
//!    stored and before any packaging task is handed out, the job compares the source's
//!    packets (`probe::packet_times`, no decoding) with the frame times the chunk tasks
//!    stored (`keys::chunk_frames`). Only when frames are missing does it decode the whole
//!    source (`probe::decode_check`), whose verdict fails the video naming the damaged span,
//!    or clears a false alarm. So a damaged middle still never reaches `ready`.
//! 5. Track attempts. Transient failures retry after exponential backoff up to `max_attempts`;
//!    permanent ones fail the video at once. A running task that reports no progress for
//!    `stuck_after_seconds` is reclaimed: cancelled on its worker and retried.
//! 6. Finalize: write the multivariant playlist (the commit point of `ready`), then report
//!    ready. Reports about attempts other than the current one are stale and ignored, so a late
//!    answer from a reclaimed attempt changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::actors::video::VideoMsg;
use crate::actors::worker_pool::PoolMsg;
use crate::actors::{Assignment, Ctx, TaskFailure, TaskKind, TaskReply, TaskSpec};
use crate::cluster::protocol::{Reply, Request, TaskReport};
use crate::media::ladder::{self, Rendition};
use crate::media::playlist::{self, RenditionOutput};
use crate::media::probe::{self, ProbeError, SourceInfo};
use crate::media::sniff::{self, Sniff};
use crate::media::transcode;
use crate::storage::events::NewEvent;
use crate::storage::keys;

/// The job actor.
pub struct JobActor;

/// Startup arguments. The pool and the video actor are passed in, so a test can put probe
/// actors in their place.
pub struct JobArgs {
    /// Node context.
    pub ctx: Ctx,
    /// The video to process.
    pub video_id: String,
    /// Where tasks go.
    pub pool: ActorRef<PoolMsg>,
    /// Whom to report plan, progress and the outcome to.
    pub video: ActorRef<VideoMsg>,
    /// The lease epoch the video actor holds; the multivariant playlist is written only while
    /// it is still the newest (fencing, design brief section 4).
    pub lease_epoch: u64,
}

/// Messages.
pub enum JobMsg {
    /// Begin or resume (sent to itself at start).
    Start,
    /// Internal: validation finished.
    Validated(Result<SourceInfo, ProbeError>),
    /// Internal: the damage check of a chunked source finished (step 4); `Ok` carries what
    /// it found, for the event log.
    DamageChecked(Result<String, ProbeError>),
    /// A worker began an attempt (starts the stuck-task clock).
    TaskStarted {
        /// The dispatching job instance ([`TaskSpec::instance`]; 0: unknown).
        instance: u64,
        /// Task key (rendition name).
        task: String,
        /// Attempt.
        attempt: u32,
        /// Node the worker runs on.
        node: String,
    },
    /// Seconds of output an attempt has written so far.
    Progress {
        /// The dispatching job instance (0: unknown).
        instance: u64,
        /// Task key.
        task: String,
        /// Attempt.
        attempt: u32,
        /// Output written so far, seconds.
        seconds: f64,
    },
    /// An attempt ended.
    TaskFinished {
        /// The dispatching job instance (0: unknown).
        instance: u64,
        /// Task key.
        task: String,
        /// Attempt.
        attempt: u32,
        /// The finished rendition (`None` for chunk and audio tasks), or why it failed.
        result: Box<Result<Option<RenditionOutput>, TaskFailure>>,
    },
    /// Internal: a backoff delay ran out; dispatch the next attempt.
    RetryDue {
        /// Task key.
        task: String,
    },
    /// Internal: the node an attempt was handed to did not take it (no connection, no
    /// answer, refused). The task goes elsewhere without using up an attempt (issue 9).
    HandOffFailed {
        /// Task key.
        task: String,
        /// The attempt that was not taken.
        attempt: u32,
        /// Why.
        why: String,
    },
    /// Internal: periodic check for stuck tasks.
    Tick,
    /// Observe the job.
    Snapshot(RpcReplyPort<JobSnapshot>),
    /// Fault injection for tests and `examples/`: panic in the handler, as a bug would.
    InjectPanic,
}
impl ractor::Message for JobMsg {}

impl From<TaskReport> for JobMsg {
    fn from(r: TaskReport) -> Self {
        match r {
            TaskReport::Started {
                instance,
                task,
                attempt,
                node,
                ..
            } => JobMsg::TaskStarted {
                instance,
                task,
                attempt,
                node,
            },
            TaskReport::Progress {
                instance,
                task,
                attempt,
                seconds,
                ..
            } => JobMsg::Progress {
                instance,
                task,
                attempt,
                seconds,
            },
            TaskReport::Finished {
                instance,
                task,
                attempt,
                result,
                ..
            } => JobMsg::TaskFinished {
                instance,
                task,
                attempt,
                result: Box::new(
                    result.map_err(|(permanent, message)| TaskFailure { permanent, message }),
                ),
            },
        }
    }
}

/// Where one task stands.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskStatus {
    /// Not dispatched yet: waiting for its inputs (or for the plan to dispatch it).
    Waiting,
    /// In the pool's queue.
    Queued,
    /// On a worker.
    Running {
        /// Output written, seconds.
        seconds: f64,
    },
    /// Waiting for its backoff delay.
    WaitingRetry,
    /// Outputs stored.
    Done,
    /// Gave up (the job fails).
    Failed,
}

/// One task as seen in a [`JobSnapshot`].
#[derive(Debug, Clone)]
pub struct TaskView {
    /// Task key (rendition name).
    pub task: String,
    /// Current attempt.
    pub attempt: u32,
    /// Status.
    pub status: TaskStatus,
}

/// What the job is doing.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    /// Whether validation has passed.
    pub validated: bool,
    /// Tasks by rendition, in ladder order.
    pub tasks: Vec<TaskView>,
    /// Renditions found already done at start (resumed, not redone).
    pub resumed: Vec<String>,
}

/// Attempts of one task handed out again (lost with their node, or not taken by it) before
/// the next such loss counts as a failed attempt: bounds the loop when no node takes it.
const HAND_OFF_LIMIT: u32 = 12;

struct Task {
    spec: TaskSpec,
    attempt: u32,
    /// The node the current attempt was handed to.
    node: String,
    /// That node's generation in the cluster view when it was handed the attempt: a change
    /// means the node went away (and may have restarted), losing the attempt.
    node_generation: u64,
    /// Attempts handed out again because their node was lost: they get a new attempt number
    /// (so the lost attempt's late reports and cancels match nothing) but do not count
    /// towards `max_attempts`.
    requeued: u32,
    /// Keys of the tasks whose outputs this one reads (a packaging task's chunks and audio).
    needs: Vec<String>,
    status: TaskStatus,
    last_heard: Instant,
    output: Option<RenditionOutput>,
}

/// Where the damage check of a chunked source stands (module docs, step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DamageCheck {
    /// Nothing to check here: no chunk tasks (a short source, checked at validation, or every
    /// rendition already stored), or the check passed. Packaging may start.
    Clear,
    /// Waiting for the last chunk.
    Waiting,
    /// Running; packaging waits for it.
    Running,
}

/// State.
pub struct JobState {
    ctx: Ctx,
    video_id: String,
    pool: ActorRef<PoolMsg>,
    video: ActorRef<VideoMsg>,
    lease_epoch: u64,
    /// This JobActor's instance ([`TaskSpec::instance`]): drawn at start, nonzero.
    instance: u64,
    source: Option<SourceInfo>,
    /// Rendition names in ladder order (the multivariant playlist's order).
    renditions: Vec<String>,
    order: Vec<String>,
    tasks: BTreeMap<String, Task>,
    resumed: Vec<String>,
    finished: bool,
    damage_check: DamageCheck,
    /// The running damage check's task, aborted (with its ffprobe) if the job stops first.
    damage_task: Option<tokio::task::AbortHandle>,
}

impl JobState {
    fn progress(&self) -> f64 {
        let Some(src) = &self.source else { return 0.0 };
        if self.tasks.is_empty() {
            return 0.0;
        }
        // Each task weighs the share of source it encodes; packaging (stream copy) weighs little.
        let weight = |t: &Task| match t.spec.kind {
            TaskKind::Package { .. } => 0.05,
            TaskKind::Audio { .. } => 0.2,
            _ => t.spec.span_seconds() / src.duration_seconds.max(0.001),
        };
        let (mut done, mut total) = (0.0, 0.0);
        for t in self.tasks.values() {
            let w = weight(t);
            total += w;
            done += w * match t.status {
                TaskStatus::Done => 1.0,
                TaskStatus::Running { seconds } => {
                    (seconds / t.spec.span_seconds().max(0.001)).min(0.99)
                }
                _ => 0.0,
            };
        }
        // Validation counts as the first 5 %.
        0.05 + 0.95 * done / total.max(0.001)
    }

    async fn event(&self, e: NewEvent) {
        self.ctx.events.append(e).await;
    }
}

async fn validate(ctx: Ctx, video_id: String) -> Result<SourceInfo, ProbeError> {
    let path = ctx
        .storage
        .source_path(&video_id, &ctx.scratch_dir)
        .await
        .map_err(|e| ProbeError::Tool(format!("cannot read the source: {e}")))?;
    let mut head = vec![0u8; sniff::SNIFF_BYTES];
    let n = {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| ProbeError::Tool(e.to_string()))?;
        let mut n = 0;
        loop {
            let k = f
                .read(&mut head[n..])
                .await
                .map_err(|e| ProbeError::Tool(e.to_string()))?;
            if k == 0 || n + k == head.len() {
                break n + k;
            }
            n += k;
        }
    };
    if let Sniff::NotVideo(reason) = sniff::sniff(&head[..n], n < head.len()) {
        return Err(ProbeError::Invalid(reason));
    }
    let info = probe::probe(&path, Duration::from_secs(300)).await?;
    if !is_chunked(&ctx.processing, info.duration_seconds) {
        probe::decode_check(
            &path,
            info.video_stream,
            info.video_start_seconds,
            Duration::from_secs(1800),
        )
        .await?;
    }
    Ok(info)
}

/// Whether a source of `duration_seconds` is encoded in chunks (longer than one chunk of
/// whole segments) rather than one whole-rendition task per rendition.
fn is_chunked(p: &crate::config::ProcessingConfig, duration_seconds: f64) -> bool {
    let per_chunk = (p.chunk_seconds / p.segment_seconds.max(1)).max(1);
    p.chunk_seconds > 0 && duration_seconds > (per_chunk * p.segment_seconds.max(1)) as f64
}

/// For each of a chunked video's `chunks` chunks, in order, the renditions of `pending` whose
/// encoded chunk (`keys::chunk`) is not among `stored` (keys under `work/{video_id}`): what
/// that chunk's task still has to encode. Every list empty means every chunk is stored.
fn chunks_to_run(
    video_id: &str,
    chunks: usize,
    pending: &[&Rendition],
    stored: &HashSet<String>,
) -> Vec<Vec<Rendition>> {
    (0..chunks)
        .map(|index| {
            pending
                .iter()
                .filter(|r| !stored.contains(&keys::chunk(video_id, &r.name, index)))
                .map(|r| (*r).clone())
                .collect()
        })
        .collect()
}

/// The keyframes of video stream `stream` of the source of `video_id` (seconds after the file's
/// first timestamp; `probe::keyframe_times`), for the chunks of a source without an index to
/// start decoding at the keyframe before their span (`transcode::keyframe_back_ms`). Empty
/// when they cannot be listed: the chunks then seek back a fixed
/// `transcode::SEEK_BACK_SECONDS`, as before, so this only costs time.
async fn keyframes(ctx: &Ctx, video_id: &str, stream: Option<u32>) -> Vec<f64> {
    let listed = match ctx.storage.source_path(video_id, &ctx.scratch_dir).await {
        Ok(path) => probe::keyframe_times(&path, stream, Duration::from_secs(300))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot read the source: {e}")),
    };
    listed.unwrap_or_else(|e| {
        tracing::warn!(video = %video_id, "listing the source's keyframes failed: {e}");
        Vec::new()
    })
}

/// The damage check of a chunked source (module docs, step 4): the frame times stored by
/// chunks `chunks` against the source's packets from `from` on (seconds after the file's first
/// timestamp: where the video starts, `SourceInfo::video_start_seconds`). Returns what it
/// found, for the event log.
///
/// Errors: [`ProbeError::Invalid`] naming the damaged span (from the full decode that
/// confirms it); [`ProbeError::Tool`] when the store or ffprobe fails.
async fn check_damage(
    ctx: Ctx,
    video_id: String,
    stream: Option<u32>,
    from: f64,
    chunks: Vec<usize>,
) -> Result<String, ProbeError> {
    let path = ctx
        .storage
        .source_path(&video_id, &ctx.scratch_dir)
        .await
        .map_err(|e| ProbeError::Tool(format!("cannot read the source: {e}")))?;
    let full = || probe::decode_check(&path, stream, from, Duration::from_secs(1800));
    let mut logs = Vec::new();
    for i in chunks {
        let times = ctx
            .storage
            .get_json::<Vec<f64>>(&keys::chunk_frames(&video_id, i))
            .await
            .map_err(|e| ProbeError::Tool(format!("reading the frame times of a chunk: {e}")))?;
        match times {
            Some(t) => logs.push(t),
            None => {
                // Encoded by a node that predates frame logs.
                full().await?;
                return Ok(format!(
                    "chunk {i} stored no frame times: the whole source was decoded; undamaged"
                ));
            }
        }
    }
    let Some(mut packets) =
        probe::packet_times(&path, stream, from, Duration::from_secs(300)).await?
    else {
        return Ok("the source's packets carry no timestamps: not judged".into());
    };
    packets.sort_by(f64::total_cmp);
    let frames: Vec<f64> = logs
        .iter()
        .flat_map(|log| probe::align_frames(log, &packets))
        .collect();
    let missed = probe::damaged_spans(&packets, &frames);
    if missed.is_empty() {
        return Ok(format!(
            "all {} video packets were decoded by the chunks",
            packets.len()
        ));
    }
    full().await?;
    Ok(format!(
        "the chunks decoded no frame at {:.2} s, but a whole decode of the source did: undamaged",
        missed[0].from
    ))
}

impl JobState {
    /// Whether a report from job instance `instance` is this job's (0: a node that predates
    /// instances, accepted). Reports of a dead instance are dropped.
    fn owns(&self, instance: u64) -> bool {
        instance == 0 || instance == self.instance
    }
}

impl JobActor {
    async fn fail(
        &self,
        myself: &ActorRef<JobMsg>,
        state: &mut JobState,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        state.finished = true;
        Self::cancel_live(state);
        state
            .event(NewEvent::video(&state.video_id, "job_failed").detail(reason.clone()))
            .await;
        // A failed video is never processed again: its intermediates (chunks and frame times
        // stored before, say, the damage check failed it) would only take space.
        let (storage, id) = (state.ctx.storage.clone(), state.video_id.clone());
        tokio::spawn(async move {
            if let Err(e) = storage.delete_prefix(&keys::work_prefix(&id)).await {
                tracing::warn!("removing the intermediates of failed video {id}: {e}");
            }
        });
        let _ = state.video.cast(VideoMsg::JobFailed { reason });
        myself.stop(None);
        Ok(())
    }

    /// The source is not a usable video (found by the check that logs `step`): log the step
    /// as `invalid` with the reason, then fail the video with it, never retried.
    async fn refuse(
        &self,
        myself: &ActorRef<JobMsg>,
        state: &mut JobState,
        step: &str,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        state
            .event(
                NewEvent::video(&state.video_id, step)
                    .outcome("invalid")
                    .detail(reason.clone()),
            )
            .await;
        self.fail(myself, state, reason).await
    }

    /// Cancel every attempt still queued or running, wherever it was handed.
    fn cancel_live(state: &JobState) {
        let live: Vec<(String, u32)> = state
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.status, TaskStatus::Queued | TaskStatus::Running { .. }))
            .map(|(n, t)| (n.clone(), t.attempt))
            .collect();
        for (task, attempt) in live {
            Self::cancel(state, &task, attempt);
        }
    }

    /// Cancel an attempt wherever it was handed.
    fn cancel(state: &JobState, task: &str, attempt: u32) {
        let Some(t) = state.tasks.get(task) else {
            return;
        };
        if t.node == state.ctx.node_id {
            let _ = state.pool.cast(PoolMsg::Cancel {
                video_id: state.video_id.clone(),
                task: task.to_string(),
                attempt,
            });
        } else {
            let (cluster, node) = (state.ctx.cluster.clone(), t.node.clone());
            let req = Request::CancelTask {
                video_id: state.video_id.clone(),
                task: task.to_string(),
                attempt,
            };
            tokio::spawn(async move {
                let _ = cluster.request(&node, &req, Duration::from_secs(5)).await;
            });
        }
    }

    /// The node for an attempt: tasks of one video spread over the live nodes (rendition `i`
    /// of video `v` goes to node `(hash(v) + i + attempt - 1) mod n`), and a retry moves to the
    /// next node.
    fn pick_node(state: &JobState, task: &str, attempt: u32) -> String {
        let live = state.ctx.cluster.live_nodes();
        if live.is_empty() {
            return state.ctx.node_id.clone();
        }
        let seed =
            u64::from_str_radix(&state.video_id[..8.min(state.video_id.len())], 16).unwrap_or(0);
        let idx = state.order.iter().position(|n| n == task).unwrap_or(0) as u64;
        let at = (seed + idx + attempt as u64 - 1) % live.len() as u64;
        live[at as usize].clone()
    }

    /// Hand the current attempt of `task` to a node's pool. Returns the node.
    fn dispatch(myself: &ActorRef<JobMsg>, state: &mut JobState, task: &str) -> String {
        let node = Self::pick_node(state, task, state.tasks.get(task).map_or(1, |t| t.attempt));
        let self_id = state.ctx.node_id.clone();
        let Some(t) = state.tasks.get_mut(task) else {
            return node;
        };
        t.status = TaskStatus::Queued;
        t.last_heard = Instant::now();
        t.node = node.clone();
        t.node_generation = state.ctx.cluster.generation(&node);
        if node == self_id {
            let _ = state.pool.cast(PoolMsg::Submit(Assignment {
                task: t.spec.clone(),
                attempt: t.attempt,
                reply: TaskReply::Local(myself.clone()),
            }));
            return node;
        }
        let (cluster, me, attempt) = (state.ctx.cluster.clone(), myself.clone(), t.attempt);
        let req = Request::SubmitTask {
            task: t.spec.clone(),
            attempt,
            job_node: self_id,
        };
        let (task, target) = (task.to_string(), node.clone());
        tokio::spawn(async move {
            match cluster.request(&target, &req, Duration::from_secs(5)).await {
                Ok(Reply::Ok) => {}
                other => {
                    let why = match other {
                        Err(e) => e,
                        Ok(r) => format!("{r:?}"),
                    };
                    let _ = me.cast(JobMsg::HandOffFailed {
                        task,
                        attempt,
                        why: format!("could not hand the task to node {target}: {why}"),
                    });
                }
            }
        });
        node
    }

    /// Plan, look for outputs already stored, dispatch what is missing.
    async fn plan(
        &self,
        myself: &ActorRef<JobMsg>,
        state: &mut JobState,
        source: SourceInfo,
    ) -> Result<(), ActorProcessingErr> {
        let renditions: Vec<Rendition> = ladder::plan(&state.ctx.processing.ladder, &source);
        let _ = state.video.cast(VideoMsg::Planned {
            source: source.clone(),
            renditions: renditions.clone(),
        });
        state.source = Some(source.clone());
        let p = &state.ctx.processing;
        let seg = p.segment_seconds;
        let per_chunk = (p.chunk_seconds / seg.max(1)).max(1);
        let chunked = is_chunked(p, source.duration_seconds);
        let chunks = transcode::plan_chunks(
            source.duration_seconds,
            seg,
            per_chunk,
            source.nominal_frame_rate,
        );
        let storage = state.ctx.storage.clone();
        let id = state.video_id.clone();
        let (epoch, instance) = (state.lease_epoch, state.instance);
        let input = transcode::InputMap::for_source(&source);
        let spec = |r: &Rendition, kind: TaskKind| TaskSpec {
            video_id: id.clone(),
            epoch,
            instance,
            rendition: r.clone(),
            kind,
            has_audio: source.has_audio,
            duration_seconds: source.duration_seconds,
            frame_rate: source.frame_rate,
            input: input.clone(),
        };
        // The graph: per rendition either one whole-rendition task, or the shared chunk tasks
        // (each decodes its span once and encodes every rendition that still needs it) and the
        // shared audio feeding the rendition's packaging task. Anything already stored counts
        // as done.
        let mut graph: Vec<(TaskSpec, Vec<String>, bool, Option<RenditionOutput>)> = Vec::new();
        let mut pending: Vec<&Rendition> = Vec::new();
        // A rendition is done when a complete attempt directory of it is stored: the one the
        // video's outputs already chose if they were (a job that committed and crashed before
        // `ready`), otherwise the first complete one.
        let chosen = storage.chosen_outputs(&id).await?.unwrap_or_default();
        let listed: Vec<String> = storage
            .list(&keys::video_prefix(&id))
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for r in &renditions {
            let output = match chosen.iter().find(|o| o.rendition.name == r.name) {
                Some(o) => Some(o.clone()),
                None => {
                    let dirs = keys::complete_rendition_dirs(
                        &id,
                        &r.name,
                        listed.iter().map(String::as_str),
                    );
                    match dirs.first() {
                        Some(dir) => storage
                            .get_json::<RenditionOutput>(&keys::rendition_info(&id, dir))
                            .await?
                            .map(|o| RenditionOutput {
                                dir: dir.clone(),
                                ..o
                            }),
                        None => None,
                    }
                }
            };
            if output.is_some() || !chunked {
                let done = output.is_some();
                graph.push((spec(r, TaskKind::Rendition), vec![], done, output));
            } else {
                pending.push(r);
            }
        }
        let mut chunk_keys = Vec::new();
        // What earlier attempts stored, in one listing: a job restarted after a crash looks
        // its chunks and audio up here instead of asking the store for each.
        let stored: HashSet<String> = if pending.is_empty() {
            HashSet::new()
        } else {
            storage
                .list(&keys::work_prefix(&id))
                .await?
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        if let Some(top) = pending.first() {
            state.damage_check = DamageCheck::Waiting;
            let to_run = chunks_to_run(&id, chunks.len(), &pending, &stored);
            // Listing an unindexed source's keyframes reads the whole file; only chunks still
            // to encode need them.
            let keyframes = if input.unindexed && to_run.iter().any(|m| !m.is_empty()) {
                keyframes(&state.ctx, &id, source.video_stream).await
            } else {
                Vec::new()
            };
            for (index, ((start_seconds, duration_seconds), missing)) in
                chunks.iter().copied().zip(to_run).enumerate()
            {
                let done = missing.is_empty();
                let first = missing.first().cloned().unwrap_or_else(|| (*top).clone());
                let t = spec(
                    &first,
                    TaskKind::Chunk {
                        index,
                        start_seconds,
                        duration_seconds,
                        renditions: missing,
                        keyframe_back_ms: transcode::keyframe_back_ms(
                            &input,
                            start_seconds,
                            &keyframes,
                        ),
                    },
                );
                chunk_keys.push(t.key());
                graph.push((t, vec![], done, None));
            }
        }
        for r in pending {
            let mut needs = chunk_keys.clone();
            let audio_kbps = source.has_audio.then_some(r.audio_kbps);
            if let Some(kbps) = audio_kbps {
                let t = spec(r, TaskKind::Audio { kbps });
                needs.push(t.key());
                if !graph.iter().any(|g| g.0.key() == t.key()) {
                    let done = stored.contains(&keys::audio(&id, kbps));
                    graph.push((t, vec![], done, None));
                }
            }
            graph.push((
                spec(
                    r,
                    TaskKind::Package {
                        chunks: chunks.len(),
                        chunk_seconds: chunks.iter().map(|c| c.1).collect(),
                        audio_kbps,
                    },
                ),
                needs,
                false,
                None,
            ));
        }
        state.renditions = renditions.iter().map(|r| r.name.clone()).collect();
        for (spec, needs, done, output) in graph {
            let key = spec.key();
            state.order.push(key.clone());
            state.tasks.insert(
                key.clone(),
                Task {
                    spec,
                    attempt: 1,
                    node: state.ctx.node_id.clone(),
                    node_generation: 0,
                    requeued: 0,
                    status: if done {
                        TaskStatus::Done
                    } else {
                        TaskStatus::Waiting
                    },
                    needs,
                    last_heard: Instant::now(),
                    output,
                },
            );
            if done {
                state.resumed.push(key.clone());
                state
                    .event(
                        NewEvent::video(&state.video_id, "task_skipped")
                            .task(&key, 0)
                            .detail("outputs already stored"),
                    )
                    .await;
            }
        }
        self.dispatch_ready(myself, state).await;
        self.maybe_finalize(myself, state).await
    }

    /// Dispatch every waiting task whose inputs are all done; packaging also waits for the
    /// damage check, which starts once every chunk is done.
    async fn dispatch_ready(&self, myself: &ActorRef<JobMsg>, state: &mut JobState) {
        let chunks_done = || {
            state.tasks.values().all(|t| {
                !matches!(t.spec.kind, TaskKind::Chunk { .. }) || t.status == TaskStatus::Done
            })
        };
        if state.damage_check == DamageCheck::Waiting && chunks_done() {
            state.damage_check = DamageCheck::Running;
            let chunks: Vec<usize> = state
                .tasks
                .values()
                .filter_map(|t| match t.spec.kind {
                    TaskKind::Chunk { index, .. } => Some(index),
                    _ => None,
                })
                .collect();
            let (ctx, id, me) = (state.ctx.clone(), state.video_id.clone(), myself.clone());
            let stream = state.source.as_ref().and_then(|s| s.video_stream);
            let from = state.source.as_ref().map_or(0.0, |s| s.video_start_seconds);
            let task = tokio::spawn(async move {
                let r = check_damage(ctx, id, stream, from, chunks).await;
                let _ = me.cast(JobMsg::DamageChecked(r));
            });
            state.damage_task = Some(task.abort_handle());
        }
        let checked = state.damage_check == DamageCheck::Clear;
        let ready: Vec<String> = state
            .order
            .iter()
            .filter(|k| {
                let t = &state.tasks[*k];
                t.status == TaskStatus::Waiting
                    && (checked || !matches!(t.spec.kind, TaskKind::Package { .. }))
                    && t.needs.iter().all(|n| {
                        state
                            .tasks
                            .get(n)
                            .is_some_and(|d| d.status == TaskStatus::Done)
                    })
            })
            .cloned()
            .collect();
        for key in ready {
            let attempt = state.tasks[&key].attempt;
            let node = Self::dispatch(myself, state, &key);
            state
                .event(
                    NewEvent::video(&state.video_id, "task_dispatched")
                        .task(&key, attempt)
                        .detail(format!("to node {node}")),
                )
                .await;
        }
    }

    async fn maybe_finalize(
        &self,
        myself: &ActorRef<JobMsg>,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        if state.finished || state.tasks.values().any(|t| t.status != TaskStatus::Done) {
            return Ok(());
        }
        let outputs: Vec<RenditionOutput> = state
            .renditions
            .iter()
            .filter_map(|r| state.tasks.get(r).and_then(|t| t.output.clone()))
            .collect();
        if !state
            .ctx
            .storage
            .lease_holds(&state.video_id, state.lease_epoch)
            .await?
        {
            // A newer owner exists (this node was fenced or the ring moved): stand down.
            state.finished = true;
            state
                .event(
                    NewEvent::video(&state.video_id, "finalize_fenced").detail(format!(
                        "multivariant playlist not written: lease epoch {} is no longer the newest",
                        state.lease_epoch
                    )),
                )
                .await;
            let _ = state.video.cast(VideoMsg::LeaseLost);
            myself.stop(None);
            return Ok(());
        }
        // Which attempt directory of each rendition the video is served from: created only if
        // absent, so it is chosen once; a job finding a choice already made (its own before a
        // crash, or another owner's) adopts it, and the multivariant playlist is written from
        // it. Attempts still running elsewhere write only their own directories.
        let outputs = state
            .ctx
            .storage
            .choose_outputs(&state.video_id, &outputs)
            .await?;
        let master = playlist::multivariant_playlist(&outputs);
        // The commit point: nothing streams before this object exists. Created only if absent,
        // so a committed multivariant playlist is never replaced; finding one already there
        // means this video was committed (by this job before a crash, or by another owner),
        // and the record's swap decides who writes `ready`.
        let created = state
            .ctx
            .storage
            .put_if_absent(&keys::multivariant(&state.video_id), Bytes::from(master))
            .await?;
        if !created {
            state
                .event(
                    NewEvent::video(&state.video_id, "commit_exists")
                        .detail("the multivariant playlist was already written; kept as it is"),
                )
                .await;
        }
        state.finished = true;
        state
            .event(NewEvent::video(&state.video_id, "job_finalized").outcome("ok"))
            .await;
        let chosen: Vec<String> = outputs.iter().map(|o| o.stored_dir().to_string()).collect();
        let _ = state.video.cast(VideoMsg::JobReady { outputs });
        // Directories no choice named, then intermediates (chunks, audio, attempt markers): no
        // longer needed once the segments are stored.
        let (storage, id) = (state.ctx.storage.clone(), state.video_id.clone());
        tokio::spawn(async move {
            let chosen: Vec<&str> = chosen.iter().map(String::as_str).collect();
            if let Err(e) = storage.sweep_after_commit(&id, &chosen).await {
                tracing::warn!("cleaning after the commit of {id}: {e}");
            }
        });
        myself.stop(None);
        Ok(())
    }

    /// Hand `task` out again after its node lost or refused `attempt`: a new attempt number
    /// (so the old attempt's late reports and cancels match nothing) that does not count
    /// towards `max_attempts`.
    async fn requeue(
        myself: &ActorRef<JobMsg>,
        state: &mut JobState,
        task: &str,
        attempt: u32,
        why: String,
    ) {
        if let Some(t) = state.tasks.get_mut(task) {
            t.attempt += 1;
            t.requeued += 1;
        }
        state
            .event(
                NewEvent::video(&state.video_id, "task_requeued")
                    .task(task, attempt)
                    .detail(why),
            )
            .await;
        Self::dispatch(myself, state, task);
    }

    async fn task_failed(
        &self,
        myself: &ActorRef<JobMsg>,
        state: &mut JobState,
        task: &str,
        failure: TaskFailure,
    ) -> Result<(), ActorProcessingErr> {
        let max = state.ctx.processing.max_attempts;
        let Some(t) = state.tasks.get_mut(task) else {
            return Ok(());
        };
        let attempt = t.attempt;
        if failure.is_superseded() {
            // A newer owner holds the video: this job was deposed. Nothing to retry; the
            // VideoActor checks its lease now and stands down (stopping this job).
            t.status = TaskStatus::Failed;
            state
                .event(
                    NewEvent::video(&state.video_id, "task_superseded")
                        .task(task, attempt)
                        .detail(failure.message.clone()),
                )
                .await;
            let _ = state.video.cast(VideoMsg::RenewLease);
            return Ok(());
        }
        if failure.is_store_unavailable() {
            // The store failed, not the task: retry after a backoff without using up an
            // attempt. The loop is bounded by the lease: an outage longer than its time to
            // live makes the VideoActor stand down, which stops this job (issue 9).
            t.requeued += 1;
            t.status = TaskStatus::WaitingRetry;
            let delay = state.ctx.processing.backoff(t.requeued);
            state
                .event(
                    NewEvent::video(&state.video_id, "task_store_unavailable")
                        .task(task, attempt)
                        .detail(format!(
                            "{}; retrying after {} ms",
                            failure.message,
                            delay.as_millis()
                        )),
                )
                .await;
            myself.send_after(delay, {
                let task = task.to_string();
                move || JobMsg::RetryDue { task }
            });
            return Ok(());
        }
        let counted = attempt.saturating_sub(t.requeued);
        t.status = TaskStatus::Failed;
        let outcome = if failure.permanent {
            "permanent"
        } else {
            "transient"
        };
        state
            .event(
                NewEvent::video(&state.video_id, "task_failed")
                    .task(task, attempt)
                    .outcome(outcome)
                    .detail(failure.message.clone()),
            )
            .await;
        if failure.permanent {
            return self.fail(myself, state, failure.message).await;
        }
        if counted >= max {
            let reason = format!(
                "processing rendition {task} failed {counted} times; last error: {}",
                failure.message
            );
            return self.fail(myself, state, reason).await;
        }
        let delay = state.ctx.processing.backoff(attempt);
        if let Some(t) = state.tasks.get_mut(task) {
            t.status = TaskStatus::WaitingRetry;
        }
        state
            .event(
                NewEvent::video(&state.video_id, "task_retry_scheduled")
                    .task(task, attempt + 1)
                    .detail(format!("after {} ms", delay.as_millis())),
            )
            .await;
        myself.send_after(delay, {
            let task = task.to_string();
            move || JobMsg::RetryDue { task }
        });
        Ok(())
    }
}

impl Actor for JobActor {
    type Msg = JobMsg;
    type State = JobState;
    type Arguments = JobArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JobMsg>,
        args: JobArgs,
    ) -> Result<JobState, ActorProcessingErr> {
        myself.send_message(JobMsg::Start)?;
        let every = (args.ctx.processing.stuck_after() / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        myself.send_interval(every, || JobMsg::Tick);
        Ok(JobState {
            ctx: args.ctx,
            video_id: args.video_id,
            pool: args.pool,
            video: args.video,
            lease_epoch: args.lease_epoch,
            instance: rand::random::<u64>().max(1),
            source: None,
            renditions: Vec::new(),
            order: Vec::new(),
            tasks: BTreeMap::new(),
            resumed: Vec::new(),
            finished: false,
            damage_check: DamageCheck::Clear,
            damage_task: None,
        })
    }

    /// Stopped before it finished (its VideoActor stood down, handed the video off or is
    /// shutting down): cancel every attempt still queued or running, on whichever node it
    /// was handed to, so a deposed job's tasks stop instead of running to their next refused
    /// write (issue 9). A damage check still running is aborted, whatever the reason.
    async fn post_stop(
        &self,
        _myself: ActorRef<JobMsg>,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(check) = state.damage_task.take() {
            check.abort();
        }
        if state.finished {
            return Ok(());
        }
        Self::cancel_live(state);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<JobMsg>,
        msg: JobMsg,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        if state.finished {
            if let JobMsg::Snapshot(reply) = msg {
                let _ = reply.send(snapshot(state));
            }
            return Ok(());
        }
        match msg {
            JobMsg::Start => {
                let record = state.ctx.storage.load_record(&state.video_id).await?;
                match record.and_then(|r| r.source) {
                    Some(source) => self.plan(&myself, state, source).await?,
                    None => {
                        let (ctx, id, me) =
                            (state.ctx.clone(), state.video_id.clone(), myself.clone());
                        tokio::spawn(async move {
                            let _ = me.cast(JobMsg::Validated(validate(ctx, id).await));
                        });
                    }
                }
            }
            JobMsg::Validated(Ok(source)) => {
                state
                    .event(
                        NewEvent::video(&state.video_id, "validated")
                            .outcome("ok")
                            .detail(format!(
                                "{}x{} {} {:.2}s audio={}",
                                source.width,
                                source.height,
                                source.video_codec,
                                source.duration_seconds,
                                source.has_audio
                            )),
                    )
                    .await;
                self.plan(&myself, state, source).await?;
            }
            JobMsg::Validated(Err(ProbeError::Invalid(reason))) => {
                self.refuse(&myself, state, "validated", reason).await?;
            }
            JobMsg::Validated(Err(tool @ ProbeError::Tool(_))) => {
                // Not the source's fault: crash so the supervisor restarts the job (bounded).
                return Err(tool.into());
            }
            JobMsg::DamageChecked(Ok(found)) => {
                state.damage_check = DamageCheck::Clear;
                state
                    .event(
                        NewEvent::video(&state.video_id, "damage_checked")
                            .outcome("ok")
                            .detail(found),
                    )
                    .await;
                self.dispatch_ready(&myself, state).await;
            }
            JobMsg::DamageChecked(Err(ProbeError::Invalid(reason))) => {
                self.refuse(&myself, state, "damage_checked", reason)
                    .await?;
            }
            JobMsg::DamageChecked(Err(tool @ ProbeError::Tool(_))) => {
                // As in validation: a restarted job checks again.
                return Err(tool.into());
            }
            JobMsg::TaskStarted {
                instance,
                task,
                attempt,
                node,
            } => {
                if !state.owns(instance) {
                    return Ok(());
                }
                if let Some(t) = state.tasks.get_mut(&task) {
                    if t.attempt == attempt && t.status == TaskStatus::Queued {
                        t.status = TaskStatus::Running { seconds: 0.0 };
                        t.last_heard = Instant::now();
                        state
                            .event(
                                NewEvent::video(&state.video_id, "task_started")
                                    .task(&task, attempt)
                                    .detail(format!("on node {node}")),
                            )
                            .await;
                    }
                }
            }
            JobMsg::Progress {
                instance,
                task,
                attempt,
                seconds,
            } => {
                if !state.owns(instance) {
                    return Ok(());
                }
                if let Some(t) = state.tasks.get_mut(&task) {
                    if t.attempt == attempt && matches!(t.status, TaskStatus::Running { .. }) {
                        // Negative: bytes moving (a download, an upload), no new output.
                        if seconds >= 0.0 {
                            t.status = TaskStatus::Running { seconds };
                        }
                        t.last_heard = Instant::now();
                    }
                }
                let _ = state.video.cast(VideoMsg::Progress(state.progress()));
            }
            JobMsg::TaskFinished {
                instance,
                task,
                attempt,
                result,
            } => {
                if !state.owns(instance) {
                    return Ok(());
                }
                let current = state.tasks.get(&task).is_some_and(|t| {
                    t.attempt == attempt
                        && matches!(t.status, TaskStatus::Queued | TaskStatus::Running { .. })
                });
                if !current {
                    return Ok(());
                }
                match *result {
                    Ok(output) => {
                        if let Some(t) = state.tasks.get_mut(&task) {
                            t.status = TaskStatus::Done;
                            t.output = output;
                        }
                        state
                            .event(
                                NewEvent::video(&state.video_id, "task_succeeded")
                                    .task(&task, attempt)
                                    .outcome("ok"),
                            )
                            .await;
                        let _ = state.video.cast(VideoMsg::Progress(state.progress()));
                        self.dispatch_ready(&myself, state).await;
                        self.maybe_finalize(&myself, state).await?;
                    }
                    Err(failure) => self.task_failed(&myself, state, &task, failure).await?,
                }
            }
            JobMsg::RetryDue { task } => {
                if let Some(t) = state.tasks.get_mut(&task) {
                    if t.status == TaskStatus::WaitingRetry {
                        t.attempt += 1;
                        let attempt = t.attempt;
                        let node = Self::dispatch(&myself, state, &task);
                        state
                            .event(
                                NewEvent::video(&state.video_id, "task_dispatched")
                                    .task(&task, attempt)
                                    .detail(format!("to node {node}")),
                            )
                            .await;
                    }
                }
            }
            JobMsg::Tick => {
                let deadline = state.ctx.processing.stuck_after();
                let cluster = &state.ctx.cluster;
                // A task whose node left the cluster, or went away and came back (a restart
                // loses its queue), is handed out again without using up an attempt: the
                // infrastructure failed, not the task (issue 9). One that runs and has
                // reported nothing for `stuck_after` (a hung ffmpeg or worker) is reclaimed
                // as a failed attempt.
                let mut lost: Vec<(String, u32, String)> = Vec::new();
                let mut stuck: Vec<(String, u32, String)> = Vec::new();
                for (n, t) in &state.tasks {
                    let active =
                        matches!(t.status, TaskStatus::Queued | TaskStatus::Running { .. });
                    if !active {
                        continue;
                    }
                    if !cluster.is_live(&t.node) {
                        lost.push((
                            n.clone(),
                            t.attempt,
                            format!("node {} left the cluster", t.node),
                        ));
                    } else if cluster.generation(&t.node) != t.node_generation {
                        lost.push((
                            n.clone(),
                            t.attempt,
                            format!(
                                "node {} went away and came back since it was handed the task",
                                t.node
                            ),
                        ));
                    } else if matches!(t.status, TaskStatus::Running { .. })
                        && t.last_heard.elapsed() > deadline
                    {
                        let why = format!(
                            "no progress for {} s on node {}",
                            deadline.as_secs_f64(),
                            t.node
                        );
                        stuck.push((n.clone(), t.attempt, why));
                    }
                }
                // Before blaming tasks for silence, make sure this job still owns the video: a
                // node that was itself frozen (SIGSTOP, a VM pause) wakes to see every task
                // silent, while a newer owner has finished the work. Then it stands down
                // instead of using up attempts (found by the chaos suite).
                if !(lost.is_empty() && stuck.is_empty()) && state.lease_epoch != 0 {
                    match state
                        .ctx
                        .storage
                        .lease_holds(&state.video_id, state.lease_epoch)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = state.video.cast(VideoMsg::RenewLease);
                            return Ok(());
                        }
                        // The store cannot say: decide at the next tick.
                        Err(_) => return Ok(()),
                    }
                }
                for (task, attempt, why) in lost {
                    Self::cancel(state, &task, attempt);
                    Self::requeue(&myself, state, &task, attempt, why).await;
                }
                for (task, attempt, why) in stuck {
                    Self::cancel(state, &task, attempt);
                    state
                        .event(
                            NewEvent::video(&state.video_id, "task_reclaimed")
                                .task(&task, attempt)
                                .detail(why.clone()),
                        )
                        .await;
                    self.task_failed(
                        &myself,
                        state,
                        &task,
                        TaskFailure::transient(format!("{why} (reclaimed)")),
                    )
                    .await?;
                    if state.finished {
                        break;
                    }
                }
            }
            JobMsg::HandOffFailed { task, attempt, why } => {
                let Some(t) = state.tasks.get_mut(&task) else {
                    return Ok(());
                };
                if state.finished || t.attempt != attempt || t.status != TaskStatus::Queued {
                    return Ok(());
                }
                if t.requeued >= HAND_OFF_LIMIT {
                    // No node takes it: that is the task failing after all.
                    return self
                        .task_failed(&myself, state, &task, TaskFailure::transient(why))
                        .await;
                }
                Self::requeue(&myself, state, &task, attempt, why).await;
            }
            JobMsg::Snapshot(reply) => {
                let _ = reply.send(snapshot(state));
            }
            JobMsg::InjectPanic => panic!("injected fault: JobActor panics mid-job"),
        }
        Ok(())
    }
}

fn snapshot(state: &JobState) -> JobSnapshot {
    JobSnapshot {
        validated: state.source.is_some(),
        tasks: state
            .order
            .iter()
            .map(|n| {
                let t = &state.tasks[n];
                TaskView {
                    task: n.clone(),
                    attempt: t.attempt,
                    status: t.status.clone(),
                }
            })
            .collect(),
        resumed: state.resumed.clone(),
    }
}

#[cfg(test)]
mod tests {
    //! The job against probe actors in place of the pool and the video actor: every assertion is
    //! on a message that arrived (or did not, within a deadline); nothing sleeps.

    use std::sync::Arc;
    use std::time::Duration;

    use ractor::{Actor, ActorRef};
    use tokio::sync::mpsc;

    use super::*;
    use crate::actors::NodeContext;
    use crate::config::{ProcessingConfig, RungConfig, StorageLocation};
    use crate::model::VideoRecord;

    use crate::storage::{Storage, StorageError};

    use crate::actors::testing::{next, probe};

    /// A restarted job runs only the chunks an earlier attempt did not store, and for each
    /// only the renditions missing; keys of other videos, other renditions or other files
    /// under `work/` count for nothing.
    #[test]
    fn a_restarted_job_runs_only_the_chunks_not_stored() {
        let id = "0123456789abcdef0123456789abcdef";
        let rung = |name: &str| Rendition {
            name: name.into(),
            width: 640,
            height: 360,
            video_kbps: 800,
            audio_kbps: 64,
        };
        let (hi, lo) = (rung("720p"), rung("360p"));
        let pending = [&hi, &lo];
        let mut stored: HashSet<String> = HashSet::new();
        let names = |m: &[Vec<Rendition>]| -> Vec<Vec<String>> {
            m.iter()
                .map(|c| c.iter().map(|r| r.name.clone()).collect())
                .collect()
        };
        assert_eq!(
            names(&chunks_to_run(id, 2, &pending, &stored)),
            [vec!["720p", "360p"], vec!["720p", "360p"]]
        );
        stored.insert(keys::chunk(id, "720p", 0));
        stored.insert(keys::chunk(id, "360p", 0));
        stored.insert(keys::chunk(id, "360p", 1));
        stored.insert(keys::chunk("fedcba9876543210fedcba9876543210", "720p", 1));
        stored.insert(keys::chunk(id, "1080p", 1));
        stored.insert(keys::chunk_frames(id, 1));
        assert_eq!(
            names(&chunks_to_run(id, 2, &pending, &stored)),
            [vec![], vec!["720p"]]
        );
        stored.insert(keys::chunk(id, "720p", 1));
        assert!(chunks_to_run(id, 2, &pending, &stored)
            .iter()
            .all(Vec::is_empty));
    }

    struct Harness {
        ctx: Arc<NodeContext>,
        job: ActorRef<JobMsg>,
        pool: mpsc::UnboundedReceiver<PoolMsg>,
        video: mpsc::UnboundedReceiver<VideoMsg>,
    }

    /// A job for a video whose record already holds its probe (so no ffprobe runs) and a
    /// two-rendition plan.
    async fn harness(tune: impl FnOnce(&mut ProcessingConfig)) -> Harness {
        let scratch = tempfile::tempdir().unwrap().keep();
        let ctx = NodeContext::for_tests(
            "n",
            Storage::open(&StorageLocation::Memory).unwrap(),
            &scratch,
        );
        harness_with(ctx, tune).await
    }

    /// [`harness`] on a given node context (a test's own cluster view).
    async fn harness_with(ctx: NodeContext, tune: impl FnOnce(&mut ProcessingConfig)) -> Harness {
        let mut processing = ProcessingConfig {
            max_attempts: 3,
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            stuck_after_seconds: 1,
            ladder: vec![
                RungConfig {
                    name: "720p".into(),
                    height: 720,
                    video_kbps: 2000,
                    audio_kbps: 96,
                },
                RungConfig {
                    name: "360p".into(),
                    height: 360,
                    video_kbps: 600,
                    audio_kbps: 64,
                },
            ],
            ..Default::default()
        };
        tune(&mut processing);
        let ctx = Arc::new(NodeContext { processing, ..ctx });
        let id = "0123456789abcdef0123456789abcdef";
        let mut record = VideoRecord::uploaded(id.into(), "00".into(), 1, "default".into(), None);
        record.source = Some(SourceInfo::example());
        assert!(ctx.storage.create_record(&record).await.unwrap());
        let (pool_ref, pool) = probe::<PoolMsg>().await;
        let (video_ref, video) = probe::<VideoMsg>().await;
        let (job, _) = Actor::spawn(
            None,
            JobActor,
            JobArgs {
                ctx: ctx.clone(),
                video_id: id.into(),
                pool: pool_ref,
                video: video_ref,
                lease_epoch: 0,
            },
        )
        .await
        .unwrap();
        Harness {
            ctx,
            job,
            pool,
            video,
        }
    }

    async fn submitted(h: &mut Harness) -> Assignment {
        loop {
            if let PoolMsg::Submit(a) = next(&mut h.pool, "Submit").await {
                return a;
            }
        }
    }

    fn output(a: &Assignment) -> Box<Result<Option<RenditionOutput>, TaskFailure>> {
        Box::new(Ok(Some(RenditionOutput {
            rendition: a.task.rendition.clone(),
            codecs: "avc1.4d401f".into(),
            frame_rate: 30.0,
            init_bytes: 1,
            segments: vec![playlist::SegmentInfo {
                duration_seconds: 4.0,
                bytes: 1000,
            }],
            dir: attempt_dir(a),
        })))
    }

    /// The directory a worker stores attempt `a`'s rendition in.
    fn attempt_dir(a: &Assignment) -> String {
        keys::attempt_dir(
            &a.key(),
            &keys::attempt_token(a.task.epoch, a.task.instance, a.attempt),
        )
    }

    /// Store `a`'s rendition as a worker would (its `rendition.json`, then the media playlist
    /// that marks its directory complete), plus a segment.
    async fn store_as_worker(h: &Harness, a: &Assignment) -> RenditionOutput {
        let id = "0123456789abcdef0123456789abcdef";
        let Ok(Some(out)) = *output(a) else {
            unreachable!()
        };
        let s = &h.ctx.storage;
        s.put(&keys::rendition_file(id, &out.dir, "00000.m4s"), "s".into())
            .await
            .unwrap();
        s.put_json(&keys::rendition_info(id, &out.dir), &out)
            .await
            .unwrap();
        s.put(
            &keys::rendition_file(id, &out.dir, playlist::MEDIA_PLAYLIST_NAME),
            "x".into(),
        )
        .await
        .unwrap();
        out
    }

    /// A worker on node `n` says it started `a`.
    fn started(h: &Harness, a: &Assignment) {
        h.job
            .cast(JobMsg::TaskStarted {
                instance: a.task.instance,
                task: a.key(),
                attempt: a.attempt,
                node: "n".into(),
            })
            .unwrap();
    }

    fn finish(
        h: &Harness,
        a: &Assignment,
        result: Box<Result<Option<RenditionOutput>, TaskFailure>>,
    ) {
        h.job
            .cast(JobMsg::TaskFinished {
                instance: a.task.instance,
                task: a.key(),
                attempt: a.attempt,
                result,
            })
            .unwrap();
    }

    async fn outcome(h: &mut Harness) -> VideoMsg {
        loop {
            match next(&mut h.video, "an outcome").await {
                m @ (VideoMsg::JobReady { .. } | VideoMsg::JobFailed { .. }) => return m,
                _ => continue,
            }
        }
    }

    /// Issue 9: a node that does not take a task (here a live peer with no connection) does
    /// not use up the task's attempts: with one attempt allowed, the job still finishes on the
    /// node that takes the tasks.
    #[tokio::test]
    async fn a_task_a_node_does_not_take_is_handed_elsewhere_without_using_an_attempt() {
        let scratch = tempfile::tempdir().unwrap().keep();
        let mut ctx = NodeContext::for_tests(
            "n",
            Storage::open(&StorageLocation::Memory).unwrap(),
            &scratch,
        );
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        ctx.cluster = crate::cluster::Cluster::new(
            "n",
            vec![("n".into(), addr, None), ("m".into(), addr, None)],
        );
        assert!(ctx.cluster.set_live("m", true));
        let mut h = harness_with(ctx, |p| p.max_attempts = 1).await;
        let mut finished = 0;
        while finished < 2 {
            let a = submitted(&mut h).await;
            finish(&h, &a, output(&a));
            finished += 1;
        }
        assert!(matches!(outcome(&mut h).await, VideoMsg::JobReady { .. }));
        let kinds = h
            .ctx
            .events
            .for_video("0123456789abcdef0123456789abcdef")
            .await
            .unwrap();
        assert!(
            kinds.iter().any(|e| e.kind == "task_requeued"),
            "some task went to m first: {kinds:?}"
        );
        assert!(!kinds.iter().any(|e| e.kind == "task_failed"), "{kinds:?}");
    }

    #[tokio::test]
    async fn transient_failure_is_retried_after_backoff_then_the_job_finalizes() {
        let mut h = harness(|_| {}).await;
        let a = submitted(&mut h).await;
        let b = submitted(&mut h).await;
        assert_eq!((a.attempt, b.attempt), (1, 1));
        let failed_at = tokio::time::Instant::now();
        finish(&h, &a, Box::new(Err(TaskFailure::transient("disk full"))));
        let retry = submitted(&mut h).await;
        assert_eq!((retry.key(), retry.attempt), (a.key(), 2));
        assert!(
            failed_at.elapsed() >= Duration::from_millis(100),
            "waited the backoff"
        );
        // A late answer from the failed attempt is stale and ignored.
        finish(&h, &a, output(&a));
        finish(&h, &b, output(&b));
        finish(&h, &retry, output(&retry));
        match outcome(&mut h).await {
            VideoMsg::JobReady { outputs } => assert_eq!(outputs.len(), 2),
            _ => panic!("expected ready"),
        }
        let master = h
            .ctx
            .storage
            .get(&keys::multivariant("0123456789abcdef0123456789abcdef"))
            .await;
        assert!(
            master.unwrap().is_some(),
            "the multivariant playlist is the commit point"
        );
    }

    /// Issue 9: a store outage is the infrastructure failing, not the task. With one attempt
    /// allowed, a task whose store writes failed five times in a row is still retried (after
    /// a backoff, on tokio's paused clock), and the video ends ready, with no attempt used up.
    #[tokio::test(start_paused = true)]
    async fn a_store_outage_uses_up_no_attempts_and_retries_after_a_backoff() {
        let mut h = harness(|p| p.max_attempts = 1).await;
        let a = submitted(&mut h).await;
        let b = submitted(&mut h).await;
        let mut current = a.clone();
        for _ in 0..5 {
            let failed_at = tokio::time::Instant::now();
            let down = StorageError::Backend("the object store did not answer within 10 s".into());
            finish(
                &h,
                &current,
                Box::new(Err(TaskFailure::store_unavailable(
                    "storing a segment",
                    &down,
                ))),
            );
            let retry = submitted(&mut h).await;
            assert_eq!(retry.key(), a.key());
            assert!(retry.attempt > current.attempt, "a new attempt number");
            assert!(
                failed_at.elapsed() >= Duration::from_millis(100),
                "after a backoff"
            );
            current = retry;
        }
        finish(&h, &b, output(&b));
        finish(&h, &current, output(&current));
        assert!(matches!(outcome(&mut h).await, VideoMsg::JobReady { .. }));
        let kinds: Vec<String> = h
            .ctx
            .events
            .for_video("0123456789abcdef0123456789abcdef")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| *k == "task_store_unavailable")
                .count(),
            5
        );
        assert!(!kinds.iter().any(|k| k == "task_failed"), "{kinds:?}");
    }

    #[tokio::test]
    async fn permanent_failure_fails_the_video_at_once_and_cancels_the_rest() {
        let mut h = harness(|_| {}).await;
        let a = submitted(&mut h).await;
        let _b = submitted(&mut h).await;
        let bad = TaskFailure {
            permanent: true,
            message: "the source cannot be decoded".into(),
        };
        finish(&h, &a, Box::new(Err(bad)));
        match outcome(&mut h).await {
            VideoMsg::JobFailed { reason } => assert!(reason.contains("cannot be decoded")),
            _ => panic!("expected failed"),
        }
        let mut cancels = 0;
        while let Ok(m) = h.pool.try_recv() {
            match m {
                PoolMsg::Submit(_) => panic!("a permanent failure is never retried"),
                PoolMsg::Cancel { .. } => cancels += 1,
                _ => {}
            }
        }
        assert_eq!(cancels, 1, "the other rendition's task is cancelled");
    }

    /// Issue 9: a worker that finds a newer lease epoch stores nothing and says so; the job
    /// neither retries nor counts it, and asks its VideoActor to check the lease (which then
    /// stands down).
    #[tokio::test]
    async fn a_superseded_task_is_not_retried_and_the_video_checks_its_lease() {
        let mut h = harness(|p| p.max_attempts = 1).await;
        let a = submitted(&mut h).await;
        let _b = submitted(&mut h).await;
        finish(&h, &a, Box::new(Err(TaskFailure::superseded("v", 1))));
        loop {
            match next(&mut h.video, "a lease check").await {
                VideoMsg::RenewLease => break,
                VideoMsg::JobFailed { reason } => panic!("failed the video: {reason}"),
                _ => continue,
            }
        }
        while let Ok(m) = h.pool.try_recv() {
            if let PoolMsg::Submit(s) = m {
                panic!("a superseded task is never retried: {}", s.key());
            }
        }
    }

    /// Issue 9: a restarted job numbers attempts from 1 again, so a dead instance's report of
    /// (task, attempt 1) used to count as current. Reports name their job instance; another
    /// instance's are dropped.
    #[tokio::test]
    async fn a_report_from_another_job_instance_is_dropped() {
        let mut h = harness(|p| p.max_attempts = 1).await;
        let a = submitted(&mut h).await;
        let _b = submitted(&mut h).await;
        assert_ne!(a.task.instance, 0, "tasks name their job instance");
        let mut stale = a.clone();
        stale.task.instance = a.task.instance.wrapping_add(1).max(1);
        // The dead instance's failure of "attempt 1" would fail the video (one attempt).
        finish(
            &h,
            &stale,
            Box::new(Err(TaskFailure::transient("from a dead job"))),
        );
        // This instance's own report is still current: a permanent failure fails the video
        // with its own reason, not the stale one's.
        let own = TaskFailure {
            permanent: true,
            message: "the current attempt failed".into(),
        };
        finish(&h, &a, Box::new(Err(own)));
        match outcome(&mut h).await {
            VideoMsg::JobFailed { reason } => {
                assert!(reason.contains("the current attempt failed"), "{reason}")
            }
            _ => panic!("expected failed"),
        }
    }

    /// Issue 9: a job stopped before it finished (stand-down, hand-off) cancels its attempts
    /// wherever they were handed, instead of leaving them to run.
    #[tokio::test]
    async fn a_job_stopped_mid_way_cancels_its_attempts() {
        let mut h = harness(|_| {}).await;
        let a = submitted(&mut h).await;
        let b = submitted(&mut h).await;
        started(&h, &a);
        h.job.stop(Some("stood down".into()));
        let mut cancelled = std::collections::BTreeSet::new();
        while cancelled.len() < 2 {
            if let PoolMsg::Cancel { task, attempt, .. } = next(&mut h.pool, "a cancel").await {
                assert_eq!(attempt, 1);
                cancelled.insert(task);
            }
        }
        assert_eq!(cancelled, [a.key(), b.key()].into_iter().collect());
    }

    #[tokio::test]
    async fn attempts_run_out_after_max_attempts() {
        let mut h = harness(|p| p.max_attempts = 2).await;
        let a = submitted(&mut h).await;
        let _b = submitted(&mut h).await;
        finish(&h, &a, Box::new(Err(TaskFailure::transient("io"))));
        let a2 = submitted(&mut h).await;
        finish(&h, &a2, Box::new(Err(TaskFailure::transient("io again"))));
        match outcome(&mut h).await {
            VideoMsg::JobFailed { reason } => {
                assert!(
                    reason.contains("failed 2 times") && reason.contains("io again"),
                    "{reason}"
                )
            }
            _ => panic!("expected failed"),
        }
    }

    #[tokio::test]
    async fn a_task_that_stops_reporting_progress_is_reclaimed_and_redispatched() {
        let mut h = harness(|_| {}).await;
        let a = submitted(&mut h).await;
        // Queued tasks are never reclaimed: only once a worker says it started.
        started(&h, &a);
        let since = tokio::time::Instant::now();
        let (mut cancelled, mut resubmitted) = (false, None);
        while resubmitted.is_none() {
            match next(&mut h.pool, "reclaim").await {
                PoolMsg::Cancel { task, attempt, .. } if task == a.key() && attempt == 1 => {
                    cancelled = true
                }
                PoolMsg::Submit(s) if s.key() == a.key() => resubmitted = Some(s),
                _ => {}
            }
        }
        assert!(cancelled, "the stuck attempt is cancelled on its worker");
        assert_eq!(resubmitted.unwrap().attempt, 2);
        assert!(
            since.elapsed() >= Duration::from_secs(1),
            "not before the deadline"
        );
        let snap = ractor::call!(h.job, JobMsg::Snapshot).unwrap();
        let other = snap.tasks.iter().find(|t| t.task != a.key()).unwrap();
        assert_eq!(
            (other.attempt, &other.status),
            (1, &TaskStatus::Queued),
            "queued task untouched"
        );
        let events = h
            .ctx
            .events
            .for_video("0123456789abcdef0123456789abcdef")
            .await
            .unwrap();
        assert!(events.iter().any(|e| e.kind == "task_reclaimed"));
    }

    /// Issue 9: a task that is downloading a large source reports bytes, not output seconds;
    /// that keeps it alive past `stuck_after` without moving its progress.
    #[tokio::test(start_paused = true)]
    async fn a_task_moving_bytes_is_not_reclaimed_as_stuck() {
        let mut h = harness(|_| {}).await;
        let a = submitted(&mut h).await;
        started(&h, &a);
        let progress = |seconds: f64| JobMsg::Progress {
            instance: a.task.instance,
            task: a.key(),
            attempt: 1,
            seconds,
        };
        h.job.cast(progress(2.0)).unwrap();
        // Three times `stuck_after` (1 s) of bytes moving, a report every 300 ms.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(300)).await;
            h.job.cast(progress(-1.0)).unwrap();
        }
        let snap = ractor::call!(h.job, JobMsg::Snapshot).unwrap();
        let t = snap.tasks.iter().find(|t| t.task == a.key()).unwrap();
        assert_eq!(
            (t.attempt, &t.status),
            (1, &TaskStatus::Running { seconds: 2.0 }),
            "alive, progress kept"
        );
        while let Ok(m) = h.pool.try_recv() {
            assert!(
                !matches!(m, PoolMsg::Cancel { .. }),
                "nothing was reclaimed"
            );
        }
    }

    #[tokio::test]
    async fn a_restarted_job_skips_renditions_already_stored() {
        let mut h = harness(|_| {}).await;
        let a = submitted(&mut h).await;
        let b = submitted(&mut h).await;
        // Store one rendition's outputs as a worker would, then crash the job.
        let id = "0123456789abcdef0123456789abcdef";
        let stored = store_as_worker(&h, &a).await;
        h.job.stop(None);
        let (pool_ref, mut pool) = probe::<PoolMsg>().await;
        let (video_ref, _video) = probe::<VideoMsg>().await;
        let (job, _) = Actor::spawn(
            None,
            JobActor,
            JobArgs {
                ctx: h.ctx.clone(),
                video_id: id.into(),
                pool: pool_ref,
                video: video_ref,
                lease_epoch: 0,
            },
        )
        .await
        .unwrap();
        let resubmitted = loop {
            if let PoolMsg::Submit(s) = next(&mut pool, "Submit").await {
                break s;
            }
        };
        assert_eq!(
            resubmitted.key(),
            b.key(),
            "only the missing rendition runs again"
        );
        let snap = ractor::call!(job, JobMsg::Snapshot).unwrap();
        assert_eq!(snap.resumed, vec![a.key().to_string()]);
        // The new instance's attempt of the other rendition finishes: the choice names the
        // first instance's directory for the resumed rendition, and the new one's for the rest.
        job.cast(JobMsg::TaskFinished {
            instance: resubmitted.task.instance,
            task: resubmitted.key(),
            attempt: resubmitted.attempt,
            result: output(&resubmitted),
        })
        .unwrap();
        let chosen = wait_for_choice(&h, id).await;
        let dirs: Vec<&str> = chosen.iter().map(|o| o.stored_dir()).collect();
        assert_eq!(
            dirs,
            vec![stored.dir.as_str(), attempt_dir(&resubmitted).as_str()]
        );
    }

    async fn wait_for_choice(h: &Harness, id: &str) -> Vec<RenditionOutput> {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = h.ctx.storage.chosen_outputs(id).await.unwrap() {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "no outputs were chosen"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Issue 9: outputs are chosen once. A job that finds a choice already made (another
    /// owner's job committed the video, or this one did before a crash) serves the chosen
    /// directories, not its own, writes the multivariant playlist from them, and deletes its
    /// own directories, which no commit names.
    #[tokio::test]
    async fn a_job_that_finds_outputs_already_chosen_adopts_them_and_deletes_its_own() {
        let mut h = harness(|_| {}).await;
        let a = submitted(&mut h).await;
        let b = submitted(&mut h).await;
        let id = "0123456789abcdef0123456789abcdef";
        // Another owner's outputs, with different measurements, chosen first.
        let mut theirs = Vec::new();
        for x in [&a, &b] {
            let Ok(Some(mut o)) = *output(x) else {
                unreachable!()
            };
            o.dir = keys::attempt_dir(&x.key(), &keys::attempt_token(7, 0xfeed, 1));
            o.segments[0].bytes = 5000;
            h.ctx
                .storage
                .put(
                    &keys::rendition_file(id, &o.dir, "00000.m4s"),
                    "theirs".into(),
                )
                .await
                .unwrap();
            theirs.push(o);
        }
        assert_eq!(
            h.ctx.storage.choose_outputs(id, &theirs).await.unwrap(),
            theirs
        );
        for x in [&a, &b] {
            store_as_worker(&h, x).await;
            finish(&h, x, output(x));
        }
        match outcome(&mut h).await {
            VideoMsg::JobReady { outputs } => assert_eq!(outputs, theirs),
            _ => panic!("expected ready"),
        }
        let master = h
            .ctx
            .storage
            .get(&keys::multivariant(id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&master.bytes),
            playlist::multivariant_playlist(&theirs),
            "the playlist describes the chosen outputs"
        );
        // Only the chosen directories are left (the cleanup runs in the background).
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: std::collections::BTreeSet<String> = h
                .ctx
                .storage
                .list(&keys::video_prefix(id))
                .await
                .unwrap()
                .into_iter()
                .filter_map(|(k, _)| keys::rendition_dir_of(id, &k).map(str::to_string))
                .collect();
            let want: std::collections::BTreeSet<String> =
                theirs.iter().map(|o| o.dir.clone()).collect();
            if left == want {
                break;
            }
            assert!(tokio::time::Instant::now() < until, "left: {left:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
