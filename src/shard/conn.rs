//! A WebSocket connection's state as its shard keeps it, and the slab that holds them.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::ids::{AppIdx, ConnKey, SocketId};
use crate::protocol::channel::ChannelType;
use crate::protocol::message::Member;

use super::outbound::{Backlog, NeedsFlush, Notice, Outbound, Queued};
use super::rate::{RateWindow, TokenBucket};

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    /// Presence join sent to the home shard, answer not yet back.
    Pending,
    /// In the local channel index; events flow.
    Active,
}

/// One channel a connection joined.
#[derive(Debug)]
pub struct Sub {
    /// The channel (the same allocation as the local index key).
    pub channel: Arc<str>,
    /// Its type.
    pub ty: ChannelType,
    /// Pending or active.
    pub state: SubState,
    /// The presence member this connection joined as.
    pub member: Option<Arc<Member>>,
    /// While active: this connection's position in the channel's local index list, so leaving
    /// costs O(1) however many subscribers the channel has.
    pub slot: u32,
}

/// The user a connection signed in as.
#[derive(Debug)]
pub struct SignedIn {
    pub id: Arc<str>,
    /// Id and user_info, used for presence joins without channel_data.
    pub member: Arc<Member>,
    /// Watched user ids (empty when watchlist events are off).
    pub watchlist: Vec<Arc<str>>,
}

/// A live WebSocket connection. Owned by its shard; never crosses cores.
pub struct Conn {
    /// The socket; the reader task and any writer task hold clones.
    pub stream: Rc<TcpStream>,
    /// Raw descriptor of `stream`, for direct non-blocking calls.
    pub fd: RawFd,
    /// The app the connection belongs to.
    pub app: AppIdx,
    /// The socket id sent in `connection_established`.
    pub socket_id: SocketId,
    /// Joined channels; few per connection, so a Vec beats a map.
    pub subs: Vec<Sub>,
    /// Set after a successful `pusher:signin`.
    pub user: Option<Box<SignedIn>>,
    /// Queued frames, flush state and closing.
    pub out: Outbound,
    /// Last time (ms) any frame arrived.
    pub last_rx: u64,
    /// When (ms) the server pinged and is waiting for any frame.
    pub ping_sent: Option<u64>,
    /// Deadline (ms) to sign in or join a private channel, when the app asks for it.
    pub auth_deadline: Option<u64>,
    /// Client events per second (`client_event_rate`).
    pub rate: RateWindow,
    /// Messages of any kind, control frames included (`max_messages_per_second`,
    /// `max_message_burst`).
    pub tokens: TokenBucket,
    /// Control frames refused for want of tokens, per second: too many and the connection is
    /// closed (4301).
    pub control_refused: RateWindow,
    /// Bytes of an incomplete frame; empty (no allocation) between frames.
    pub partial: Vec<u8>,
    /// A fragmented message being assembled.
    pub fragments: Option<Vec<u8>>,
}

impl Conn {
    /// Queues a frame within `limit` outbound bytes. Does no IO: over the limit, the frame comes
    /// back as [`NeedsFlush`] for the caller to flush the socket and call
    /// [`Conn::queue_after_flush`].
    pub fn queue(&mut self, frame: Bytes, limit: usize) -> Result<Queued, NeedsFlush> {
        self.out.try_queue(frame, limit)
    }

    /// Queues a pong like [`Conn::queue`], replacing a pong still waiting unsent.
    pub fn queue_pong(&mut self, frame: Bytes, limit: usize) -> Result<Queued, NeedsFlush> {
        self.out.try_queue_pong(frame, limit)
    }

    /// Queues a frame handed back by [`Conn::queue`] once the socket was flushed.
    pub fn queue_after_flush(&mut self, retry: NeedsFlush, limit: usize) -> Queued {
        self.out.queue_after_flush(retry, limit)
    }

    /// Starts closing (see [`Outbound::start_close`]). Returns true when the connection must be
    /// put on the dirty list.
    pub fn start_close(
        &mut self,
        code: u16,
        reason: &str,
        notice: Notice,
        backlog: Backlog,
        now: u64,
    ) -> bool {
        self.out.start_close(code, reason, notice, backlog, now)
    }

    /// Whether a close started (or the socket failed): input is discarded from then on.
    pub fn is_closing(&self) -> bool {
        self.out.closing.is_closing()
    }

    /// The active subscription to `channel`, if any.
    pub fn sub(&self, channel: &str) -> Option<&Sub> {
        self.subs.iter().find(|s| &*s.channel == channel)
    }
}

/// Slots of connections with generations and a free list.
#[derive(Default)]
pub struct Slab {
    slots: Vec<(u32, Option<Conn>)>,
    free: Vec<u32>,
    len: usize,
}

impl Slab {
    /// Inserts a connection built for the returned key.
    pub fn insert(&mut self, make: impl FnOnce(ConnKey) -> Conn) -> ConnKey {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        slot.0 = slot.0.wrapping_add(1);
        let key = ConnKey { idx, gen: slot.0 };
        slot.1 = Some(make(key));
        self.len += 1;
        key
    }

    /// The connection at `key`, if it is still the same one.
    pub fn get(&self, key: ConnKey) -> Option<&Conn> {
        match self.slots.get(key.idx as usize) {
            Some((g, Some(c))) if *g == key.gen => Some(c),
            _ => None,
        }
    }

    /// Mutable access to the connection at `key`.
    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        match self.slots.get_mut(key.idx as usize) {
            Some((g, Some(c))) if *g == key.gen => Some(c),
            _ => None,
        }
    }

    /// Removes and returns the connection.
    pub fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        match self.slots.get_mut(key.idx as usize) {
            Some((g, slot @ Some(_))) if *g == key.gen => {
                self.free.push(key.idx);
                self.len -= 1;
                slot.take()
            }
            _ => None,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys of every live connection.
    pub fn keys(&self) -> Vec<ConnKey> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| c.is_some())
            .map(|(i, (g, _))| ConnKey {
                idx: i as u32,
                gen: *g,
            })
            .collect()
    }

    /// Iterates live connections.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnKey, &mut Conn)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, (g, c))| {
            c.as_mut().map(|c| {
                (
                    ConnKey {
                        idx: i as u32,
                        gen: *g,
                    },
                    c,
                )
            })
        })
    }
}
