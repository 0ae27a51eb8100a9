//! `VideoSupervisor`: keeps one `VideoActor` running for every video of this node that is not
//! terminal.
//!
//! - `Ensure(id)` starts the video's actor unless it runs (idempotent: a duplicate upload, or
//!   two racing ones, never start a second job; the actor name `{node}/video:{id}` is unique).
//! - `Recover` (the reconcile loop: at node start, every `reconcile_every`, and shortly after
//!   each ring change) lists the `active/` index in the object store (the videos not yet
//!   terminal, not every record ever uploaded); every video in `uploaded` or
//!   `processing` whose home on the ring is this node gets an actor; a running video whose home
//!   moved to another live node is handed off (its actor stops; the new home claims a newer
//!   lease). So a node restarted mid-job finishes the job without help, and a dead node's
//!   videos are taken over by their new homes.
//! - Neither `Ensure` nor `Recover` acts while the cluster view is not settled (the node has
//!   not yet heard every peer since it started or woke): a node that sees only itself would
//!   find itself home of every video.
//! - Starting a video claims its lease first (`storage::lease`): a claim a live holder refuses
//!   is retried once that lease would expire (a holder that hands off releases it sooner and
//!   asks the new home to claim at once). A hand-off waits for the video actor to stop, so
//!   its job's tasks are cancelled and its lease released before the new home is asked.
//! - A `VideoActor` that crashes is restarted (it re-reads its record); after
//!   `max_job_restarts` crashes of the same video it is left stopped and logged.

use std::collections::{HashMap, HashSet};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::node::ensure_video;
use crate::actors::video::{VideoActor, VideoArgs, VideoMsg};
use crate::actors::worker_pool::PoolMsg;
use crate::actors::Ctx;
use crate::cluster::ring::video_key;
use crate::storage::events::NewEvent;
use crate::storage::lease::Claim;

