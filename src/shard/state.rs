//! A shard's mutable state and the operations every other shard module uses on it: queueing
//! frames, flushing dirty connections, closing and removing connections.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::conn::{Conn, Slab, SubState};
use super::outbound::{Backlog, NeedsFlush, Notice, Queued};
use super::sock::{self, Flush};
use super::Shard;
use crate::bus::{BusMsg, Publication};
use crate::channels::home::{AppRules, Delta, Home, Origin};
use crate::ids::{home_of, AppIdx, ConnKey, ConnRef, ShardId};
use crate::metrics::ShardMetrics;
use crate::protocol::{channel::ChannelKind, codes};

/// How long a closing connection may take to answer our close frame before it is cut.
pub const CLOSE_LINGER_MS: u64 = 2_000;

/// A cache channel's last HTTP-triggered event, as this shard saw it go by.
pub struct CacheEntry {
    /// The frame, sent to late subscribers.
    pub frame: Bytes,
    /// The raw `data`, for `info=cache`.
    pub data: Arc<str>,
    /// Expiry (ms).
    pub expires: u64,
    /// When it was published (Unix µs), to keep the newest of events arriving out of order.
    pub stamp: u64,
}

/// Everything a shard owns.
pub struct State {
    /// Live WebSocket connections.
    pub conns: Slab,
    /// Local channel index per app: channel -> local subscribers.
    pub index: Vec<HashMap<Arc<str>, Vec<ConnKey>>>,
    /// Local signed-in users per app: user id -> connections.
    pub users: Vec<HashMap<Arc<str>, Vec<ConnKey>>>,
    /// Cache channels' last events per app.
    pub cache: Vec<HashMap<Arc<str>, CacheEntry>>,
    /// Facts homed on this shard.
    pub home: Home,
    /// Connections with queued output to flush.
    pub dirty: Vec<ConnKey>,
    /// Reused buffer for the slice of `dirty` being flushed.
    pub flush_buf: Vec<ConnKey>,
    /// Sequence for socket ids.
    pub seq: u64,
    /// Cancels the accept loop on shutdown.
    pub accept_canceller: Option<monoio::io::Canceller>,
    /// The cluster's live nodes (this one included), for webhook leadership; empty when not
    /// in a cluster.
    pub nodes: Arc<Vec<crate::ids::NodeId>>,
}

impl State {
    /// Empty state for apps with these home rules (one per app); `replicate` in a cluster,
    /// whose live nodes start as `nodes`.
    pub fn new(
        rules: Vec<AppRules>,
        replicate: bool,
        nodes: Arc<Vec<crate::ids::NodeId>>,
    ) -> State {
        let apps = rules.len();
        State {
            conns: Slab::default(),
            index: (0..apps).map(|_| HashMap::new()).collect(),
            users: (0..apps).map(|_| HashMap::new()).collect(),
            cache: (0..apps).map(|_| HashMap::new()).collect(),
            home: Home::new(rules).replicating(replicate),
            dirty: Vec::new(),
            flush_buf: Vec::new(),
            seq: 0,
            accept_canceller: None,
            nodes,
        }
    }

    /// The channel name as stored in the index, so every subscription shares one allocation.
    pub fn intern(&self, app: AppIdx, name: &str) -> Arc<str> {
        match self.index[app.0 as usize].get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => name.into(),
        }
    }
}

impl Shard {
    /// Queues a frame to one connection; a slow consumer is closed with 4100.
    pub fn send_to(&self, st: &mut State, key: ConnKey, frame: Bytes) {
        self.send_frame(st, key, frame, false);
    }

    /// Queues a pong to one connection, in the place of a pong still waiting unsent if there is
    /// one; a slow consumer is closed with 4100.
    pub fn send_pong(&self, st: &mut State, key: ConnKey, frame: Bytes) {
        self.send_frame(st, key, frame, true);
    }

    fn send_frame(&self, st: &mut State, key: ConnKey, frame: Bytes, pong: bool) {
        let limit = self.shared.config.server.max_outbound_bytes;
        let Some(conn) = st.conns.get_mut(key) else {
            return;
        };
        let first = if pong {
            conn.queue_pong(frame, limit)
        } else {
            conn.queue(frame, limit)
        };
        match retry_after_flush(conn, first, limit) {
            Queued::NewlyDirty => st.dirty.push(key),
            Queued::Added | Queued::Closing => {}
            Queued::Overflow => self.close_slow(st, key),
        }
    }

