//! `VideoActor`: the lifecycle state machine of one video, and the only writer of its record.
//!
//! ```text
//! uploaded ──start──> processing ──JobReady──> ready
//!                         │
//!                         └──JobFailed / job crashed too often──> failed
//! ```
//!
//! Ownership: it runs under a lease epoch its supervisor claimed (`storage::lease`). It renews
//! the lease every third of its time to live; a renewal that finds a newer epoch, or a holder
//! that could not renew for a whole time to live (it was paused, or the store was unreachable),
//! stands down: it writes nothing more, cancels its tasks and stops. Every record write also
//! checks the epoch first, and the store's compare-and-swap refuses an older one regardless.
//! When it stops for any reason, it stops its job first (which cancels the job's tasks on every
//! node) and then releases the lease, so another node can claim the video at once.
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
use crate::storage::{lease, RecordWrite};

/// How long a stopping video actor waits for its job to stop.
const JOB_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// The lease epoch the supervisor claimed for this node.
    pub lease_epoch: u64,
    /// When the claim was sent: the lease's first "renewal".
    pub claimed_at: tokio::time::Instant,
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
    /// Periodic (every third of the lease's time to live), and from the job when a worker
    /// found a newer epoch: renew the lease, or stand down if a newer epoch exists or the last
    /// renewal is older than the time to live (a node that was hung or cut off learns it lost
    /// the video, and stops writing even before anyone claims it).
    RenewLease,
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
    /// The lease epoch this actor holds; every record write checks it is still the newest, so
    /// a fenced or superseded owner never writes over the new one.
    lease_epoch: u64,
    /// When the last successful renewal (or the claim) was sent.
    renewed_at: tokio::time::Instant,
    /// Set once the actor stood down: nothing more is written, the lease is not renewed.
    standing_down: bool,
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
        if state.standing_down {
            return Ok(false);
        }
        if !lease::holder_valid(state.renewed_at.elapsed(), state.ctx.lease_ttl) {
            Self::stand_down(myself, state, "the lease could not be renewed in time").await;
            return Ok(false);
        }
        if !state
            .ctx
            .storage
            .lease_holds(&state.record.video_id, state.lease_epoch)
            .await?
        {
            Self::stand_down(myself, state, "superseded").await;
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
                Self::stand_down(myself, state, "the store refused the record").await;
                Ok(false)
            }
        }
    }

    async fn stand_down(myself: &ActorRef<VideoMsg>, state: &mut VideoActorState, why: &str) {
        if std::mem::replace(&mut state.standing_down, true) {
            return;
        }
        state
            .ctx
            .events
            .append(
                NewEvent::video(&state.record.video_id, "stood_down")
                    .detail(format!("lease epoch {}: {why}", state.lease_epoch)),
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
        let mut state = VideoActorState {
            ctx: args.ctx,
            pool: args.pool,
            record,
            progress: 0.0,
            job_restarts: 0,
            lease_epoch: args.lease_epoch,
            renewed_at: args.claimed_at,
            standing_down: false,
        };
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
        myself.send_interval(lease::renew_every(state.ctx.lease_ttl), || {
            VideoMsg::RenewLease
        });
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
            VideoMsg::LeaseLost => Self::stand_down(&myself, state, "superseded").await,
            VideoMsg::RestartJob => {
                if !state.record.state.is_terminal() {
                    Self::spawn_job(&myself, state).await?;
                }
            }
            VideoMsg::RenewLease => {
                if state.standing_down || state.record.state.is_terminal() {
                    return Ok(());
                }
                if !lease::holder_valid(state.renewed_at.elapsed(), state.ctx.lease_ttl) {
                    Self::stand_down(&myself, state, "the lease could not be renewed in time")
                        .await;
                    return Ok(());
                }
                let sent = tokio::time::Instant::now();
                let id = &state.record.video_id;
                match state
                    .ctx
                    .storage
                    .renew_lease(id, state.lease_epoch, &state.ctx.node_id)
                    .await
                {
                    Ok(true) => state.renewed_at = sent,
                    Ok(false) => Self::stand_down(&myself, state, "superseded").await,
                    // The store is failing: try again at the next tick; once a whole time to
                    // live has passed without a renewal, stand down (above).
                    Err(e) => tracing::warn!(video_id = %id, "cannot renew the lease: {e}"),
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

    async fn post_stop(
        &self,
        myself: ActorRef<VideoMsg>,
        state: &mut VideoActorState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop the job gracefully (its post_stop cancels its live task attempts on every node;
        // a child killed with its parent would not run it), then let the lease go.
        myself
            .stop_children_and_wait(Some("video actor stopping".into()), Some(JOB_STOP_WAIT))
            .await;
        let id = &state.record.video_id;
        match state.ctx.storage.release_lease(id, state.lease_epoch).await {
            Ok(()) => {
                state
                    .ctx
                    .events
                    .append(
                        NewEvent::video(id, "lease_released")
                            .attempt(state.lease_epoch as u32)
                            .detail(format!("epoch {}", state.lease_epoch)),
                    )
                    .await
            }
            // Not fatal: the lease expires by itself after its time to live.
            Err(e) => tracing::warn!(video_id = %id, "cannot release the lease: {e}"),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::actors::testing::probe;
    use crate::actors::NodeContext;
    use crate::config::StorageLocation;
    use crate::storage::lease::Claim;
    use crate::storage::Storage;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    async fn setup() -> (Ctx, ActorRef<PoolMsg>, u64) {
        let scratch = tempfile::tempdir().unwrap().keep();
        let storage = Storage::open(&StorageLocation::Memory).unwrap();
        let record = VideoRecord::uploaded(ID.into(), "00".into(), 1, "default".into(), None);
        assert!(storage.create_record(&record).await.unwrap());
        let ctx = Arc::new(NodeContext::for_tests("n", storage, &scratch));
        let Claim::Claimed(epoch) = ctx
            .storage
            .claim_lease(ID, "n", ctx.lease_ttl)
            .await
            .unwrap()
        else {
            panic!("a fresh video's lease is free");
        };
        let (pool, _rx) = probe::<PoolMsg>().await;
        (ctx, pool, epoch)
    }

    /// A video actor holding `epoch` since `claimed_at`, and the handle that ends when it stops.
    async fn spawn(
        ctx: &Ctx,
        pool: ActorRef<PoolMsg>,
        epoch: u64,
        claimed_at: tokio::time::Instant,
    ) -> (ActorRef<VideoMsg>, ractor::concurrency::JoinHandle<()>) {
        Actor::spawn(
            None,
            VideoActor,
            VideoArgs {
                ctx: ctx.clone(),
                video_id: ID.into(),
                pool,
                lease_epoch: epoch,
                claimed_at,
            },
        )
        .await
        .unwrap()
    }

    async fn kinds(ctx: &Ctx) -> Vec<String> {
        ctx.events
            .for_video(ID)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// Issue 9: a holder that could not renew its lease for a whole time to live (here: the
    /// node was paused between the claim and the actor's first write, on tokio's paused clock)
    /// writes nothing, stands down by itself and releases the lease, so another node may
    /// claim the video at once.
    #[tokio::test(start_paused = true)]
    async fn a_holder_whose_lease_ran_out_writes_nothing_and_lets_the_video_go() {
        let (ctx, pool, epoch) = setup().await;
        let claimed_at = tokio::time::Instant::now();
        tokio::time::advance(ctx.lease_ttl + Duration::from_millis(1)).await;
        let (actor, handle) = spawn(&ctx, pool, epoch, claimed_at).await;
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("the actor stops by itself")
            .unwrap();
        drop(actor);
        let record = ctx.storage.load_record(ID).await.unwrap().unwrap();
        assert_eq!(record.state, VideoState::Uploaded, "nothing was written");
        let k = kinds(&ctx).await;
        assert!(k.contains(&"stood_down".to_string()), "{k:?}");
        assert!(!k.contains(&"state_changed".to_string()), "{k:?}");
        assert!(ctx.storage.lease_view(ID).await.unwrap().unwrap().released);
        assert!(matches!(
            ctx.storage.claim_lease(ID, "other", ctx.lease_ttl).await.unwrap(),
            Claim::Claimed(e) if e == epoch + 1
        ));
    }

    /// Issue 9: a renewal that finds a newer epoch stands the holder down (it learns it lost
    /// the video even with nothing to write), and it releases only its own, older epoch.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_finds_a_newer_owner_stands_down() {
        let (ctx, pool, epoch) = setup().await;
        let (actor, handle) = spawn(&ctx, pool, epoch, tokio::time::Instant::now()).await;
        // Another node takes over (as if this lease had expired) before the first renewal.
        ctx.storage
            .put(
                &crate::storage::keys::lease(ID, epoch + 1),
                bytes::Bytes::from_static(b"other"),
            )
            .await
            .unwrap();
        let _ = actor.cast(VideoMsg::RenewLease);
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("the actor stops by itself")
            .unwrap();
        let k = kinds(&ctx).await;
        assert!(k.contains(&"stood_down".to_string()), "{k:?}");
        let v = ctx.storage.lease_view(ID).await.unwrap().unwrap();
        assert_eq!(
            (v.epoch, v.released),
            (epoch + 1, false),
            "the new owner keeps its lease"
        );
        assert_eq!(
            ctx.storage.current_lease(ID).await.unwrap(),
            Some((epoch + 1, "other".to_string()))
        );
    }
}
