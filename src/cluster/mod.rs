//! The cluster as one node sees it: the members from `cluster.toml`, which of them are live,
//! the ring over the live ones, and how to reach a peer's Gateway.
//!
//! [`Cluster`] is a cheap, cloneable handle over shared state. The `Membership` actor is its
//! only writer (`set_live`); everything else reads. Readers that must react to a ring change
//! subscribe to [`Cluster::changes`].
//!
//! Correctness never rests on this view (two nodes may briefly disagree): ownership of a video
//! is settled by lease epochs in the object store (`storage::Storage::claim_lease`), and every
//! record write is refused by the store once a newer epoch exists.
//!
//! The view also knows what it does not know: until [`Cluster::is_settled`], this node has not
//! yet heard every configured peer (or given up on it), so its ring is a guess, and it takes no
//! ownership decision (issue 9: a restarted node that saw only itself claimed every unfinished
//! video of the cluster within a second).

pub mod protocol;
pub mod ring;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::ActorRef;
use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::protocol::GatewayMsg;
use crate::cluster::protocol::{Reply, Request, TaskReport};
use crate::cluster::ring::Ring;

/// One member as configured and as last seen.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// HTTP address.
    pub http: SocketAddr,
    /// Cluster (NodeServer) address.
    pub cluster: Option<SocketAddr>,
    /// Whether it answers heartbeats (always true for this node).
    pub live: bool,
    /// When `live` last changed (RFC 3339).
    pub since: String,
    /// How many times `live` has changed: a task handed to the node under an older
    /// generation may have been lost with a process that restarted in between.
    pub generation: u64,
}

struct State {
    members: BTreeMap<String, Member>,
    ring: Ring,
    version: u64,
}

/// Handle on this node's view of the cluster.
#[derive(Clone)]
pub struct Cluster {
    self_id: String,
    state: Arc<RwLock<State>>,
    changes: watch::Sender<u64>,
    /// Whether a whole heartbeat round has completed since start (or since waking from a
    /// pause): every configured peer answered or was given up on.
    settled: Arc<AtomicBool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("self", &self.self_id)
            .finish()
    }
}

/// The pg group a node's Gateway joins.
pub fn gateway_group(node: &str) -> String {
    format!("reel.gateway.{node}")
}

impl Cluster {
    /// A view of `members` (including this node, `self_id`) in which only this node is live
    /// until the Membership actor hears from the others; unsettled while there are others.
    pub fn new(self_id: &str, members: Vec<(String, SocketAddr, Option<SocketAddr>)>) -> Self {
        let now = crate::model::now_rfc3339();
        let alone = members.iter().all(|(id, _, _)| id == self_id);
        let members: BTreeMap<String, Member> = members
            .into_iter()
            .map(|(id, http, cluster)| {
                let live = id == self_id;
                (
                    id.clone(),
                    Member {
                        id,
                        http,
                        cluster,
                        live,
                        since: now.clone(),
                        generation: 0,
                    },
                )
            })
            .collect();
        let ring = Ring::new([self_id.to_string()]);
        let (changes, _) = watch::channel(0);
        Self {
            self_id: self_id.to_string(),
            state: Arc::new(RwLock::new(State {
                members,
                ring,
                version: 0,
            })),
            changes,
            settled: Arc::new(AtomicBool::new(alone)),
        }
    }

    /// Whether this view may be used to decide ownership: a heartbeat round with every
    /// configured peer has completed since start or since the last pause. A node alone in its
    /// configuration is always settled.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }

    /// Set by the Membership actor: `true` once a round completes, `false` when this node
    /// finds it was paused. Becoming settled is announced like a ring change, so the reconcile
    /// loop runs. Returns whether it changed.
    pub fn set_settled(&self, settled: bool) -> bool {
        if self.settled.swap(settled, Ordering::SeqCst) == settled {
            return false;
        }
        if settled {
            let version = {
                let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
                s.version += 1;
                s.version
            };
            let _ = self.changes.send(version);
        }
        true
    }