    /// Closes a connection whose outbound queue overflowed: what was queued is dropped, the
    /// client gets 4100 (back off, then reconnect), and the event is counted.
    fn close_slow(&self, st: &mut State, key: ConnKey) {
        let now = self.now_ms();
        let Some(conn) = st.conns.get_mut(key) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        ShardMetrics::add(&self.metrics().slow_consumers, 1);
        let reason = "Outbound buffer full: client too slow";
        let (notice, backlog) = (Notice::WithPusherError, Backlog::Discard);
        if conn.start_close(codes::OVER_CAPACITY, reason, notice, backlog, now) {
            st.dirty.push(key);
        }
    }

    /// Starts closing a connection with a Pusher or WebSocket code; what was queued still goes
    /// out first.
    pub fn close(&self, st: &mut State, key: ConnKey, code: u16, reason: &str, notice: Notice) {
        let now = self.now_ms();
        if let Some(conn) = st.conns.get_mut(key) {
            if conn.start_close(code, reason, notice, Backlog::Keep, now) {
                st.dirty.push(key);
            }
        }
    }

    /// Delivers a publication to this shard's subscribers of its channel.
    pub fn deliver(&self, st: &mut State, p: &Publication) {
        ShardMetrics::add(&self.metrics().publications, 1);
        if let Some(data) = &p.cache_data {
            let now = self.now_ms();
            let ttl = self.shared.app(p.app).cache_ttl * 1000;
            let cache = &st.cache[p.app.0 as usize];
            let newer_kept = cache
                .get(&p.channel)
                .is_some_and(|e| e.expires > now && e.stamp > p.cache_stamp);
            if !newer_kept {
                let entry = CacheEntry {
                    frame: p.frame.clone(),
                    data: data.clone(),
                    expires: now + ttl,
                    stamp: p.cache_stamp,
                };
                let key = st.intern(p.app, &p.channel);
                st.cache[p.app.0 as usize].insert(key, entry);
            }
        }
        let Some(list) = st.index[p.app.0 as usize].get(&p.channel) else {
            return;
        };
        let limit = self.shared.config.server.max_outbound_bytes;
        // The frame was encoded once for all shards. Each shard takes one private copy of the
        // bytes before handing out references, so the reference count this loop bumps per
        // subscriber lives in this core's cache instead of bouncing between cores.
        let frame = if list.len() > 1 && self.shared.shards() > 1 {
            Bytes::copy_from_slice(&p.frame)
        } else {
            p.frame.clone()
        };
        let mut delivered = 0u64;
        let mut overflow = Vec::new();
        for &key in list {
            let Some(conn) = st.conns.get_mut(key) else {
                continue;
            };
            if let Some(ex) = &p.except {
                if *conn.socket_id == **ex {
                    continue;
                }
            }
            match enqueue(conn, frame.clone(), limit) {
                Queued::NewlyDirty => {
                    delivered += 1;
                    st.dirty.push(key);
                }
                Queued::Added => delivered += 1,
                Queued::Overflow => overflow.push(key),
                Queued::Closing => {}
            }
        }
        ShardMetrics::add(&self.metrics().deliveries, delivered);
        for key in overflow {
            self.close_slow(st, key);
        }
    }

    /// Reports a change to the home shard of (app, name).
    pub fn to_home(&self, app: AppIdx, name: &str, delta: Delta) {
        let home = home_of(app, name, self.shared.shards());
        self.to_shard_home(home, delta);
    }

    /// Reports a change to a given home shard.
    pub fn to_shard_home(&self, home: ShardId, delta: Delta) {
        let from = Origin::Shard(self.id);
        self.shared.bus.send(home, BusMsg::Home { from, delta });
    }

    /// Publishes a frame to a channel on every shard. Returns false when some shard dropped it.
    pub fn publish(&self, p: Publication) -> bool {
        let p = Arc::new(p);
        self.shared.bus.broadcast(|| BusMsg::Publish(p.clone())) == 0
    }

    /// Publishes on every shard of this node and, in a cluster, on every other node: events
    /// from the HTTP API and from clients. (Presence and count notices are not forwarded: each
    /// node's home decides its own.)
    pub fn publish_everywhere(&self, p: Publication) -> bool {
        if let Some(c) = &self.shared.cluster {
            c.send(crate::cluster::Outbound::Publish {
                app: p.app,
                channel: p.channel.clone(),
                frame: p.frame.clone(),
                except: p.except.clone(),
                cache_data: p.cache_data.clone(),
                cache_stamp: p.cache_stamp,
            });
        }
        self.publish(p)
    }

