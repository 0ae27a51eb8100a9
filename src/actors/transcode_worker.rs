//! `TranscodeWorker`: runs one transcode task at a time.
//!
//! Supervised by the `WorkerPool`. The ffmpeg run happens in a spawned task (the blocking part
//! in `spawn_blocking`), so the worker's mailbox stays responsive: it can be told to cancel.
//! The running task is held in the state behind a guard whose `Drop` kills ffmpeg, so a worker
//! that crashes (a panic in a handler) leaves no ffmpeg behind; the pool then reports the task
//! as failed to its job, which retries it.
//!
//! A task's outputs are uploaded in a fixed order: segments, init segment, `rendition.json`,
//! then the media playlist. The media playlist's presence marks the rendition done, so a retried
//! or resumed task never sees a half-written rendition as finished; a retry overwrites the same
//! deterministic keys.

use std::path::Path;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::actors::worker_pool::PoolMsg;
use crate::actors::{Assignment, Ctx, TaskFailure, TaskKind, TaskSpec};
use crate::cluster::protocol::{failure_to_wire, TaskReport};
use crate::media::playlist::{self, RenditionOutput, SegmentInfo};
use crate::media::probe;
use crate::media::transcode::{self, Cancel, TranscodeError, TranscodeSpec};
use crate::storage::{keys, StorageError};

/// The worker actor.
pub struct TranscodeWorker;

/// Startup arguments.
pub struct WorkerArgs {
    /// Node context (storage, scratch dir, settings).
    pub ctx: Ctx,
    /// The pool to report idleness to.
    pub pool: ActorRef<PoolMsg>,
}

/// Messages.
// An Assignment (a task spec with its input map) is moved once per dispatch; boxing it
// would save nothing that matters.
#[allow(clippy::large_enum_variant)]
pub enum WorkerMsg {
    /// Run this task (the pool only sends it to an idle worker).
    Run(Assignment),
    /// Cancel the task if it is this attempt of this task (a reclaim of a stuck task).
    Cancel {
        /// Video of the task.
        video_id: String,
        /// Task key (rendition name).
        task: String,
        /// Attempt to cancel.
        attempt: u32,
    },
    /// Internal: the spawned run ended.
    Finished(Box<Result<Option<RenditionOutput>, TaskFailure>>),
    /// Fault injection for tests and `examples/`: panic in the handler, as a bug would.
    InjectPanic,
}
impl ractor::Message for WorkerMsg {}

struct Running {
    assignment: Assignment,
    cancel: Cancel,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Kills ffmpeg if it still runs; harmless when it has finished.
        self.cancel.cancel();
        self.handle.abort();
    }
}

/// State: the task being run, if any.
pub struct WorkerState {
    ctx: Ctx,
    pool: ActorRef<PoolMsg>,
    running: Option<Running>,
}

impl Actor for TranscodeWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState {
            ctx: args.ctx,
            pool: args.pool,
            running: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Run(a) => {
                a.reply.send(TaskReport::Started {
                    video_id: a.task.video_id.clone(),
                    instance: a.task.instance,
                    task: a.key().to_string(),
                    attempt: a.attempt,
                    node: state.ctx.node_id.clone(),
                });
                let cancel = Cancel::default();
                let handle = tokio::spawn(run_task(
                    state.ctx.clone(),
                    a.clone(),
                    cancel.clone(),
                    myself.clone(),
                ));
                state.running = Some(Running {
                    assignment: a,
                    cancel,
                    handle,
                });
            }
            WorkerMsg::Cancel {
                video_id,
                task,
                attempt,
            } => {
                if let Some(r) = &state.running {
                    let a = &r.assignment;
                    if a.task.video_id == video_id && a.key() == task && a.attempt == attempt {
                        r.cancel.cancel();
                    }
                }
            }
            WorkerMsg::Finished(result) => {
                if let Some(r) = state.running.take() {
                    let a = &r.assignment;
                    a.reply.send(TaskReport::Finished {
                        video_id: a.task.video_id.clone(),
                        instance: a.task.instance,
                        task: a.key().to_string(),
                        attempt: a.attempt,
                        result: (*result).map_err(failure_to_wire),
                    });
                }
                let _ = state.pool.cast(PoolMsg::WorkerIdle(myself.get_id()));
            }
            WorkerMsg::InjectPanic => panic!("injected fault: TranscodeWorker panics mid-task"),
        }
        Ok(())
    }
}

