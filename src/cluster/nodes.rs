//! Who else is in the cluster: every message from a node proves it alive; a node silent for
//! `node_timeout` is dead, and so is one that said it is leaving. Pure: time is passed in.
//! Also who leads a channel: the one live node that emits its cluster-wide webhooks.

use std::collections::BTreeMap;

use crate::ids::{AppIdx, NodeId};

/// A change in membership, for the caller to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node was heard for the first time (or again after it was dropped).
    Joined(NodeId),
    /// A node went silent past the timeout, or left: drop its contribution.
    Gone(NodeId, Why),
}

/// Why a node is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It announced a clean shutdown.
    Left,
    /// Nothing heard from it for the node timeout.
    Silent,
}

/// The other nodes and when each was last heard.
#[derive(Debug)]
pub struct Nodes {
    me: NodeId,
    timeout_ms: u64,
    last_heard: BTreeMap<NodeId, u64>,
    /// Connections per app id, from each node's last heartbeat.
    connections: BTreeMap<NodeId, Vec<(String, u32)>>,
}

impl Nodes {
    /// An empty table for node `me`; others are dead after `timeout_ms` of silence.
    pub fn new(me: NodeId, timeout_ms: u64) -> Nodes {
        Nodes {
            me,
            timeout_ms,
            last_heard: BTreeMap::new(),
            connections: BTreeMap::new(),
        }
    }

    /// A message from `node` arrived at `now`.
    pub fn heard(&mut self, node: NodeId, now: u64) -> Option<Change> {
        if node == self.me {
            return None;
        }
        match self.last_heard.insert(node, now) {
            None => Some(Change::Joined(node)),
            Some(_) => None,
        }
    }

    /// `node`'s heartbeat with its connection counts.
    pub fn heartbeat(&mut self, node: NodeId, connections: Vec<(String, u32)>) {
        if self.last_heard.contains_key(&node) {
            self.connections.insert(node, connections);
        }
    }

    /// `node` announced that it is leaving.
    pub fn left(&mut self, node: NodeId) -> Option<Change> {
        self.forget(node).then_some(Change::Gone(node, Why::Left))
    }

    /// Nodes silent for longer than the timeout at `now`, removed from the table.
    pub fn expire(&mut self, now: u64) -> Vec<Change> {
        let dead: Vec<NodeId> = self
            .last_heard
            .iter()
            .filter(|(_, &t)| now.saturating_sub(t) > self.timeout_ms)
            .map(|(n, _)| *n)
            .collect();
        dead.into_iter()
            .filter(|n| self.forget(*n))
            .map(|n| Change::Gone(n, Why::Silent))
            .collect()
    }

    fn forget(&mut self, node: NodeId) -> bool {
        self.connections.remove(&node);
        self.last_heard.remove(&node).is_some()
    }

    /// Every live node, this one included, in order.
    pub fn live(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self.last_heard.keys().copied().collect();
        all.push(self.me);
        all.sort();
        all
    }

    /// Open connections of `app` on the other nodes, from their last heartbeats.
    pub fn remote_connections(&self, app: &str) -> u64 {
        self.connections
            .values()
            .flat_map(|v| v.iter())
            .filter(|(a, _)| a == app)
            .map(|(_, n)| *n as u64)
            .sum()
    }
}

/// Whether `me` leads `(app, channel)` among `live` nodes: the node with the highest
/// rendezvous hash emits the channel's webhooks, so each fires once per cluster, and when a
/// node goes only its own channels move.
pub fn leads(me: NodeId, live: &[NodeId], app: AppIdx, app_id: &str, channel: &str) -> bool {
    let _ = app;
    let score = |n: NodeId| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ n.0;
        for b in app_id.bytes().chain([0]).chain(channel.bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A final mix so nearby node ids do not give nearby scores.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    };
    live.iter()
        .copied()
        .max_by_key(|&n| (score(n), n))
        .is_none_or(|best| best == me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_timeout_is_death() {
        let (me, a, b) = (NodeId(1), NodeId(2), NodeId(3));
        let mut n = Nodes::new(me, 10_000);
        assert_eq!(n.heard(me, 0), None);
        assert_eq!(n.heard(a, 0), Some(Change::Joined(a)));
        assert_eq!(n.heard(a, 5_000), None);
        assert_eq!(n.heard(b, 6_000), Some(Change::Joined(b)));
        assert!(n.expire(15_000).is_empty());
        assert_eq!(n.expire(15_001), vec![Change::Gone(a, Why::Silent)]);
        assert_eq!(n.live(), vec![me, b]);
        assert_eq!(n.left(b), Some(Change::Gone(b, Why::Left)));
        assert_eq!(n.left(b), None);
        // Heard again after being dropped: a new join, so its state is rebuilt.
        assert_eq!(n.heard(a, 20_000), Some(Change::Joined(a)));
    }

    #[test]
    fn heartbeats_count_connections() {
        let mut n = Nodes::new(NodeId(1), 10_000);
        n.heard(NodeId(2), 0);
        n.heartbeat(NodeId(2), vec![("app".into(), 5)]);
        n.heartbeat(NodeId(9), vec![("app".into(), 50)]); // never heard: ignored
        assert_eq!(n.remote_connections("app"), 5);
        n.left(NodeId(2));
        assert_eq!(n.remote_connections("app"), 0);
    }

    #[test]
    fn exactly_one_live_node_leads_each_channel() {
        let live: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut per_node = [0; 3];
        for i in 0..300 {
            let ch = format!("presence-{i}");
            let leaders: Vec<usize> = (0..3)
                .filter(|&k| leads(live[k], &live, AppIdx(0), "app", &ch))
                .collect();
            assert_eq!(leaders.len(), 1, "{ch}");
            per_node[leaders[0]] += 1;
        }
        // Spread over the nodes, not all on one.
        assert!(per_node.iter().all(|&n| n > 50), "{per_node:?}");
        // Alone, a node leads everything.
        assert!(leads(NodeId(7), &[NodeId(7)], AppIdx(0), "app", "x"));
    }
}
