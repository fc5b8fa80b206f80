//! The cluster side-car: a tokio task that owns the Redis connections, publishes what the shards
//! hand it, hands what other nodes publish to the shards, sends heartbeats, drops silent nodes,
//! and rebuilds shared state after every (re)connect. While Redis is unreachable it keeps
//! draining the shards' queue (what cannot cross is dropped and counted, never buffered), keeps
//! expiring silent nodes, and retries with backoff; the outage, the reconnect and the resync are
//! logged once each.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::nodes::{Change as NodeChange, Nodes, Why};
use super::wire::{self, Change, Entry, Message};
use super::{ClusterStats, Local, Outbound};
use crate::channels::home::{Delta, SnapEntry};
use crate::ids::{AppIdx, NodeId};
use crate::protocol::message::Member;

/// Most outbound messages published in one pipeline.
const BATCH: usize = 256;

pub(super) struct Sidecar {
    pub node: NodeId,
    pub channel: String,
    pub timeout_ms: u64,
    pub client: redis::Client,
    pub local: Arc<dyn Local>,
    pub stats: Arc<ClusterStats>,
    pub remote: Arc<Vec<AtomicU64>>,
}

/// How a connected session ended.
enum End {
    /// The broker connection failed.
    Lost(String),
    /// This node is shutting down; `Leaving` was published.
    Left,
}

type LeaveRx = mpsc::UnboundedReceiver<std::sync::mpsc::Sender<()>>;