async fn run_task(ctx: Ctx, a: Assignment, cancel: Cancel, worker: ActorRef<WorkerMsg>) {
    let out_dir = ctx.scratch_dir.join(&a.task.video_id).join(format!(
        "{}-{}-{:08x}",
        a.key(),
        a.attempt,
        rand::random::<u32>()
    ));
    let result = transcode_and_store(&ctx, &a, &cancel, &out_dir).await;
    let _ = tokio::fs::remove_dir_all(&out_dir).await;
    let _ = worker.cast(WorkerMsg::Finished(Box::new(result)));
}

/// How often a task that is moving bytes says it is alive, at most.
const KEEP_ALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A callback for byte transfers (downloading inputs, storing outputs) that tells the job the
/// attempt is alive (a progress report with negative seconds), at most every
/// [`KEEP_ALIVE_EVERY`]: a 5 GB source downloading from S3 for minutes is not stuck (issue 9).
fn keep_alive(a: &Assignment) -> impl FnMut(u64) + Send {
    let (reply, video_id, task, attempt, instance) = (
        a.reply.clone(),
        a.task.video_id.clone(),
        a.key(),
        a.attempt,
        a.task.instance,
    );
    let mut last = std::time::Instant::now();
    move |_bytes| {
        if last.elapsed() >= KEEP_ALIVE_EVERY {
            last = std::time::Instant::now();
            reply.send(TaskReport::Progress {
                video_id: video_id.clone(),
                instance,
                task: task.clone(),
                attempt,
                seconds: -1.0,
            });
        }
    }
}

/// Run ffmpeg with `args` in a blocking thread, reporting progress to the job.
async fn run_ffmpeg(a: &Assignment, cancel: &Cancel, args: Vec<String>) -> Result<(), TaskFailure> {
    let reply = a.reply.clone();
    let (video_id, task, attempt, instance) =
        (a.task.video_id.clone(), a.key(), a.attempt, a.task.instance);
    let run_cancel = cancel.clone();
    let ran = tokio::task::spawn_blocking(move || {
        let mut last_sent = -1.0f64;
        transcode::run_args(args, &run_cancel, |seconds| {
            if seconds - last_sent >= 0.25 {
                last_sent = seconds;
                reply.send(TaskReport::Progress {
                    video_id: video_id.clone(),
                    instance,
                    task: task.clone(),
                    attempt,
                    seconds,
                });
            }
        })
    })
    .await
    .map_err(|e| TaskFailure::transient(format!("transcode thread failed: {e}")))?;
    ran.map_err(|e| TaskFailure {
        permanent: e.is_permanent(),
        message: match e {
            TranscodeError::NotInstalled => e.to_string(),
            other => format!("task {}: {other}", a.key()),
        },
    })
}

