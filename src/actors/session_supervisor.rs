//! `SessionSupervisor`: starts and watches the node's `SessionActor`s (one per playback
//! session served here).
//!
//! Sessions are cheap and hold no durable state, so a session that crashes or stops when idle is
//! not restarted in place: the supervisor forgets it, and the next request with its id opens it
//! again (cold; logged as `SESSION_REASSIGNED` with the reason). Opening is idempotent: two
//! requests racing to open one session get the same actor, also while it is still starting.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent};

use crate::actors::session::{SessionActor, SessionArgs, SessionHandle, SessionMsg, SessionTable};
use crate::actors::Ctx;
use crate::storage::playback::{PlaybackEvent, PlaybackRecord};
use crate::streaming::session::SessionId;
use crate::streaming::{Streaming, VideoInfo};

/// The actor.
pub struct SessionSupervisor;

/// Startup arguments.
pub struct SessionSupervisorArgs {
    /// Node context.
    pub ctx: Ctx,
    /// Node-wide streaming services handed to every session.
    pub streaming: Streaming,
    /// The node's open sessions, which this supervisor alone writes.
    pub table: SessionTable,
}

/// Why a session is being opened on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenReason {
    /// A multivariant playlist request created it here.
    New,
    /// Its home node `from` is dead and the ring chose this node (seed rule 7 fallback).
    TakeOver {
        /// The dead home node.
        from: String,
    },
    /// Its id names this node but no actor runs for it (it expired when idle, or this node
    /// restarted): it starts again, cold.
    Resumed,
}

/// Why a session was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenRefused {
    /// It plays another video, or its actor could not start; the sentence is for the client.
    NotHere(String),
    /// The node runs `streaming.max_sessions` sessions already.
    Full {
        /// The cap.
        max: usize,
    },
}

/// Messages.
pub enum SessionSupervisorMsg {
    /// The session's handle, its actor started if needed. Errors: it plays another video,
    /// cannot start, or the node runs as many sessions as it may.
    Open {
        /// The session.
        session: SessionId,
        /// The video it plays.
        video: Arc<VideoInfo>,
        /// Why it is opened (logged when it starts).
        reason: OpenReason,
        /// The session's handle (listed in the [`SessionTable`] too).
        reply: RpcReplyPort<Result<Arc<SessionHandle>, OpenRefused>>,
    },
    /// Number of running sessions.
    Count(RpcReplyPort<usize>),
}
impl ractor::Message for SessionSupervisorMsg {}

/// Running sessions by id, with the handle of each.
pub struct SessionSupervisorState {
    args: SessionSupervisorArgs,
    sessions: HashMap<String, (ActorRef<SessionMsg>, Arc<SessionHandle>)>,
    /// Session actors started so far: each start's registry name ends with its number.
    starts: u64,
}

/// The registry name of start `n` of session `session`'s actor on node `ctx`
/// (`session/{id}/{n}`). Numbered so that a session opened again while its previous actor
/// is still stopping (its handle closed, its name not yet released) is not refused as a
/// duplicate: the supervisor's own map, not the registry, keeps one running actor per id.
pub fn session_actor_name(ctx: &Ctx, session: &str, n: u64) -> String {
    ctx.name(&format!("session/{session}/{n}"))
}

/// Whether a listed session's actor, in `status` with its handle `open` or not, serves its
/// session: live ([`crate::actors::is_live`]: running, or still starting) with its handle open.
/// Taking a starting actor for a dead one dropped the new session from the table and refused
/// every request of it until it stopped, idle (a player resuming after a pause with requests
/// in parallel, or moving to this node when its home died).
fn opened(status: ActorStatus, open: bool) -> bool {
    open && crate::actors::is_live(status)
}