impl Sidecar {
    pub async fn run(self, mut rx: mpsc::Receiver<Outbound>, mut leave: LeaveRx) {
        let started = Instant::now();
        let mut nodes = Nodes::new(self.node, self.timeout_ms);
        let mut backoff = Duration::from_millis(100);
        let mut down_since: Option<Instant> = None;
        loop {
            match self.connect().await {
                Ok((conn, stream)) => {
                    backoff = Duration::from_millis(100);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    match down_since.take() {
                        Some(t) => tracing::info!(
                            outage_ms = t.elapsed().as_millis() as u64,
                            "cluster broker reachable again; rebuilding shared state"
                        ),
                        None => tracing::info!(node = %self.node, "cluster broker connected"),
                    }
                    let end = self
                        .session(conn, stream, &mut rx, &mut leave, &mut nodes, started)
                        .await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    match end {
                        End::Left => return,
                        End::Lost(e) => {
                            self.stats.outages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "cluster broker connection lost; serving this node's clients only until it is back");
                            down_since = Some(Instant::now());
                        }
                    }
                }
                Err(e) => {
                    if down_since.is_none() {
                        self.stats.outages.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cluster broker unreachable; serving this node's clients only until it is");
                        down_since = Some(Instant::now());
                    }
                }
            }
            // Wait before retrying, but keep the shards' queue drained and silent nodes expiring.
            let until = tokio::time::Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    out = rx.recv() => {
                        if out.is_some() {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done = leave.recv() => {
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        let now = started.elapsed().as_millis() as u64;
                        for change in nodes.expire(now) {
                            self.node_change(change, &nodes);
                        }
                    }
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn connect(
        &self,
    ) -> redis::RedisResult<(redis::aio::MultiplexedConnection, redis::aio::PubSubStream)> {
        let timeout = Duration::from_secs(2);
        let attempt = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            let conn = self.client.get_multiplexed_async_connection().await?;
            Ok((conn, pubsub.into_on_message()))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connecting to the broker timed out",
            ))),
        }
    }

    async fn session(
        &self,
        mut conn: redis::aio::MultiplexedConnection,
        mut stream: redis::aio::PubSubStream,
        rx: &mut mpsc::Receiver<Outbound>,
        leave: &mut LeaveRx,
        nodes: &mut Nodes,
        started: Instant,
    ) -> End {
        // Everyone (this node included) sends its state; this node's own part arrives through
        // the shards' queue behind anything they sent before, so it is published in order.
        if let Err(e) = self
            .publish(&mut conn, vec![wire::encode(self.node, &Message::Hello)])
            .await
        {
            return End::Lost(e.to_string());
        }
        self.local.request_snapshot();
        let beat_ms = (self.timeout_ms / 5).clamp(200, 1000);
        // Synced once every node heard within two heartbeat periods of the Hello has sent all
        // of its snapshot pieces (a node that is there answers well within that).
        let hello_at = started.elapsed().as_millis() as u64;
        let mut pieces = Pieces::default();
        let mut beat = tokio::time::interval(Duration::from_millis(beat_ms));
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        // One pipeline of publishes is in flight at a time (so they reach Redis in order) while
        // the loop keeps reading other nodes' messages: a slow broker link must not make a
        // busy node miss its peers' heartbeats. Heartbeats and Hellos wait in `control` and
        // go out first in the next pipeline.
        let mut inflight: Option<Pin<Box<dyn Future<Output = redis::RedisResult<()>>>>> = None;
        let mut control: Vec<Bytes> = Vec::new();
        loop {
            tokio::select! {
                done = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    if let Err(e) = done {
                        return End::Lost(e.to_string());
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return End::Lost("subscription closed".into());
                    };
                    let now = started.elapsed().as_millis() as u64;
                    let payload = Bytes::from(msg.get_payload_bytes().to_vec());
                    if self.inbound(payload, nodes, now, &mut pieces) {
                        // A node this one did not know (new, or back after being dropped):
                        // everyone, that node included, sends its whole state again.
                        control.push(wire::encode(self.node, &Message::Hello));
                        self.local.request_snapshot();
                    }
                }
                out = rx.recv(), if inflight.is_none() => {
                    let Some(first) = out else { return End::Left };
                    let mut batch = std::mem::take(&mut control);
                    batch.extend(self.outbound(first));
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(o) => batch.extend(self.outbound(o)),
                            Err(_) => break,
                        }
                    }
                    inflight = Some(Box::pin(self.publish_owned(conn.clone(), batch)));
                }
                _ = std::future::ready(()), if inflight.is_none() && !control.is_empty() => {
                    let batch = std::mem::take(&mut control);
                    inflight = Some(Box::pin(self.publish_owned(conn.clone(), batch)));
                }
                _ = beat.tick() => {
                    let connections = self
                        .local
                        .connections()
                        .into_iter()
                        .map(|(app, n)| (self.local.app_id(app).to_string(), n))
                        .collect();
                    control.push(wire::encode(self.node, &Message::Heartbeat { connections }));
                }
                _ = sweep.tick() => {
                    let now = started.elapsed().as_millis() as u64;
                    for change in nodes.expire(now) {
                        self.node_change(change, nodes);
                    }
                    if !self.stats.synced.load(Ordering::Relaxed)
                        && now.saturating_sub(hello_at) >= 2 * beat_ms
                        && nodes.live().iter().all(|n| *n == self.node || pieces.complete(*n))
                    {
                        self.stats.synced.store(true, Ordering::Relaxed);
                        tracing::info!(
                            peers = nodes.live().len() - 1,
                            "cluster state received from every node; ready"
                        );
                    }
                }
                done = leave.recv() => {
                    // What is in flight goes first; then the goodbye.
                    if let Some(f) = inflight.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), f).await;
                    }
                    let bye = wire::encode(self.node, &Message::Leaving);
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.publish(&mut conn, vec![bye])).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return End::Left;
                }
            }
        }
    }

    /// [`Sidecar::publish`] on its own connection handle, for a pipeline kept in flight.
    async fn publish_owned(
        &self,
        mut conn: redis::aio::MultiplexedConnection,
        batch: Vec<Bytes>,
    ) -> redis::RedisResult<()> {
        self.publish(&mut conn, batch).await
    }

    async fn publish(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        batch: Vec<Bytes>,
    ) -> redis::RedisResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for b in &batch {
            pipe.cmd("PUBLISH")
                .arg(&self.channel)
                .arg(b.as_ref())
                .ignore();
        }
        let sent = tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<()>(conn)).await;
        match sent {
            Ok(Ok(())) => {
                self.stats
                    .sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => {
                self.stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Err(e)
            }
            Err(_) => {
                self.stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "publish timed out",
                )))
            }
        }
    }

    /// Encodes a shard's message for the broker.
    fn outbound(&self, out: Outbound) -> Option<Bytes> {
        let id = |app: AppIdx| self.local.app_id(app).to_string();
        let msg = match out {
            Outbound::Publish {
                app,
                channel,
                frame,
                except,
                cache_data,
                cache_stamp,
            } => Message::Publish {
                app: id(app),
                channel: channel.to_string(),
                frame,
                except: except.map(|e| e.to_string()),
                cache_data: cache_data.map(|c| c.to_string()),
                cache_stamp,
            },
            Outbound::ToUser {
                app,
                user,
                frame,
                except,
            } => Message::ToUser {
                app: id(app),
                user: user.to_string(),
                frame,
                except: except.map(|e| e.to_string()),
            },
            Outbound::Terminate { app, user } => Message::Terminate {
                app: id(app),
                user: user.to_string(),
            },
            Outbound::Change(delta) => {
                let (app, change) = to_change(delta)?;
                Message::Change {
                    app: id(app),
                    change,
                }
            }
            Outbound::Snapshot {
                piece,
                pieces,
                entries,
            } => Message::Snapshot {
                piece,
                pieces,
                entries: entries.into_iter().map(|e| to_entry(e, &id)).collect(),
            },
        };
        Some(wire::encode(self.node, &msg))
    }

    /// Handles one broker message; true when it came from a node not known until now.
    fn inbound(&self, payload: Bytes, nodes: &mut Nodes, now: u64, seen: &mut Pieces) -> bool {
        let (from, msg) = match wire::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                let n = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, malformed_total = n, "undecodable cluster message ignored");
                }
                return false;
            }
        };
        if from == self.node {
            return false; // our own publication, echoed by the broker
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let mut joined = false;
        if let Some(change) = nodes.heard(from, now) {
            joined = true;
            self.node_change(change, nodes);
        }
        let app = |id: &str| self.local.app_index(id);
        match msg {
            Message::Heartbeat { connections } => {
                nodes.heartbeat(from, connections);
                self.update_remote(nodes);
            }
            Message::Leaving => {
                if let Some(change) = nodes.left(from) {
                    self.node_change(change, nodes);
                }
            }
            Message::Hello => self.local.request_snapshot(),
            Message::Publish {
                app: a,
                channel,
                frame,
                except,
                cache_data,
                cache_stamp,
            } => {
                if let Some(a) = app(&a) {
                    let except = except.map(Arc::from);
                    let cache = cache_data.map(Arc::from);
                    let local = &self.local;
                    local.publish(a, channel.into(), frame, except, cache, cache_stamp);
                }
            }
            Message::ToUser {
                app: a,
                user,
                frame,
                except,
            } => {
                if let Some(a) = app(&a) {
                    self.local
                        .to_user(a, user.into(), frame, except.map(Arc::from));
                }
            }
            Message::Terminate { app: a, user } => {
                if let Some(a) = app(&a) {
                    self.local.terminate(a, user.into());
                }
            }
            Message::Change { app: a, change } => {
                if let Some(a) = app(&a) {
                    self.local.remote_change(from, from_change(a, change));
                }
            }
            Message::Snapshot {
                piece,
                pieces,
                entries,
            } => {
                if pieces == 0 || piece >= pieces {
                    return joined;
                }
                seen.add(from, piece, pieces);
                let entries: Vec<SnapEntry> = entries
                    .into_iter()
                    .filter_map(|e| from_entry(e, &app))
                    .collect();
                self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                self.local
                    .replace_node(from, piece, pieces, Arc::new(entries));
            }
        }
        joined
    }

    fn node_change(&self, change: NodeChange, nodes: &Nodes) {
        match change {
            NodeChange::Joined(n) => {
                tracing::info!(node = %n, "cluster node joined");
                self.local.nodes_changed(Arc::new(nodes.live()));
            }
            NodeChange::Gone(n, why) => {
                self.stats.nodes_dropped.fetch_add(1, Ordering::Relaxed);
                match why {
                    Why::Left => tracing::info!(node = %n, "cluster node left"),
                    Why::Silent => {
                        tracing::warn!(node = %n, timeout_ms = self.timeout_ms, "cluster node silent past node_timeout; dropping its clients' state")
                    }
                }
                self.local.nodes_changed(Arc::new(nodes.live()));
                self.local.drop_node(n);
            }
        }
        self.stats
            .peers
            .store(nodes.live().len() as u64 - 1, Ordering::Relaxed);
        self.update_remote(nodes);
    }

    fn update_remote(&self, nodes: &Nodes) {
        let mut total = 0;
        for (i, slot) in self.remote.iter().enumerate() {
            let n = nodes.remote_connections(self.local.app_id(AppIdx(i as u16)));
            slot.store(n, Ordering::Relaxed);
            total += n;
        }
        self.stats
            .remote_connections
            .store(total, Ordering::Relaxed);
    }
}

