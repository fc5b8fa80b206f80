//! The cross-core bus: one inbox per shard (a crossbeam channel plus a cross-thread wake-up).
//! It is the only path between shards; every message is owned and the inbox length is bounded.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use futures_channel::oneshot;

use crate::channels::home::{ChannelFacts, Delta, Origin, SnapEntry};
use crate::ids::{AppIdx, ConnRef, NodeId, ShardId};
use crate::protocol::message::Member;

/// An event going to every subscriber of a channel on a shard. One allocation, shared by all shards.
#[derive(Debug)]
pub struct Publication {
    /// The app the channel belongs to.
    pub app: AppIdx,
    /// The channel.
    pub channel: Arc<str>,
    /// The encoded WebSocket frame, shared by every receiver.
    pub frame: Bytes,
    /// A socket id that must not receive it (the sender of a client event, or `socket_id`).
    pub except: Option<Arc<str>>,
    /// For cache channels: the event's raw `data`, kept with the frame for late subscribers.
    pub cache_data: Option<Arc<str>>,
    /// For cache channels: when the event was published (Unix µs, at the node it entered). A
    /// shard keeps the newest, so two events triggered one after the other through different
    /// nodes, which may arrive in either order, leave the later one cached.
    pub cache_stamp: u64,
    /// Presence member and subscription-count notices: never dropped by a full inbox, since a
    /// lost `member_removed` would leave a ghost in every client's member list. Their number is
    /// bounded by subscribe/unsubscribe traffic, which the per-connection message budget limits.
    pub essential: bool,
}

