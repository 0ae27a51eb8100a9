//! `VideoActor`: the lifecycle state machine of one video, and the only writer of its record.
//!
//! ```text
//! uploaded ──start──> processing ──JobReady──> ready
//!                         │
//!                         └──JobFailed / job crashed too often──> failed
//! ```
//!
//! Ownership: at start it claims the next lease epoch; every record write, and a periodic check,
//! verify the epoch is still the newest, else the actor stands down (cancels its tasks, stops).
//!
//! Supervised by the `VideoSupervisor`. Supervises one `JobActor`: when the job crashes, the
//! video actor starts a new one (up to `max_job_restarts`), which resumes from the outputs in the
//! object store. When the video reaches `ready` or `failed` the actor stops: a terminal video
//! needs no actor, its record says everything.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::job::{JobActor, JobArgs, JobMsg};
use crate::actors::worker_pool::PoolMsg;
use crate::actors::Ctx;
use crate::media::ladder::Rendition;
use crate::media::playlist::RenditionOutput;
use crate::media::probe::SourceInfo;
use crate::model::{now_rfc3339, RenditionSummary, VideoRecord, VideoState};
use crate::storage::events::NewEvent;
use crate::storage::RecordWrite;

/// The video actor.
pub struct VideoActor;

/// Startup arguments.
pub struct VideoArgs {
    /// Node context.
    pub ctx: Ctx,
    /// The video.
    pub video_id: String,
    /// The pool its jobs dispatch to.
    pub pool: ActorRef<PoolMsg>,
}

/// A video's live status.
#[derive(Debug, Clone)]
pub struct VideoStatus {
    /// The record as last written.
    pub record: VideoRecord,
    /// Progress, 0.0 to 1.0.
    pub progress: f64,
    /// Times the job actor was restarted after a crash.
    pub job_restarts: u32,
}

/// Messages.
pub enum VideoMsg {
    /// From the job: the source is valid and this is the plan.
    Planned {
        /// Probe result.
        source: SourceInfo,
        /// Planned renditions.
        renditions: Vec<Rendition>,
    },
    /// From the job: overall progress, 0.0 to 1.0.
    Progress(f64),
    /// From the job: every rendition is stored and the multivariant playlist is written.
    JobReady {
        /// The finished renditions, in ladder order.
        outputs: Vec<RenditionOutput>,
    },
    /// From the job: the video cannot be processed; the reason is for people.
    JobFailed {
        /// Why.
        reason: String,
    },
    /// From the job: a newer lease epoch exists; another node owns the video now.
    LeaseLost,
    /// Internal: start a new `JobActor` after a crashed one (sent after the backoff delay).
    RestartJob,
    /// Periodic (every `reconcile_every`): stand down if a newer lease epoch exists, even with
    /// nothing to write (a node that was hung or cut off learns it lost the video).
    CheckLease,
    /// Observe the video.
    Status(RpcReplyPort<VideoStatus>),
}
impl ractor::Message for VideoMsg {}

/// State.
pub struct VideoActorState {
    ctx: Ctx,
    pool: ActorRef<PoolMsg>,
    record: VideoRecord,
    progress: f64,
    job_restarts: u32,
    /// The lease epoch this actor claimed at start; every record write checks it is still the
    /// newest, so a fenced or superseded owner never writes over the new one.
    lease_epoch: u64,
}

impl VideoActor {
    async fn spawn_job(
        myself: &ActorRef<VideoMsg>,
        state: &VideoActorState,
    ) -> Result<ActorRef<JobMsg>, ActorProcessingErr> {
        let name = state.ctx.name(&format!("job:{}", state.record.video_id));
        let (job, _) = Actor::spawn_linked(
            Some(name),
            JobActor,
            JobArgs {
                ctx: state.ctx.clone(),
                video_id: state.record.video_id.clone(),
                pool: state.pool.clone(),
                video: myself.clone(),
                lease_epoch: state.lease_epoch,
            },
            myself.get_cell(),
        )
        .await?;
        Ok(job)
    }

