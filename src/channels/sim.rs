//! Deterministic simulation of the cross-core and cross-node facts: 1 to 3 simulated nodes (and
//! nodes that start later), each with 1 to 3 shards running the real [`Home`] state machine and
//! a local side that mirrors `shard::pusher` (pending and active subscriptions, join answers,
//! undoing a join whose connection left), exchange bus messages and broker messages in a seeded
//! random interleaving while random clients connect, subscribe, join presence channels with
//! repeated user ids, sign in with watchlists, unsubscribe and drop, often with a join still in
//! flight; and nodes crash, stop cleanly, start, notice silence, and the broker goes away
//! (losing what it held) and comes back.
//!
//! Each shard's inbox is one FIFO, as the real bus is; the broker keeps one FIFO per (sender,
//! receiver), as Redis pub/sub does per publisher, and interleaves senders at random. The
//! broker side mirrors `cluster::broker`: replicated changes, `Hello` and per-shard snapshots
//! after a (re)connect or when a node is heard again, `Leaving`, and a silence timeout that
//! drops a node once what it published before has arrived. A step runs one client operation,
//! one shard's next message, one broker delivery, or one node event. Checked on every
//! delivery: a frame of a channel only reaches a connection actively subscribed to it, and a
//! presence observer never sees `member_added` for a member it already lists or
//! `member_removed` for one it does not. Checked whenever the system goes quiet (all inboxes
//! drained, the broker up, dead nodes dropped): every live node's homes' counts, members and
//! online users equal a plain reference model built from the live connections of every live
//! node; every observer's member list, last subscription count and
//! watchlist view equal it too; occupied/vacated and member_added/member_removed webhooks
//! alternate and end in the true state.
//!
//! A failure names its seed; `RINGPUSH_SIM_SEED=<seed> cargo test --lib channels::sim` replays
//! exactly that run, `RINGPUSH_SIM_RUNS=<n>` changes how many seeds the suite tries.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::home::{AppRules, Delta, Effect, Home, Origin, SnapEntry};
use crate::ids::{home_of, AppIdx, ConnKey, ConnRef, NodeId, ShardId};
use crate::protocol::message::Member;
use crate::webhooks::HookKind;

const APP: AppIdx = AppIdx(0);
const CHANNELS: [&str; 4] = ["presence-a", "presence-b", "public-c", "public-d"];
/// User ids as an app signs them: hash key and raw JSON id (strings and numbers both).
const USERS: [(&str, &str); 4] = [
    ("u1", "\"u1\""),
    ("u2", "\"u2\""),
    ("7", "7"),
    ("8", "\"8\""),
];
const MAX_LIVE_CONNS: usize = 12;

/// A deliberate fault, to show the checks catch what they claim to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Run the real logic unchanged.
    None,
    /// Lose every `member_removed` publication (a ghost member stays listed).
    DropMemberRemoved,
    /// Publish every `member_added` twice (a user announced twice).
    DoubleMemberAdded,
    /// Nodes ignore the loss of another node (its members stay as ghosts).
    IgnoreNodeLoss,
}

/// A shard's inbox message (the bus), within one node.
enum Msg {
    Home {
        from: Origin,
        delta: Delta,
    },
    JoinAnswer {
        to: ConnRef,
        channel: Arc<str>,
        member: Arc<Member>,
        result: Result<Bytes, String>,
    },
    Publish {
        channel: Arc<str>,
        frame: Bytes,
        except: Option<Arc<str>>,
    },
    Notice {
        to: ConnRef,
        frame: Bytes,
    },
    DropOrigin(Origin),
    Replace {
        origin: Origin,
        piece: u16,
        pieces: u16,
        entries: Arc<Vec<SnapEntry>>,
    },
    SnapshotRequest,
}

/// What crosses the broker, as the cluster side-car sends it.
enum Wire {
    /// A heartbeat: only proves the sender alive.
    Heartbeat,
    Change(Delta),
    Hello,
    Snapshot {
        piece: u16,
        pieces: u16,
        entries: Arc<Vec<SnapEntry>>,
    },
    Leaving,
}

enum Sub {
    /// Join sent to the home; answer not back.
    Pending(Arc<Member>),
    /// In the local index.
    Active(Option<Arc<Member>>),
}

struct Conn {
    socket_id: Arc<str>,
    subs: BTreeMap<Arc<str>, Sub>,
    user: Option<Arc<str>>,
    watchlist: Vec<Arc<str>>,
    /// What this client believes, from the frames it received.
    members_seen: BTreeMap<Arc<str>, BTreeSet<String>>,
    last_count: BTreeMap<Arc<str>, usize>,
    online_seen: BTreeMap<Arc<str>, bool>,
}

struct SimShard {
    home: Home,
    inbox: VecDeque<Msg>,
    conns: BTreeMap<u32, Conn>,
    index: BTreeMap<Arc<str>, BTreeSet<u32>>,
}

/// One ringpush process: its shards and which other nodes it currently counts as live.
struct SimNode {
    id: NodeId,
    alive: bool,
    shards: Vec<SimShard>,
    known: BTreeSet<usize>,
    /// Webhooks its homes reported (before leadership picks one node per channel).
    hooks: Vec<(Arc<str>, HookKind)>,
}