/// Do the task; `Some(output)` when it finished a rendition (segments and media playlist
/// stored), `None` when it produced an intermediate (a chunk or the audio).
async fn transcode_and_store(
    ctx: &Ctx,
    a: &Assignment,
    cancel: &Cancel,
    out_dir: &Path,
) -> Result<Option<RenditionOutput>, TaskFailure> {
    let t = &a.task;
    let io = |what: &str, e: &dyn std::fmt::Display| TaskFailure::transient(format!("{what}: {e}"));
    // A task queued by a job that has since lost the video (its node died, a newer owner
    // re-dispatched everything) does no work at all: nobody could cancel it, and encoding it
    // only to have its outputs refused kept the new owner's tasks waiting behind it.
    check_owner(ctx, t).await?;
    tokio::fs::create_dir_all(out_dir)
        .await
        .map_err(|e| io("creating scratch space", &e))?;
    let source = || async {
        let mut alive = keep_alive(a);
        ctx.storage
            .source_path_with(&t.video_id, &ctx.scratch_dir, &mut alive)
            .await
            .map_err(|e| store_failure("cannot read the source", &e))
    };
    let seg = ctx.processing.segment_seconds;
    match &t.kind {
        TaskKind::Rendition => {
            let spec = TranscodeSpec {
                input: source().await?,
                out_dir: out_dir.to_path_buf(),
                rendition: t.rendition.clone(),
                segment_seconds: seg,
                preset: ctx.processing.preset.clone(),
                has_audio: t.has_audio,
                map: t.input.clone(),
            };
            run_ffmpeg(a, cancel, transcode::ffmpeg_args(&spec)).await?;
            store_outputs(ctx, a, out_dir).await.map(Some)
        }
        TaskKind::Chunk {
            index,
            start_seconds,
            duration_seconds,
            renditions,
            keyframe_back_ms,
        } => {
            let own = std::slice::from_ref(&t.rendition);
            let renditions = if renditions.is_empty() {
                own
            } else {
                renditions.as_slice()
            };
            let outs: Vec<(std::path::PathBuf, &crate::media::ladder::Rendition)> = renditions
                .iter()
                .map(|r| (out_dir.join(format!("chunk-{}.mp4", r.name)), r))
                .collect();
            let Some((first, _)) = outs.first() else {
                return Ok(None);
            };
            let input = source().await?;
            let frame_log = out_dir.join("frames.crc");
            let args = |seek| {
                let outs: Vec<(&Path, &crate::media::ladder::Rendition)> =
                    outs.iter().map(|(p, r)| (p.as_path(), *r)).collect();
                transcode::chunk_args(
                    &input,
                    &outs,
                    &frame_log,
                    *start_seconds,
                    *duration_seconds,
                    seg,
                    &ctx.processing.preset,
                    &t.input,
                    seek,
                )
            };
            // Every output got the same frames (one decode, split): counting one is enough.
            let frames = || async {
                probe::count_video_packets(first, std::time::Duration::from_secs(60))
                    .await
                    .map_err(|e| TaskFailure::transient(format!("checking the chunk: {e}")))
            };
            // The seek through the container's index, then, if it lost frames, one that lands
            // well before the start (MPEG-TS has no index: its seek can land on a later
            // keyframe, or past every frame), then a decode from the source's start. A source
            // known to have no index starts at the second, or just before the keyframe the job
            // found before the chunk's start (then the second, then the decode).
            // Each encode's frame log is read once: for how late its first frame came, then
            // (the last encode's) for the damage check.
            let mut seek = transcode::first_seek(&t.input, *start_seconds, *keyframe_back_ms);
            let log = loop {
                run_ffmpeg(a, cancel, args(seek)).await?;
                let got = frames().await?;
                let log = tokio::fs::read_to_string(&frame_log).await;
                let next = match transcode::next_seek(seek, &t.input, *start_seconds) {
                    Some(next) => next,
                    None => {
                        if got == 0 {
                            return Err(TaskFailure {
                                permanent: true,
                                message: format!(
                                    "the source has no video frames between {:.1} s and {:.1} s",
                                    start_seconds,
                                    start_seconds + duration_seconds
                                ),
                            });
                        }
                        break log;
                    }
                };
                // How late the first frame came (a missing or unreadable log is reported
                // below, where the log is stored).
                let expected = transcode::expected_first_frame(&t.input, *start_seconds, seek);
                let late = log
                    .as_deref()
                    .ok()
                    .and_then(|log| transcode::read_frame_log(log, 0.0).first().copied())
                    .map(|first| first - expected);
                if !transcode::chunk_is_short(got, *duration_seconds, t.frame_rate)
                    && !transcode::chunk_began_late(late, t.frame_rate)
                {
                    break log;
                }
                tracing::warn!(
                    video = %t.video_id,
                    task = %a.key(),
                    frames = got,
                    late_seconds = late,
                    "seeking the source lost frames ({seek:?}); encoding this chunk again ({next:?})"
                );
                seek = next;
            };
            tracing::debug!(
                video = %t.video_id,
                task = %a.key(),
                ?seek,
                "chunk encoded"
            );
            // The frames this decode produced, for the job's damage check: stored before the
            // chunks, so a chunk found stored always has its frame times beside it.
            let log = log.map_err(|e| io("ffmpeg wrote no frame log", &e))?;
            let offset = transcode::frame_log_offset(&t.input, *start_seconds, seek);
            let times = transcode::read_frame_log(&log, offset);
            let json = serde_json::to_vec(&times).map_err(|e| io("the frame times", &e))?;
            let key = keys::chunk_frames(&t.video_id, *index);
            store_intermediate(ctx, t, &key, Body::Bytes(Bytes::from(json))).await?;
            for (file, r) in &outs {
                let key = keys::chunk(&t.video_id, &r.name, *index);
                store_intermediate(ctx, t, &key, Body::File(file)).await?;
            }
            Ok(None)
        }
        TaskKind::Audio { kbps } => {
            let out = out_dir.join("audio.m4a");
            run_ffmpeg(
                a,
                cancel,
                transcode::audio_args(&source().await?, &out, *kbps, &t.input),
            )
            .await?;
            store_intermediate(ctx, t, &keys::audio(&t.video_id, *kbps), Body::File(&out)).await?;
            Ok(None)
        }
        TaskKind::Package {
            chunks,
            chunk_seconds,
            audio_kbps,
        } => {
            let inputs = out_dir.join("in");
            tokio::fs::create_dir_all(&inputs)
                .await
                .map_err(|e| io("creating scratch space", &e))?;
            let mut files = Vec::with_capacity(*chunks);
            let mut alive = keep_alive(a);
            for i in 0..*chunks {
                let f = inputs.join(format!("chunk-{i:04}.mp4"));
                ctx.storage
                    .download_with(
                        &keys::chunk(&t.video_id, &t.rendition.name, i),
                        &f,
                        &mut alive,
                    )
                    .await
                    .map_err(|e| store_failure("fetching a chunk", &e))?;
                files.push(f);
            }
            let audio = match audio_kbps {
                Some(k) => {
                    let f = inputs.join("audio.m4a");
                    ctx.storage
                        .download_with(&keys::audio(&t.video_id, *k), &f, &mut alive)
                        .await
                        .map_err(|e| store_failure("fetching the audio", &e))?;
                    Some(f)
                }
                None => None,
            };
            let list = inputs.join("chunks.txt");
            let entries: Vec<(std::path::PathBuf, f64)> = files
                .into_iter()
                .enumerate()
                .map(|(i, f)| (f, chunk_seconds.get(i).copied().unwrap_or(0.0)))
                .collect();
            tokio::fs::write(&list, transcode::concat_list(&entries))
                .await
                .map_err(|e| io("writing the chunk list", &e))?;
            run_ffmpeg(
                a,
                cancel,
                transcode::package_args(&list, audio.as_deref(), out_dir, seg),
            )
            .await?;
            store_outputs(ctx, a, out_dir).await.map(Some)
        }
    }
}

