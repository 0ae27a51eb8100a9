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
//! Every decision above (misses, fencing, backoff, rounds, pauses) is made by [`PeerTable`], a
//! plain struct that takes the time as an argument and does no I/O; the actor feeds it events
//! and carries out what it returns (dials, pings, stopping sessions, marking members), so the
//! rules are tested on tokio's paused clock without a NodeServer.
//!
//! Supervised by the `NodeSupervisor`. Session events arrive from the NodeServer through a
//! subscription that casts them here.

use std::collections::{BTreeMap, HashMap};
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

/// State.
pub struct MembershipState {
    ctx: Ctx,
    node_server: ActorRef<NodeServerMessage>,
    /// Each peer's cluster address (what a dial connects to).
    addrs: BTreeMap<String, SocketAddr>,
    /// Misses, fencing, backoff, rounds: every decision, with the sessions to stop.
    table: PeerTable<ActorRef<NodeSessionMessage>>,
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

/// The first re-dial delay after a failed dial or a lost session.
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// The longest re-dial delay: the backoff doubles from [`MIN_BACKOFF`] up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the actor does for a peer at a heartbeat tick ([`PeerTable::due`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Dial the peer's NodeServer (it has no session, no dial is running and its backoff has
    /// run out); answer with [`PeerTable::on_dialed`].
    Dial(String),
    /// Ping the peer's Gateway with [`PeerTable::ping_timeout`]; answer with
    /// [`PeerTable::on_pong`].
    Ping(String),
}

/// What a heartbeat answer (or its absence) did to a peer ([`PeerTable::on_pong`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Pong<S> {
    /// It answered: misses reset, it counts as heard in the current round; mark it live.
    Answered,
    /// It missed this many heartbeats in a row, fewer than `fence_after`: nothing to do yet.
    Missed(u32),
    /// It missed `fence_after` in a row: it is fenced. These are its sessions, now forgotten,
    /// which the caller stops; mark it dead. Its next dial waits for the backoff.
    Fenced(Vec<S>),
}

/// Bookkeeping of one configured peer. `S` is the handle of an open session (the actor keeps
/// the session's `ActorRef` to stop it when fencing; tests use anything).
#[derive(Debug)]
pub struct PeerState<S> {
    /// Every open session to this peer (each side may have dialed), by session actor id.
    sessions: HashMap<ractor::ActorId, S>,
    /// When the newest session became ready.
    session_since: Instant,
    /// Heartbeats missed in a row.
    misses: u32,
    /// A dial is running.
    dialing: bool,
    /// No dial before this.
    next_dial: Instant,
    /// The delay the next failed dial waits.
    backoff: Duration,
    /// A ping is running.
    ping_in_flight: bool,
    /// Answered a heartbeat since the current round started.
    heard: bool,
}

impl<S> PeerState<S> {
    fn new(now: Instant) -> Self {
        Self {
            sessions: HashMap::new(),
            session_since: now,
            misses: 0,
            dialing: false,
            next_dial: now,
            backoff: MIN_BACKOFF,
            ping_in_flight: false,
            heard: false,
        }
    }

    /// Whether at least one session to the peer is open.
    pub fn connected(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// Heartbeats missed in a row (0 after an answer, a new session or a fence).
    pub fn misses(&self) -> u32 {
        self.misses
    }

    /// The earliest time of its next dial.
    pub fn next_dial(&self) -> Instant {
        self.next_dial
    }

    /// The delay a failed dial will wait before the next one, between [`MIN_BACKOFF`] and
    /// [`MAX_BACKOFF`].
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// Whether it answered a heartbeat since the current round started.
    pub fn heard(&self) -> bool {
        self.heard
    }
}

/// The membership actor's decisions, without the actor: per-peer heartbeat misses and
/// fencing, re-dial backoff, settling rounds and pause detection. Every method takes the
/// current time (`now`, tokio's clock, so tests run it on paused time) and returns what the
/// caller must do; none does I/O.
#[derive(Debug)]
pub struct PeerTable<S> {
    heartbeat: Duration,
    fence_after: u32,
    peers: BTreeMap<String, PeerState<S>>,
    /// When the current settling round started.
    round_started: Instant,
    /// When the last heartbeat tick ran (a long gap means this node was paused).
    last_tick: Instant,
}

impl<S> PeerTable<S> {
    /// A table of `peers` (node ids) at `now`: none connected, every one due for a dial, and a
    /// settling round started. `heartbeat` is the tick period; a peer is fenced after
    /// `fence_after` missed heartbeats in a row.
    pub fn new(
        peers: impl IntoIterator<Item = String>,
        heartbeat: Duration,
        fence_after: u32,
        now: Instant,
    ) -> Self {
        Self {
            heartbeat,
            fence_after,
            peers: peers
                .into_iter()
                .map(|id| (id, PeerState::new(now)))
                .collect(),
            round_started: now,
            last_tick: now,
        }
    }

