//! Deterministic simulation of the cross-core facts: N simulated shards, each with the real
//! [`Home`] state machine and a local side that mirrors `shard::pusher` (pending and active
//! subscriptions, join answers, undoing a join whose connection left), exchange bus messages in
//! a seeded random interleaving while random clients connect, subscribe, join presence channels
//! with repeated user ids, sign in with watchlists, unsubscribe and drop, often with a join
//! still in flight.
//!
//! Each shard's inbox is one FIFO, as the real bus is; a step either runs one client operation
//! on its connection's shard or lets one shard handle one inbox message. Checked on every
//! delivery: a frame of a channel only reaches a connection actively subscribed to it, and a
//! presence observer never sees `member_added` for a member it already lists or
//! `member_removed` for one it does not. Checked whenever the system goes quiet (all inboxes
//! drained): every home's counts, members and online users equal a plain reference model built
//! from the live connections; every observer's member list, last subscription count and
//! watchlist view equal it too; occupied/vacated and member_added/member_removed webhooks
//! alternate and end in the true state.
//!
//! A failure names its seed; `RINGPUSH_SIM_SEED=<seed> cargo test --lib channels::sim` replays
//! exactly that run, `RINGPUSH_SIM_RUNS=<n>` changes how many seeds the suite tries.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::home::{AppRules, Delta, Effect, Home, Origin};
use crate::ids::{home_of, AppIdx, ConnKey, ConnRef, ShardId};
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
const MAX_LIVE_CONNS: usize = 10;

/// A deliberate fault, to show the checks catch what they claim to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Run the real logic unchanged.
    None,
    /// Lose every `member_removed` publication (a ghost member stays listed).
    DropMemberRemoved,
    /// Publish every `member_added` twice (a user announced twice).
    DoubleMemberAdded,
}

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

/// How much of the interesting ground a run covered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Coverage {
    quiet_checks: u32,
    undone_joins: u32,
    member_events: u32,
    watch_notices: u32,
    count_events: u32,
}

struct Sim {
    rng: fastrand::Rng,
    seen: Coverage,
    shards: Vec<SimShard>,
    next_conn: u32,
    hooks: Vec<(Arc<str>, HookKind)>,
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

impl Sim {
    fn new(seed: u64, mutation: Mutation) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(1..=4);
        let rules = vec![AppRules {
            max_presence_members: 100,
            subscription_count: true,
        }];
        let shards = (0..n)
            .map(|_| SimShard {
                home: Home::new(rules.clone()),
                inbox: VecDeque::new(),
                conns: BTreeMap::new(),
                index: BTreeMap::new(),
            })
            .collect();
        Sim {
            rng,
            seen: Coverage::default(),
            shards,
            next_conn: 0,
            hooks: Vec::new(),
            mutation,
            log: Vec::new(),
        }
    }

    fn home_of(&self, name: &str) -> usize {
        home_of(APP, name, self.shards.len()).0 as usize
    }

    fn send_home(&mut self, from: usize, name: &str, delta: Delta) {
        let home = self.home_of(name);
        let from = Origin::Shard(ShardId(from as u16));
        self.shards[home].inbox.push_back(Msg::Home { from, delta });
    }

    fn conn_ref(shard: usize, id: u32) -> ConnRef {
        ConnRef {
            shard: ShardId(shard as u16),
            key: ConnKey { idx: id, gen: 1 },
        }
    }

