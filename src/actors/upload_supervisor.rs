//! `UploadSupervisor`: starts one `UploadActor` per resumable upload that a request names, and
//! sweeps expired uploads.
//!
//! ```text
//! UploadSupervisor        (this file) map upload id -> actor; periodic expiry sweep
//!  └─ UploadActor × N     (upload.rs) one per upload being written; stops when complete,
//!                          terminated or rejected
//! ```
//!
//! - `Create` stores a new upload's `info.json` (the first object of the upload) and starts its
//!   actor; `Get` starts the actor of an existing upload from `info.json` when none runs (after
//!   a node restart, the first `HEAD` or `PATCH` does this: the upload resumes where its stored
//!   parts end).
//! - A crashed `UploadActor` is only forgotten: its state is all in the object store, and the
//!   next request starts a fresh one. [`call_upload`] is how requests reach an upload: a call
//!   that finds its actor stopped (terminated, expired, completed, crashed) asks again, so the
//!   store answers (`NotFound`, or a fresh actor) and a client never sees the gap.
//! - `Sweep` (every `sweep_every`, and on demand) deletes uploads past their `expires_ms`:
//!   unfinished ones lose their parts, finished ones their remembered answer. It also completes
//!   uploads whose bytes all arrived but whose node stopped before making the video, and
//!   deletes what bodies cut by a crash left, once untouched for the expiry time
//!   (`Storage::sweep_cut_uploads`).
//!
//! Routing: [`route_upload`] says which node serves (and sweeps) an upload: its home node
//! while live, else the ring's owner of `upload:{id}`.

use std::collections::HashMap;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::upload::{UploadActor, UploadArgs, UploadError, UploadMsg};
use crate::actors::video_supervisor::VideoSupervisorMsg;
use crate::actors::Ctx;
use crate::model::now_ms;
use crate::storage::keys;
use crate::storage::uploads::UploadInfo;

/// Which node serves requests for an upload (and sweeps it when it expires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadRoute {
    /// This node.
    Here,
    /// Another node, by id: the HTTP layer proxies or redirects (307) the request there.
    Node(String),
}

/// Where requests for `upload_id` go, in this node's view of the cluster. The one routing
/// decision for uploads (the HTTP layer forwards, the sweep filters with it).
///
/// The id names its home node ([`keys::upload_home`]: the node that created it). Requests go to
/// the home while it is a live member; when it is not (dead, or an id from an earlier node),
/// to the ring's owner of `upload:{id}` among the live nodes, which takes the upload over from
/// the object store (all of its state lives there).
pub fn route_upload(cluster: &crate::cluster::Cluster, upload_id: &str) -> UploadRoute {
    let target = match keys::upload_home(upload_id) {
        Some(home) if cluster.is_live(home) => home.to_string(),
        _ => cluster.home(&format!("upload:{upload_id}")),
    };
    if target == cluster.self_id() {
        UploadRoute::Here
    } else {
        UploadRoute::Node(target)
    }
}

/// How long asking the supervisor for an upload's actor may take.
const GET_TIMEOUT: Duration = Duration::from_secs(30);

/// The running actor of `upload_id`, from the supervisor (which starts one from the object
/// store's `info.json` if none runs).
///
/// Errors: `NotFound` for an upload that is not in the store (never created, terminated,
/// expired), `Unavailable` when the supervisor does not answer in 30 s or has stopped.
pub async fn upload_actor(
    uploads: &ActorRef<UploadSupervisorMsg>,
    upload_id: &str,
) -> Result<ActorRef<UploadMsg>, UploadError> {
    let r = uploads
        .call(
            |reply| UploadSupervisorMsg::Get {
                upload_id: upload_id.to_string(),
                reply,
            },
            Some(GET_TIMEOUT),
        )
        .await;
    match r {
        Ok(CallResult::Success(r)) => r,
        Ok(CallResult::Timeout) => Err(UploadError::Unavailable(
            "the upload supervisor did not answer in time".into(),
        )),
        Ok(CallResult::SenderError) | Err(_) => {
            Err(UploadError::Unavailable("the node is shutting down".into()))
        }
    }
}

