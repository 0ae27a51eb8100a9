//! `WorkerPool`: a queue of transcode tasks in front of N `TranscodeWorker`s.
//!
//! Supervision: the pool supervises its workers. A worker that fails (panics) or stops is
//! replaced by a fresh one; if it held a task, the pool reports that attempt to its job as a
//! transient failure (`worker crashed`), and the job retries it with backoff. The pool never
//! stops because a worker died (the default ractor behaviour, overridden here).
//!
//! Back-pressure: tasks wait in a FIFO queue until a worker is idle; a job's stuck-task clock
//! starts only when a worker reports `TaskStarted`, so queueing is never mistaken for a hang.

use std::collections::{HashMap, VecDeque};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::transcode_worker::{TranscodeWorker, WorkerArgs, WorkerMsg};
use crate::actors::{Assignment, Ctx};
use crate::cluster::protocol::TaskReport;
use crate::storage::events::NewEvent;

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