    /// A one-node cluster.
    pub fn single(self_id: &str, http: SocketAddr) -> Self {
        Self::new(self_id, vec![(self_id.to_string(), http, None)])
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// This node's id.
    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    /// The home node of `key` among the live members.
    pub fn home(&self, key: &str) -> String {
        self.read(|s| s.ring.home(key).map(str::to_string))
            .unwrap_or_else(|| self.self_id.clone())
    }

    /// Whether `node` is live in this view.
    pub fn is_live(&self, node: &str) -> bool {
        self.read(|s| s.members.get(node).is_some_and(|m| m.live))
    }

    /// How many times `node` went down or up in this view (0 for this node and unknown ids).
    /// Work handed to a node is lost if its generation changed since: it was down, if only
    /// for a moment, and may have restarted.
    pub fn generation(&self, node: &str) -> u64 {
        self.read(|s| s.members.get(node).map_or(0, |m| m.generation))
    }

    /// Live node ids, sorted.
    pub fn live_nodes(&self) -> Vec<String> {
        self.read(|s| s.ring.members().iter().cloned().collect())
    }

    /// Every configured peer (not this node).
    pub fn peers(&self) -> Vec<Member> {
        self.read(|s| {
            s.members
                .values()
                .filter(|m| m.id != self.self_id)
                .cloned()
                .collect()
        })
    }

    /// The HTTP address of `node`.
    pub fn http_of(&self, node: &str) -> Option<SocketAddr> {
        self.read(|s| s.members.get(node).map(|m| m.http))
    }

    /// Mark `node` live or not; rebuilds the ring and notifies subscribers when it changed.
    /// Returns whether it changed.
    pub fn set_live(&self, node: &str, live: bool) -> bool {
        if node == self.self_id {
            return false;
        }
        let version = {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            let Some(m) = s.members.get_mut(node) else {
                return false;
            };
            if m.live == live {
                return false;
            }
            m.live = live;
            m.since = crate::model::now_rfc3339();
            m.generation += 1;
            let live_ids: Vec<String> = s
                .members
                .values()
                .filter(|m| m.live)
                .map(|m| m.id.clone())
                .collect();
            s.ring = Ring::new(live_ids);
            s.version += 1;
            s.version
        };
        let _ = self.changes.send(version);
        true
    }

    /// Subscribe to ring changes (the value is a version counter).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Members with liveness and each live member's share of the ring.
    pub fn describe(&self) -> serde_json::Value {
        self.read(|s| {
            let shares: BTreeMap<String, f64> = s.ring.shares(4096).into_iter().collect();
            let members: Vec<_> = s
                .members
                .values()
                .map(|m| {
                    serde_json::json!({
                        "id": m.id,
                        "http": m.http.to_string(),
                        "cluster": m.cluster.map(|c| c.to_string()),
                        "live": m.live,
                        "since": m.since,
                        "self": m.id == self.self_id,
                        "ring_share": shares.get(&m.id).copied().unwrap_or(0.0),
                    })
                })
                .collect();
            serde_json::json!({
                "node": self.self_id,
                "settled": self.is_settled(),
                "ring_version": s.version,
                "live": s.ring.members().len(),
                "members": members,
            })
        })
    }

    /// The Gateway of `node`, when a session to it exists (local for this node).
    pub fn gateway(&self, node: &str) -> Option<ActorRef<GatewayMsg>> {
        ractor::pg::get_members(&gateway_group(node))
            .into_iter()
            .next()
            .map(ActorRef::from)
    }

    /// Send `request` to `node`'s Gateway and wait up to `timeout` for the reply.
    ///
    /// Errors: no session to the node, a timeout, or an undecodable reply (as text).
    pub async fn request(
        &self,
        node: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let gw = self
            .gateway(node)
            .ok_or_else(|| format!("no connection to node {node}"))?;
        let json = serde_json::to_string(request).map_err(|e| e.to_string())?;
        match gw
            .call(|reply| GatewayMsg::Call(json, reply), Some(timeout))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(text)) => {
                serde_json::from_str(&text).map_err(|e| format!("bad reply from {node}: {e}"))
            }
            Ok(ractor::rpc::CallResult::Timeout) => {
                Err(format!("node {node} did not answer in {timeout:?}"))
            }
            Ok(ractor::rpc::CallResult::SenderError) => {
                Err(format!("node {node} dropped the request"))
            }
            Err(e) => Err(format!("cannot reach node {node}: {e}")),
        }
    }

    /// Send a task report to the Gateway of `node` (one-way; lost if the node is gone, which the
    /// job's own liveness checks cover).
    pub fn report(&self, node: &str, report: &TaskReport) {
        if let (Some(gw), Ok(json)) = (self.gateway(node), serde_json::to_string(report)) {
            let _ = gw.cast(GatewayMsg::Report(json));
        }
    }
}

/// Playback sessions route through this view (seed rule 7): a session stays on its home while
/// the home is live; when it is not, the ring's live owner of `session:{id}` takes it over.
impl crate::streaming::session::ClusterView for Cluster {
    fn is_live(&self, node: &str) -> bool {
        Cluster::is_live(self, node)
    }
    fn owner(&self, key: &str) -> Option<String> {
        Some(self.home(key))
    }
    fn http_base(&self, node: &str) -> Option<String> {
        self.http_of(node).map(|a| format!("http://{a}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn only_live_members_own_keys_and_changes_are_announced() {
        let c = Cluster::new(
            "a",
            vec![("a".into(), addr(1), None), ("b".into(), addr(2), None)],
        );
        let mut rx = c.changes();
        assert_eq!(c.live_nodes(), vec!["a".to_string()]);
        assert_eq!(c.home("video:x"), "a");
        assert_eq!(c.generation("b"), 0);
        assert!(c.set_live("b", true));
        assert!(!c.set_live("b", true), "no change, no announcement");
        assert_eq!(c.generation("b"), 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        assert_eq!(c.live_nodes(), vec!["a".to_string(), "b".to_string()]);
        let homes: std::collections::BTreeSet<_> =
            (0..50).map(|i| c.home(&format!("video:{i}"))).collect();
        assert_eq!(homes.len(), 2, "both own keys");
        assert!(
            !c.set_live("a", false),
            "this node is always live in its own view"
        );
        assert!(c.set_live("b", false));
        assert_eq!(c.home("video:anything"), "a");
    }

    #[test]
    fn a_view_with_peers_starts_unsettled_and_announces_settling() {
        let alone = Cluster::single("a", addr(1));
        assert!(alone.is_settled(), "nothing to hear from");
        let c = Cluster::new(
            "a",
            vec![("a".into(), addr(1), None), ("b".into(), addr(2), None)],
        );
        let mut rx = c.changes();
        assert!(!c.is_settled());
        assert!(c.set_settled(true));
        assert!(c.is_settled() && rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!c.set_settled(true), "no change");
        assert!(c.set_settled(false));
        assert!(!rx.has_changed().unwrap(), "unsettling needs no reconcile");
    }
}