/// Sends `msg` to the actor of `upload_id` (`actor` when the caller already holds it, else
/// looked up) and waits up to `timeout` for its answer.
///
/// An actor can stop between the lookup and the call: a `DELETE` terminated the upload, it
/// expired, completed or crashed. The call then finds no one to answer; instead of a `503`,
/// the upload is looked up again, so the object store decides: `NotFound` for an upload that
/// is gone, a fresh actor started from `info.json` for one that is not. Only messages that are
/// safe to send twice go this way (`Info`, `Begin`, `Terminate`): an actor that stopped
/// mid-message took its lease with it, and deleting an upload again finds nothing. Returns the
/// actor that answered, with its answer.
///
/// Errors: those of [`upload_actor`]; `Unavailable` when the actor does not answer within
/// `timeout`, or when three actors in a row stopped before answering.
pub async fn call_upload<T: Send + 'static>(
    uploads: &ActorRef<UploadSupervisorMsg>,
    upload_id: &str,
    actor: Option<ActorRef<UploadMsg>>,
    msg: impl Fn(RpcReplyPort<T>) -> UploadMsg,
    timeout: Duration,
) -> Result<(ActorRef<UploadMsg>, T), UploadError> {
    let mut actor = actor;
    for _ in 0..3 {
        let a = match actor.take() {
            Some(a) => a,
            None => upload_actor(uploads, upload_id).await?,
        };
        match a.call(&msg, Some(timeout)).await {
            Ok(CallResult::Success(v)) => return Ok((a, v)),
            Ok(CallResult::Timeout) => {
                return Err(UploadError::Unavailable(
                    "the upload did not answer in time".into(),
                ))
            }
            // Stopped before answering: its status is already `Stopping`, so the supervisor
            // answers from the store on the next lookup.
            Ok(CallResult::SenderError) | Err(_) => {}
        }
    }
    Err(UploadError::Unavailable(
        "the upload's actor kept stopping; retry".into(),
    ))
}

/// The supervisor actor.
pub struct UploadSupervisor;

/// Startup arguments.
pub struct UploadSupervisorArgs {
    /// Node context (storage, limits).
    pub ctx: Ctx,
    /// Handed to every `UploadActor`: where completed uploads start their video.
    pub videos: ActorRef<VideoSupervisorMsg>,
    /// How often expired uploads are swept.
    pub sweep_every: Duration,
}

/// Messages.
pub enum UploadSupervisorMsg {
    /// Store a new upload's state and start its actor.
    Create {
        /// The new upload (offset 0, or already complete for a dedupe answer).
        info: Box<UploadInfo>,
        /// Its actor.
        reply: RpcReplyPort<Result<ActorRef<UploadMsg>, UploadError>>,
    },
    /// The actor of an existing upload, started from `info.json` if none runs.
    Get {
        /// A valid upload id.
        upload_id: String,
        /// The actor, or `NotFound`.
        reply: RpcReplyPort<Result<ActorRef<UploadMsg>, UploadError>>,
    },
    /// Delete expired uploads; replies with how many were deleted (also a test barrier).
    Sweep(Option<RpcReplyPort<usize>>),
}
impl ractor::Message for UploadSupervisorMsg {}

