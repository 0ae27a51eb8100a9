//! The consistent-hash ring that picks each key's home node (design brief section 4).
//!
//! `hashring` has no virtual nodes built in, so each member is added [`VNODES`] times, wrapped
//! with a replica number. Keys are `video:{id}`, `upload:{id}`, `session:{id}`. The hasher is
//! `hashring`'s default, the same on every node, so every node that sees the same members
//! computes the same homes.

use std::collections::BTreeSet;

/// Virtual nodes per member: enough for an even spread over a handful of nodes.
pub const VNODES: u32 = 128;

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct VNode {
    node: String,
    replica: u32,
}

/// A ring over a set of member node ids.
#[derive(Clone)]
pub struct Ring {
    ring: hashring::HashRing<VNode>,
    members: BTreeSet<String>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members)
            .finish()
    }
}

impl Ring {
    /// A ring over `members` (order does not matter).
    pub fn new<I: IntoIterator<Item = String>>(members: I) -> Self {
        let members: BTreeSet<String> = members.into_iter().collect();
        let mut ring = hashring::HashRing::new();
        for node in &members {
            for replica in 0..VNODES {
                ring.add(VNode {
                    node: node.clone(),
                    replica,
                });
            }
        }
        Self { ring, members }
    }

    /// The home node of `key`; `None` only for an empty ring.
    pub fn home(&self, key: &str) -> Option<&str> {
        self.ring.get(&key).map(|v| v.node.as_str())
    }

    /// The members, sorted.
    pub fn members(&self) -> &BTreeSet<String> {
        &self.members
    }

    /// Each member's share of the key space, estimated over `samples` sample keys (0.0 to 1.0).
    pub fn shares(&self, samples: u32) -> Vec<(String, f64)> {
        let mut counts: std::collections::BTreeMap<&str, u32> =
            self.members.iter().map(|m| (m.as_str(), 0)).collect();
        for i in 0..samples {
            if let Some(h) = self.home(&format!("sample:{i}")) {
                *counts.entry(h).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .map(|(m, c)| (m.to_string(), c as f64 / samples.max(1) as f64))
            .collect()
    }
}

/// The ring key of a video.
pub fn video_key(id: &str) -> String {
    format!("video:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: &[&str]) -> Ring {
        Ring::new(n.iter().map(|s| s.to_string()))
    }

    #[test]
    fn homes_are_deterministic_and_spread() {
        let r = ring(&["node-1", "node-2", "node-3"]);
        assert_eq!(
            r.home("video:abc"),
            ring(&["node-3", "node-1", "node-2"]).home("video:abc")
        );
        for (_, share) in r.shares(3000) {
            assert!((0.2..0.47).contains(&share), "uneven share {share}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let all = ring(&["node-1", "node-2", "node-3"]);
        let two = ring(&["node-1", "node-2"]);
        for i in 0..500 {
            let key = format!("video:{i}");
            let before = all.home(&key).unwrap();
            if before != "node-3" {
                assert_eq!(two.home(&key), Some(before), "{key} moved needlessly");
            }
        }
    }

    #[test]
    fn empty_ring_has_no_home() {
        assert_eq!(Ring::new(Vec::<String>::new()).home("x"), None);
    }
}
