//! `Membership`: keeps this node connected to every peer of `cluster.toml` and decides who is
//! live; the only writer of the [`Cluster`](crate::cluster::Cluster) view and so of the ring.
//!
//! What ractor_cluster does not do, this actor does (design brief section 4):
//! - **dial** every peer's NodeServer, and **re-dial** with exponential backoff (0.5 s doubling
//!   to 5 s) after a failed dial or a lost session;
//! - **heartbeat**: every `heartbeat` it pings each peer's Gateway with a timeout; a peer is
//!   live once it answers;
//! - **fence** a hung peer (for instance one stopped with SIGSTOP, whose TCP session stays
//!   open): after `fence_after` missed heartbeats it is marked dead and its session is stopped,
//!   so the ring moves its keys and its unfinished work is re-dispatched. When the peer wakes,
//!   it finds itself disconnected, re-dials, and stands down wherever a newer lease exists.
//!
//! - **settle**: at start, and again after it finds it was paused (a gap between its own
//!   heartbeats longer than peers wait before fencing it), this node takes no ownership
//!   decision until a round completes: every configured peer has answered a heartbeat, or
//!   [`round_timeout`] has passed without an answer from it. Until then
//!   [`Cluster::is_settled`](crate::cluster::Cluster::is_settled) is false and the reconcile
//!   loop waits (issue 9).
//!
//! Supervised by the `NodeSupervisor`. Session events arrive from the NodeServer through a
//! subscription that casts them here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage, NodeSessionMessage};
use tokio::time::Instant;

use crate::actors::Ctx;
use crate::cluster::protocol::{Reply, Request};
use crate::storage::events::NewEvent;

/// The membership actor.
pub struct Membership;

/// Startup arguments.
pub struct MembershipArgs {
    /// Node context (its `cluster` view is what this actor maintains).
    pub ctx: Ctx,
    /// This node's NodeServer.
    pub node_server: ActorRef<NodeServerMessage>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Missed heartbeats before a peer is fenced.
    pub fence_after: u32,
}

/// Messages.
pub enum MembershipMsg {
    /// Periodic: ping live sessions, dial missing ones.
    Heartbeat,
    /// A session to `peer` is authenticated and ready.
    SessionReady {
        /// Peer node id.
        peer: String,
        /// The session actor (stopped to fence the peer).
        session: ActorRef<NodeSessionMessage>,
    },
    /// A session to `peer` ended.
    SessionDown {
        /// Peer node id.
        peer: String,
        /// Which session (a pair of nodes can hold one in each direction).
        session: ractor::ActorId,
    },
    /// A dial attempt ended.
    Dialed {
        /// Peer node id.
        peer: String,
        /// Whether the TCP connection opened.
        ok: bool,
    },
    /// A heartbeat answered (or not).
    Pong {
        /// Peer node id.
        peer: String,
        /// Whether it answered in time.
        ok: bool,
    },
}
impl ractor::Message for MembershipMsg {}

struct Peer {
    addr: SocketAddr,
    /// Every open session to this peer (each side may have dialed), by session actor id.
    sessions: std::collections::HashMap<ractor::ActorId, ActorRef<NodeSessionMessage>>,
    session_since: Instant,
    misses: u32,
    dialing: bool,
    next_dial: Instant,
    backoff: Duration,
    ping_in_flight: bool,
    /// Answered a heartbeat since the current round started.
    heard: bool,
}

/// State.
pub struct MembershipState {
    ctx: Ctx,
    node_server: ActorRef<NodeServerMessage>,
    heartbeat: Duration,
    fence_after: u32,
    peers: BTreeMap<String, Peer>,
    /// When the current settling round started.
    round_started: Instant,
    /// When the last heartbeat tick ran (a long gap means this node was paused).
    last_tick: Instant,
}

/// How long a settling round waits for a peer that does not answer before giving up on it:
/// as long as peers wait before fencing a silent node, and at least 5 s, enough for a live
/// peer to be dialed, authenticated and pinged.
pub fn round_timeout(heartbeat: Duration, fence_after: u32) -> Duration {
    (heartbeat * fence_after.max(1)).max(Duration::from_secs(5))
}

/// Whether a gap of `gap` between two heartbeat ticks means this node was paused for as long
/// as its peers take to fence it (so its view, and any lease it holds, may be stale).
pub fn was_paused(gap: Duration, heartbeat: Duration, fence_after: u32) -> bool {
    gap > heartbeat * (fence_after.max(1) + 1)
}