/// State.
pub struct UploadSupervisorState {
    ctx: Ctx,
    videos: ActorRef<VideoSupervisorMsg>,
    running: HashMap<String, ActorRef<UploadMsg>>,
    by_actor: HashMap<ActorId, String>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl UploadSupervisor {
    async fn start(
        myself: &ActorRef<UploadSupervisorMsg>,
        state: &mut UploadSupervisorState,
        info: UploadInfo,
    ) -> Result<ActorRef<UploadMsg>, UploadError> {
        let id = info.id.clone();
        let (actor, _) = Actor::spawn_linked(
            Some(state.ctx.name(&format!("upload:{id}"))),
            UploadActor,
            UploadArgs {
                ctx: state.ctx.clone(),
                videos: state.videos.clone(),
                info,
            },
            myself.get_cell(),
        )
        .await
        .map_err(|e| UploadError::Unavailable(format!("cannot start the upload's actor: {e}")))?;
        state.by_actor.insert(actor.get_id(), id.clone());
        state.running.insert(id, actor.clone());
        Ok(actor)
    }

    fn running(state: &mut UploadSupervisorState, id: &str) -> Option<ActorRef<UploadMsg>> {
        let actor = state.running.get(id)?.clone();
        if crate::actors::is_live(actor.get_status()) {
            Some(actor)
        } else {
            // Stopping: its termination event is still on its way.
            state.running.remove(id);
            state.by_actor.remove(&actor.get_id());
            None
        }
    }

    async fn get(
        myself: &ActorRef<UploadSupervisorMsg>,
        state: &mut UploadSupervisorState,
        id: String,
    ) -> Result<ActorRef<UploadMsg>, UploadError> {
        if let Some(a) = Self::running(state, &id) {
            return Ok(a);
        }
        match state.ctx.storage.load_upload(&id).await? {
            Some(info) if info.expires_ms > now_ms() => Self::start(myself, state, info).await,
            _ => Err(UploadError::NotFound(format!(
                "no upload {id} (never created, terminated, or expired)"
            ))),
        }
    }

    async fn sweep(
        myself: &ActorRef<UploadSupervisorMsg>,
        state: &mut UploadSupervisorState,
    ) -> usize {
        let storage = state.ctx.storage.clone();
        // Every node sweeps these: a crashed node's leftovers belong to no upload id, and a
        // delete that finds nothing is no error.
        let expiry = Duration::from_secs(state.ctx.limits.upload_expiry_seconds);
        let cut = match storage.sweep_cut_uploads(expiry).await {
            Ok(0) => 0,
            Ok(n) => {
                tracing::info!(
                    files = n,
                    "deleted what uploads cut by a crash left, untouched for {} s",
                    expiry.as_secs()
                );
                n
            }
            Err(e) => {
                tracing::warn!("upload sweep cannot clear what cut uploads left: {e}");
                0
            }
        };
        let ids = match storage.list_upload_ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("upload sweep cannot list uploads: {e}");
                return cut;
            }
        };
        let now = now_ms();
        let mut deleted = cut;
        for id in ids {
            if route_upload(&state.ctx.cluster, &id) != UploadRoute::Here {
                continue;
            }
            let expired = match storage.load_upload(&id).await {
                Ok(Some(info))
                    if info.expires_ms > now
                        && info.offset == info.length
                        && !info.is_complete()
                        && !state.running.contains_key(&id) =>
                {
                    // Every byte arrived but the node stopped before the video was made:
                    // starting the actor completes it.
                    if let Err(e) = Self::get(myself, state, id.clone()).await {
                        tracing::warn!(upload_id = %id, "cannot complete a stored upload: {e}");
                    }
                    false
                }
                Ok(Some(info)) => info.expires_ms <= now,
                // Parts without a state: a terminated upload's leftovers.
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(upload_id = %id, "upload sweep cannot read the state: {e}");
                    false
                }
            };
            if !expired {
                continue;
            }
            if let Some(actor) = state.running.remove(&id) {
                state.by_actor.remove(&actor.get_id());
                actor.stop(Some("expired".into()));
            }
            match storage.delete_upload(&id).await {
                Ok(()) => {
                    deleted += 1;
                    tracing::info!(upload_id = %id, "expired upload deleted");
                }
                Err(e) => tracing::warn!(upload_id = %id, "cannot delete expired upload: {e}"),
            }
        }
        deleted
    }
}