/// A failed object store read or write: [`TaskFailure::store_unavailable`] when the store
/// failed or did not answer (no attempt used up), a plain transient failure otherwise (an
/// object that should exist is missing or unreadable, or the store is full: that needs
/// someone to free space, so the video ends `failed` with the reason and `reel reprocess`
/// takes it up again).
fn store_failure(what: &str, e: &StorageError) -> TaskFailure {
    match e {
        StorageError::Backend(_) => TaskFailure::store_unavailable(what, e),
        other => TaskFailure::transient(format!("{what}: {other}")),
    }
}

/// Fail with a "superseded" failure unless the task's job still owns the video (its epoch is
/// the newest lease): one listing of the lease prefix. Asked of the store before the task
/// starts and right before every write of its outputs.
async fn check_owner(ctx: &Ctx, t: &TaskSpec) -> Result<(), TaskFailure> {
    if t.epoch == 0 {
        return Ok(());
    }
    match ctx.storage.lease_holds(&t.video_id, t.epoch).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(TaskFailure::superseded(&t.video_id, t.epoch)),
        Err(e) => Err(store_failure("checking the video's owner", &e)),
    }
}

/// Fail with a "superseded" failure, after deleting what this attempt stored in `dir`, when
/// the video's outputs were already chosen (`outputs.json` exists): an attempt that outlived
/// its job (reclaimed as stuck, or its job's node gone) stops instead of finishing a
/// directory no commit will name.
async fn check_not_committed(ctx: &Ctx, t: &TaskSpec, dir: &str) -> Result<(), TaskFailure> {
    match ctx.storage.exists(&keys::outputs_choice(&t.video_id)).await {
        Ok(false) => Ok(()),
        Ok(true) => {
            let prefix = keys::rendition_file(&t.video_id, dir, "");
            let _ = ctx
                .storage
                .delete_prefix(prefix.trim_end_matches('/'))
                .await;
            Err(TaskFailure::already_committed(&t.video_id))
        }
        Err(e) => Err(store_failure("checking whether the video is committed", &e)),
    }
}