/// How much of the interesting ground a run covered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Coverage {
    quiet_checks: u32,
    undone_joins: u32,
    member_events: u32,
    watch_notices: u32,
    count_events: u32,
    crashes: u32,
    outages: u32,
    resyncs: u32,
}

struct Sim {
    rng: fastrand::Rng,
    seen: Coverage,
    nodes: Vec<SimNode>,
    /// Broker queues per (sender, receiver): one publisher's messages stay in order.
    broker: BTreeMap<(usize, usize), VecDeque<Wire>>,
    broker_up: bool,
    /// Nodes whose messages the broker holds back (a slow link): others may time them out
    /// although they are alive and do not know it.
    stalled: BTreeSet<usize>,
    next_conn: u32,
    mutation: Mutation,
    log: Vec<String>,
}

type Check = Result<(), String>;

fn event_of(frame: &Bytes) -> Value {
    let start = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&frame[start..]).expect("frames are JSON")
}

fn data_of(ev: &Value) -> Value {
    serde_json::from_str(ev["data"].as_str().expect("string data")).expect("data JSON")
}

fn id_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn key_of(delta: &Delta) -> &str {
    match delta {
        Delta::Subscribed { channel, .. }
        | Delta::Unsubscribed { channel, .. }
        | Delta::Join { channel, .. }
        | Delta::RemoteJoin { channel, .. }
        | Delta::Leave { channel, .. } => channel,
        Delta::SignedIn { user, .. } | Delta::SignedOut { user, .. } => user,
        Delta::Watch { .. } => "",
    }
}

fn rules() -> Vec<AppRules> {
    vec![AppRules {
        max_presence_members: 100,
        subscription_count: true,
    }]
}

