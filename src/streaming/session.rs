//! Playback session ids, and the one decision the cluster wires to its ring: which node serves
//! a session (seed rule 7: sticky routing with failure fallback).

use std::fmt;

use crate::storage::keys::{is_lower_hex, valid_node_id};

/// Hex digits of a session id's random part (64 bits).
const RANDOM_HEX: usize = 16;

/// A playback session id: `{home_node}-{16 lowercase hex}`, e.g. `node-1-3f9a0c5e11b2d4a7`.
///
/// The home node is the node that created the session; the id names it so that the session
/// never moves while that node lives, whatever the ring does (design brief section 4). Parsing
/// is strict (a valid node id, a dash, exactly 16 lowercase hex digits), so an id can never
/// escape a path or a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    home: String,
    random: String,
}

impl SessionId {
    /// A fresh id homed on `node_id` (which must be a valid node id).
    pub fn new(node_id: &str) -> Self {
        Self {
            home: node_id.to_string(),
            random: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Parse and validate; `None` for anything that is not exactly a session id.
    pub fn parse(text: &str) -> Option<Self> {
        let (home, random) = text.rsplit_once('-')?;
        let ok =
            valid_node_id(home) && random.len() == RANDOM_HEX && random.bytes().all(is_lower_hex);
        ok.then(|| Self {
            home: home.to_string(),
            random: random.to_string(),
        })
    }

    /// The node that created the session.
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The ring key of the session (`session:{id}`), for choosing a fallback node.
    pub fn ring_key(&self) -> String {
        format!("session:{self}")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.home, self.random)
    }
}

/// Who serves a session's request, as decided by [`route_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRoute {
    /// This node is the session's home: serve it here.
    Local,
    /// Another live node serves it: redirect (307) or proxy the request to `node`.
    Remote {
        /// The serving node's id.
        node: String,
    },
    /// The home node is dead (or unknown) and this node is the fallback the ring picked: take
    /// the session over here with a cold cache, and log the reassignment.
    TakeOver {
        /// The dead home node.
        from: String,
    },
}

/// What [`route_session`] needs to know about the cluster. The single-node build answers with
/// [`SingleNode`]; the cluster wires its membership and ring here.
pub trait ClusterView: Send + Sync + 'static {
    /// Whether `node` is a live member.
    fn is_live(&self, node: &str) -> bool;
    /// The live node the ring picks for `key` when a session's home is dead.
    fn owner(&self, key: &str) -> Option<String>;
    /// The HTTP base URL (`http://host:port`) of a live node, for redirects.
    fn http_base(&self, node: &str) -> Option<String>;
}

/// One node alone: only itself is live, and it is the fallback for everything.
#[derive(Debug, Clone)]
pub struct SingleNode {
    /// This node's id.
    pub node_id: String,
}

impl ClusterView for SingleNode {
    fn is_live(&self, node: &str) -> bool {
        node == self.node_id
    }
    fn owner(&self, _key: &str) -> Option<String> {
        Some(self.node_id.clone())
    }
    fn http_base(&self, _node: &str) -> Option<String> {
        None
    }
}

/// THE seam for sticky routing (seed rule 7): which node serves `session`'s requests.
///
/// - the home node named in the id, while it is live (whatever the ring says);
/// - when the home node is not live, the ring's owner of `session:{id}` among live nodes; if
///   that is this node, [`SessionRoute::TakeOver`].
pub fn route_session(
    session: &SessionId,
    this_node: &str,
    cluster: &dyn ClusterView,
) -> SessionRoute {
    if session.home() == this_node {
        return SessionRoute::Local;
    }
    if cluster.is_live(session.home()) {
        return SessionRoute::Remote {
            node: session.home().to_string(),
        };
    }
    match cluster.owner(&session.ring_key()) {
        Some(n) if n != this_node => SessionRoute::Remote { node: n },
        _ => SessionRoute::TakeOver {
            from: session.home().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_home_and_parse_strictly() {
        let id = SessionId::new("node-1");
        let text = id.to_string();
        assert!(text.starts_with("node-1-") && text.len() == "node-1-".len() + 16);
        assert_eq!(SessionId::parse(&text), Some(id.clone()));
        assert_eq!(id.home(), "node-1");
        for bad in [
            "",
            "node-1",
            "node-1-",
            "../../etc-0123456789abcdef",
            "node-1-0123456789ABCDEF",
            "node-1-0123456789abcde",
            "node-1-0123456789abcdef0",
            "node/1-0123456789abcdef",
            "-0123456789abcdef",
            "node-1-0123456789abcdeg",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
    }

    struct Ring {
        live: Vec<&'static str>,
        owner: &'static str,
    }
    impl ClusterView for Ring {
        fn is_live(&self, node: &str) -> bool {
            self.live.contains(&node)
        }
        fn owner(&self, _key: &str) -> Option<String> {
            Some(self.owner.to_string())
        }
        fn http_base(&self, _node: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn a_session_stays_home_while_its_node_lives_whatever_the_ring_says() {
        let s = SessionId::parse("a-0123456789abcdef").unwrap();
        // The ring would pick c, but a is live: a keeps the session.
        let ring = Ring {
            live: vec!["a", "b", "c"],
            owner: "c",
        };
        assert_eq!(route_session(&s, "a", &ring), SessionRoute::Local);
        assert_eq!(
            route_session(&s, "b", &ring),
            SessionRoute::Remote { node: "a".into() }
        );
        // a died: the ring's owner takes over; others send requests there.
        let ring = Ring {
            live: vec!["b", "c"],
            owner: "c",
        };
        assert_eq!(
            route_session(&s, "c", &ring),
            SessionRoute::TakeOver { from: "a".into() }
        );
        assert_eq!(
            route_session(&s, "b", &ring),
            SessionRoute::Remote { node: "c".into() }
        );
        // One node alone takes over any foreign session.
        let one = SingleNode {
            node_id: "z".into(),
        };
        assert_eq!(
            route_session(&s, "z", &one),
            SessionRoute::TakeOver { from: "a".into() }
        );
    }
}