/// A question for a shard, answered on a oneshot channel.
#[derive(Debug)]
pub enum Query {
    /// Facts of one channel (sent to its home shard).
    Channel {
        app: AppIdx,
        channel: Arc<str>,
        /// Where the answer goes.
        reply: oneshot::Sender<ChannelFacts>,
    },
    /// Occupied channels homed on the shard whose names start with `prefix`.
    List {
        app: AppIdx,
        /// Name prefix; empty for all.
        prefix: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<(Arc<str>, ChannelFacts)>>,
    },
    /// Raw user ids of a presence channel (sent to its home shard).
    Users {
        app: AppIdx,
        channel: Arc<str>,
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Connection count of an app on the shard.
    Connections {
        app: AppIdx,
        /// Where the answer goes.
        reply: oneshot::Sender<usize>,
    },
}

/// Everything that crosses cores.
#[derive(Debug)]
pub enum BusMsg {
    /// Deliver to local subscribers of a channel.
    Publish(Arc<Publication>),
    /// Deliver to every local connection signed in as a user.
    ToUser {
        app: AppIdx,
        user: Arc<str>,
        /// Encoded frame.
        frame: Bytes,
        /// A socket id that must not receive it (the trigger's `socket_id`).
        except: Option<Arc<str>>,
    },
    /// Close every local connection signed in as a user (4009).
    Terminate { app: AppIdx, user: Arc<str> },
    /// To a fact's home: a change from one origin.
    Home {
        /// Where the change comes from.
        from: Origin,
        /// The change.
        delta: Delta,
    },
    /// From the home shard: the answer to a presence join.
    PresenceJoined {
        /// The joining connection on the receiving shard.
        conn: ConnRef,
        app: AppIdx,
        channel: Arc<str>,
        /// The member that joined (to undo the join if the connection is gone).
        member: Arc<Member>,
        /// The `subscription_succeeded` frame, or the refusal message.
        result: Result<Bytes, String>,
    },
    /// To a watcher's shard: a `pusher_internal:watchlist_events` frame for one connection.
    WatchNotice {
        /// The watcher.
        conn: ConnRef,
        /// Encoded frame.
        frame: Bytes,
    },
    /// A question with a oneshot answer.
    Query(Query),
    /// From the cluster side-car: another node is gone; drop its contribution here.
    DropOrigin(Origin),
    /// From the cluster side-car: another node's state for the keys of one of its pieces.
    ReplaceOrigin {
        /// The node.
        origin: Origin,
        /// Which piece (the node's home shard).
        piece: u16,
        /// How many pieces (the node's shard count).
        pieces: u16,
        /// Its entries, shared by every shard.
        entries: Arc<Vec<SnapEntry>>,
    },
    /// From the cluster side-car: send this node's contribution homed here to the other nodes.
    SnapshotRequest,
    /// From the cluster side-car: the live nodes, for webhook leadership.
    Nodes(Arc<Vec<NodeId>>),
    /// Stop accepting, ask clients to reconnect, and exit.
    Shutdown,
}

impl BusMsg {
    /// Data messages may be dropped when an inbox is over capacity; control messages and
    /// essential publications never are: their number is bounded by the state (subscriptions,
    /// connections) and by the per-connection message budget that limits how fast it changes.
    fn droppable(&self) -> bool {
        match self {
            BusMsg::Publish(p) => !p.essential,
            BusMsg::ToUser { .. } => true,
            _ => false,
        }
    }
}

/// One shard's inbox.
struct Inbox {
    tx: Sender<BusMsg>,
    rx: Receiver<BusMsg>,
    waker: AtomicWaker,
    notified: AtomicBool,
    dropped: AtomicU64,
}

/// All inboxes; shared by every shard and the HTTP handlers.
pub struct Bus {
    inboxes: Vec<Inbox>,
    capacity: usize,
}

impl Bus {
    /// Creates one inbox per shard; data messages beyond `capacity` queued messages are dropped.
    pub fn new(shards: usize, capacity: usize) -> Bus {
        let inboxes = (0..shards)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded();
                Inbox {
                    tx,
                    rx,
                    waker: AtomicWaker::new(),
                    notified: AtomicBool::new(false),
                    dropped: AtomicU64::new(0),
                }
            })
            .collect();
        Bus { inboxes, capacity }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends a message to a shard. Returns false (and counts it) when a data message was dropped
    /// because the inbox is full.
    pub fn send(&self, to: ShardId, msg: BusMsg) -> bool {
        let inbox = &self.inboxes[to.0 as usize];
        if msg.droppable() && inbox.rx.len() >= self.capacity {
            inbox.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // The receiver lives as long as the bus, so sending cannot fail.
        let _ = inbox.tx.send(msg);
        if !inbox.notified.swap(true, Ordering::AcqRel) {
            inbox.waker.wake();
        }
        true
    }

    /// Sends a publication to every shard; returns how many shards dropped it.
    pub fn broadcast(&self, make: impl Fn() -> BusMsg) -> usize {
        (0..self.inboxes.len())
            .filter(|&i| !self.send(ShardId(i as u16), make()))
            .count()
    }

    /// Wakes a shard's inbox task without a message (it has flushing left to do).
    pub fn nudge(&self, shard: ShardId) {
        let inbox = &self.inboxes[shard.0 as usize];
        if !inbox.notified.swap(true, Ordering::AcqRel) {
            inbox.waker.wake();
        }
    }

    /// Data messages dropped by a shard's inbox since start.
    pub fn dropped(&self, shard: ShardId) -> u64 {
        self.inboxes[shard.0 as usize]
            .dropped
            .load(Ordering::Relaxed)
    }

    /// Messages waiting in a shard's inbox.
    pub fn backlog(&self, shard: ShardId) -> usize {
        self.inboxes[shard.0 as usize].rx.len()
    }

    /// Takes the next message for `shard` without waiting.
    pub fn try_recv(&self, shard: ShardId) -> Option<BusMsg> {
        self.inboxes[shard.0 as usize].rx.try_recv().ok()
    }

    /// Waits until something was sent to `shard` since the last wait.
    pub async fn wait(&self, shard: ShardId) {
        let inbox = &self.inboxes[shard.0 as usize];
        poll_fn(|cx| {
            if inbox.notified.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            inbox.waker.register(cx.waker());
            if inbox.notified.swap(false, Ordering::AcqRel) || !inbox.rx.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_dropped_over_capacity_but_control_is_not() {
        let bus = Bus::new(1, 2);
        let publish = || BusMsg::ToUser {
            app: AppIdx(0),
            user: "u".into(),
            frame: Bytes::new(),
            except: None,
        };
        assert!(bus.send(ShardId(0), publish()));
        assert!(bus.send(ShardId(0), publish()));
        assert!(!bus.send(ShardId(0), publish()));
        assert!(bus.send(ShardId(0), BusMsg::Shutdown));
        assert_eq!(bus.dropped(ShardId(0)), 1);
        assert_eq!(bus.backlog(ShardId(0)), 3);
        let publication = |essential| {
            BusMsg::Publish(Arc::new(Publication {
                app: AppIdx(0),
                channel: "presence-x".into(),
                frame: Bytes::new(),
                except: None,
                cache_data: None,
                cache_stamp: 0,
                essential,
            }))
        };
        assert!(!bus.send(ShardId(0), publication(false)));
        assert!(bus.send(ShardId(0), publication(true)));
        assert_eq!(bus.dropped(ShardId(0)), 2);
        assert_eq!(bus.backlog(ShardId(0)), 4);
    }
}