impl Actor for SessionSupervisor {
    type Msg = SessionSupervisorMsg;
    type State = SessionSupervisorState;
    type Arguments = SessionSupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionSupervisorState {
            args,
            sessions: HashMap::new(),
            starts: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionSupervisorMsg::Count(reply) => {
                let _ = reply.send(state.sessions.len());
            }
            SessionSupervisorMsg::Open {
                session,
                video,
                reason,
                reply,
            } => {
                let id = session.to_string();
                if let Some((actor, handle)) = state.sessions.get(&id) {
                    if opened(actor.get_status(), handle.is_open()) {
                        let res = if handle.video().video_id == video.video_id {
                            Ok(handle.clone())
                        } else {
                            // Never name the other video: a session id is no key to it.
                            Err(OpenRefused::NotHere(format!(
                                "no such session {id} for this video"
                            )))
                        };
                        let _ = reply.send(res);
                        return Ok(());
                    }
                    if let Some((_, handle)) = state.sessions.remove(&id) {
                        state.args.table.remove(&id, &handle);
                    }
                }
                let max = state.args.streaming.config.max_sessions;
                if state.sessions.len() >= max {
                    let _ = reply.send(Err(OpenRefused::Full { max }));
                    return Ok(());
                }
                let ctx = &state.args.ctx;
                let handle = SessionHandle::new(
                    ctx.clone(),
                    state.args.streaming.clone(),
                    session.clone(),
                    video.clone(),
                );
                state.starts += 1;
                let spawned = Actor::spawn_linked(
                    Some(session_actor_name(ctx, &id, state.starts)),
                    SessionActor,
                    SessionArgs {
                        handle: handle.clone(),
                    },
                    myself.get_cell(),
                )
                .await;
                match spawned {
                    Ok((actor, _)) => {
                        let (event, detail) = match &reason {
                            OpenReason::New => (PlaybackEvent::SessionStart, None),
                            OpenReason::TakeOver { from } => (
                                PlaybackEvent::SessionReassigned,
                                Some(format!(
                                    "home node {from} is unavailable: {} took the session over with a cold cache",
                                    ctx.node_id
                                )),
                            ),
                            OpenReason::Resumed => (
                                PlaybackEvent::SessionReassigned,
                                Some(format!(
                                    "no running session on {} (expired or node restarted): resumed with a cold cache",
                                    ctx.node_id
                                )),
                            ),
                        };
                        let mut r = PlaybackRecord::new(event, &video.video_id, &id, &ctx.node_id);
                        r.detail = detail;
                        if reason != OpenReason::New {
                            tracing::warn!(session = %id, "{}", r.detail.as_deref().unwrap_or(""));
                        }
                        state.args.streaming.log.record(r);
                        state.args.table.insert(handle.clone());
                        state.sessions.insert(id, (actor, handle.clone()));
                        let _ = reply.send(Ok(handle));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(OpenRefused::NotHere(format!(
                            "cannot start session {id}: {e}"
                        ))));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stopped (the node stops gracefully): stop every session and wait, so that each runs
    /// its `post_stop` (its handle closed, its `SESSION_END` logged) instead of being killed
    /// with this actor.
    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        super::stop_children_gracefully(&myself.get_cell(), std::time::Duration::from_secs(5))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let gone = match &event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = ?cell.get_name(), "session failed: {err}");
                Some(cell.get_id())
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => Some(cell.get_id()),
            _ => None,
        };
        if let Some(gone) = gone {
            let table = &state.args.table;
            state.sessions.retain(|id, (a, handle)| {
                let keep = a.get_id() != gone;
                if !keep {
                    handle.close();
                    table.remove(id, handle);
                }
                keep
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listed actor serves its session while it starts and while it runs, and only while its
    /// handle is open.
    #[test]
    fn a_starting_or_running_session_is_kept_and_a_stopping_one_is_not() {
        assert!(opened(ActorStatus::Starting, true));
        assert!(opened(ActorStatus::Running, true));
        for status in [
            ActorStatus::Unstarted,
            ActorStatus::Draining,
            ActorStatus::Stopping,
            ActorStatus::Stopped,
        ] {
            assert!(!opened(status, true), "{status:?}");
        }
        assert!(!opened(ActorStatus::Running, false), "its handle closed");
    }
}