/// How long the ring must be quiet after a change before the reconcile runs: a peer that
/// flaps (a woken node re-dialing) should not move work twice.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// After a refused claim, how long past the lease's expiry to try again.
const RETRY_MARGIN: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a hand-off waits for the video actor to stop (its job cancels its tasks and the
/// lease is released) before going on.
const HAND_OFF_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The live status of a video processed on this node: asks `videos` for the video's actor,
/// then the actor for its status (2 s each). `None` when no actor runs for it here or it does
/// not answer in time.
pub async fn live_status(
    videos: &ActorRef<VideoSupervisorMsg>,
    video_id: &str,
) -> Option<crate::actors::video::VideoStatus> {
    let video_id = video_id.to_string();
    let actor = ractor::call_t!(
        videos,
        |reply| VideoSupervisorMsg::Lookup { video_id, reply },
        2000
    )
    .ok()
    .flatten()?;
    match actor
        .call(VideoMsg::Status, Some(std::time::Duration::from_secs(2)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
        _ => None,
    }
}

/// The supervisor actor.
pub struct VideoSupervisor;

/// Startup arguments.
pub struct VideoSupervisorArgs {
    /// Node context.
    pub ctx: Ctx,
    /// The pool every job dispatches to.
    pub pool: ActorRef<PoolMsg>,
}

/// Messages.
pub enum VideoSupervisorMsg {
    /// Start the video's actor unless it is running or the video is terminal.
    Ensure {
        /// The video.
        video_id: String,
    },
    /// Ensure every non-terminal video found in the object store.
    Recover,
    /// The running actor of a video, if any (to ask it for live status).
    Lookup {
        /// The video.
        video_id: String,
        /// The answer.
        reply: RpcReplyPort<Option<ActorRef<VideoMsg>>>,
    },
    /// Ids of videos with a running actor (a barrier for tests: answered after earlier casts).
    Active(RpcReplyPort<Vec<String>>),
}
impl ractor::Message for VideoSupervisorMsg {}

/// State.
pub struct VideoSupervisorState {
    ctx: Ctx,
    pool: ActorRef<PoolMsg>,
    running: HashMap<String, ActorRef<VideoMsg>>,
    by_actor: HashMap<ActorId, String>,
    crashes: HashMap<String, u32>,
    /// Videos whose lease a live owner holds, with a retry scheduled for when it expires.
    waiting: HashSet<String>,
}

impl VideoSupervisor {
    async fn ensure(
        myself: &ActorRef<VideoSupervisorMsg>,
        state: &mut VideoSupervisorState,
        id: String,
    ) {
        if state.running.contains_key(&id) {
            return;
        }
        if !state.ctx.cluster.is_settled() {
            // Starting a VideoActor claims a lease: an ownership decision, which waits until
            // this node has heard its peers. The video is in the active index; the reconcile
            // that runs when the view settles takes it up (here or on its real home).
            tracing::debug!(video_id = %id, "view not settled; not claiming yet");
            return;
        }
        // A video that is already ready or failed needs no owner. This happens to a node that
        // waited for a live owner's lease (the `Claim::Held` retry below): by the time the
        // lease would expire, the owner has usually finished and released it. Claiming it
        // anyway logged a claim and a release around an actor that stopped at once. Not a
        // safety check (the claim is the store's to grant): one read instead of those writes.
        if let Ok(Some(r)) = state.ctx.storage.load_record(&id).await {
            if r.state.is_terminal() {
                tracing::debug!(video_id = %id, state = r.state.as_str(), "terminal; not claiming");
                return;
            }
        }
        let me = state.ctx.node_id.clone();
        let claimed_at = tokio::time::Instant::now();
        let epoch = match state
            .ctx
            .storage
            .claim_lease(&id, &me, state.ctx.lease_ttl)
            .await
        {
            Ok(Claim::Claimed(epoch)) => epoch,
            Ok(Claim::Held {
                epoch,
                holder,
                expires_in,
            }) => {
                // A live owner (one that renews) keeps the video until it hands it off or
                // stops renewing: try again when the lease would expire (issue 9).
                if state.waiting.insert(id.clone()) {
                    tracing::info!(
                        video_id = %id, epoch, holder, ms = expires_in.as_millis() as u64,
                        "lease held by a live owner; retrying when it expires"
                    );
                    let retry = id.clone();
                    myself.send_after(expires_in + RETRY_MARGIN, move || {
                        VideoSupervisorMsg::Ensure { video_id: retry }
                    });
                }
                return;
            }
            Err(e) => {
                tracing::warn!(video_id = %id, "cannot claim the video's lease: {e}");
                return;
            }
        };
        state
            .ctx
            .events
            .append(
                NewEvent::video(&id, "lease_claimed")
                    .attempt(epoch as u32)
                    .detail(format!("epoch {epoch}")),
            )
            .await;
        let spawned = Actor::spawn_linked(
            Some(state.ctx.name(&format!("video:{id}"))),
            VideoActor,
            VideoArgs {
                ctx: state.ctx.clone(),
                video_id: id.clone(),
                pool: state.pool.clone(),
                lease_epoch: epoch,
                claimed_at,
            },
            myself.get_cell(),
        )
        .await;
        match spawned {
            Ok((actor, _)) => {
                state.by_actor.insert(actor.get_id(), id.clone());
                state.running.insert(id, actor);
            }
            Err(e) => {
                tracing::warn!(video_id = %id, "cannot start video actor: {e}");
                let _ = state.ctx.storage.release_lease(&id, epoch).await;
            }
        }
    }

    /// Hand a running video to its new home: stop its actor and wait (its job cancels its
    /// tasks on every node and the lease is released, see `VideoActor::post_stop`), then ask
    /// the new home to claim it now rather than when its reconcile next runs.
    async fn hand_off(
        myself: &ActorRef<VideoSupervisorMsg>,
        state: &VideoSupervisorState,
        id: &str,
        actor: &ActorRef<VideoMsg>,
        home: &str,
    ) {
        state
            .ctx
            .events
            .append(NewEvent::video(id, "handed_off").detail(format!("home is now {home}")))
            .await;
        let _ = actor
            .stop_and_wait(Some(format!("handed off to {home}")), Some(HAND_OFF_WAIT))
            .await;
        let (ctx, videos, id) = (state.ctx.clone(), myself.clone(), id.to_string());
        tokio::spawn(async move { ensure_video(&ctx, &videos, &id).await });
    }
}

impl Actor for VideoSupervisor {
    type Msg = VideoSupervisorMsg;
    type State = VideoSupervisorState;
    type Arguments = VideoSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VideoSupervisorMsg>,
        args: VideoSupervisorArgs,
    ) -> Result<VideoSupervisorState, ActorProcessingErr> {
        myself.send_interval(args.ctx.reconcile_every, || VideoSupervisorMsg::Recover);
        let mut changes = args.ctx.cluster.changes();
        let me = myself.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                // Debounce: wait until the ring has been quiet for SETTLE.
                loop {
                    match tokio::time::timeout(SETTLE, changes.changed()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return,
                        Err(_) => break,
                    }
                }
                if me.cast(VideoSupervisorMsg::Recover).is_err() {
                    return;
                }
            }
        });
        Ok(VideoSupervisorState {
            ctx: args.ctx,
            pool: args.pool,
            running: HashMap::new(),
            by_actor: HashMap::new(),
            crashes: HashMap::new(),
            waiting: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<VideoSupervisorMsg>,
        msg: VideoSupervisorMsg,
        state: &mut VideoSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VideoSupervisorMsg::Ensure { video_id } => {
                state.waiting.remove(&video_id);
                Self::ensure(&myself, state, video_id).await
            }
            VideoSupervisorMsg::Recover => {
                if !state.ctx.cluster.is_settled() {
                    // Neither take up nor hand off on a view that has not heard its peers;
                    // settling announces itself and brings this message back.
                    return Ok(());
                }
                let ids = match state.ctx.storage.list_active_ids().await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!("reconcile cannot list videos: {e}");
                        return Ok(());
                    }
                };
                let (mut resumed, mut handed_off) = (0, 0);
                let me = state.ctx.node_id.clone();
                for id in ids {
                    let record = match state.ctx.storage.load_record(&id).await {
                        Ok(Some(r)) => r,
                        // A marker whose upload is still creating the record, or died doing so.
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(video_id = %id, "unreadable record: {e}");
                            continue;
                        }
                    };
                    if record.state.is_terminal() {
                        let _ = state.ctx.storage.clear_active(&id).await;
                        continue;
                    }
                    let home = state.ctx.cluster.home(&video_key(&id));
                    if home == me {
                        if !state.running.contains_key(&id) {
                            resumed += 1;
                            Self::ensure(&myself, state, id).await;
                        }
                    } else if state.ctx.cluster.is_live(&home) {
                        if let Some(actor) = state.running.get(&id).cloned() {
                            handed_off += 1;
                            Self::hand_off(&myself, state, &id, &actor, &home).await;
                        }
                    }
                }
                // Intermediates and attempt directories that tasks outliving their job stored
                // after the video was committed (each such attempt leaves a marker in
                // `work/`): the home of each video with a `work/` prefix deletes them once the
                // video is ready.
                if let Ok(dirs) = state.ctx.storage.list_dirs("work").await {
                    for id in dirs {
                        if state.ctx.cluster.home(&video_key(&id)) != me {
                            continue;
                        }
                        if let Ok(Some(r)) = state.ctx.storage.load_record(&id).await {
                            if r.state == crate::model::VideoState::Ready {
                                let swept = state.ctx.storage.sweep_ready(&r).await;
                                if let Ok(n @ 1..) = swept {
                                    state
                                        .ctx
                                        .events
                                        .append(NewEvent::video(&id, "work_swept").detail(format!(
                                            "{n} intermediates and unchosen rendition files \
                                             stored after the commit"
                                        )))
                                        .await;
                                }
                            }
                        }
                    }
                }
                if resumed + handed_off > 0 {
                    state
                        .ctx
                        .events
                        .append(NewEvent::node("reconciled").detail(format!(
                            "{resumed} videos taken up, {handed_off} handed off"
                        )))
                        .await;
                }
            }
            VideoSupervisorMsg::Lookup { video_id, reply } => {
                let _ = reply.send(state.running.get(&video_id).cloned());
            }
            VideoSupervisorMsg::Active(reply) => {
                let _ = reply.send(state.running.keys().cloned().collect());
            }
        }
        Ok(())
    }

    /// Stopped (the node stops gracefully): stop every video actor and wait, so that each
    /// runs its `post_stop` (its job stopped, its lease released) instead of being killed
    /// with this actor. A video actor waits up to 5 s for its job.
    async fn post_stop(
        &self,
        myself: ActorRef<VideoSupervisorMsg>,
        _state: &mut VideoSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        super::stop_children_gracefully(&myself.get_cell(), std::time::Duration::from_secs(7))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<VideoSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut VideoSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(id) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.running.remove(&id);
        if let Some(err) = failure {
            let crashes = state.crashes.entry(id.clone()).or_default();
            *crashes += 1;
            let n = *crashes;
            state
                .ctx
                .events
                .append(
                    NewEvent::video(&id, "video_actor_crashed")
                        .attempt(n)
                        .detail(err),
                )
                .await;
            if n <= state.ctx.processing.max_job_restarts {
                Self::ensure(&myself, state, id).await;
            }
        } else {
            state.crashes.remove(&id);
        }
        Ok(())
    }
}