    fn live(&self) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        for (s, sh) in self.shards.iter().enumerate() {
            out.extend(sh.conns.keys().map(|&c| (s, c)));
        }
        out
    }

    fn pick_live(&mut self) -> Option<(usize, u32)> {
        let live = self.live();
        (!live.is_empty()).then(|| live[self.rng.usize(..live.len())])
    }

    /// One random step. Returns the check result of whatever was delivered.
    fn step(&mut self) -> Check {
        let busy: Vec<usize> = (0..self.shards.len())
            .filter(|&s| !self.shards[s].inbox.is_empty())
            .collect();
        let roll = self.rng.u32(0..100);
        if !busy.is_empty() && roll < 55 {
            let s = busy[self.rng.usize(..busy.len())];
            return self.handle_one(s);
        }
        match self.rng.u32(0..100) {
            0..=19 if self.live().len() < MAX_LIVE_CONNS => self.connect(),
            0..=54 => self.subscribe(),
            55..=69 => self.unsubscribe(),
            70..=84 => self.disconnect(),
            _ => self.sign_in(),
        }
        Ok(())
    }

    fn connect(&mut self) {
        let s = self.rng.usize(..self.shards.len());
        self.next_conn += 1;
        let id = self.next_conn;
        self.log.push(format!("connect {id} on shard {s}"));
        self.shards[s].conns.insert(
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
        let Some((s, id)) = self.pick_live() else {
            return;
        };
        let channel: Arc<str> = CHANNELS[self.rng.usize(..CHANNELS.len())].into();
        let (key, raw) = USERS[self.rng.usize(..USERS.len())];
        let conn = self.shards[s].conns.get_mut(&id).expect("live");
        if conn.subs.contains_key(&channel) {
            return;
        }
        self.log.push(format!("conn {id} subscribes {channel}"));
        if channel.starts_with("presence-") {
            let member = Arc::new(Member {
                key: key.into(),
                raw_id: raw.into(),
                info: None,
            });
            conn.subs
                .insert(channel.clone(), Sub::Pending(member.clone()));
            let delta = Delta::Join {
                app: APP,
                channel: channel.clone(),
                member,
                conn: Self::conn_ref(s, id),
                socket_id: conn.socket_id.clone(),
            };
            self.send_home(s, &channel, delta);
            // Often the client goes away before the answer is back.
            if self.rng.u32(0..4) == 0 {
                self.drop_conn(s, id);
            }
        } else {
            conn.subs.insert(channel.clone(), Sub::Active(None));
            self.shards[s]
                .index
                .entry(channel.clone())
                .or_default()
                .insert(id);
            let delta = Delta::Subscribed {
                app: APP,
                channel: channel.clone(),
            };
            self.send_home(s, &channel, delta);
        }
    }

    fn unsubscribe(&mut self) {
        let Some((s, id)) = self.pick_live() else {
            return;
        };
        let conn = self.shards[s].conns.get_mut(&id).expect("live");
        let names: Vec<Arc<str>> = conn.subs.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let channel = names[self.rng.usize(..names.len())].clone();
        self.log.push(format!("conn {id} unsubscribes {channel}"));
        let sub = conn.subs.remove(&channel).expect("listed");
        conn.members_seen.remove(&channel);
        conn.last_count.remove(&channel);
        self.leave(s, id, &channel, sub);
    }

    /// What leaving one subscription sends; a pending join is undone when its answer comes.
    fn leave(&mut self, s: usize, id: u32, channel: &Arc<str>, sub: Sub) {
        let Sub::Active(member) = sub else {
            return;
        };
        if let Some(set) = self.shards[s].index.get_mut(channel) {
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
        self.send_home(s, channel, delta);
    }

    fn disconnect(&mut self) {
        if let Some((s, id)) = self.pick_live() {
            self.drop_conn(s, id);
        }
    }

    fn drop_conn(&mut self, s: usize, id: u32) {
        self.log.push(format!("conn {id} drops"));
        let conn = self.shards[s].conns.remove(&id).expect("live");
        for (channel, sub) in conn.subs {
            self.leave(s, id, &channel, sub);
        }
        if let Some(user) = conn.user {
            let delta = Delta::SignedOut {
                app: APP,
                user: user.clone(),
            };
            self.send_home(s, &user, delta);
            self.watch(s, id, &conn.watchlist, false);
        }
    }

    fn sign_in(&mut self) {
        let Some((s, id)) = self.pick_live() else {
            return;
        };
        let user: Arc<str> = USERS[self.rng.usize(..USERS.len())].0.into();
        let watchlist: Vec<Arc<str>> = USERS
            .iter()
            .filter(|_| self.rng.bool())
            .map(|(k, _)| Arc::from(*k))
            .collect();
        let conn = self.shards[s].conns.get_mut(&id).expect("live");
        if conn.user.is_some() {
            return;
        }
        self.log.push(format!(
            "conn {id} signs in as {user} watching {watchlist:?}"
        ));
        conn.user = Some(user.clone());
        conn.watchlist = watchlist.clone();
        let delta = Delta::SignedIn {
            app: APP,
            user: user.clone(),
        };
        self.send_home(s, &user, delta);
        self.watch(s, id, &watchlist, true);
    }

    fn watch(&mut self, s: usize, id: u32, users: &[Arc<str>], add: bool) {
        let mut by_home: BTreeMap<usize, Vec<Arc<str>>> = BTreeMap::new();
        for u in users {
            by_home.entry(self.home_of(u)).or_default().push(u.clone());
        }
        for (home, users) in by_home {
            let delta = Delta::Watch {
                app: APP,
                users,
                watcher: Self::conn_ref(s, id),
                add,
            };
            let from = Origin::Shard(ShardId(s as u16));
            self.shards[home].inbox.push_back(Msg::Home { from, delta });
        }
    }

    fn handle_one(&mut self, s: usize) -> Check {
        let msg = self.shards[s].inbox.pop_front().expect("busy shard");
        match msg {
            Msg::Home { from, delta } => {
                let mut out = Vec::new();
                self.shards[s].home.apply(from, delta, 0, &mut out);
                self.apply_effects(out);
                Ok(())
            }
            Msg::JoinAnswer {
                to,
                channel,
                member,
                result,
            } => self.join_answer(s, to.key.idx, channel, member, result),
            Msg::Publish {
                channel,
                frame,
                except,
            } => {
                let ids: Vec<u32> = self.shards[s]
                    .index
                    .get(&channel)
                    .map(|set| set.iter().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    let conn = &self.shards[s].conns[&id];
                    if except.as_deref() == Some(&*conn.socket_id) {
                        continue;
                    }
                    self.receive(s, id, &frame)?;
                }
                Ok(())
            }
            Msg::Notice { to, frame } => {
                if self.shards[s].conns.contains_key(&to.key.idx) {
                    self.receive(s, to.key.idx, &frame)?;
                }
                Ok(())
            }
        }
    }

    fn join_answer(
        &mut self,
        s: usize,
        id: u32,
        channel: Arc<str>,
        member: Arc<Member>,
        result: Result<Bytes, String>,
    ) -> Check {
        let pending = self.shards[s].conns.get(&id).is_some_and(
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
                self.send_home(s, &channel, delta);
            }
            return Ok(());
        }
        let conn = self.shards[s].conns.get_mut(&id).expect("pending");
        match result {
            Ok(frame) => {
                conn.subs.insert(channel.clone(), Sub::Active(Some(member)));
                self.shards[s].index.entry(channel).or_default().insert(id);
                self.receive(s, id, &frame)
            }
            Err(_) => {
                conn.subs.remove(&channel);
                Ok(())
            }
        }
    }

    fn apply_effects(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Publish {
                    channel,
                    frame,
                    except,
                    ..
                } => {
                    let removed = self.mutation == Mutation::DropMemberRemoved
                        && event_of(&frame)["event"] == "pusher_internal:member_removed";
                    let copies = if self.mutation == Mutation::DoubleMemberAdded
                        && event_of(&frame)["event"] == "pusher_internal:member_added"
                    {
                        2
                    } else {
                        1
                    };
                    if removed {
                        continue;
                    }
                    for _ in 0..copies {
                        for sh in self.shards.iter_mut() {
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
                } => self.shards[to.shard.0 as usize]
                    .inbox
                    .push_back(Msg::JoinAnswer {
                        to,
                        channel,
                        member,
                        result,
                    }),
                Effect::Notice { to, frame } => self.shards[to.shard.0 as usize]
                    .inbox
                    .push_back(Msg::Notice { to, frame }),
                Effect::Hook { channel, kind, .. } => self.hooks.push((channel, kind)),
                // The simulated shards are one node: their homes do not replicate.
                Effect::Replicate(d) => panic!("a single-node home replicated {d:?}"),
            }
        }
    }

    /// A client reads a frame: its view of members, counts and online users moves on, and the
    /// per-delivery rules are checked.
    fn receive(&mut self, s: usize, id: u32, frame: &Bytes) -> Check {
        let ev = event_of(frame);
        let name = ev["event"].as_str().unwrap_or_default().to_string();
        let conn = self.shards[s]
            .conns
            .get_mut(&id)
            .expect("delivered to a live conn");
        if let Some(channel) = ev["channel"].as_str() {
            if !matches!(conn.subs.get(channel), Some(Sub::Active(_))) {
                return Err(format!(
                    "conn {id} got {name} on {channel} without an active subscription"
                ));
            }
        }
        let channel: Arc<str> = ev["channel"].as_str().unwrap_or_default().into();
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
                self.seen.member_events += 1;
                let user = id_key(&data_of(&ev)["user_id"]);
                let seen = conn.members_seen.entry(channel.clone()).or_default();
                if !seen.insert(user.clone()) {
                    return Err(format!(
                        "conn {id} got member_added for {user} on {channel}, already listed"
                    ));
                }
            }
            "pusher_internal:member_removed" => {
                self.seen.member_events += 1;
                let user = id_key(&data_of(&ev)["user_id"]);
                let seen = conn.members_seen.entry(channel.clone()).or_default();
                if !seen.remove(&user) {
                    return Err(format!(
                        "conn {id} got member_removed for {user} on {channel}, not listed"
                    ));
                }
            }
            "pusher_internal:subscription_count" => {
                self.seen.count_events += 1;
                let n = data_of(&ev)["subscription_count"].as_u64().unwrap_or(0) as usize;
                conn.last_count.insert(channel, n);
            }
            "pusher_internal:watchlist_events" => {
                self.seen.watch_notices += 1;
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

    /// Drains every inbox in a random interleaving.
    fn settle(&mut self) -> Check {
        loop {
            let busy: Vec<usize> = (0..self.shards.len())
                .filter(|&s| !self.shards[s].inbox.is_empty())
                .collect();
            if busy.is_empty() {
                return Ok(());
            }
            let s = busy[self.rng.usize(..busy.len())];
            self.handle_one(s)?;
        }
    }

    /// With every inbox empty: homes and every client's view equal the reference model.
    fn check_quiet(&mut self) -> Check {
        self.seen.quiet_checks += 1;
        // The reference model: what the live connections say is true.
        let mut subs: BTreeMap<&str, usize> = BTreeMap::new();
        let mut members: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut online: BTreeSet<&str> = BTreeSet::new();
        for sh in &self.shards {
            for (id, c) in &sh.conns {
                for (ch, sub) in &c.subs {
                    let Sub::Active(m) = sub else {
                        return Err(format!("conn {id}: join to {ch} still pending when quiet"));
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
        for ch in CHANNELS {
            let home = &self.shards[self.home_of(ch)].home;
            let facts = home.facts(APP, ch);
            let want_subs = subs.get(ch).copied().unwrap_or(0);
            let want_members = members.get(ch).cloned().unwrap_or_default();
            if facts.subscriptions != want_subs || facts.users != want_members.len() {
                return Err(format!(
                    "{ch}: home says {facts:?}, connections say {want_subs} subs, members {want_members:?}"
                ));
            }
            let listed: BTreeSet<String> = home
                .users(APP, ch)
                .iter()
                .map(|raw| id_key(&serde_json::from_str(raw).expect("raw id")))
                .collect();
            if listed != want_members {
                return Err(format!(
                    "{ch}: home lists {listed:?}, truth {want_members:?}"
                ));
            }
            self.check_hooks(ch, want_subs, &want_members)?;
            for sh in &self.shards {
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
            let home = &self.shards[self.home_of(u)].home;
            if home.online(APP, u) != online.contains(u) {
                return Err(format!("home says {u} online={}", home.online(APP, u)));
            }
        }
        for sh in &self.shards {
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
        Ok(())
    }

    /// Webhooks of one channel: occupied/vacated alternate from occupied and end in the true
    /// state; so do member_added/removed per user; the last subscription_count is the truth.
    fn check_hooks(&self, ch: &str, subs: usize, members: &BTreeSet<String>) -> Check {
        let mut occupied = false;
        let mut present: BTreeSet<String> = BTreeSet::new();
        let mut last_count = None;
        for (c, kind) in self.hooks.iter().filter(|(c, _)| &**c == ch) {
            match kind {
                HookKind::ChannelOccupied if !occupied => occupied = true,
                HookKind::ChannelVacated if occupied => occupied = false,
                HookKind::MemberAdded { user_id } if present.insert(user_id.clone()) => {}
                HookKind::MemberRemoved { user_id } if present.remove(user_id) => {}
                HookKind::SubscriptionCount { count } => last_count = Some(*count),
                other => return Err(format!("{c}: webhook {other:?} out of turn")),
            }
        }
        if occupied != (subs > 0) || &present != members {
            return Err(format!(
                "{ch}: webhooks end occupied={occupied} members {present:?}; truth {subs} subs, {members:?}"
            ));
        }
        if !ch.starts_with("presence-") && last_count.is_some_and(|n| n != subs) {
            return Err(format!(
                "{ch}: last count webhook {last_count:?}, truth {subs}"
            ));
        }
        Ok(())
    }
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
        let tail: Vec<&String> = sim.log.iter().rev().take(12).collect();
        format!(
            "{e}\n  {} shard(s); last client steps, newest first: {tail:?}",
            sim.shards.len()
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
        }
        // Every kind of event the checks are about happens many times, joins are undone after
        // their connection left, and the model is compared often, not only at the end.
        assert!(total.quiet_checks > 3_000, "{total:?}");
        assert!(total.undone_joins > 300, "{total:?}");
        assert!(total.member_events > 1_500, "{total:?}");
        assert!(total.watch_notices > 1_000, "{total:?}");
        assert!(total.count_events > 3_000, "{total:?}");
    }

    #[test]
    fn a_run_replays_exactly() {
        let mut a = Sim::new(42, Mutation::None);
        let mut b = Sim::new(42, Mutation::None);
        for _ in 0..200 {
            assert_eq!(a.step(), b.step());
        }
        assert_eq!(a.log, b.log);
        assert_eq!(a.hooks, b.hooks);
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
}