    /// A peer's bookkeeping; `None` for a node that is not a configured peer.
    pub fn peer(&self, id: &str) -> Option<&PeerState<S>> {
        self.peers.get(id)
    }

    /// Missed heartbeats in a row that fence a peer.
    pub fn fence_after(&self) -> u32 {
        self.fence_after
    }

    /// How long a ping waits for its answer: a heartbeat period, at least 0.5 s.
    pub fn ping_timeout(&self) -> Duration {
        self.heartbeat.max(Duration::from_millis(500))
    }

    /// How long a settling round waits for silent peers ([`round_timeout`]).
    pub fn round_timeout(&self) -> Duration {
        round_timeout(self.heartbeat, self.fence_after)
    }

    /// A heartbeat tick at `now`. Returns the gap since the previous tick when it shows this
    /// node was paused ([`was_paused`]); the caller then starts a round
    /// ([`PeerTable::start_round`]).
    pub fn on_tick(&mut self, now: Instant) -> Option<Duration> {
        let gap = now - self.last_tick;
        self.last_tick = now;
        was_paused(gap, self.heartbeat, self.fence_after).then_some(gap)
    }

    /// Start a settling round at `now`: no peer counts as heard.
    pub fn start_round(&mut self, now: Instant) {
        self.round_started = now;
        for p in self.peers.values_mut() {
            p.heard = false;
        }
    }

    /// Whether the current round has ended at `now` ([`round_complete`]): `None` while it
    /// runs; once every peer answered, or [`PeerTable::round_timeout`] has passed, the ids of
    /// the peers that did not answer (empty when all did).
    pub fn round_end(&self, now: Instant) -> Option<Vec<&str>> {
        let elapsed = now - self.round_started;
        if !round_complete(
            self.peers.values().map(|p| &p.heard),
            elapsed,
            self.round_timeout(),
        ) {
            return None;
        }
        Some(
            self.peers
                .iter()
                .filter(|(_, p)| !p.heard)
                .map(|(id, _)| id.as_str())
                .collect(),
        )
    }

    /// What to do for each peer at a heartbeat tick at `now`, in peer id order, marking those
    /// dials and pings as running. A peer without a session is dialed once its backoff has
    /// run out; a connected peer is pinged unless a ping is running, or its session is newer
    /// than ten ping timeouts and `gateway_known(peer)` is false (a new session needs a moment
    /// before the peer's Gateway is announced).
    pub fn due(&mut self, now: Instant, gateway_known: impl Fn(&str) -> bool) -> Vec<Due> {
        let grace = 10 * self.ping_timeout();
        let mut out = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            match p.sessions.is_empty() {
                true if !p.dialing && now >= p.next_dial => {
                    p.dialing = true;
                    out.push(Due::Dial(id.clone()));
                }
                false if !p.ping_in_flight => {
                    if !gateway_known(id) && now - p.session_since < grace {
                        continue;
                    }
                    p.ping_in_flight = true;
                    out.push(Due::Ping(id.clone()));
                }
                _ => {}
            }
        }
        out
    }

