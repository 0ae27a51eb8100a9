//! `WorkerPool`: a queue of transcode tasks in front of N `TranscodeWorker`s.
//!
//! Supervision: the pool supervises its workers. A worker that fails (panics) or stops is
//! replaced by a fresh one; if it held a task, the pool reports that attempt to its job as a
//! transient failure (`worker crashed`), and the job retries it with backoff. The pool never
//! stops because a worker died (the default ractor behaviour, overridden here).
//!
//! Back-pressure: tasks wait in a FIFO queue until a worker is idle; a job's stuck-task clock
//! starts only when a worker reports `TaskStarted`, so queueing is never mistaken for a hang.
//!
//! Scratch: the pool knows which videos have tasks on this node, so it sweeps the node's
//! scratch directory of the source copies its tasks no longer use (`SweepScratch`, every
//! minute; `crate::storage::scratch`).

use std::collections::{HashMap, VecDeque};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::transcode_worker::{TranscodeWorker, WorkerArgs, WorkerMsg};
use crate::actors::{Assignment, Ctx};
use crate::cluster::protocol::TaskReport;
use crate::storage::events::NewEvent;
use crate::storage::scratch;

/// The pool actor.
pub struct WorkerPool;

/// Startup arguments.
pub struct PoolArgs {
    /// Node context.
    pub ctx: Ctx,
    /// Number of workers (ffmpeg processes at once).
    pub workers: usize,
}

/// A busy worker as seen in a [`PoolSnapshot`].
#[derive(Debug, Clone)]
pub struct BusyWorker {
    /// The worker (tests send it `InjectPanic`).
    pub worker: ActorRef<WorkerMsg>,
    /// Video of its task.
    pub video_id: String,
    /// Task key (rendition name).
    pub task: String,
    /// Attempt.
    pub attempt: u32,
}

/// What the pool is doing.
#[derive(Debug, Clone)]
pub struct PoolSnapshot {
    /// Live workers.
    pub workers: usize,
    /// Workers with a task.
    pub busy: Vec<BusyWorker>,
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Workers replaced after a crash, since start.
    pub restarts: u64,
}

/// Messages.
// An Assignment (a task spec with its input map) is moved once per dispatch; boxing it
// would save nothing that matters.
#[allow(clippy::large_enum_variant)]
pub enum PoolMsg {
    /// Queue a task.
    Submit(Assignment),
    /// Drop a queued task or cancel it on its worker, if it is this attempt.
    Cancel {
        /// Video.
        video_id: String,
        /// Task key.
        task: String,
        /// Attempt.
        attempt: u32,
    },
    /// Drop every queued task of a video and cancel its running ones (a crashed job's leftovers,
    /// before its successor dispatches again).
    CancelVideo {
        /// Video.
        video_id: String,
    },
    /// A worker finished its task (sent by the worker after it reported to the job).
    WorkerIdle(ActorId),
    /// Observe the pool.
    Snapshot(RpcReplyPort<PoolSnapshot>),
    /// Remove from the node's scratch directory the source copies no task has used for
    /// [`scratch::SOURCE_KEEP`], except those of videos with tasks here ([`scratch::sweep`],
    /// on a blocking thread). Sent to itself every [`scratch::SWEEP_EVERY`].
    SweepScratch,
}
impl ractor::Message for PoolMsg {}

struct Slot {
    worker: ActorRef<WorkerMsg>,
    task: Option<Assignment>,
}

/// State.
pub struct PoolState {
    ctx: Ctx,
    slots: HashMap<ActorId, Slot>,
    queue: VecDeque<Assignment>,
    next_worker: u64,
    restarts: u64,
}