    /// Write the record if the store still lets this owner write it; `Ok(false)` (and the actor
    /// stands down) when it does not. The lease check first is only a cheap early exit: the
    /// guarantee is the store's compare-and-swap ([`crate::storage::Storage::save_record_fenced`]),
    /// which refuses a record of an older epoch and never replaces `ready` or `failed`.
    async fn save(
        myself: &ActorRef<VideoMsg>,
        state: &mut VideoActorState,
    ) -> Result<bool, ActorProcessingErr> {
        if !state
            .ctx
            .storage
            .lease_holds(&state.record.video_id, state.lease_epoch)
            .await?
        {
            Self::stand_down(myself, state).await;
            return Ok(false);
        }
        state.record.epoch = state.lease_epoch;
        match state.ctx.storage.save_record_fenced(&state.record).await? {
            RecordWrite::Written => Ok(true),
            refused => {
                state
                    .ctx
                    .events
                    .append(
                        NewEvent::video(&state.record.video_id, "record_write_refused")
                            .detail(format!("epoch {}: {refused:?}", state.lease_epoch)),
                    )
                    .await;
                Self::stand_down(myself, state).await;
                Ok(false)
            }
        }
    }

    async fn stand_down(myself: &ActorRef<VideoMsg>, state: &mut VideoActorState) {
        state
            .ctx
            .events
            .append(
                NewEvent::video(&state.record.video_id, "stood_down")
                    .detail(format!("lease epoch {} was superseded", state.lease_epoch)),
            )
            .await;
        let _ = state.pool.cast(PoolMsg::CancelVideo {
            video_id: state.record.video_id.clone(),
        });
        myself.stop(Some("lease lost".into()));
    }

    async fn transition(
        myself: &ActorRef<VideoMsg>,
        state: &mut VideoActorState,
        to: VideoState,
        detail: Option<String>,
    ) -> Result<bool, ActorProcessingErr> {
        let from = state.record.state;
        state.record.state = to;
        state.record.touch();
        if !Self::save(myself, state).await? {
            return Ok(false);
        }
        if to.is_terminal() {
            // Best effort: a marker left behind is removed by the next reconcile.
            let _ = state.ctx.storage.clear_active(&state.record.video_id).await;
        }
        let change = format!("{} -> {}", from.as_str(), to.as_str());
        let detail = match detail {
            Some(d) => format!("{change}: {d}"),
            None => change,
        };
        let e = NewEvent::video(&state.record.video_id, "state_changed")
            .outcome(to.as_str())
            .detail(detail);
        state.ctx.events.append(e).await;
        Ok(true)
    }
}