    /// A dial of `peer` ended at `now` (`ok`: the TCP connection opened). Unless a session is
    /// ready by now, the next dial waits for the backoff, which then doubles up to
    /// [`MAX_BACKOFF`].
    pub fn on_dialed(&mut self, peer: &str, ok: bool, now: Instant) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.dialing = false;
            if !ok || p.sessions.is_empty() {
                p.next_dial = now + p.backoff;
                p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// A session `id` to `peer` became ready at `now`: misses and backoff start afresh.
    pub fn on_session_ready(&mut self, peer: &str, id: ractor::ActorId, session: S, now: Instant) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.sessions.insert(id, session);
            p.session_since = now;
            p.misses = 0;
            p.backoff = MIN_BACKOFF;
        }
    }

    /// Session `id` to `peer` ended at `now`. Returns true when the peer has no session left
    /// (mark it dead): its next dial waits for the backoff.
    pub fn on_session_down(&mut self, peer: &str, id: &ractor::ActorId, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        p.sessions.remove(id);
        if !p.sessions.is_empty() {
            return false;
        }
        p.ping_in_flight = false;
        p.next_dial = now + p.backoff;
        true
    }

    /// A ping of `peer` ended at `now`, answered in time (`ok`) or not. `None` for a node that
    /// is not a configured peer. The `fence_after`-th miss in a row fences the peer
    /// ([`Pong::Fenced`]).
    pub fn on_pong(&mut self, peer: &str, ok: bool, now: Instant) -> Option<Pong<S>> {
        let p = self.peers.get_mut(peer)?;
        p.ping_in_flight = false;
        if ok {
            p.misses = 0;
            p.heard = true;
            return Some(Pong::Answered);
        }
        p.misses += 1;
        if p.misses < self.fence_after {
            return Some(Pong::Missed(p.misses));
        }
        p.misses = 0;
        p.next_dial = now + p.backoff;
        Some(Pong::Fenced(p.sessions.drain().map(|(_, s)| s).collect()))
    }
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

