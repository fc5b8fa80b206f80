//! Running several ringpush nodes as one Pusher server over Redis.
//!
//! Each node keeps a replica of every other node's contribution to the cluster's facts (its
//! subscriptions, presence members and signed-in users), as origin [`Origin::Node`] in the same
//! home state machine that sums the local shards; so presence lists, counts and HTTP queries are
//! answered locally, and a node's whole share is dropped at once when it dies. Nodes exchange
//! [`wire::Message`]s over one Redis pub/sub channel, driven by a side-car thread with a tokio
//! runtime; shards hand it [`Outbound`] messages with a non-blocking `try_send` and never wait
//! on the broker. A publish crosses the broker once per node, already encoded.
//!
//! [`Origin::Node`]: crate::channels::home::Origin::Node

mod broker;
pub mod nodes;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::channels::home::{Delta, SnapEntry};
use crate::config::Config;
use crate::ids::{AppIdx, NodeId};

/// What the shards hand the side-car for the other nodes.
#[derive(Debug)]
pub enum Outbound {
    /// An event for a channel's subscribers on the other nodes.
    Publish {
        app: AppIdx,
        channel: Arc<str>,
        /// The encoded frame.
        frame: Bytes,
        /// Socket id to skip.
        except: Option<Arc<str>>,
        /// Raw `data` for cache channels.
        cache_data: Option<Arc<str>>,
        /// When a cache event was published (Unix µs).
        cache_stamp: u64,
    },
    /// A frame for a user's connections on the other nodes.
    ToUser {
        app: AppIdx,
        user: Arc<str>,
        /// The encoded frame.
        frame: Bytes,
        /// Socket id to skip.
        except: Option<Arc<str>>,
    },
    /// Close a user's connections on the other nodes.
    Terminate { app: AppIdx, user: Arc<str> },
    /// A change to this node's contribution (from a home shard).
    Change(Delta),
    /// One home shard's part of this node's contribution, answering a snapshot request.
    Snapshot {
        /// The home shard.
        piece: u16,
        /// How many shards this node has.
        pieces: u16,
        /// Its entries.
        entries: Vec<SnapEntry>,
    },
}

/// What the side-car asks of this node's shards. Implemented by the shard layer, so the
/// cluster code does not depend on it.
pub trait Local: Send + Sync + 'static {
    /// The index of the app with this id.
    fn app_index(&self, id: &str) -> Option<AppIdx>;
    /// The id of an app.
    fn app_id(&self, app: AppIdx) -> &str;
    /// Sends an event from another node to this node's subscribers (not forwarded again).
    fn publish(
        &self,
        app: AppIdx,
        channel: Arc<str>,
        frame: Bytes,
        except: Option<Arc<str>>,
        cache_data: Option<Arc<str>>,
        cache_stamp: u64,
    );
    /// Sends a frame to this node's connections of a user.
    fn to_user(&self, app: AppIdx, user: Arc<str>, frame: Bytes, except: Option<Arc<str>>);
    /// Closes this node's connections of a user.
    fn terminate(&self, app: AppIdx, user: Arc<str>);
    /// Applies another node's change at the fact's home shard.
    fn remote_change(&self, from: NodeId, delta: Delta);
    /// Drops everything another node contributed.
    fn drop_node(&self, node: NodeId);
    /// Replaces what another node contributed, for the keys of one of its pieces.
    fn replace_node(&self, node: NodeId, piece: u16, pieces: u16, entries: Arc<Vec<SnapEntry>>);
    /// Asks every home shard for its part of this node's contribution ([`Outbound::Snapshot`]).
    fn request_snapshot(&self);
    /// The live nodes changed (this one included), for webhook leadership.
    fn nodes_changed(&self, live: Arc<Vec<NodeId>>);
    /// Open connections per app on this node, for heartbeats.
    fn connections(&self) -> Vec<(AppIdx, u32)>;
}

/// Counters of the cluster layer, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Messages published to the broker.
    pub sent: AtomicU64,
    /// Messages received from other nodes.
    pub received: AtomicU64,
    /// Outbound messages dropped: the side-car's queue was full or the broker unreachable.
    pub dropped: AtomicU64,
    /// Messages from the broker that did not decode.
    pub malformed: AtomicU64,
    /// Times the broker connection was lost.
    pub outages: AtomicU64,
    /// Snapshots received and applied (state rebuilds).
    pub resyncs: AtomicU64,
    /// Nodes dropped after silence or a clean leave.
    pub nodes_dropped: AtomicU64,
    /// Whether the broker is reachable now.
    pub connected: AtomicBool,
    /// Whether the first exchange of state with the other nodes is complete.
    pub synced: AtomicBool,
    /// Other live nodes.
    pub peers: AtomicU64,
    /// Open connections on other nodes, summed over apps.
    pub remote_connections: AtomicU64,
}

/// Capacity of the queue from the shards to the side-car.
const OUTBOUND_QUEUE: usize = 65_536;

/// This node's handle on the cluster: its id and the queue to the side-car.
pub struct Cluster {
    tx: mpsc::Sender<Outbound>,
    /// Counters.
    pub stats: Arc<ClusterStats>,
    leave: mpsc::UnboundedSender<std::sync::mpsc::Sender<()>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Per-app connections on other nodes (index = app), from their heartbeats.
    remote: Arc<Vec<AtomicU64>>,
}

impl Cluster {
    /// A fresh random node id.
    pub fn new_node_id() -> NodeId {
        NodeId(fastrand::u64(1..))
    }

    /// Starts the side-car for the `[cluster]` section, when it names a broker.
    pub fn start(
        config: &Config,
        node: NodeId,
        local: Arc<dyn Local>,
    ) -> anyhow::Result<Option<Cluster>> {
        if config.cluster.adapter == crate::config::Adapter::Local {
            return Ok(None);
        }
        let client = redis::Client::open(config.cluster.url.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.url: {e}"))?;
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (leave_tx, leave_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ClusterStats::default());
        let remote: Arc<Vec<AtomicU64>> =
            Arc::new(config.apps.iter().map(|_| AtomicU64::new(0)).collect());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let side = broker::Sidecar {
            node,
            channel: format!("{}:bus", config.cluster.prefix),
            timeout_ms: config.cluster.node_timeout * 1000,
            client,
            local,
            stats: stats.clone(),
            remote: remote.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || rt.block_on(side.run(rx, leave_rx)))?;
        tracing::info!(node = %node, broker = %redact(&config.cluster.url), "cluster node starting");
        Ok(Some(Cluster {
            tx,
            stats,
            leave: leave_tx,
            thread: Mutex::new(Some(thread)),
            remote,
        }))
    }

    /// Hands a message to the side-car; a full queue drops it (counted).
    pub fn send(&self, msg: Outbound) {
        if self.tx.try_send(msg).is_err() {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped_total = n, "cluster queue full: message dropped");
            }
        }
    }

    /// Open connections of `app` on the other nodes, as of their last heartbeats.
    pub fn remote_connections(&self, app: AppIdx) -> u64 {
        self.remote
            .get(app.0 as usize)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Announces a clean departure (others drop this node's state at once) and stops the
    /// side-car, waiting at most `limit`.
    pub fn leave(&self, limit: std::time::Duration) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.leave.send(done_tx).is_ok() {
            let _ = done_rx.recv_timeout(limit);
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = handle {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The broker URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://u:secret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