impl Actor for VideoActor {
    type Msg = VideoMsg;
    type State = VideoActorState;
    type Arguments = VideoArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VideoMsg>,
        args: VideoArgs,
    ) -> Result<VideoActorState, ActorProcessingErr> {
        let record = args
            .ctx
            .storage
            .load_record(&args.video_id)
            .await?
            .ok_or_else(|| format!("video {} has no record", args.video_id))?;
        let terminal = record.state.is_terminal();
        let lease_epoch = if terminal {
            0
        } else {
            args.ctx
                .storage
                .claim_lease(&args.video_id, &args.ctx.node_id)
                .await?
        };
        let mut state = VideoActorState {
            ctx: args.ctx,
            pool: args.pool,
            record,
            progress: 0.0,
            job_restarts: 0,
            lease_epoch,
        };
        if !terminal {
            state
                .ctx
                .events
                .append(
                    NewEvent::video(&state.record.video_id, "lease_claimed")
                        .attempt(lease_epoch as u32)
                        .detail(format!("epoch {lease_epoch}")),
                )
                .await;
        }
        match state.record.state {
            VideoState::Ready | VideoState::Failed => {
                myself.stop(Some("terminal".into()));
                return Ok(state);
            }
            VideoState::Uploaded => {
                state
                    .ctx
                    .events
                    .append(NewEvent::video(&state.record.video_id, "job_started"))
                    .await;
                if !Self::transition(&myself, &mut state, VideoState::Processing, None).await? {
                    return Ok(state);
                }
            }
            VideoState::Processing => {
                state
                    .ctx
                    .events
                    .append(
                        NewEvent::video(&state.record.video_id, "job_resumed")
                            .detail("processing was interrupted; resuming from stored outputs"),
                    )
                    .await;
                // The fencing write: from here on the store refuses the previous owner's
                // record writes (its epoch is older).
                if !Self::save(&myself, &mut state).await? {
                    return Ok(state);
                }
            }
        }
        Self::spawn_job(&myself, &state).await?;
        myself.send_interval(state.ctx.reconcile_every, || VideoMsg::CheckLease);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<VideoMsg>,
        msg: VideoMsg,
        state: &mut VideoActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VideoMsg::Planned { source, renditions } => {
                let summaries: Vec<_> = renditions.iter().map(RenditionSummary::planned).collect();
                if state.record.source.as_ref() != Some(&source)
                    || state.record.renditions != summaries
                {
                    state.record.source = Some(source);
                    state.record.renditions = summaries;
                    state.record.touch();
                    Self::save(&myself, state).await?;
                }
            }
            VideoMsg::Progress(p) => state.progress = p.clamp(0.0, 1.0),
            VideoMsg::JobReady { outputs } => {
                if state.record.state.is_terminal() {
                    return Ok(());
                }
                state.record.renditions = outputs.iter().map(RenditionSummary::finished).collect();
                state.record.ready_at = Some(now_rfc3339());
                state.progress = 1.0;
                Self::transition(&myself, state, VideoState::Ready, None).await?;
                myself.stop(Some("ready".into()));
            }
            VideoMsg::JobFailed { reason } => {
                if state.record.state.is_terminal() {
                    return Ok(());
                }
                state.record.error = Some(reason.clone());
                Self::transition(&myself, state, VideoState::Failed, Some(reason)).await?;
                myself.stop(Some("failed".into()));
            }
            VideoMsg::LeaseLost => Self::stand_down(&myself, state).await,
            VideoMsg::RestartJob => {
                if !state.record.state.is_terminal() {
                    Self::spawn_job(&myself, state).await?;
                }
            }
            VideoMsg::CheckLease => {
                let id = &state.record.video_id;
                if !state.ctx.storage.lease_holds(id, state.lease_epoch).await? {
                    Self::stand_down(&myself, state).await;
                }
            }
            VideoMsg::Status(reply) => {
                let _ = reply.send(VideoStatus {
                    record: state.record.clone(),
                    progress: if state.record.state == VideoState::Ready {
                        1.0
                    } else {
                        state.progress
                    },
                    job_restarts: state.job_restarts,
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<VideoMsg>,
        event: SupervisionEvent,
        state: &mut VideoActorState,
    ) -> Result<(), ActorProcessingErr> {
        // A job that ends normally has already reported; only crashes matter here.
        let SupervisionEvent::ActorFailed(_, err) = event else {
            return Ok(());
        };
        if state.record.state.is_terminal() {
            return Ok(());
        }
        state.job_restarts += 1;
        let id = state.record.video_id.clone();
        // Restarts back off like task retries (`backoff_initial_ms` doubling to
        // `backoff_max_ms`), so a job that crashes at once does not spin (issue 9).
        let delay = state.ctx.processing.backoff(state.job_restarts);
        state
            .ctx
            .events
            .append(
                NewEvent::video(&id, "job_actor_restarted")
                    .attempt(state.job_restarts)
                    .detail(format!(
                        "job crashed: {err}; restarting after {} ms",
                        delay.as_millis()
                    )),
            )
            .await;
        if state.job_restarts > state.ctx.processing.max_job_restarts {
            let reason = format!(
                "processing crashed {} times; last error: {err}",
                state.job_restarts
            );
            state.record.error = Some(reason.clone());
            Self::transition(&myself, state, VideoState::Failed, Some(reason)).await?;
            myself.stop(Some("failed".into()));
            return Ok(());
        }
        // The crashed job's tasks may still run; its successor dispatches afresh.
        let _ = state.pool.cast(PoolMsg::CancelVideo { video_id: id });
        myself.send_after(delay, || VideoMsg::RestartJob);
        Ok(())
    }
}