impl Membership {
    /// Start a settling round: no ownership decisions until every peer is heard again.
    async fn start_round(state: &mut MembershipState, why: &str) {
        state.table.start_round(Instant::now());
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
        let Some(silent) = state.table.round_end(Instant::now()) else {
            return;
        };
        if state.ctx.cluster.set_settled(true) {
            let detail = if silent.is_empty() {
                "every peer answered".to_string()
            } else {
                format!(
                    "no answer in {:?} from {}",
                    state.table.round_timeout(),
                    silent.join(", ")
                )
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
        let addrs: BTreeMap<String, SocketAddr> = args
            .ctx
            .cluster
            .peers()
            .into_iter()
            .filter_map(|m| Some((m.id, m.cluster?)))
            .collect();
        let table = PeerTable::new(
            addrs.keys().cloned(),
            args.heartbeat,
            args.fence_after,
            Instant::now(),
        );
        myself.send_interval(args.heartbeat, || MembershipMsg::Heartbeat);
        myself.send_message(MembershipMsg::Heartbeat)?;
        Ok(MembershipState {
            ctx: args.ctx,
            node_server: args.node_server,
            addrs,
            table,
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
                if let Some(gap) = state.table.on_tick(now) {
                    let why = format!("this node was paused for {gap:?}");
                    Self::start_round(state, &why).await;
                }
                Self::maybe_settle(state).await;
                let timeout = state.table.ping_timeout();
                let cluster = &state.ctx.cluster;
                for due in state.table.due(now, |id| cluster.gateway(id).is_some()) {
                    match due {
                        Due::Dial(peer) => {
                            let (server, addr, me) = (
                                state.node_server.clone(),
                                state.addrs[&peer],
                                myself.clone(),
                            );
                            tokio::spawn(async move {
                                let ok =
                                    ractor_cluster::client_connect(&server, addr).await.is_ok();
                                let _ = me.cast(MembershipMsg::Dialed { peer, ok });
                            });
                        }
                        Due::Ping(peer) => {
                            let (cluster, me) = (cluster.clone(), myself.clone());
                            tokio::spawn(async move {
                                let ok = matches!(
                                    cluster.request(&peer, &Request::Ping, timeout).await,
                                    Ok(Reply::Pong { .. })
                                );
                                let _ = me.cast(MembershipMsg::Pong { peer, ok });
                            });
                        }
                    }
                }
            }
            MembershipMsg::Dialed { peer, ok } => {
                // Until a session is ready, keep re-dialing with backoff.
                state.table.on_dialed(&peer, ok, Instant::now());
            }
            MembershipMsg::SessionReady { peer, session } => {
                state
                    .table
                    .on_session_ready(&peer, session.get_id(), session, Instant::now());
            }
            MembershipMsg::SessionDown { peer, session } => {
                if state.table.on_session_down(&peer, &session, Instant::now()) {
                    Self::mark(state, &peer, false, "connection lost").await;
                }
            }
            MembershipMsg::Pong { peer, ok } => {
                match state.table.on_pong(&peer, ok, Instant::now()) {
                    Some(Pong::Answered) => {
                        Self::mark(state, &peer, true, "answers heartbeats").await;
                        Self::maybe_settle(state).await;
                    }
                    Some(Pong::Fenced(sessions)) => {
                        // Fence: a hung peer keeps its TCP session open; cut it so the peer must
                        // reconnect (and find newer leases) when it wakes.
                        for session in sessions {
                            session.stop(Some("fenced: missed heartbeats".into()));
                        }
                        let why = format!(
                            "fenced after {} missed heartbeats",
                            state.table.fence_after()
                        );
                        Self::mark(state, &peer, false, &why).await;
                    }
                    Some(Pong::Missed(_)) | None => {}
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

    use ractor::ActorId;
    use tokio::time::advance;

    const HB: Duration = Duration::from_secs(1);

    /// A table of `peers` with a 1 s heartbeat, fenced after 3 misses, started now.
    fn table(peers: &[&str]) -> PeerTable<u32> {
        PeerTable::new(peers.iter().map(|p| p.to_string()), HB, 3, Instant::now())
    }

    /// Dial `peers` (with nothing else due) and have session `n` of each come up, now.
    fn connect(t: &mut PeerTable<u32>, peers: &[(&str, u32)]) {
        let dials: Vec<Due> = peers
            .iter()
            .map(|(p, _)| Due::Dial(p.to_string()))
            .collect();
        assert_eq!(t.due(Instant::now(), |_| true), dials);
        for (peer, n) in peers {
            t.on_session_ready(peer, ActorId::Local((*n).into()), *n, Instant::now());
            t.on_dialed(peer, true, Instant::now());
            assert!(t.peer(peer).unwrap().connected());
        }
    }

    /// One heartbeat of `peer`: a tick pings it, and after a ping timeout (paused clock) the
    /// answer is `ok`.
    async fn heartbeat(t: &mut PeerTable<u32>, peer: &str, ok: bool) -> Pong<u32> {
        let due = t.due(Instant::now(), |_| true);
        assert!(due.contains(&Due::Ping(peer.into())), "{due:?}");
        assert!(
            !t.due(Instant::now(), |_| true)
                .contains(&Due::Ping(peer.into())),
            "one ping at a time"
        );
        advance(t.ping_timeout()).await;
        t.on_pong(peer, ok, Instant::now()).unwrap()
    }

    /// Issue 9: a hung peer is fenced at its `fence_after`-th missed heartbeat in a row (not
    /// earlier), its sessions are handed back to be stopped, and it is re-dialed only after the
    /// backoff.
    #[tokio::test(start_paused = true)]
    async fn a_peer_is_fenced_at_its_third_missed_heartbeat_not_before() {
        let mut t = table(&["b"]);
        connect(&mut t, &[("b", 7)]);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(heartbeat(&mut t, "b", false).await);
            if got.len() < 3 {
                assert!(t.peer("b").unwrap().connected(), "not fenced yet: {got:?}");
            }
        }
        assert_eq!(
            got,
            [Pong::Missed(1), Pong::Missed(2), Pong::Fenced(vec![7])]
        );
        let fenced_at = Instant::now();
        let b = t.peer("b").unwrap();
        assert!(!b.connected());
        assert_eq!(b.misses(), 0, "a fresh count for the next session");
        assert_eq!(b.next_dial(), fenced_at + MIN_BACKOFF);
        assert_eq!(t.due(Instant::now(), |_| true), [], "backoff first");
        advance(MIN_BACKOFF - Duration::from_millis(1)).await;
        assert_eq!(t.due(Instant::now(), |_| true), []);
        advance(Duration::from_millis(1)).await;
        assert_eq!(t.due(Instant::now(), |_| true), [Due::Dial("b".into())]);
    }

    /// Only misses in a row count: an answer in between starts the count again.
    #[tokio::test(start_paused = true)]
    async fn an_answer_resets_the_missed_heartbeats() {
        let mut t = table(&["b"]);
        connect(&mut t, &[("b", 1)]);
        let mut got = Vec::new();
        for ok in [false, false, true, false, false] {
            got.push(heartbeat(&mut t, "b", ok).await);
        }
        assert_eq!(
            got,
            [
                Pong::Missed(1),
                Pong::Missed(2),
                Pong::Answered,
                Pong::Missed(1),
                Pong::Missed(2)
            ]
        );
        assert!(t.peer("b").unwrap().connected());
        assert_eq!(heartbeat(&mut t, "b", false).await, Pong::Fenced(vec![1]));
    }

    /// Re-dials of an unreachable peer back off 0.5 s doubling to 5 s; the first dial is at
    /// once and no dial starts while one runs.
    #[tokio::test(start_paused = true)]
    async fn redials_back_off_from_half_a_second_doubling_to_five() {
        let mut t = table(&["b"]);
        let start = Instant::now();
        let mut dials = Vec::new();
        while dials.len() < 7 {
            let due = t.due(Instant::now(), |_| true);
            if due == [Due::Dial("b".into())] {
                dials.push(Instant::now());
                assert_eq!(t.due(Instant::now(), |_| true), [], "the dial runs");
                t.on_dialed("b", false, Instant::now());
            } else {
                assert_eq!(due, []);
            }
            advance(Duration::from_millis(100)).await;
        }
        assert_eq!(dials[0], start, "the first dial is at once");
        let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            gaps,
            [ms(500), ms(1000), ms(2000), ms(4000), ms(5000), ms(5000)]
        );
        assert_eq!(t.peer("b").unwrap().backoff(), MAX_BACKOFF);
    }

    /// A dial whose TCP connection opened but brought no session counts as failed; a session
    /// that comes up resets the backoff, so losing it re-dials after 0.5 s.
    #[tokio::test(start_paused = true)]
    async fn a_ready_session_resets_the_backoff() {
        let mut t = table(&["b"]);
        for _ in 0..3 {
            advance(t.peer("b").unwrap().next_dial() - Instant::now()).await;
            assert_eq!(t.due(Instant::now(), |_| true), [Due::Dial("b".into())]);
            t.on_dialed("b", true, Instant::now());
        }
        assert_eq!(t.peer("b").unwrap().backoff(), Duration::from_secs(4));
        advance(t.peer("b").unwrap().next_dial() - Instant::now()).await;
        connect(&mut t, &[("b", 3)]);
        advance(Duration::from_secs(30)).await;
        assert!(t.on_session_down("b", &ActorId::Local(3), Instant::now()));
        assert_eq!(
            t.peer("b").unwrap().next_dial(),
            Instant::now() + MIN_BACKOFF
        );
    }

    /// A peer with two sessions (each side dialed) is lost only with the last one.
    #[tokio::test(start_paused = true)]
    async fn a_peer_is_lost_with_its_last_session() {
        let mut t = table(&["b"]);
        connect(&mut t, &[("b", 1)]);
        t.on_session_ready("b", ActorId::Local(2), 2, Instant::now());
        assert!(!t.on_session_down("b", &ActorId::Local(1), Instant::now()));
        assert!(t.peer("b").unwrap().connected());
        assert!(t.on_session_down("b", &ActorId::Local(2), Instant::now()));
        assert!(
            !t.on_session_down("x", &ActorId::Local(2), Instant::now()),
            "not a peer"
        );
    }

    /// A new session is pinged once the peer's Gateway is known, or after ten ping timeouts
    /// without it (the ping then fails and counts as a miss).
    #[tokio::test(start_paused = true)]
    async fn a_new_session_waits_for_the_gateway_at_most_ten_ping_timeouts() {
        let mut t = table(&["b", "c"]);
        connect(&mut t, &[("b", 1), ("c", 2)]);
        let known = |id: &str| id == "c";
        assert_eq!(t.due(Instant::now(), known), [Due::Ping("c".into())]);
        let grace = 10 * t.ping_timeout();
        advance(grace - Duration::from_millis(1)).await;
        assert_eq!(t.due(Instant::now(), known), []);
        advance(Duration::from_millis(1)).await;
        assert_eq!(t.due(Instant::now(), known), [Due::Ping("b".into())]);
    }

    /// A settling round ends as soon as every peer answered, before its timeout.
    #[tokio::test(start_paused = true)]
    async fn a_round_ends_early_once_every_peer_answered() {
        let mut t = table(&["b", "c"]);
        let start = Instant::now();
        connect(&mut t, &[("b", 1), ("c", 2)]);
        let pings = [Due::Ping("b".into()), Due::Ping("c".into())];
        assert_eq!(t.due(Instant::now(), |_| true), pings);
        advance(HB).await;
        assert_eq!(t.on_pong("b", true, Instant::now()), Some(Pong::Answered));
        assert_eq!(t.round_end(Instant::now()), None, "c has not answered");
        advance(HB).await;
        assert_eq!(t.on_pong("c", true, Instant::now()), Some(Pong::Answered));
        assert_eq!(t.round_end(Instant::now()), Some(vec![]));
        assert!(Instant::now() - start < t.round_timeout(), "early");
    }

    /// A round with a silent peer (here: hung, its ping never answered) ends exactly at its
    /// timeout, naming the silent peer.
    #[tokio::test(start_paused = true)]
    async fn a_round_with_a_silent_peer_ends_at_its_timeout() {
        let mut t = table(&["b", "c"]);
        let start = Instant::now();
        connect(&mut t, &[("b", 1), ("c", 2)]);
        assert_eq!(heartbeat(&mut t, "b", true).await, Pong::Answered);
        let timeout = t.round_timeout();
        assert_eq!(
            timeout,
            Duration::from_secs(5),
            "3 heartbeats, at least 5 s"
        );
        advance(start + timeout - Duration::from_millis(1) - Instant::now()).await;
        assert_eq!(t.round_end(Instant::now()), None);
        advance(Duration::from_millis(1)).await;
        assert_eq!(t.round_end(Instant::now()), Some(vec!["c"]));
    }

    /// A tick after a gap longer than peers wait before fencing this node is a pause, and the
    /// round it starts forgets who answered before.
    #[tokio::test(start_paused = true)]
    async fn a_long_gap_between_ticks_is_a_pause_and_starts_a_new_round() {
        let mut t = table(&["b"]);
        connect(&mut t, &[("b", 1)]);
        assert_eq!(heartbeat(&mut t, "b", true).await, Pong::Answered);
        assert_eq!(t.round_end(Instant::now()), Some(vec![]));
        for _ in 0..3 {
            assert_eq!(t.on_tick(Instant::now()), None);
            advance(HB).await;
        }
        // Peers fence after 3 missed heartbeats: a gap of 4 is late, not yet a pause.
        advance(3 * HB).await;
        assert_eq!(t.on_tick(Instant::now()), None);
        let gap = 4 * HB + Duration::from_millis(1);
        advance(gap).await;
        assert_eq!(t.on_tick(Instant::now()), Some(gap));
        t.start_round(Instant::now());
        assert!(!t.peer("b").unwrap().heard());
        assert_eq!(t.round_end(Instant::now()), None, "b must answer again");
        assert_eq!(heartbeat(&mut t, "b", true).await, Pong::Answered);
        assert_eq!(t.round_end(Instant::now()), Some(vec![]));
    }

    // The actor itself, on paused time: a NodeServer and a session that do nothing, and a
    // stand-in for the peer's Gateway (found through its pg group, as the real one is) that
    // answers pings or, hung, never does.

    /// Takes every message and does nothing (the NodeServer; a session the test watches).
    struct Sink<M>(std::marker::PhantomData<fn() -> M>);

    impl<M: ractor::Message> Actor for Sink<M> {
        type Msg = M;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<M>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    async fn sink<M: ractor::Message>() -> (ActorRef<M>, ractor::concurrency::JoinHandle<()>) {
        Actor::spawn(None, Sink(std::marker::PhantomData), ())
            .await
            .unwrap()
    }

    /// A peer's Gateway: answers pings while `answering` is true; otherwise keeps the reply
    /// port and never answers (a hung node), so the ping times out.
    struct PeerGateway;

    impl Actor for PeerGateway {
        type Msg = crate::actors::gateway::GatewayMsg;
        type State = (
            String,
            tokio::sync::watch::Receiver<bool>,
            Vec<ractor::RpcReplyPort<String>>,
        );
        type Arguments = (String, tokio::sync::watch::Receiver<bool>);
        async fn pre_start(
            &self,
            myself: ActorRef<Self::Msg>,
            (node, answering): Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            let group = crate::cluster::gateway_group(&node);
            ractor::pg::join(group, vec![myself.get_cell()]);
            Ok((node, answering, Vec::new()))
        }
        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            msg: Self::Msg,
            (node, answering, held): &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let crate::actors::gateway::GatewayMsg::Call(_, reply) = msg {
                if *answering.borrow() {
                    let pong = Reply::Pong { node: node.clone() };
                    let _ = reply.send(serde_json::to_string(&pong)?);
                } else {
                    held.push(reply);
                }
            }
            Ok(())
        }
    }

    /// Node `me` with one peer `peer` (its cluster address refuses connections), the peer's
    /// Gateway (answering while the returned sender holds true), and a Membership actor with
    /// a 1 s heartbeat fencing after 3 misses, told that a session to the peer is ready.
    struct ActorRig {
        ctx: Ctx,
        answering: tokio::sync::watch::Sender<bool>,
        membership: ActorRef<MembershipMsg>,
        session: ractor::concurrency::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    async fn actor_rig(me: &str, peer: &str) -> ActorRig {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            crate::storage::Storage::open(&crate::config::StorageLocation::Memory).unwrap();
        let http = SocketAddr::from(([127, 0, 0, 1], 0));
        let refused = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        let cluster = crate::cluster::Cluster::new(
            me,
            vec![(me.into(), http, refused), (peer.into(), http, refused)],
        );
        let ctx = std::sync::Arc::new(crate::actors::NodeContext {
            cluster,
            ..crate::actors::NodeContext::for_tests(me, storage, dir.path())
        });
        let (answering, rx) = tokio::sync::watch::channel(true);
        Actor::spawn(None, PeerGateway, (peer.to_string(), rx))
            .await
            .unwrap();
        let (node_server, _) = sink::<NodeServerMessage>().await;
        let (session, session_done) = sink::<NodeSessionMessage>().await;
        let args = MembershipArgs {
            ctx: ctx.clone(),
            node_server,
            heartbeat: HB,
            fence_after: 3,
        };
        let (membership, _) = Actor::spawn(None, Membership, args).await.unwrap();
        assert!(
            !ctx.cluster.is_settled(),
            "unsettled until the peer answers"
        );
        membership
            .cast(MembershipMsg::SessionReady {
                peer: peer.into(),
                session,
            })
            .unwrap();
        ActorRig {
            ctx,
            answering,
            membership,
            session: session_done,
            _dir: dir,
        }
    }

    /// Poll `cond` every 100 ms of (paused) time, for at most 60 s of it.
    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The actor wires the table up: a peer that answers is live and settles the view; once
    /// it hangs it is fenced (its session stopped, marked dead), no sooner than three ping
    /// timeouts later.
    #[tokio::test(start_paused = true)]
    async fn the_actor_settles_on_an_answering_peer_and_fences_it_once_it_hangs() {
        let (me, peer) = ("ms-fence-a", "ms-fence-b");
        let mut r = actor_rig(me, peer).await;
        wait_until("peer live and view settled", || {
            r.ctx.cluster.is_live(peer) && r.ctx.cluster.is_settled()
        })
        .await;
        r.answering.send_replace(false);
        let silent_since = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), &mut r.session)
            .await
            .expect("the hung peer's session is stopped")
            .unwrap();
        let took = Instant::now() - silent_since;
        assert!(
            took >= 3 * HB,
            "three missed heartbeats take 3 ping timeouts: {took:?}"
        );
        assert!(!r.ctx.cluster.is_live(peer));
        r.membership.stop(None);
    }

    /// A node that finds a long gap between its own heartbeats (paused: the clock jumps with
    /// no tick in between) unsettles its view, and settles again as soon as the peer answers,
    /// before the round's timeout.
    #[tokio::test(start_paused = true)]
    async fn the_actor_unsettles_after_a_pause_until_the_peer_answers_again() {
        let (me, peer) = ("ms-pause-a", "ms-pause-b");
        let r = actor_rig(me, peer).await;
        wait_until("view settled", || r.ctx.cluster.is_settled()).await;
        r.answering.send_replace(false);
        let paused_at = Instant::now();
        advance(10 * HB).await;
        wait_until("view unsettled", || !r.ctx.cluster.is_settled()).await;
        r.answering.send_replace(true);
        wait_until("view settled again", || r.ctx.cluster.is_settled()).await;
        let woke_at = paused_at + 10 * HB;
        let round = round_timeout(HB, 3);
        assert!(
            Instant::now() - woke_at < round,
            "ended early, the peer answered"
        );
        assert!(r.ctx.cluster.is_live(peer));
        r.membership.stop(None);
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