/// Whether a round can end: every peer answered or the round has run `timeout`.
pub fn round_complete<'a>(
    heard: impl IntoIterator<Item = &'a bool>,
    elapsed: Duration,
    timeout: Duration,
) -> bool {
    elapsed >= timeout || heard.into_iter().all(|h| *h)
}

struct Subscription(ActorRef<MembershipMsg>);

fn peer_id(ses: &NodeServerSessionInformation) -> Option<String> {
    let name = &ses.peer_name.as_ref()?.name;
    Some(name.split('@').next().unwrap_or(name).to_string())
}

impl NodeEventSubscription for Subscription {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        if let Some(peer) = peer_id(&ses) {
            let _ = self.0.cast(MembershipMsg::SessionReady {
                peer,
                session: ses.actor.clone(),
            });
        }
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        if let Some(peer) = peer_id(&ses) {
            let _ = self.0.cast(MembershipMsg::SessionDown {
                peer,
                session: ses.actor.get_id(),
            });
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Membership {
    /// Start a settling round: no ownership decisions until every peer is heard again.
    async fn start_round(state: &mut MembershipState, why: &str) {
        state.round_started = Instant::now();
        for p in state.peers.values_mut() {
            p.heard = false;
        }
        if state.ctx.cluster.set_settled(false) {
            tracing::warn!(why, "view unsettled: waiting for a heartbeat round");
            state
                .ctx
                .events
                .append(NewEvent::node("view_unsettled").detail(why.to_string()))
                .await;
        }
    }

    /// End the round if it is complete.
    async fn maybe_settle(state: &MembershipState) {
        if state.ctx.cluster.is_settled() {
            return;
        }
        let timeout = round_timeout(state.heartbeat, state.fence_after);
        let elapsed = state.round_started.elapsed();
        if !round_complete(state.peers.values().map(|p| &p.heard), elapsed, timeout) {
            return;
        }
        let silent: Vec<&str> = state
            .peers
            .iter()
            .filter(|(_, p)| !p.heard)
            .map(|(id, _)| id.as_str())
            .collect();
        if state.ctx.cluster.set_settled(true) {
            let detail = if silent.is_empty() {
                "every peer answered".to_string()
            } else {
                format!("no answer in {timeout:?} from {}", silent.join(", "))
            };
            tracing::info!(%detail, "view settled");
            state
                .ctx
                .events
                .append(NewEvent::node("view_settled").detail(detail))
                .await;
        }
    }

    async fn mark(state: &MembershipState, peer: &str, live: bool, why: &str) {
        if state.ctx.cluster.set_live(peer, live) {
            let kind = if live { "member_up" } else { "member_down" };
            tracing::info!(peer, why, "{kind}");
            state
                .ctx
                .events
                .append(NewEvent::node(kind).detail(format!("{peer}: {why}")))
                .await;
        }
    }
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        args.node_server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "reel-membership".into(),
                subscription: Box::new(Subscription(myself.clone())),
            })?;
        let now = Instant::now();
        let peers = args
            .ctx
            .cluster
            .peers()
            .into_iter()
            .filter_map(|m| {
                Some((
                    m.id,
                    Peer {
                        addr: m.cluster?,
                        sessions: std::collections::HashMap::new(),
                        session_since: now,
                        misses: 0,
                        dialing: false,
                        next_dial: now,
                        backoff: MIN_BACKOFF,
                        ping_in_flight: false,
                        heard: false,
                    },
                ))
            })
            .collect();
        myself.send_interval(args.heartbeat, || MembershipMsg::Heartbeat);
        myself.send_message(MembershipMsg::Heartbeat)?;
        Ok(MembershipState {
            ctx: args.ctx,
            node_server: args.node_server,
            heartbeat: args.heartbeat,
            fence_after: args.fence_after,
            peers,
            round_started: now,
            last_tick: now,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::Heartbeat => {
                let now = Instant::now();
                let gap = now - state.last_tick;
                state.last_tick = now;
                if was_paused(gap, state.heartbeat, state.fence_after) {
                    let why = format!("this node was paused for {gap:?}");
                    Self::start_round(state, &why).await;
                }
                Self::maybe_settle(state).await;
                let timeout = state.heartbeat.max(Duration::from_millis(500));
                for (id, p) in state.peers.iter_mut() {
                    match p.sessions.is_empty() {
                        true if !p.dialing && now >= p.next_dial => {
                            p.dialing = true;
                            let (server, addr, me, peer) = (
                                state.node_server.clone(),
                                p.addr,
                                myself.clone(),
                                id.clone(),
                            );
                            tokio::spawn(async move {
                                let ok =
                                    ractor_cluster::client_connect(&server, addr).await.is_ok();
                                let _ = me.cast(MembershipMsg::Dialed { peer, ok });
                            });
                        }
                        false if !p.ping_in_flight => {
                            // A new session needs a moment before its Gateway is announced.
                            if state.ctx.cluster.gateway(id).is_none()
                                && p.session_since.elapsed() < 10 * timeout
                            {
                                continue;
                            }
                            p.ping_in_flight = true;
                            let (cluster, me, peer) =
                                (state.ctx.cluster.clone(), myself.clone(), id.clone());
                            tokio::spawn(async move {
                                let ok = matches!(
                                    cluster.request(&peer, &Request::Ping, timeout).await,
                                    Ok(Reply::Pong { .. })
                                );
                                let _ = me.cast(MembershipMsg::Pong { peer, ok });
                            });
                        }
                        _ => {}
                    }
                }
            }
            MembershipMsg::Dialed { peer, ok } => {
                if let Some(p) = state.peers.get_mut(&peer) {
                    p.dialing = false;
                    if !ok || p.sessions.is_empty() {
                        // Until a session is ready, keep re-dialing with backoff.
                        p.next_dial = Instant::now() + p.backoff;
                        p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            MembershipMsg::SessionReady { peer, session } => {
                if let Some(p) = state.peers.get_mut(&peer) {
                    p.sessions.insert(session.get_id(), session);
                    p.session_since = Instant::now();
                    p.misses = 0;
                    p.backoff = MIN_BACKOFF;
                }
            }
            MembershipMsg::SessionDown { peer, session } => {
                let Some(p) = state.peers.get_mut(&peer) else {
                    return Ok(());
                };
                p.sessions.remove(&session);
                if p.sessions.is_empty() {
                    p.ping_in_flight = false;
                    p.next_dial = Instant::now() + p.backoff;
                    Self::mark(state, &peer, false, "connection lost").await;
                }
            }
            MembershipMsg::Pong { peer, ok } => {
                let fence_after = state.fence_after;
                let Some(p) = state.peers.get_mut(&peer) else {
                    return Ok(());
                };
                p.ping_in_flight = false;
                if ok {
                    p.misses = 0;
                    p.heard = true;
                    Self::mark(state, &peer, true, "answers heartbeats").await;
                    Self::maybe_settle(state).await;
                    return Ok(());
                }
                p.misses += 1;
                if p.misses >= fence_after {
                    // Fence: a hung peer keeps its TCP session open; cut it so the peer must
                    // reconnect (and find newer leases) when it wakes.
                    for (_, session) in p.sessions.drain() {
                        session.stop(Some("fenced: missed heartbeats".into()));
                    }
                    p.misses = 0;
                    p.next_dial = Instant::now() + p.backoff;
                    let why = format!("fenced after {fence_after} missed heartbeats");
                    Self::mark(state, &peer, false, &why).await;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_ends_when_every_peer_answered_or_on_timeout() {
        let t = round_timeout(Duration::from_millis(300), 3);
        assert_eq!(t, Duration::from_secs(5), "never shorter than 5 s");
        assert_eq!(
            round_timeout(Duration::from_secs(2), 3),
            Duration::from_secs(6)
        );
        assert!(!round_complete(&[true, false], Duration::from_secs(1), t));
        assert!(round_complete(&[true, true], Duration::from_secs(1), t));
        assert!(
            round_complete(&[false, false], t, t),
            "silent peers are given up on"
        );
        assert!(
            round_complete(&[], Duration::ZERO, t),
            "no peers: nothing to wait for"
        );
    }

    #[test]
    fn a_gap_longer_than_the_fencing_time_is_a_pause() {
        let hb = Duration::from_secs(1);
        assert!(
            !was_paused(Duration::from_millis(1100), hb, 3),
            "a late tick"
        );
        assert!(!was_paused(Duration::from_secs(4), hb, 3));
        assert!(
            was_paused(Duration::from_secs(5), hb, 3),
            "peers fenced it by now"
        );
    }
}