/// What an intermediate is stored from.
enum Body<'a> {
    /// A file ffmpeg wrote (a chunk, the audio).
    File(&'a Path),
    /// Bytes in memory (a chunk's frame times).
    Bytes(Bytes),
}

/// Store an intermediate (a chunk, the audio, a chunk's frame times) if the task's job still
/// owns the video, and take it back if ownership moved while it was written: a deposed job's
/// late intermediate would otherwise outlive the new owner's cleanup (issue 9: leaked `work/`
/// objects).
async fn store_intermediate(
    ctx: &Ctx,
    t: &TaskSpec,
    key: &str,
    body: Body<'_>,
) -> Result<(), TaskFailure> {
    check_owner(ctx, t).await?;
    let stored = match body {
        Body::File(file) => ctx.storage.put_file(key, file).await.map(|_| ()),
        Body::Bytes(bytes) => ctx.storage.put(key, bytes).await,
    };
    stored.map_err(|e| store_failure(&format!("storing {key}"), &e))?;
    if let Err(e) = check_owner(ctx, t).await {
        let _ = ctx.storage.delete(key).await;
        return Err(e);
    }
    Ok(())
}

async fn store_outputs(
    ctx: &Ctx,
    a: &Assignment,
    dir: &Path,
) -> Result<RenditionOutput, TaskFailure> {
    let t = &a.task;
    let io = |what: &str, e: &dyn std::fmt::Display| TaskFailure::transient(format!("{what}: {e}"));
    let ffmpeg_playlist = tokio::fs::read(dir.join(playlist::MEDIA_PLAYLIST_NAME))
        .await
        .map_err(|e| io("ffmpeg wrote no media playlist", &e))?;
    let durations =
        playlist::read_durations(&ffmpeg_playlist).map_err(|e| io("ffmpeg's playlist", &e))?;
    let files = transcode::output_files(dir).map_err(|e| io("listing outputs", &e))?;
    if files.len() != durations.len() || files.is_empty() {
        return Err(TaskFailure::transient(format!(
            "ffmpeg wrote {} segments but listed {}",
            files.len(),
            durations.len()
        )));
    }
    // This attempt's own directory: no other attempt writes it, so whatever this one stores,
    // however late, cannot change the files a committed video names (issue 9). The marker in
    // `work/` makes a directory left behind (this attempt outliving its job) findable by the
    // sweep of ready videos.
    let token = keys::attempt_token(t.epoch, t.instance, a.attempt);
    let stored_in = keys::attempt_dir(&t.rendition.name, &token);
    check_not_committed(ctx, t, &stored_in).await?;
    check_owner(ctx, t).await?;
    ctx.storage
        .put(&keys::attempt_marker(&t.video_id, &token), Bytes::new())
        .await
        .map_err(|e| store_failure("marking the attempt's directory", &e))?;
    let name = stored_in.as_str();
    let mut alive = keep_alive(a);
    let mut segments = Vec::with_capacity(files.len());
    for (i, (file, duration)) in files.iter().zip(&durations).enumerate() {
        let key = keys::rendition_file(&t.video_id, name, &playlist::segment_name(i));
        check_owner(ctx, t).await?;
        let bytes = ctx
            .storage
            .put_file(&key, file)
            .await
            .map_err(|e| store_failure("storing a segment", &e))?;
        alive(bytes);
        segments.push(SegmentInfo {
            duration_seconds: *duration,
            bytes,
        });
    }
    let init = tokio::fs::read(dir.join(playlist::INIT_NAME))
        .await
        .map_err(|e| io("ffmpeg wrote no init segment", &e))?;
    let output = RenditionOutput {
        rendition: t.rendition.clone(),
        codecs: playlist::codecs_from_init(&init, t.has_audio),
        frame_rate: t.frame_rate,
        init_bytes: init.len() as u64,
        segments,
        dir: stored_in.clone(),
    };
    let s = &ctx.storage;
    let put = |key: String, bytes: Bytes| async move { s.put(&key, bytes).await };
    check_owner(ctx, t).await?;
    put(
        keys::rendition_file(&t.video_id, name, playlist::INIT_NAME),
        Bytes::from(init),
    )
    .await
    .map_err(|e| store_failure("storing the init segment", &e))?;
    s.put_json(&keys::rendition_info(&t.video_id, name), &output)
        .await
        .map_err(|e| store_failure("storing rendition.json", &e))?;
    // Last: the media playlist marks the directory complete.
    check_not_committed(ctx, t, &stored_in).await?;
    check_owner(ctx, t).await?;
    put(
        keys::rendition_file(&t.video_id, name, playlist::MEDIA_PLAYLIST_NAME),
        Bytes::from(playlist::media_playlist(&output)),
    )
    .await
    .map_err(|e| store_failure("storing the media playlist", &e))?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::actors::testing::probe;
    use crate::actors::NodeContext;
    use crate::actors::TaskReply;
    use crate::config::StorageLocation;
    use crate::media::ladder::Rendition;
    use crate::storage::Storage;
    use crate::tasks::TaskKind;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    /// What ffmpeg leaves in a rendition's scratch directory: a media playlist of two
    /// segments, the segments (`tag` in their bytes tells attempts apart) and an init segment.
    fn ffmpeg_outputs(tag: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let playlist = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n\
                        #EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:4.0,\n00000.m4s\n#EXTINF:2.0,\n\
                        00001.m4s\n#EXT-X-ENDLIST\n";
        std::fs::write(dir.path().join(playlist::MEDIA_PLAYLIST_NAME), playlist).unwrap();
        for k in 0..2 {
            let name = playlist::segment_name(k);
            std::fs::write(dir.path().join(&name), format!("{tag} {name}")).unwrap();
        }
        std::fs::write(dir.path().join(playlist::INIT_NAME), format!("{tag} init")).unwrap();
        dir
    }

    async fn assignment(instance: u64, attempt: u32) -> Assignment {
        let (job, _rx) = probe::<crate::actors::job::JobMsg>().await;
        Assignment {
            task: TaskSpec {
                video_id: ID.into(),
                epoch: 0,
                instance,
                rendition: Rendition {
                    name: "240p".into(),
                    width: 426,
                    height: 240,
                    video_kbps: 400,
                    audio_kbps: 64,
                },
                kind: TaskKind::Rendition,
                has_audio: false,
                duration_seconds: 6.0,
                frame_rate: 30.0,
                input: Default::default(),
            },
            attempt,
            reply: TaskReply::Local(job),
        }
    }

    /// Issue 9: two attempts of one rendition (the first reclaimed as stuck but still running)
    /// store into their own directories; once the video's outputs are chosen, the late attempt
    /// stores nothing and takes back what it had stored, and the chosen files are unchanged.
    /// Before attempt directories, both wrote `videos/{id}/240p/...`, so the late one replaced
    /// segments a committed playlist named.
    #[tokio::test]
    async fn a_late_attempt_cannot_change_the_files_a_commit_chose() {
        let scratch = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageLocation::Memory).unwrap();
        let ctx = Arc::new(NodeContext::for_tests("n", storage, scratch.path()));
        let (first, second) = (assignment(7, 1).await, assignment(7, 2).await);
        let second_out = ffmpeg_outputs("second");
        let stored = store_outputs(&ctx, &second, second_out.path())
            .await
            .unwrap();
        assert_eq!(stored.dir, "240p/e0-0000000000000007-a2");
        let chosen = ctx
            .storage
            .choose_outputs(ID, std::slice::from_ref(&stored))
            .await
            .unwrap();
        assert_eq!(chosen, vec![stored.clone()]);
        let before = ctx.storage.list(&keys::video_prefix(ID)).await.unwrap();

        let first_out = ffmpeg_outputs("first");
        let late = store_outputs(&ctx, &first, first_out.path()).await;
        assert!(late.as_ref().is_err_and(|e| e.is_superseded()), "{late:?}");
        let mut after = ctx.storage.list(&keys::video_prefix(ID)).await.unwrap();
        let mut before = before;
        before.sort();
        after.sort();
        assert_eq!(after, before, "nothing of the late attempt is left");
        let segment = ctx
            .storage
            .get(&keys::rendition_file(ID, &stored.dir, "00000.m4s"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&segment.bytes[..], b"second 00000.m4s");
        // And its marker is in `work/`, for the sweep of ready videos.
        assert!(ctx
            .storage
            .exists(&keys::attempt_marker(ID, "e0-0000000000000007-a2"))
            .await
            .unwrap());
    }
}