impl Actor for UploadSupervisor {
    type Msg = UploadSupervisorMsg;
    type State = UploadSupervisorState;
    type Arguments = UploadSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<UploadSupervisorMsg>,
        args: UploadSupervisorArgs,
    ) -> Result<UploadSupervisorState, ActorProcessingErr> {
        let timer = myself.send_interval(args.sweep_every, || UploadSupervisorMsg::Sweep(None));
        Ok(UploadSupervisorState {
            ctx: args.ctx,
            videos: args.videos,
            running: HashMap::new(),
            by_actor: HashMap::new(),
            timer: Some(timer),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<UploadSupervisorMsg>,
        state: &mut UploadSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<UploadSupervisorMsg>,
        msg: UploadSupervisorMsg,
        state: &mut UploadSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            UploadSupervisorMsg::Create { info, reply } => {
                let r = match state.ctx.storage.save_upload(&info).await {
                    Ok(()) => Self::start(&myself, state, *info).await,
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            UploadSupervisorMsg::Get { upload_id, reply } => {
                let r = Self::get(&myself, state, upload_id).await;
                let _ = reply.send(r);
            }
            UploadSupervisorMsg::Sweep(reply) => {
                let n = Self::sweep(&myself, state).await;
                if let Some(r) = reply {
                    let _ = r.send(n);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<UploadSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut UploadSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        if let Some(id) = state.by_actor.remove(&cell.get_id()) {
            if state
                .running
                .get(&id)
                .is_some_and(|a| a.get_id() == cell.get_id())
            {
                state.running.remove(&id);
            }
            if let Some(err) = failure {
                tracing::warn!(upload_id = %id, "upload actor crashed: {err}; the next request restarts it from the object store");
            }
        }
        Ok(())
    }
}

/// How often to sweep for an expiry of `expiry_seconds`: half of it, between 100 ms and 60 s.
pub fn sweep_interval(expiry_seconds: u64) -> Duration {
    Duration::from_millis((expiry_seconds.saturating_mul(500)).clamp(100, 60_000))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::actors::NodeContext;
    use crate::config::StorageLocation;
    use crate::storage::Storage;

    /// Stands in for the VideoSupervisor; these uploads never complete.
    struct NoVideos;
    impl Actor for NoVideos {
        type Msg = VideoSupervisorMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    /// A supervisor of node `u1` on an in-memory store, with one stored upload of 10 bytes.
    async fn supervisor_with_one_upload() -> (
        tempfile::TempDir,
        Storage,
        ActorRef<UploadSupervisorMsg>,
        String,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageLocation::Memory).unwrap();
        let ctx = Arc::new(NodeContext::for_tests("u1", storage.clone(), dir.path()));
        let (videos, _) = Actor::spawn(None, NoVideos, ()).await.unwrap();
        let (sup, _) = Actor::spawn(
            None,
            UploadSupervisor,
            UploadSupervisorArgs {
                ctx,
                videos,
                sweep_every: Duration::from_secs(3600),
            },
        )
        .await
        .unwrap();
        let id = keys::new_upload_id("u1");
        let info = UploadInfo::for_tests(&id, 10);
        let created = ractor::call!(sup, |reply| UploadSupervisorMsg::Create {
            info: Box::new(info),
            reply
        })
        .unwrap();
        assert!(created.is_ok());
        (dir, storage, sup, id)
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_call_to_a_terminated_uploads_actor_is_answered_from_the_store() {
        let (_dir, storage, sup, id) = supervisor_with_one_upload().await;
        let actor = upload_actor(&sup, &id).await.unwrap();
        // The DELETE: the actor deletes the upload, answers, then stops.
        let (_, deleted) = call_upload(&sup, &id, Some(actor.clone()), UploadMsg::Terminate, T)
            .await
            .unwrap();
        deleted.unwrap();
        assert!(storage.load_upload(&id).await.unwrap().is_none());
        // A HEAD that looked the actor up before the DELETE finished holds that stale actor:
        // its call finds it stopped, and the store says the upload is gone (404, not 503).
        let head = call_upload(&sup, &id, Some(actor), UploadMsg::Info, T).await;
        assert!(
            matches!(head, Err(UploadError::NotFound(_))),
            "{:?}",
            head.map(|(_, i)| i)
        );
    }

    #[tokio::test]
    async fn a_call_to_a_stopped_actor_of_a_stored_upload_reaches_a_fresh_one() {
        let (_dir, _storage, sup, id) = supervisor_with_one_upload().await;
        let first = upload_actor(&sup, &id).await.unwrap();
        // Stopped (a crash, say) with the upload still in the store.
        first.stop_and_wait(None, Some(T)).await.unwrap();
        let (answered, info) = call_upload(&sup, &id, Some(first.clone()), UploadMsg::Info, T)
            .await
            .unwrap();
        assert_ne!(answered.get_id(), first.get_id());
        assert_eq!(
            (info.id.as_str(), info.length, info.offset),
            (id.as_str(), 10, 0)
        );
    }

    #[tokio::test]
    async fn an_unknown_upload_is_not_found() {
        let (_dir, _storage, sup, _id) = supervisor_with_one_upload().await;
        let other = keys::new_upload_id("u1");
        let r = call_upload(&sup, &other, None, UploadMsg::Info, T).await;
        assert!(matches!(r, Err(UploadError::NotFound(_))));
    }
}