    /// A reference to a local connection for other shards.
    pub fn conn_ref(&self, key: ConnKey) -> ConnRef {
        ConnRef {
            shard: self.id,
            key,
        }
    }
}

/// Queues a frame on a connection. Over budget only counts for what the kernel will not take:
/// when the connection asks for it, what is queued is sent now and the frame tried once more, so
/// a burst queued within one batch reaches the socket before the connection is judged slow.
fn enqueue(conn: &mut Conn, frame: Bytes, limit: usize) -> Queued {
    let first = conn.queue(frame, limit);
    retry_after_flush(conn, first, limit)
}

/// The second half of [`enqueue`]: a frame that asked for a flush is tried again after it.
fn retry_after_flush(conn: &mut Conn, first: Result<Queued, NeedsFlush>, limit: usize) -> Queued {
    match first {
        Ok(queued) => queued,
        Err(retry) => {
            // Only the room made counts here. A connection with output and no writer task is on
            // the dirty list, so flush_dirty meets a blocked or failed socket again.
            let _ = sock::flush(conn.fd, &mut conn.out.queue);
            conn.queue_after_flush(retry, limit)
        }
    }
}

/// Connections flushed per turn. A big fan-out flushes in slices, yielding in between, so HTTP
/// requests and reads on the same shard are not stuck behind thousands of sends.
const FLUSH_BUDGET: usize = 256;

/// Flushes dirty connections, up to [`FLUSH_BUDGET`] of them: one gather-send each; sockets that
/// would block get a writer task that waits for writability. Returns true when more remain; the
/// inbox task is then nudged to continue after other tasks had a turn.
pub fn flush_dirty(shard: &Rc<Shard>) -> bool {
    let mut st = shard.state.borrow_mut();
    let n = st.dirty.len().min(FLUSH_BUDGET);
    let mut batch = std::mem::take(&mut st.flush_buf);
    batch.extend(st.dirty.drain(..n));
    for key in batch.iter().copied() {
        let Some(conn) = st.conns.get_mut(key) else {
            continue;
        };
        conn.out.dirty = false;
        if conn.out.writer_active {
            continue;
        }
        match sock::flush(conn.fd, &mut conn.out.queue) {
            Flush::Done => after_flush(conn),
            Flush::Blocked => {
                conn.out.writer_active = true;
                monoio::spawn(writer(shard.clone(), key));
            }
            Flush::Failed => fail(conn),
        }
    }
    batch.clear();
    st.flush_buf = batch; // keep the allocation
    let more = !st.dirty.is_empty();
    if more {
        shard.shared.bus.nudge(shard.id);
    }
    more
}

/// Everything queued was sent.
fn after_flush(conn: &mut Conn) {
    if conn.out.flushed() {
        // Everything, including our close frame, is out: send FIN and wait for the peer's.
        sock::shutdown(conn.fd, libc::SHUT_WR);
    }
}

/// The socket failed: drop what was queued and cut it; the read loop then sees EOF.
fn fail(conn: &mut Conn) {
    conn.out.fail();
    sock::shutdown(conn.fd, libc::SHUT_RDWR);
}

async fn writer(shard: Rc<Shard>, key: ConnKey) {
    loop {
        let stream = match shard.state.borrow().conns.get(key) {
            Some(c) => c.stream.clone(),
            None => return,
        };
        let ready = stream.writable(false).await;
        let mut st = shard.state.borrow_mut();
        let Some(conn) = st.conns.get_mut(key) else {
            return;
        };
        if ready.is_err() {
            conn.out.writer_active = false;
            fail(conn);
            return;
        }
        match sock::flush(conn.fd, &mut conn.out.queue) {
            Flush::Done => {
                conn.out.writer_active = false;
                after_flush(conn);
                return;
            }
            Flush::Blocked => continue,
            Flush::Failed => {
                conn.out.writer_active = false;
                fail(conn);
                return;
            }
        }
    }
}