/// Which snapshot pieces each node has sent since this node's Hello.
#[derive(Default)]
struct Pieces(std::collections::BTreeMap<NodeId, (u16, std::collections::BTreeSet<u16>)>);

impl Pieces {
    fn add(&mut self, node: NodeId, piece: u16, of: u16) {
        let e = self.0.entry(node).or_insert((of, Default::default()));
        e.0 = of;
        e.1.insert(piece);
    }

    fn complete(&self, node: NodeId) -> bool {
        self.0
            .get(&node)
            .is_some_and(|(of, got)| got.len() == *of as usize)
    }
}

fn to_change(delta: Delta) -> Option<(AppIdx, Change)> {
    Some(match delta {
        Delta::Subscribed { app, channel } => (
            app,
            Change::Subscribed {
                channel: channel.to_string(),
            },
        ),
        Delta::Unsubscribed { app, channel } => (
            app,
            Change::Unsubscribed {
                channel: channel.to_string(),
            },
        ),
        Delta::RemoteJoin {
            app,
            channel,
            member,
        } => (
            app,
            Change::Joined {
                channel: channel.to_string(),
                key: member.key.clone(),
                raw_id: member.raw_id.clone(),
                info: member.info.clone(),
            },
        ),
        Delta::Leave {
            app,
            channel,
            user_key,
        } => (
            app,
            Change::Left {
                channel: channel.to_string(),
                key: user_key.to_string(),
            },
        ),
        Delta::SignedIn { app, user } => (
            app,
            Change::SignedIn {
                user: user.to_string(),
            },
        ),
        Delta::SignedOut { app, user } => (
            app,
            Change::SignedOut {
                user: user.to_string(),
            },
        ),
        // Joins with an asker and watches are local to a node; they never cross.
        Delta::Join { .. } | Delta::Watch { .. } => return None,
    })
}