impl WorkerPool {
    async fn spawn_worker(
        &self,
        myself: &ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        state.next_worker += 1;
        let name = state.ctx.name(&format!("worker-{}", state.next_worker));
        let (worker, _) = Actor::spawn_linked(
            Some(name),
            TranscodeWorker,
            WorkerArgs {
                ctx: state.ctx.clone(),
                pool: myself.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        state
            .slots
            .insert(worker.get_id(), Slot { worker, task: None });
        Ok(())
    }

    fn dispatch(state: &mut PoolState) {
        for slot in state.slots.values_mut() {
            if slot.task.is_some() {
                continue;
            }
            let Some(a) = state.queue.pop_front() else {
                return;
            };
            if slot.worker.cast(WorkerMsg::Run(a.clone())).is_ok() {
                slot.task = Some(a);
            } else {
                state.queue.push_front(a);
            }
        }
    }
}

impl Actor for WorkerPool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let mut state = PoolState {
            ctx: args.ctx,
            slots: HashMap::new(),
            queue: VecDeque::new(),
            next_worker: 0,
            restarts: 0,
        };
        for _ in 0..args.workers.max(1) {
            self.spawn_worker(&myself, &mut state).await?;
        }
        myself.send_interval(scratch::SWEEP_EVERY, || PoolMsg::SweepScratch);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Submit(a) => {
                state.queue.push_back(a);
                Self::dispatch(state);
            }
            PoolMsg::Cancel {
                video_id,
                task,
                attempt,
            } => {
                let matches = |a: &Assignment| {
                    a.task.video_id == video_id && a.key() == task && a.attempt == attempt
                };
                state.queue.retain(|a| !matches(a));
                for slot in state.slots.values() {
                    if slot.task.as_ref().is_some_and(matches) {
                        let _ = slot.worker.cast(WorkerMsg::Cancel {
                            video_id: video_id.clone(),
                            task: task.clone(),
                            attempt,
                        });
                    }
                }
            }
            PoolMsg::CancelVideo { video_id } => {
                state.queue.retain(|a| a.task.video_id != video_id);
                for slot in state.slots.values() {
                    if let Some(a) = slot.task.as_ref().filter(|a| a.task.video_id == video_id) {
                        let _ = slot.worker.cast(WorkerMsg::Cancel {
                            video_id: video_id.clone(),
                            task: a.key().to_string(),
                            attempt: a.attempt,
                        });
                    }
                }
            }
            PoolMsg::WorkerIdle(id) => {
                if let Some(slot) = state.slots.get_mut(&id) {
                    slot.task = None;
                }
                Self::dispatch(state);
            }
            PoolMsg::Snapshot(reply) => {
                let busy = state
                    .slots
                    .values()
                    .filter_map(|s| {
                        s.task.as_ref().map(|a| BusyWorker {
                            worker: s.worker.clone(),
                            video_id: a.task.video_id.clone(),
                            task: a.key().to_string(),
                            attempt: a.attempt,
                        })
                    })
                    .collect();
                let _ = reply.send(PoolSnapshot {
                    workers: state.slots.len(),
                    busy,
                    queued: state.queue.len(),
                    restarts: state.restarts,
                });
            }
            PoolMsg::SweepScratch => {
                let busy: std::collections::HashSet<String> = state
                    .queue
                    .iter()
                    .chain(state.slots.values().filter_map(|s| s.task.as_ref()))
                    .map(|a| a.task.video_id.clone())
                    .collect();
                let dir = state.ctx.scratch_dir.clone();
                tokio::task::spawn_blocking(move || {
                    let now = std::time::SystemTime::now();
                    match scratch::sweep(&dir, &busy, now, scratch::SOURCE_KEEP) {
                        Ok(s) if s != scratch::Swept::default() => tracing::info!(
                            files = s.files,
                            bytes = s.bytes,
                            dirs = s.dirs,
                            "scratch: removed source copies no task has used for {} s",
                            scratch::SOURCE_KEEP.as_secs()
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("scratch sweep failed: {e}"),
                    }
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("worker crashed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("worker stopped: {}", reason.unwrap_or_default()),
            ),
            _ => return Ok(()),
        };
        let Some(slot) = state.slots.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.restarts += 1;
        let mut event = NewEvent::node("worker_restarted").detail(why.clone());
        if let Some(a) = &slot.task {
            event = NewEvent::video(&a.task.video_id, "worker_restarted")
                .task(&a.key(), a.attempt)
                .detail(why.clone());
            a.reply.send(TaskReport::Finished {
                video_id: a.task.video_id.clone(),
                instance: a.task.instance,
                task: a.key().to_string(),
                attempt: a.attempt,
                result: Err((false, why)),
            });
        }
        state.ctx.events.append(event).await;
        self.spawn_worker(&myself, state).await?;
        Self::dispatch(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::actors::job::JobMsg;
    use crate::actors::testing::{next, probe, GatedStore};
    use crate::actors::{NodeContext, TaskFailure, TaskKind, TaskReply, TaskSpec};
    use crate::media::ladder::Rendition;
    use crate::storage::{keys, Storage};

    /// A pool of `workers` on its own node `node` (actor names are per process), over a
    /// store whose reads the test gates, reporting to a probe standing in for the job.
    struct Rig {
        store: Arc<GatedStore>,
        ctx: Ctx,
        pool: ActorRef<PoolMsg>,
        job: ActorRef<JobMsg>,
        reports: tokio::sync::mpsc::UnboundedReceiver<JobMsg>,
        _scratch: tempfile::TempDir,
    }

    async fn rig(node: &str, workers: usize) -> Rig {
        let scratch = tempfile::tempdir().unwrap();
        let store = GatedStore::new();
        let storage = Storage::from_store(store.clone());
        let ctx = Arc::new(NodeContext::for_tests(node, storage, scratch.path()));
        let (pool, _) = Actor::spawn(
            None,
            WorkerPool,
            PoolArgs {
                ctx: ctx.clone(),
                workers,
            },
        )
        .await
        .unwrap();
        let (job, reports) = probe::<JobMsg>().await;
        Rig {
            store,
            ctx,
            pool,
            job,
            reports,
            _scratch: scratch,
        }
    }

    /// Video of task `n`: each task has its own video, so its own source key to gate.
    fn video(n: u32) -> String {
        format!("video-{n}")
    }

    impl Rig {
        /// Submit task `n` (an audio task, key `audio-{n}`, of video `video(n)`), whose
        /// worker waits at the read of the video's source until [`Rig::finish`]: the source
        /// is absent, so the task then fails at once, with no ffmpeg run.
        fn submit(&self, n: u32) {
            self.store.hold(&keys::source(&video(n)));
            let task = TaskSpec {
                video_id: video(n),
                epoch: 0,
                instance: 1,
                rendition: Rendition {
                    name: "audio".into(),
                    width: 2,
                    height: 2,
                    video_kbps: 1,
                    audio_kbps: n,
                },
                kind: TaskKind::Audio { kbps: n },
                has_audio: true,
                duration_seconds: 1.0,
                frame_rate: 25.0,
                input: Default::default(),
            };
            self.pool
                .cast(PoolMsg::Submit(Assignment {
                    task,
                    attempt: 1,
                    reply: TaskReply::Local(self.job.clone()),
                }))
                .unwrap();
        }

        /// Let task `n` go on (and so end).
        fn finish(&self, n: u32) {
            self.store.release(&keys::source(&video(n)));
        }

        async fn snapshot(&self) -> PoolSnapshot {
            ractor::call!(self.pool, PoolMsg::Snapshot).expect("the pool answers")
        }

        /// The next report to the job: `Ok(task)` for a start, `Err((task, failure))` for a
        /// failed end (every task here fails: its source is absent).
        async fn report(&mut self) -> Result<String, (String, TaskFailure)> {
            match next(&mut self.reports, "task report").await {
                JobMsg::TaskStarted { task, attempt, .. } => {
                    assert_eq!(attempt, 1);
                    Ok(task)
                }
                JobMsg::TaskFinished { task, result, .. } => match *result {
                    Err(f) => Err((task, f)),
                    Ok(_) => panic!("{task} cannot succeed without a source"),
                },
                _ => panic!("only starts and ends are reported"),
            }
        }

        async fn started(&mut self) -> String {
            self.report().await.expect("a start")
        }

        async fn failed(&mut self) -> (String, TaskFailure) {
            self.report().await.expect_err("an end")
        }
    }

    fn busy_tasks(s: &PoolSnapshot) -> Vec<String> {
        let mut t: Vec<String> = s.busy.iter().map(|b| b.task.clone()).collect();
        t.sort();
        t
    }

    /// Back-pressure: with every worker busy, tasks wait in the pool's queue, and each worker
    /// that frees up takes the oldest waiting task (FIFO), never a second one at once.
    #[tokio::test(start_paused = true)]
    async fn a_busy_pool_queues_tasks_and_hands_them_out_oldest_first() {
        let mut r = rig("pool-fifo", 2).await;
        for n in 1..=4 {
            r.submit(n);
        }
        let mut first = vec![r.started().await, r.started().await];
        first.sort();
        assert_eq!(first, ["audio-1", "audio-2"]);
        let s = r.snapshot().await;
        assert_eq!((s.workers, s.queued), (2, 2), "{s:?}");
        assert_eq!(busy_tasks(&s), ["audio-1", "audio-2"]);

        // Task 4's source is readable, but it waits behind task 3 all the same.
        r.finish(4);
        r.finish(2);
        let (task, failure) = r.failed().await;
        assert_eq!(task, "audio-2");
        assert!(!failure.permanent, "{failure:?}");
        assert!(
            failure.message.contains("cannot read the source"),
            "{failure:?}"
        );
        assert_eq!(r.started().await, "audio-3", "the oldest waiting task");
        let s = r.snapshot().await;
        assert_eq!(s.queued, 1, "{s:?}");
        assert_eq!(busy_tasks(&s), ["audio-1", "audio-3"]);

        r.finish(1);
        assert_eq!(r.failed().await.0, "audio-1");
        assert_eq!(r.started().await, "audio-4");
        assert_eq!(r.failed().await.0, "audio-4", "its source was released");
        r.finish(3);
        assert_eq!(r.failed().await.0, "audio-3");
        let s = r.snapshot().await;
        assert_eq!(
            (s.workers, s.busy.len(), s.queued, s.restarts),
            (2, 0, 0, 0)
        );
    }

    /// Supervision: a worker that panics mid-task is replaced; its task is reported to the
    /// job as a transient `worker crashed` failure (so the job retries it), the queued task
    /// goes to the replacement, and the pool itself keeps running.
    #[tokio::test(start_paused = true)]
    async fn a_worker_that_panics_is_replaced_and_its_task_reported_as_crashed() {
        let mut r = rig("pool-panic", 1).await;
        r.submit(1);
        r.submit(2);
        assert_eq!(r.started().await, "audio-1");
        let s = r.snapshot().await;
        assert_eq!((s.busy.len(), s.queued), (1, 1), "{s:?}");
        let crashed = s.busy[0].worker.clone();

        crashed.cast(WorkerMsg::InjectPanic).unwrap();
        let (task, failure) = r.failed().await;
        assert_eq!(task, "audio-1");
        assert!(!failure.permanent, "a crash is worth a retry: {failure:?}");
        assert!(failure.message.starts_with("worker crashed"), "{failure:?}");
        assert_eq!(
            r.started().await,
            "audio-2",
            "the replacement takes the queue"
        );

        let s = r.snapshot().await;
        assert_eq!((s.workers, s.queued, s.restarts), (1, 0, 1), "{s:?}");
        assert_eq!(busy_tasks(&s), ["audio-2"]);
        assert_ne!(s.busy[0].worker.get_id(), crashed.get_id(), "a new worker");
        assert_eq!(r.pool.get_status(), ractor::ActorStatus::Running);
        let events = r.ctx.events.for_video(&video(1)).await.unwrap();
        assert!(
            events.iter().any(|e| e.kind == "worker_restarted"),
            "{:?}",
            events.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );

        // The replacement works: its task ends and the pool hands out the next one.
        r.finish(2);
        assert_eq!(r.failed().await.0, "audio-2");
        r.submit(3);
        assert_eq!(r.started().await, "audio-3");
        r.finish(3);
        assert_eq!(r.failed().await.0, "audio-3");
    }

    /// A worker that stops (not a panic) while idle is replaced too, with nothing to report,
    /// and the pool goes on.
    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_that_stops_is_replaced_without_a_report() {
        let mut r = rig("pool-stop", 1).await;
        r.submit(1);
        assert_eq!(r.started().await, "audio-1");
        let worker = r.snapshot().await.busy[0].worker.clone();
        r.finish(1);
        assert_eq!(r.failed().await.0, "audio-1");

        worker.stop(Some("test".into()));
        // Bounded poll on the pool (paused clock: each sleep only advances it).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let s = loop {
            let s = r.snapshot().await;
            if s.restarts > 0 {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never replaced: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!((s.workers, s.restarts, s.busy.len()), (1, 1, 0), "{s:?}");
        assert!(r.reports.try_recv().is_err(), "no task, nothing to report");
        r.submit(2);
        assert_eq!(r.started().await, "audio-2");
        r.finish(2);
        assert_eq!(r.failed().await.0, "audio-2");
    }

    /// The pool's scratch sweep removes a source copy no task has used for `SOURCE_KEEP`, and
    /// keeps the copy of a video it has a task of, however old (here a queued one, which has
    /// not touched its copy).
    #[tokio::test]
    async fn the_scratch_sweep_removes_unused_sources_and_keeps_those_of_its_tasks() {
        let mut r = rig("pool-scratch", 1).await;
        r.submit(1);
        assert_eq!(r.started().await, "audio-1");
        r.submit(2);
        assert_eq!(r.snapshot().await.queued, 1);
        let old = std::time::SystemTime::now() - scratch::SOURCE_KEEP - Duration::from_secs(60);
        let source = |v: &str| r.ctx.scratch_dir.join(v).join("source");
        for v in [video(2), video(9)] {
            std::fs::create_dir_all(source(&v).parent().unwrap()).unwrap();
            std::fs::File::create(source(&v)).unwrap();
            scratch::set_last_use(&source(&v), old).unwrap();
        }
        r.pool.cast(PoolMsg::SweepScratch).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while source(&video(9)).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the unused source is still there"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!r.ctx.scratch_dir.join(video(9)).exists());
        assert!(source(&video(2)).exists(), "a queued task's source stays");
        // The copy was a stand-in: the queued task reads its (absent) source from the store.
        std::fs::remove_file(source(&video(2))).unwrap();
        r.finish(1);
        assert_eq!(r.failed().await.0, "audio-1");
        assert_eq!(r.started().await, "audio-2");
        r.finish(2);
        assert_eq!(r.failed().await.0, "audio-2");
    }
}