/// Removes a connection after its reader saw end-of-file: leaves every channel, signs out, and
/// tells the home shards.
pub fn remove_conn(shard: &Rc<Shard>, key: ConnKey) {
    let mut st = shard.state.borrow_mut();
    let Some(conn) = st.conns.remove(key) else {
        return;
    };
    // A writer task may still wait for this socket to drain, holding its own handle. A peer
    // that half-closed and stopped reading would never make it writable (with epoll nothing
    // else wakes it), so shut the socket down: the writer wakes, finds no connection, and the
    // descriptor is released.
    if conn.out.writer_active {
        sock::shutdown(conn.fd, libc::SHUT_RDWR);
    }
    let app = conn.app;
    for sub in &conn.subs {
        if sub.state != SubState::Active {
            continue; // a pending presence join is undone when its answer finds no connection
        }
        unindex(&mut st, app, &sub.channel, key, sub.slot);
        if sub.ty.kind != ChannelKind::ServerToUser {
            leave_home(shard, app, sub);
        }
    }
    if let Some(user) = &conn.user {
        let users = &mut st.users[app.0 as usize];
        if let Some(list) = users.get_mut(&user.id) {
            list.retain(|k| *k != key);
            if list.is_empty() {
                users.remove(&user.id);
            }
        }
        sign_out_home(shard, app, user, key);
    }
    shard.shared.app_connections[app.0 as usize].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    ShardMetrics::add(&shard.metrics().connections_closed, 1);
}

/// Drops `key` from the local index of a channel.
pub fn unindex(st: &mut State, app: AppIdx, channel: &Arc<str>, key: ConnKey, slot: u32) {
    let index = &mut st.index[app.0 as usize];
    let Some(list) = index.get_mut(channel) else {
        return;
    };
    let slot = slot as usize;
    let pos = if list.get(slot) == Some(&key) {
        slot
    } else {
        // Slots are kept in step with the list; searching is only a safety net.
        debug_assert!(false, "index slot out of step");
        match list.iter().position(|k| *k == key) {
            Some(p) => p,
            None => return,
        }
    };
    list.swap_remove(pos);
    if let Some(&moved) = list.get(pos) {
        // The last subscriber moved into the freed slot: update its record of where it is.
        if let Some(sub) = st.conns.get_mut(moved).and_then(|c| {
            c.subs
                .iter_mut()
                .find(|s| s.state == SubState::Active && *s.channel == **channel)
        }) {
            sub.slot = pos as u32;
        }
    }
    if list.is_empty() {
        index.remove(channel);
    }
}

/// Adds `key` to a channel's local index list and returns its slot there.
pub fn index_add(
    index: &mut HashMap<Arc<str>, Vec<ConnKey>>,
    channel: &Arc<str>,
    key: ConnKey,
) -> u32 {
    let list = index.entry(channel.clone()).or_default();
    list.push(key);
    (list.len() - 1) as u32
}

/// Tells the channel's home shard that an active subscription ended.
pub fn leave_home(shard: &Shard, app: AppIdx, sub: &super::conn::Sub) {
    let delta = match (&sub.member, sub.ty.kind) {
        (Some(m), ChannelKind::Presence) => Delta::Leave {
            app,
            channel: sub.channel.clone(),
            user_key: m.key.as_str().into(),
        },
        _ => Delta::Unsubscribed {
            app,
            channel: sub.channel.clone(),
        },
    };
    shard.to_home(app, &sub.channel, delta);
}

/// Tells the user's home shard (and the watched users' homes) that a signed-in connection left.
pub fn sign_out_home(shard: &Shard, app: AppIdx, user: &super::conn::SignedIn, key: ConnKey) {
    if !shard.shared.app(app).watchlist_events {
        return;
    }
    shard.to_home(
        app,
        &user.id,
        Delta::SignedOut {
            app,
            user: user.id.clone(),
        },
    );
    watch(shard, app, key, &user.watchlist, false);
}

/// Registers (or removes) a connection as a watcher of users at their home shards.
pub fn watch(shard: &Shard, app: AppIdx, key: ConnKey, ids: &[Arc<str>], add: bool) {
    for (home, users) in group_by_home(shard, app, ids) {
        let watcher = shard.conn_ref(key);
        shard.to_shard_home(
            home,
            Delta::Watch {
                app,
                users,
                watcher,
                add,
            },
        );
    }
}

/// Groups user ids by their home shard.
pub fn group_by_home(
    shard: &Shard,
    app: AppIdx,
    ids: &[Arc<str>],
) -> Vec<(crate::ids::ShardId, Vec<Arc<str>>)> {
    let mut groups: Vec<(crate::ids::ShardId, Vec<Arc<str>>)> = Vec::new();
    for id in ids {
        let h = home_of(app, id, shard.shared.shards());
        match groups.iter_mut().find(|(s, _)| *s == h) {
            Some((_, v)) => v.push(id.clone()),
            None => groups.push((h, vec![id.clone()])),
        }
    }
    groups
}