fn from_change(app: AppIdx, change: Change) -> Delta {
    match change {
        Change::Subscribed { channel } => Delta::Subscribed {
            app,
            channel: channel.into(),
        },
        Change::Unsubscribed { channel } => Delta::Unsubscribed {
            app,
            channel: channel.into(),
        },
        Change::Joined {
            channel,
            key,
            raw_id,
            info,
        } => Delta::RemoteJoin {
            app,
            channel: channel.into(),
            member: Arc::new(Member { key, raw_id, info }),
        },
        Change::Left { channel, key } => Delta::Leave {
            app,
            channel: channel.into(),
            user_key: key.into(),
        },
        Change::SignedIn { user } => Delta::SignedIn {
            app,
            user: user.into(),
        },
        Change::SignedOut { user } => Delta::SignedOut {
            app,
            user: user.into(),
        },
    }
}

fn to_entry(e: SnapEntry, id: &impl Fn(AppIdx) -> String) -> Entry {
    match e {
        SnapEntry::Subs {
            app,
            channel,
            count,
        } => Entry::Subs {
            app: id(app),
            channel: channel.to_string(),
            count,
        },
        SnapEntry::Member {
            app,
            channel,
            member,
            conns,
        } => Entry::Member {
            app: id(app),
            channel: channel.to_string(),
            key: member.key.clone(),
            raw_id: member.raw_id.clone(),
            info: member.info.clone(),
            conns,
        },
        SnapEntry::User { app, user, conns } => Entry::User {
            app: id(app),
            user: user.to_string(),
            conns,
        },
    }
}

fn from_entry(e: Entry, app: &impl Fn(&str) -> Option<AppIdx>) -> Option<SnapEntry> {
    Some(match e {
        Entry::Subs {
            app: a,
            channel,
            count,
        } => SnapEntry::Subs {
            app: app(&a)?,
            channel: channel.into(),
            count,
        },
        Entry::Member {
            app: a,
            channel,
            key,
            raw_id,
            info,
            conns,
        } => SnapEntry::Member {
            app: app(&a)?,
            channel: channel.into(),
            member: Arc::new(Member { key, raw_id, info }),
            conns,
        },
        Entry::User {
            app: a,
            user,
            conns,
        } => SnapEntry::User {
            app: app(&a)?,
            user: user.into(),
            conns,
        },
    })
}