impl Sim {
    fn new(seed: u64, mutation: Mutation) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        // A third of the runs are one node (the cross-core case alone), the rest clusters.
        let nodes = if rng.u32(0..3) == 0 {
            1
        } else {
            rng.usize(2..=3)
        };
        let mut sim = Sim {
            rng,
            seen: Coverage::default(),
            nodes: Vec::new(),
            broker: BTreeMap::new(),
            broker_up: true,
            stalled: BTreeSet::new(),
            next_conn: 0,
            mutation,
            log: Vec::new(),
        };
        for _ in 0..nodes {
            sim.add_node();
        }
        // Start-up: everyone already knows everyone (as after the first Hello round).
        for a in 0..nodes {
            for b in 0..nodes {
                if a != b {
                    sim.nodes[a].known.insert(b);
                }
            }
        }
        sim
    }

    fn add_node(&mut self) -> usize {
        let shards = self.rng.usize(1..=3);
        let replicate = true;
        let n = self.nodes.len();
        self.nodes.push(SimNode {
            id: NodeId(n as u64 + 1),
            alive: true,
            shards: (0..shards)
                .map(|_| SimShard {
                    home: Home::new(rules()).replicating(replicate),
                    inbox: VecDeque::new(),
                    conns: BTreeMap::new(),
                    index: BTreeMap::new(),
                })
                .collect(),
            known: BTreeSet::new(),
            hooks: Vec::new(),
        });
        n
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| self.nodes[n].alive)
            .collect()
    }

    fn home_of(&self, n: usize, name: &str) -> usize {
        home_of(APP, name, self.nodes[n].shards.len()).0 as usize
    }

    fn send_home(&mut self, n: usize, from: usize, name: &str, delta: Delta) {
        let home = self.home_of(n, name);
        let from = Origin::Shard(ShardId(from as u16));
        self.nodes[n].shards[home]
            .inbox
            .push_back(Msg::Home { from, delta });
    }

    fn conn_ref(shard: usize, id: u32) -> ConnRef {
        ConnRef {
            shard: ShardId(shard as u16),
            key: ConnKey { idx: id, gen: 1 },
        }
    }

    fn live_conns(&self) -> Vec<(usize, usize, u32)> {
        let mut out = Vec::new();
        for n in self.alive() {
            for (s, sh) in self.nodes[n].shards.iter().enumerate() {
                out.extend(sh.conns.keys().map(|&c| (n, s, c)));
            }
        }
        out
    }

    fn pick_live(&mut self) -> Option<(usize, usize, u32)> {
        let live = self.live_conns();
        (!live.is_empty()).then(|| live[self.rng.usize(..live.len())])
    }

    fn conn(&mut self, n: usize, s: usize, id: u32) -> &mut Conn {
        self.nodes[n].shards[s]
            .conns
            .get_mut(&id)
            .expect("live connection")
    }

    /// Puts a message on the broker for every other live node this one is connected through.
    fn publish_to_broker(&mut self, from: usize, make: impl Fn() -> Wire) {
        if !self.broker_up {
            return; // dropped and counted by the real side-car; never buffered
        }
        for to in self.alive() {
            if to != from {
                self.broker.entry((from, to)).or_default().push_back(make());
            }
        }
    }

    fn busy_shards(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for n in self.alive() {
            for (s, sh) in self.nodes[n].shards.iter().enumerate() {
                if !sh.inbox.is_empty() {
                    out.push((n, s));
                }
            }
        }
        out
    }

    fn busy_links(&self) -> Vec<(usize, usize)> {
        self.broker
            .iter()
            .filter(|((from, _), q)| !q.is_empty() && !self.stalled.contains(from))
            .map(|(k, _)| *k)
            .collect()
    }

    /// One random step. Returns the check result of whatever was delivered.
    fn step(&mut self) -> Check {
        let busy = self.busy_shards();
        let links = self.busy_links();
        let roll = self.rng.u32(0..100);
        if !busy.is_empty() && roll < 45 {
            let (n, s) = busy[self.rng.usize(..busy.len())];
            return self.handle_one(n, s);
        }
        if !links.is_empty() && roll < 65 {
            let link = links[self.rng.usize(..links.len())];
            self.deliver_wire(link);
            return Ok(());
        }
        if self.nodes.len() > 1 && self.rng.u32(0..100) < 3 {
            self.node_event();
            return Ok(());
        }
        match self.rng.u32(0..100) {
            0..=19 if self.live_conns().len() < MAX_LIVE_CONNS => self.connect(),
            0..=54 => self.subscribe(),
            55..=69 => self.unsubscribe(),
            70..=84 => self.disconnect(),
            _ => self.sign_in(),
        }
        Ok(())
    }

    /// Something happens to a node or the broker: a crash, a clean stop, a new node, an outage
    /// starting or ending, or a node noticing that another went silent.
    fn node_event(&mut self) {
        let alive = self.alive();
        match self.rng.u32(0..100) {
            0..=19 if alive.len() > 1 => {
                let n = alive[self.rng.usize(..alive.len())];
                self.log.push(format!("node {n} crashes"));
                self.seen.crashes += 1;
                self.kill(n);
            }
            20..=34 if alive.len() > 1 => {
                let n = alive[self.rng.usize(..alive.len())];
                self.log.push(format!("node {n} stops cleanly"));
                self.publish_to_broker(n, || Wire::Leaving);
                self.kill(n);
            }
            35..=49 if self.nodes.len() < 6 => {
                let n = self.add_node();
                self.log.push(format!("node {n} starts"));
                self.hello(n);
            }
            50..=64 if self.broker_up => {
                self.log.push("broker goes down".into());
                self.seen.outages += 1;
                self.broker_up = false;
                self.broker.clear();
            }
            65..=79 if !self.broker_up => self.broker_back(),
            80..=87 if self.stalled.is_empty() => {
                let n = alive[self.rng.usize(..alive.len())];
                self.log.push(format!("node {n}'s messages stall"));
                self.stalled.insert(n);
            }
            88..=91 if !self.stalled.is_empty() => {
                self.log.push("stalled messages flow again".into());
                self.stalled.clear();
            }
            92..=95 => self.heartbeats(),
            _ => self.some_timeout(),
        }
    }

    /// A node's process ends: its connections vanish without saying goodbye.
    fn kill(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.alive = false;
        node.shards.clear();
        node.known.clear();
        // What it had already published stays in the broker; what was for it is gone.
        self.broker.retain(|(_, to), _| *to != n);
    }

    fn broker_back(&mut self) {
        self.log.push("broker back".into());
        self.broker_up = true;
        for n in self.alive() {
            self.hello(n);
        }
    }

    /// Every live node's next heartbeat (they go out every fraction of a second, so a live
    /// node dropped by mistake is heard again long before anyone could notice).
    fn heartbeats(&mut self) {
        for n in self.alive() {
            self.publish_to_broker(n, || Wire::Heartbeat);
        }
    }

    /// A node (re)connects: it asks everyone for their state and sends its own.
    fn hello(&mut self, n: usize) {
        self.publish_to_broker(n, || Wire::Hello);
        for sh in self.nodes[n].shards.iter_mut() {
            sh.inbox.push_back(Msg::SnapshotRequest);
        }
    }

    /// One live node stops counting one it knows: allowed when the other is dead or the broker
    /// is down, and once everything the other published before has arrived (the timeout is
    /// seconds; a broker hop is milliseconds).
    fn some_timeout(&mut self) {
        let mut candidates = Vec::new();
        for m in self.alive() {
            for &x in &self.nodes[m].known {
                let stalled = self.stalled.contains(&x);
                let gone = !self.nodes[x].alive || !self.broker_up || stalled;
                let drained = stalled || self.broker.get(&(x, m)).is_none_or(|q| q.is_empty());
                if gone && drained {
                    candidates.push((m, x));
                }
            }
        }
        if candidates.is_empty() {
            return;
        }
        let (m, x) = candidates[self.rng.usize(..candidates.len())];
        self.drop_node(m, x);
    }

    fn drop_node(&mut self, m: usize, x: usize) {
        self.log.push(format!("node {m} drops node {x}"));
        self.nodes[m].known.remove(&x);
        if self.mutation == Mutation::IgnoreNodeLoss {
            return;
        }
        let origin = Origin::Node(self.nodes[x].id);
        for sh in self.nodes[m].shards.iter_mut() {
            sh.inbox.push_back(Msg::DropOrigin(origin));
        }
    }

    fn deliver_wire(&mut self, link: (usize, usize)) {
        let (from, to) = link;
        let msg = self
            .broker
            .get_mut(&link)
            .and_then(|q| q.pop_front())
            .expect("busy link");
        if !self.nodes[to].alive {
            return;
        }
        if self.nodes[to].known.insert(from) {
            // Heard for the first time, or again after being dropped: everyone resends.
            self.log.push(format!("node {to} hears node {from} again"));
            self.hello(to);
        }
        let origin = Origin::Node(self.nodes[from].id);
        match msg {
            Wire::Heartbeat => {}
            Wire::Change(delta) => {
                let home = self.home_of(to, key_of(&delta));
                self.nodes[to].shards[home].inbox.push_back(Msg::Home {
                    from: origin,
                    delta,
                });
            }
            Wire::Hello => {
                for sh in self.nodes[to].shards.iter_mut() {
                    sh.inbox.push_back(Msg::SnapshotRequest);
                }
            }
            Wire::Snapshot {
                piece,
                pieces,
                entries,
            } => {
                self.seen.resyncs += 1;
                for sh in self.nodes[to].shards.iter_mut() {
                    sh.inbox.push_back(Msg::Replace {
                        origin,
                        piece,
                        pieces,
                        entries: entries.clone(),
                    });
                }
            }
            Wire::Leaving => self.drop_node(to, from),
        }
    }

    fn connect(&mut self) {
        let alive = self.alive();
        let n = alive[self.rng.usize(..alive.len())];
        let s = self.rng.usize(..self.nodes[n].shards.len());
        self.next_conn += 1;
        let id = self.next_conn;
        self.log.push(format!("connect {id} on node {n} shard {s}"));
        self.nodes[n].shards[s].conns.insert(
            id,
            Conn {
                socket_id: format!("{id}.{s}").into(),
                subs: BTreeMap::new(),
                user: None,
                watchlist: Vec::new(),
                members_seen: BTreeMap::new(),
                last_count: BTreeMap::new(),
                online_seen: BTreeMap::new(),
            },
        );
    }

    fn subscribe(&mut self) {
        let Some((n, s, id)) = self.pick_live() else {
            return;
        };
        let channel: Arc<str> = CHANNELS[self.rng.usize(..CHANNELS.len())].into();
        let (key, raw) = USERS[self.rng.usize(..USERS.len())];
        if self.conn(n, s, id).subs.contains_key(&channel) {
            return;
        }
        self.log.push(format!("conn {id} subscribes {channel}"));
        if channel.starts_with("presence-") {
            let member = Arc::new(Member {
                key: key.into(),
                raw_id: raw.into(),
                info: None,
            });
            let conn = self.conn(n, s, id);
            conn.subs
                .insert(channel.clone(), Sub::Pending(member.clone()));
            let delta = Delta::Join {
                app: APP,
                channel: channel.clone(),
                member,
                conn: Self::conn_ref(s, id),
                socket_id: conn.socket_id.clone(),
            };
            self.send_home(n, s, &channel, delta);
            // Often the client goes away before the answer is back.
            if self.rng.u32(0..4) == 0 {
                self.drop_conn(n, s, id);
            }
        } else {
            self.conn(n, s, id)
                .subs
                .insert(channel.clone(), Sub::Active(None));
            self.nodes[n].shards[s]
                .index
                .entry(channel.clone())
                .or_default()
                .insert(id);
            let delta = Delta::Subscribed {
                app: APP,
                channel: channel.clone(),
            };
            self.send_home(n, s, &channel, delta);
        }
    }

    fn unsubscribe(&mut self) {
        let Some((n, s, id)) = self.pick_live() else {
            return;
        };
        let names: Vec<Arc<str>> = self.conn(n, s, id).subs.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let channel = names[self.rng.usize(..names.len())].clone();
        self.log.push(format!("conn {id} unsubscribes {channel}"));
        let conn = self.conn(n, s, id);
        let sub = conn.subs.remove(&channel).expect("listed");
        conn.members_seen.remove(&channel);
        conn.last_count.remove(&channel);
        self.leave(n, s, id, &channel, sub);
    }

    /// What leaving one subscription sends; a pending join is undone when its answer comes.
    fn leave(&mut self, n: usize, s: usize, id: u32, channel: &Arc<str>, sub: Sub) {
        let Sub::Active(member) = sub else {
            return;
        };
        if let Some(set) = self.nodes[n].shards[s].index.get_mut(channel) {
            set.remove(&id);
        }
        let delta = match member {
            Some(m) => Delta::Leave {
                app: APP,
                channel: channel.clone(),
                user_key: m.key.as_str().into(),
            },
            None => Delta::Unsubscribed {
                app: APP,
                channel: channel.clone(),
            },
        };
        self.send_home(n, s, channel, delta);
    }

    fn disconnect(&mut self) {
        if let Some((n, s, id)) = self.pick_live() {
            self.drop_conn(n, s, id);
        }
    }

    fn drop_conn(&mut self, n: usize, s: usize, id: u32) {
        self.log.push(format!("conn {id} drops"));
        let conn = self.nodes[n].shards[s].conns.remove(&id).expect("live");
        for (channel, sub) in conn.subs {
            self.leave(n, s, id, &channel, sub);
        }
        if let Some(user) = conn.user {
            let delta = Delta::SignedOut {
                app: APP,
                user: user.clone(),
            };
            self.send_home(n, s, &user, delta);
            self.watch(n, s, id, &conn.watchlist, false);
        }
    }

    fn sign_in(&mut self) {
        let Some((n, s, id)) = self.pick_live() else {
            return;
        };
        let user: Arc<str> = USERS[self.rng.usize(..USERS.len())].0.into();
        let watchlist: Vec<Arc<str>> = USERS
            .iter()
            .filter(|_| self.rng.bool())
            .map(|(k, _)| Arc::from(*k))
            .collect();
        let conn = self.conn(n, s, id);
        if conn.user.is_some() {
            return;
        }
        conn.user = Some(user.clone());
        conn.watchlist = watchlist.clone();
        self.log.push(format!(
            "conn {id} signs in as {user} watching {watchlist:?}"
        ));
        let delta = Delta::SignedIn {
            app: APP,
            user: user.clone(),
        };
        self.send_home(n, s, &user, delta);
        self.watch(n, s, id, &watchlist, true);
    }

    fn watch(&mut self, n: usize, s: usize, id: u32, users: &[Arc<str>], add: bool) {
        let mut by_home: BTreeMap<usize, Vec<Arc<str>>> = BTreeMap::new();
        for u in users {
            by_home
                .entry(self.home_of(n, u))
                .or_default()
                .push(u.clone());
        }
        for (home, users) in by_home {
            let delta = Delta::Watch {
                app: APP,
                users,
                watcher: Self::conn_ref(s, id),
                add,
            };
            let from = Origin::Shard(ShardId(s as u16));
            self.nodes[n].shards[home]
                .inbox
                .push_back(Msg::Home { from, delta });
        }
    }

    fn handle_one(&mut self, n: usize, s: usize) -> Check {
        let msg = self.nodes[n].shards[s]
            .inbox
            .pop_front()
            .expect("busy shard");
        let mut out = Vec::new();
        match msg {
            Msg::Home { from, delta } => {
                self.nodes[n].shards[s].home.apply(from, delta, 0, &mut out);
            }
            Msg::DropOrigin(origin) => {
                self.nodes[n].shards[s]
                    .home
                    .drop_origin(origin, 0, &mut out);
            }
            Msg::Replace {
                origin,
                piece,
                pieces,
                entries,
            } => {
                let shards = self.nodes[n].shards.len();
                let covers = |app: AppIdx, name: &str| {
                    home_of(app, name, pieces as usize).0 == piece
                        && home_of(app, name, shards).0 as usize == s
                };
                self.nodes[n].shards[s]
                    .home
                    .replace_origin(origin, covers, &entries, 0, &mut out);
            }
            Msg::SnapshotRequest => {
                let entries = Arc::new(self.nodes[n].shards[s].home.snapshot_local());
                let (piece, pieces) = (s as u16, self.nodes[n].shards.len() as u16);
                self.publish_to_broker(n, || Wire::Snapshot {
                    piece,
                    pieces,
                    entries: entries.clone(),
                });
            }
            Msg::JoinAnswer {
                to,
                channel,
                member,
                result,
            } => return self.join_answer(n, s, to.key.idx, channel, member, result),
            Msg::Publish {
                channel,
                frame,
                except,
            } => {
                let ids: Vec<u32> = self.nodes[n].shards[s]
                    .index
                    .get(&channel)
                    .map(|set| set.iter().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    let conn = &self.nodes[n].shards[s].conns[&id];
                    if except.as_deref() == Some(&*conn.socket_id) {
                        continue;
                    }
                    self.receive(n, s, id, &frame)?;
                }
            }
            Msg::Notice { to, frame } => {
                if self.nodes[n].shards[s].conns.contains_key(&to.key.idx) {
                    self.receive(n, s, to.key.idx, &frame)?;
                }
            }
        }
        self.apply_effects(n, out);
        Ok(())
    }

    fn join_answer(
        &mut self,
        n: usize,
        s: usize,
        id: u32,
        channel: Arc<str>,
        member: Arc<Member>,
        result: Result<Bytes, String>,
    ) -> Check {
        let pending = self.nodes[n].shards[s].conns.get(&id).is_some_and(
            |c| matches!(c.subs.get(&channel), Some(Sub::Pending(m)) if Arc::ptr_eq(m, &member)),
        );
        if !pending {
            // The connection left or unsubscribed while the join was in flight: undo it.
            if result.is_ok() {
                self.seen.undone_joins += 1;
                let delta = Delta::Leave {
                    app: APP,
                    channel: channel.clone(),
                    user_key: member.key.as_str().into(),
                };
                self.send_home(n, s, &channel, delta);
            }
            return Ok(());
        }
        match result {
            Ok(frame) => {
                self.conn(n, s, id)
                    .subs
                    .insert(channel.clone(), Sub::Active(Some(member)));
                self.nodes[n].shards[s]
                    .index
                    .entry(channel)
                    .or_default()
                    .insert(id);
                self.receive(n, s, id, &frame)
            }
            Err(_) => {
                self.conn(n, s, id).subs.remove(&channel);
                Ok(())
            }
        }
    }

    fn apply_effects(&mut self, n: usize, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Publish {
                    channel,
                    frame,
                    except,
                    ..
                } => {
                    let name = event_of(&frame)["event"].clone();
                    if self.mutation == Mutation::DropMemberRemoved
                        && name == "pusher_internal:member_removed"
                    {
                        continue;
                    }
                    let copies = if self.mutation == Mutation::DoubleMemberAdded
                        && name == "pusher_internal:member_added"
                    {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        for sh in self.nodes[n].shards.iter_mut() {
                            sh.inbox.push_back(Msg::Publish {
                                channel: channel.clone(),
                                frame: frame.clone(),
                                except: except.clone(),
                            });
                        }
                    }
                }
                Effect::JoinAnswer {
                    to,
                    channel,
                    member,
                    result,
                    ..
                } => self.nodes[n].shards[to.shard.0 as usize]
                    .inbox
                    .push_back(Msg::JoinAnswer {
                        to,
                        channel,
                        member,
                        result,
                    }),
                Effect::Notice { to, frame } => self.nodes[n].shards[to.shard.0 as usize]
                    .inbox
                    .push_back(Msg::Notice { to, frame }),
                Effect::Hook { channel, kind, .. } => self.nodes[n].hooks.push((channel, kind)),
                Effect::Replicate(delta) => {
                    self.publish_to_broker(n, || Wire::Change(delta.clone()));
                }
            }
        }
    }

    /// A client reads a frame: its view of members, counts and online users moves on, and the
    /// per-delivery rules are checked.
    fn receive(&mut self, n: usize, s: usize, id: u32, frame: &Bytes) -> Check {
        let ev = event_of(frame);
        let name = ev["event"].as_str().unwrap_or_default().to_string();
        let conn = self.conn(n, s, id);
        if let Some(channel) = ev["channel"].as_str() {
            if !matches!(conn.subs.get(channel), Some(Sub::Active(_))) {
                return Err(format!(
                    "conn {id} got {name} on {channel} without an active subscription"
                ));
            }
        }
        let channel: Arc<str> = ev["channel"].as_str().unwrap_or_default().into();
        let counted = |c: &mut Coverage| match name.as_str() {
            "pusher_internal:member_added" | "pusher_internal:member_removed" => {
                c.member_events += 1
            }
            "pusher_internal:subscription_count" => c.count_events += 1,
            "pusher_internal:watchlist_events" => c.watch_notices += 1,
            _ => {}
        };
        counted(&mut self.seen);
        let conn = self.conn(n, s, id);
        match name.as_str() {
            "pusher_internal:subscription_succeeded" => {
                let ids = data_of(&ev)["presence"]["ids"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let seen: BTreeSet<String> = ids.iter().map(id_key).collect();
                conn.members_seen.insert(channel, seen);
            }
            "pusher_internal:member_added" => {
                let user = id_key(&data_of(&ev)["user_id"]);
                let seen = conn.members_seen.entry(channel.clone()).or_default();
                if !seen.insert(user.clone()) {
                    return Err(format!(
                        "conn {id} got member_added for {user} on {channel}, already listed"
                    ));
                }
            }
            "pusher_internal:member_removed" => {
                let user = id_key(&data_of(&ev)["user_id"]);
                let seen = conn.members_seen.entry(channel.clone()).or_default();
                if !seen.remove(&user) {
                    return Err(format!(
                        "conn {id} got member_removed for {user} on {channel}, not listed"
                    ));
                }
            }
            "pusher_internal:subscription_count" => {
                let count = data_of(&ev)["subscription_count"].as_u64().unwrap_or(0);
                conn.last_count.insert(channel, count as usize);
            }
            "pusher_internal:watchlist_events" => {
                for group in data_of(&ev)["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let online = group["name"] == "online";
                    for u in group["user_ids"].as_array().cloned().unwrap_or_default() {
                        conn.online_seen.insert(id_key(&u).as_str().into(), online);
                    }
                }
            }
            other => return Err(format!("conn {id} got unexpected {other}")),
        }
        Ok(())
    }

    /// Brings the system to rest: every inbox and broker queue drained, the broker up, dead
    /// nodes dropped by every live one, in a random interleaving.
    fn settle(&mut self) -> Check {
        self.stalled.clear();
        self.heartbeats();
        if !self.broker_up {
            // An outage lasting past node_timeout: everyone drops everyone, then it ends.
            loop {
                let busy = self.busy_shards();
                if busy.is_empty() {
                    break;
                }
                let (n, s) = busy[self.rng.usize(..busy.len())];
                self.handle_one(n, s)?;
            }
            for m in self.alive() {
                let known: Vec<usize> = self.nodes[m].known.iter().copied().collect();
                for x in known {
                    self.drop_node(m, x);
                }
            }
            self.broker_back();
        }
        loop {
            let busy = self.busy_shards();
            let links = self.busy_links();
            if !busy.is_empty() && (links.is_empty() || self.rng.bool()) {
                let (n, s) = busy[self.rng.usize(..busy.len())];
                self.handle_one(n, s)?;
            } else if !links.is_empty() {
                let link = links[self.rng.usize(..links.len())];
                self.deliver_wire(link);
            } else {
                // Quiet; a live node may still count a dead one: its timeout fires now.
                let stale: Vec<(usize, usize)> = self
                    .alive()
                    .into_iter()
                    .flat_map(|m| {
                        self.nodes[m]
                            .known
                            .iter()
                            .filter(|&&x| !self.nodes[x].alive)
                            .map(move |&x| (m, x))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if stale.is_empty() {
                    return Ok(());
                }
                for (m, x) in stale {
                    self.drop_node(m, x);
                }
            }
        }
    }

    /// At rest: every live node's homes and every client's view equal the reference model.
    fn check_quiet(&mut self) -> Check {
        self.seen.quiet_checks += 1;
        // The reference model: what the live connections on live nodes say is true.
        let mut subs: BTreeMap<&str, usize> = BTreeMap::new();
        let mut members: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut online: BTreeSet<&str> = BTreeSet::new();
        for n in self.alive() {
            for sh in &self.nodes[n].shards {
                for (id, c) in &sh.conns {
                    for (ch, sub) in &c.subs {
                        let Sub::Active(m) = sub else {
                            return Err(format!("conn {id}: join to {ch} still pending at rest"));
                        };
                        *subs.entry(ch).or_default() += 1;
                        if let Some(m) = m {
                            members.entry(ch).or_default().insert(m.key.clone());
                        }
                    }
                    if let Some(u) = &c.user {
                        online.insert(u);
                    }
                }
            }
        }
        for n in self.alive() {
            let node = &self.nodes[n];
            for ch in CHANNELS {
                let home = &node.shards[home_of(APP, ch, node.shards.len()).0 as usize].home;
                let facts = home.facts(APP, ch);
                let want_subs = subs.get(ch).copied().unwrap_or(0);
                let want_members = members.get(ch).cloned().unwrap_or_default();
                if facts.subscriptions != want_subs || facts.users != want_members.len() {
                    return Err(format!(
                        "node {n}, {ch}: home says {facts:?}, connections say {want_subs} subs, members {want_members:?}"
                    ));
                }
                let listed: BTreeSet<String> = home
                    .users(APP, ch)
                    .iter()
                    .map(|raw| id_key(&serde_json::from_str(raw).expect("raw id")))
                    .collect();
                if listed != want_members {
                    return Err(format!(
                        "node {n}, {ch}: home lists {listed:?}, truth {want_members:?}"
                    ));
                }
                check_hooks(n, &node.hooks, ch, want_subs, &want_members)?;
                for sh in &node.shards {
                    for (id, c) in &sh.conns {
                        if !c.subs.contains_key(ch) {
                            continue;
                        }
                        if ch.starts_with("presence-") {
                            let seen = c.members_seen.get(ch).cloned().unwrap_or_default();
                            if seen != want_members {
                                return Err(format!(
                                    "conn {id} lists {seen:?} on {ch}, truth {want_members:?}"
                                ));
                            }
                        } else if c.last_count.get(ch) != Some(&want_subs) {
                            return Err(format!(
                                "conn {id} last saw count {:?} on {ch}, truth {want_subs}",
                                c.last_count.get(ch)
                            ));
                        }
                    }
                }
            }
            for (u, _) in USERS {
                let home = &node.shards[home_of(APP, u, node.shards.len()).0 as usize].home;
                if home.online(APP, u) != online.contains(u) {
                    return Err(format!(
                        "node {n}: home says {u} online={}",
                        home.online(APP, u)
                    ));
                }
            }
            for sh in &node.shards {
                for (id, c) in &sh.conns {
                    for u in &c.watchlist {
                        let seen = c.online_seen.get(u).copied();
                        if seen != Some(online.contains(&**u)) {
                            return Err(format!(
                                "conn {id} thinks {u} online={seen:?}, truth {}",
                                online.contains(&**u)
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// One node's webhooks for a channel: occupied/vacated alternate from occupied and end in the
/// true state; so do member_added/removed per user; the last subscription_count is the truth.
fn check_hooks(
    n: usize,
    hooks: &[(Arc<str>, HookKind)],
    ch: &str,
    subs: usize,
    members: &BTreeSet<String>,
) -> Check {
    let mut occupied = false;
    let mut present: BTreeSet<String> = BTreeSet::new();
    let mut last_count = None;
    for (c, kind) in hooks.iter().filter(|(c, _)| &**c == ch) {
        match kind {
            HookKind::ChannelOccupied if !occupied => occupied = true,
            HookKind::ChannelVacated if occupied => occupied = false,
            HookKind::MemberAdded { user_id } if present.insert(user_id.clone()) => {}
            HookKind::MemberRemoved { user_id } if present.remove(user_id) => {}
            HookKind::SubscriptionCount { count } => last_count = Some(*count),
            other => return Err(format!("node {n}, {c}: webhook {other:?} out of turn")),
        }
    }
    if occupied != (subs > 0) || &present != members {
        return Err(format!(
            "node {n}, {ch}: webhooks end occupied={occupied} members {present:?}; truth {subs} subs, {members:?}"
        ));
    }
    if !ch.starts_with("presence-") && last_count.is_some_and(|c| c != subs) {
        return Err(format!(
            "node {n}, {ch}: last count webhook {last_count:?}, truth {subs}"
        ));
    }
    Ok(())
}

/// One seeded run: random steps, settling and checking now and then and at the end.
fn run(seed: u64, mutation: Mutation) -> Check {
    run_counted(seed, mutation).0
}

fn run_counted(seed: u64, mutation: Mutation) -> (Check, Coverage) {
    let mut sim = Sim::new(seed, mutation);
    let steps = 150 + sim.rng.usize(..150);
    let result = (|| {
        for _ in 0..steps {
            sim.step()?;
            if sim.rng.u32(0..20) == 0 {
                sim.settle()?;
                sim.check_quiet()?;
            }
        }
        sim.settle()?;
        sim.check_quiet()
    })();
    let result = result.map_err(|e| {
        let tail: Vec<&String> = sim.log.iter().rev().take(16).collect();
        format!(
            "{e}\n  {} node(s), shards {:?}; last steps, newest first: {tail:?}",
            sim.nodes.len(),
            sim.nodes.iter().map(|n| n.shards.len()).collect::<Vec<_>>()
        )
    });
    (result, sim.seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    #[test]
    fn seeded_runs_match_the_reference_model() {
        let seeds: Vec<u64> = match env("RINGPUSH_SIM_SEED") {
            Some(seed) => vec![seed],
            None => (0..env("RINGPUSH_SIM_RUNS").unwrap_or(3000)).collect(),
        };
        for seed in seeds {
            if let Err(e) = run(seed, Mutation::None) {
                panic!(
                    "simulation seed {seed} failed: {e}\n  replay: RINGPUSH_SIM_SEED={seed} cargo test --lib channels::sim"
                );
            }
        }
    }

    #[test]
    fn the_runs_cover_the_hard_cases() {
        let mut total = Coverage::default();
        for seed in 0..300 {
            let (r, c) = run_counted(seed, Mutation::None);
            r.expect("clean run");
            total.quiet_checks += c.quiet_checks;
            total.undone_joins += c.undone_joins;
            total.member_events += c.member_events;
            total.watch_notices += c.watch_notices;
            total.count_events += c.count_events;
            total.crashes += c.crashes;
            total.outages += c.outages;
            total.resyncs += c.resyncs;
        }
        // Every kind of event the checks are about happens many times, joins are undone after
        // their connection left, and the model is compared often, not only at the end.
        assert!(total.quiet_checks > 3_000, "{total:?}");
        assert!(total.undone_joins > 300, "{total:?}");
        assert!(total.member_events > 1_500, "{total:?}");
        assert!(total.watch_notices > 1_000, "{total:?}");
        assert!(total.count_events > 3_000, "{total:?}");
        assert!(total.crashes > 50 && total.outages > 50, "{total:?}");
        assert!(total.resyncs > 500, "{total:?}");
    }

    #[test]
    fn a_run_replays_exactly() {
        let mut a = Sim::new(42, Mutation::None);
        let mut b = Sim::new(42, Mutation::None);
        for _ in 0..200 {
            assert_eq!(a.step(), b.step());
        }
        assert_eq!(a.log, b.log);
        let hooks = |s: &Sim| s.nodes.iter().map(|n| n.hooks.clone()).collect::<Vec<_>>();
        assert_eq!(hooks(&a), hooks(&b));
    }

    #[test]
    fn a_lost_member_removed_is_caught() {
        let caught = (0..200).find_map(|seed| run(seed, Mutation::DropMemberRemoved).err());
        let e = caught.expect("some run must notice the ghost member");
        assert!(
            e.contains("lists") || e.contains("not listed") || e.contains("already listed"),
            "{e}"
        );
    }

    #[test]
    fn a_doubled_member_added_is_caught() {
        let caught = (0..200).find_map(|seed| run(seed, Mutation::DoubleMemberAdded).err());
        let e = caught.expect("some run must notice the repeated member_added");
        assert!(e.contains("already listed"), "{e}");
    }

    #[test]
    fn ghosts_of_a_lost_node_are_caught() {
        let caught = (0..300).find_map(|seed| run(seed, Mutation::IgnoreNodeLoss).err());
        let e = caught.expect("some run must notice a dead node's members");
        assert!(e.contains("home says") || e.contains("truth"), "{e}");
    }
}
