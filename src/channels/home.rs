//! Home facts as a pure state machine: per channel the subscription count and presence members,
//! per user the signed-in connections and who watches them.
//!
//! Each fact has exactly one home (a shard, chosen by `ids::home_of`); other shards send it
//! [`Delta`]s. [`Home::apply`] is a function of (state, origin, delta, `now`) that returns
//! [`Effect`]s (frames to publish or to send to one connection, webhook events, answers); it does
//! no IO and reads no clock, so the simulation in `channels::sim` can run it thousands of times
//! per second. The shard turns effects into bus messages and webhook calls.
//!
//! Every count is a sum of per-[`Origin`] contributions, so one origin's whole share can be
//! dropped at once ([`Home::drop_origin`]) with the events that follow from it: the basis for
//! removing a dead node's members in a cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::ids::{AppIdx, ConnRef, NodeId, ShardId};
use crate::protocol::channel::{type_of, ChannelKind};
use crate::protocol::encode;
use crate::protocol::message::Member;
use crate::webhooks::HookKind;

/// Subscription counts above this are announced at most every [`COUNT_INTERVAL_MS`].
pub const COUNT_THROTTLE_ABOVE: usize = 100;
/// Minimum spacing of `subscription_count` events on busy channels.
pub const COUNT_INTERVAL_MS: u64 = 5_000;

/// Where a contribution to a fact comes from: the shard whose connection it is, or another
/// node of the cluster (all of that node's connections together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A shard of this process.
    Shard(ShardId),
    /// Another node; its contribution is replicated through the broker.
    Node(NodeId),
}

impl Origin {
    /// The origin of a connection's contributions.
    pub fn of(conn: ConnRef) -> Origin {
        Origin::Shard(conn.shard)
    }

    /// Whether the contribution is this process's own (and so replicated to other nodes).
    pub fn is_local(self) -> bool {
        matches!(self, Origin::Shard(_))
    }
}

/// Aggregated facts about one channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelFacts {
    /// Connections subscribed, across origins.
    pub subscriptions: usize,
    /// Distinct presence users.
    pub users: usize,
}

/// The per-app settings the home logic needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppRules {
    /// Most distinct users in one presence channel.
    pub max_presence_members: usize,
    /// Whether `subscription_count` events are published.
    pub subscription_count: bool,
}

/// A change reported to a fact's home.
#[derive(Debug, Clone)]
pub enum Delta {
    /// A non-presence subscription started.
    Subscribed { app: AppIdx, channel: Arc<str> },
    /// A non-presence subscription ended.
    Unsubscribed { app: AppIdx, channel: Arc<str> },
    /// A connection asks to join a presence channel; answered with [`Effect::JoinAnswer`].
    Join {
        app: AppIdx,
        channel: Arc<str>,
        /// Who joins.
        member: Arc<Member>,
        /// The joining connection.
        conn: ConnRef,
        /// Its socket id, excluded from `member_added`.
        socket_id: Arc<str>,
    },
    /// Another node's connection joined a presence channel (no answer is due: its own node
    /// answered it).
    RemoteJoin {
        app: AppIdx,
        channel: Arc<str>,
        /// Who joined.
        member: Arc<Member>,
    },
    /// A joined presence connection left (or a join is undone).
    Leave {
        app: AppIdx,
        channel: Arc<str>,
        /// The member's id key.
        user_key: Arc<str>,
    },
    /// A connection signed in as `user`.
    SignedIn { app: AppIdx, user: Arc<str> },
    /// A signed-in connection of `user` left.
    SignedOut { app: AppIdx, user: Arc<str> },
    /// A connection starts or stops watching users homed here.
    Watch {
        app: AppIdx,
        /// Watched user ids.
        users: Vec<Arc<str>>,
        /// The watching connection.
        watcher: ConnRef,
        /// Start (true) or stop watching.
        add: bool,
    },
}

/// What the home decided; the shard carries it out.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Publish a frame to a channel's subscribers everywhere. These are presence member and
    /// subscription-count notices: essential, never dropped by a full inbox.
    Publish {
        app: AppIdx,
        channel: Arc<str>,
        /// The encoded frame.
        frame: Bytes,
        /// A socket id that must not receive it.
        except: Option<Arc<str>>,
    },
    /// The answer to a [`Delta::Join`], for the joining connection.
    JoinAnswer {
        /// The joining connection.
        to: ConnRef,
        app: AppIdx,
        channel: Arc<str>,
        /// The member that joined (to undo the join if the connection is gone).
        member: Arc<Member>,
        /// The `subscription_succeeded` frame, or the refusal message.
        result: Result<Bytes, String>,
    },
    /// A frame for one connection (watchlist notices).
    Notice {
        /// The connection.
        to: ConnRef,
        /// The frame.
        frame: Bytes,
    },
    /// A change to this node's own contribution that took effect, for the other nodes (only
    /// when [`Home::replicating`]): joins are sent as [`Delta::RemoteJoin`].
    Replicate(Delta),
    /// A webhook event.
    Hook {
        app: AppIdx,
        channel: Arc<str>,
        /// What happened.
        kind: HookKind,
    },
}

/// A count made of per-origin contributions. Origins are few (shards, later nodes), so a short
/// list beats a map.
#[derive(Debug, Default, Clone)]
struct Tally(Vec<(Origin, u32)>);

impl Tally {
    fn total(&self) -> usize {
        self.0.iter().map(|(_, n)| *n as usize).sum()
    }

    fn add(&mut self, origin: Origin) {
        match self.0.iter_mut().find(|(o, _)| *o == origin) {
            Some((_, n)) => *n += 1,
            None => self.0.push((origin, 1)),
        }
    }

    /// Takes one away from `origin`; false when it had none (a stray or repeated leave).
    fn remove(&mut self, origin: Origin) -> bool {
        let Some(pos) = self.0.iter().position(|(o, _)| *o == origin) else {
            return false;
        };
        self.0[pos].1 -= 1;
        if self.0[pos].1 == 0 {
            self.0.swap_remove(pos);
        }
        true
    }

    /// Drops `origin`'s whole contribution; returns how much it was.
    fn take(&mut self, origin: Origin) -> u32 {
        match self.0.iter().position(|(o, _)| *o == origin) {
            Some(pos) => self.0.swap_remove(pos).1,
            None => 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn of(&self, origin: Origin) -> u32 {
        self.0
            .iter()
            .find(|(o, _)| *o == origin)
            .map_or(0, |(_, n)| *n)
    }

    fn local(&self) -> u32 {
        self.0
            .iter()
            .filter(|(o, _)| o.is_local())
            .map(|(_, n)| *n)
            .sum()
    }
}

/// One entry of a node's whole contribution, as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapEntry {
    /// Non-presence subscriptions to a channel.
    Subs {
        app: AppIdx,
        channel: Arc<str>,
        /// How many.
        count: u32,
    },
    /// A member's presence connections in a channel.
    Member {
        app: AppIdx,
        channel: Arc<str>,
        /// The member (key, raw id, info).
        member: Arc<Member>,
        /// How many connections.
        conns: u32,
    },
    /// A user's signed-in connections.
    User {
        app: AppIdx,
        user: Arc<str>,
        /// How many connections.
        conns: u32,
    },
}

#[derive(Debug, Default)]
struct Channel {
    /// Subscribed connections (presence ones included).
    subs: Tally,
    members: HashMap<Arc<str>, HomeMember>,
    /// Member keys in join order, so `ids` are stable.
    order: Vec<Arc<str>>,
    count_sent_at: u64,
    count_pending: bool,
}

#[derive(Debug)]
struct HomeMember {
    raw_id: String,
    info: Option<String>,
    conns: Tally,
}

#[derive(Debug, Default)]
struct User {
    conns: Tally,
    watchers: Vec<ConnRef>,
}

/// All facts homed in one place.
#[derive(Debug, Default)]
pub struct Home {
    rules: Vec<AppRules>,
    /// Whether local changes are also emitted as [`Effect::Replicate`] (in a cluster).
    replicating: bool,
    channels: HashMap<(AppIdx, Arc<str>), Channel>,
    users: HashMap<(AppIdx, Arc<str>), User>,
}

impl Home {
    /// An empty home for apps with these rules (indexed by `AppIdx`).
    pub fn new(rules: Vec<AppRules>) -> Home {
        Home {
            rules,
            ..Home::default()
        }
    }

    /// Emits [`Effect::Replicate`] for every local change that takes effect from now on.
    pub fn replicating(mut self, on: bool) -> Home {
        self.replicating = on;
        self
    }

    fn replicate(&self, origin: Origin, delta: Delta, out: &mut Vec<Effect>) {
        if self.replicating && origin.is_local() {
            out.push(Effect::Replicate(delta));
        }
    }

    fn rules(&self, app: AppIdx) -> AppRules {
        self.rules.get(app.0 as usize).copied().unwrap_or(AppRules {
            max_presence_members: 100,
            subscription_count: false,
        })
    }

    /// Applies one delta from `origin` at time `now` (ms), appending what must happen to `out`.
    pub fn apply(&mut self, origin: Origin, delta: Delta, now: u64, out: &mut Vec<Effect>) {
        match delta {
            Delta::Subscribed { app, channel } => {
                let ch = self.channels.entry((app, channel.clone())).or_default();
                ch.subs.add(origin);
                let after = ch.subs.total();
                if after == 1 {
                    out.push(hook(app, &channel, HookKind::ChannelOccupied));
                }
                self.count_changed(app, &channel, after, now, out);
                self.replicate(origin, Delta::Subscribed { app, channel }, out);
            }
            Delta::Unsubscribed { app, channel } => {
                let Some(ch) = self.channels.get_mut(&(app, channel.clone())) else {
                    return;
                };
                if !ch.subs.remove(origin) {
                    return;
                }
                let after = ch.subs.total();
                if after == 0 {
                    out.push(hook(app, &channel, HookKind::ChannelVacated));
                }
                self.count_changed(app, &channel, after, now, out);
                self.forget_if_empty(app, &channel);
                self.replicate(origin, Delta::Unsubscribed { app, channel }, out);
            }
            Delta::Join {
                app,
                channel,
                member,
                conn,
                socket_id,
            } => self.join(origin, app, channel, member, Some((conn, socket_id)), out),
            Delta::RemoteJoin {
                app,
                channel,
                member,
            } => self.join(origin, app, channel, member, None, out),
            Delta::Leave {
                app,
                channel,
                user_key,
            } => self.leave(origin, app, &channel, &user_key, out),
            Delta::SignedIn { app, user } => {
                let u = self.users.entry((app, user.clone())).or_default();
                u.conns.add(origin);
                if u.conns.total() == 1 {
                    notify_watchers(&u.watchers, &user, true, out);
                }
                self.replicate(origin, Delta::SignedIn { app, user }, out);
            }
            Delta::SignedOut { app, user } => {
                let k = (app, user.clone());
                let Some(u) = self.users.get_mut(&k) else {
                    return;
                };
                if !u.conns.remove(origin) {
                    return;
                }
                if u.conns.is_empty() {
                    notify_watchers(&u.watchers, &user, false, out);
                }
                self.forget_user_if_empty(&k);
                self.replicate(origin, Delta::SignedOut { app, user }, out);
            }
            Delta::Watch {
                app,
                users,
                watcher,
                add,
            } => self.watch(app, &users, watcher, add, out),
        }
    }

    /// A presence join; `asker` is the local connection waiting for an answer (none for
    /// another node's join, which its own node answered).
    fn join(
        &mut self,
        origin: Origin,
        app: AppIdx,
        channel: Arc<str>,
        member: Arc<Member>,
        asker: Option<(ConnRef, Arc<str>)>,
        out: &mut Vec<Effect>,
    ) {
        let max = self.rules(app).max_presence_members;
        let ch = self.channels.entry((app, channel.clone())).or_default();
        let full = ch.members.len() >= max;
        let first = match ch.members.get_mut(member.key.as_str()) {
            Some(existing) => {
                existing.conns.add(origin);
                false
            }
            // Another node admitted this member already; its limit check was its own.
            None if full && asker.is_some() => {
                let msg = format!("Presence channel {channel} is full ({max} members)");
                if let Some((to, _)) = asker {
                    out.push(Effect::JoinAnswer {
                        to,
                        app,
                        channel: channel.clone(),
                        member,
                        result: Err(msg),
                    });
                }
                self.forget_if_empty(app, &channel);
                return;
            }
            None => {
                let key: Arc<str> = member.key.as_str().into();
                let mut conns = Tally::default();
                conns.add(origin);
                ch.members.insert(
                    key.clone(),
                    HomeMember {
                        raw_id: member.raw_id.clone(),
                        info: member.info.clone(),
                        conns,
                    },
                );
                ch.order.push(key);
                true
            }
        };
        ch.subs.add(origin);
        let occupied = ch.subs.total() == 1;
        let except = match asker {
            Some((to, socket_id)) => {
                let frame = encode::event_with_string_data(
                    "pusher_internal:subscription_succeeded",
                    Some(&channel),
                    &presence_json(ch),
                );
                out.push(Effect::JoinAnswer {
                    to,
                    app,
                    channel: channel.clone(),
                    member: member.clone(),
                    result: Ok(frame),
                });
                Some(socket_id)
            }
            None => None,
        };
        let replicated = Delta::RemoteJoin {
            app,
            channel: channel.clone(),
            member: member.clone(),
        };
        self.replicate(origin, replicated, out);
        if occupied {
            out.push(hook(app, &channel, HookKind::ChannelOccupied));
        }
        if first {
            let user_id = member.key.clone();
            out.push(hook(app, &channel, HookKind::MemberAdded { user_id }));
            let data = encode::member_json(&member.raw_id, member.info.as_deref());
            out.push(member_event(
                app,
                channel,
                "pusher_internal:member_added",
                &data,
                except,
            ));
        }
    }

    fn leave(
        &mut self,
        origin: Origin,
        app: AppIdx,
        channel: &Arc<str>,
        user_key: &str,
        out: &mut Vec<Effect>,
    ) {
        let Some(ch) = self.channels.get_mut(&(app, channel.clone())) else {
            return;
        };
        let Some(m) = ch.members.get_mut(user_key) else {
            return;
        };
        if !m.conns.remove(origin) {
            return;
        }
        ch.subs.remove(origin);
        if self.replicating && origin.is_local() {
            out.push(Effect::Replicate(Delta::Leave {
                app,
                channel: channel.clone(),
                user_key: user_key.into(),
            }));
        }
        let removed = if m.conns.is_empty() {
            let raw_id = ch.members.remove(user_key).map(|m| m.raw_id);
            ch.order.retain(|k| &**k != user_key);
            raw_id
        } else {
            None
        };
        let vacated = ch.subs.is_empty();
        if let Some(raw_id) = removed {
            // The webhook order stays member_removed, vacated, then the event to clients.
            out.push(hook(
                app,
                channel,
                HookKind::MemberRemoved {
                    user_id: user_key.into(),
                },
            ));
            if vacated {
                out.push(hook(app, channel, HookKind::ChannelVacated));
            }
            out.push(member_removed_event(app, channel, &raw_id));
        } else if vacated {
            out.push(hook(app, channel, HookKind::ChannelVacated));
        }
        self.forget_if_empty(app, channel);
    }

    fn watch(
        &mut self,
        app: AppIdx,
        users: &[Arc<str>],
        watcher: ConnRef,
        add: bool,
        out: &mut Vec<Effect>,
    ) {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for id in users {
            let k = (app, id.clone());
            if add {
                let u = self.users.entry(k).or_default();
                u.watchers.push(watcher);
                if u.conns.is_empty() {
                    off.push(id.clone());
                } else {
                    on.push(id.clone());
                }
            } else if let Some(u) = self.users.get_mut(&k) {
                u.watchers.retain(|w| *w != watcher);
                self.forget_user_if_empty(&k);
            }
        }
        if add {
            out.push(Effect::Notice {
                to: watcher,
                frame: watchlist_frame(&on, &off),
            });
        }
    }

    /// Drops every contribution of `origin` (its connections are gone) and emits what follows:
    /// `member_removed` for users whose last connection it held, vacated channels, counts, and
    /// offline notices; watchers living at `origin` are forgotten.
    pub fn drop_origin(&mut self, origin: Origin, now: u64, out: &mut Vec<Effect>) {
        let mut keys: Vec<(AppIdx, Arc<str>)> = self.channels.keys().cloned().collect();
        keys.sort();
        for (app, channel) in keys {
            let Some(ch) = self.channels.get_mut(&(app, channel.clone())) else {
                continue;
            };
            let had = ch.subs.total();
            if ch.subs.take(origin) == 0 {
                continue;
            }
            let mut removed = Vec::new();
            ch.members.retain(|key, m| {
                m.conns.take(origin);
                if m.conns.is_empty() {
                    removed.push((key.to_string(), m.raw_id.clone()));
                }
                !m.conns.is_empty()
            });
            let members = &ch.members;
            ch.order.retain(|k| members.contains_key(k));
            let after = ch.subs.total();
            let presence = type_of(&channel).kind == ChannelKind::Presence;
            removed.sort();
            for (user_id, raw_id) in removed {
                member_removed(app, &channel, user_id, &raw_id, out);
            }
            if had > 0 && after == 0 {
                out.push(hook(app, &channel, HookKind::ChannelVacated));
            }
            if !presence {
                self.count_changed(app, &channel, after, now, out);
            }
            self.forget_if_empty(app, &channel);
        }
        let mut keys: Vec<(AppIdx, Arc<str>)> = self.users.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let Some(u) = self.users.get_mut(&k) else {
                continue;
            };
            u.watchers.retain(|w| Origin::of(*w) != origin);
            if u.conns.take(origin) > 0 && u.conns.is_empty() {
                notify_watchers(&u.watchers, &k.1, false, out);
            }
            self.forget_user_if_empty(&k);
        }
    }

    /// This node's own contribution to the facts homed here: what another node needs to rebuild
    /// it ([`Home::replace_origin`]). Sorted, so equal states give equal snapshots.
    pub fn snapshot_local(&self) -> Vec<SnapEntry> {
        let mut out = Vec::new();
        for ((app, channel), ch) in &self.channels {
            if type_of(channel).kind == ChannelKind::Presence {
                for (key, m) in &ch.members {
                    let conns = m.conns.local();
                    if conns > 0 {
                        out.push(SnapEntry::Member {
                            app: *app,
                            channel: channel.clone(),
                            member: Arc::new(Member {
                                key: key.to_string(),
                                raw_id: m.raw_id.clone(),
                                info: m.info.clone(),
                            }),
                            conns,
                        });
                    }
                }
            } else if ch.subs.local() > 0 {
                out.push(SnapEntry::Subs {
                    app: *app,
                    channel: channel.clone(),
                    count: ch.subs.local(),
                });
            }
        }
        for ((app, user), u) in &self.users {
            if u.conns.local() > 0 {
                out.push(SnapEntry::User {
                    app: *app,
                    user: user.clone(),
                    conns: u.conns.local(),
                });
            }
        }
        out.sort_by(|a, b| snap_key(a).cmp(&snap_key(b)));
        out
    }

    /// Makes `origin`'s contribution equal `entries` for every key `covers` accepts (channel or
    /// user name), emitting the events of the difference only: members who stayed are not
    /// announced again, members gone get `member_removed`, newcomers `member_added`.
    pub fn replace_origin(
        &mut self,
        origin: Origin,
        covers: impl Fn(AppIdx, &str) -> bool,
        entries: &[SnapEntry],
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        // Per covered key: what the origin should hold (zero unless an entry says otherwise),
        // starting from every key it holds now.
        let mut want: Wanted = BTreeMap::new();
        for ((app, channel), ch) in &self.channels {
            if !covers(*app, channel) {
                continue;
            }
            if type_of(channel).kind == ChannelKind::Presence {
                for (key, m) in &ch.members {
                    if m.conns.of(origin) > 0 {
                        want.insert((MEMBER, *app, channel.clone(), key.clone()), (0, None));
                    }
                }
            } else if ch.subs.of(origin) > 0 {
                want.insert((SUBS, *app, channel.clone(), "".into()), (0, None));
            }
        }
        for ((app, user), u) in &self.users {
            if covers(*app, user) && u.conns.of(origin) > 0 {
                want.insert((USER, *app, user.clone(), "".into()), (0, None));
            }
        }
        for e in entries {
            let (k, v) = match e {
                SnapEntry::Subs {
                    app,
                    channel,
                    count,
                } => ((SUBS, *app, channel.clone(), "".into()), (*count, None)),
                SnapEntry::Member {
                    app,
                    channel,
                    member,
                    conns,
                } => {
                    let key = member.key.as_str().into();
                    (
                        (1, *app, channel.clone(), key),
                        (*conns, Some(member.clone())),
                    )
                }
                SnapEntry::User { app, user, conns } => {
                    ((USER, *app, user.clone(), "".into()), (*conns, None))
                }
            };
            if covers(k.1, &k.2) {
                want.insert(k, v);
            }
        }
        // Take away what is gone or too much first, then add what is missing.
        let mut adds = Vec::new();
        for ((kind, app, name, key), (wanted, member)) in want {
            let have = self.held(origin, kind, app, &name, &key);
            let less = match kind {
                SUBS => Delta::Unsubscribed {
                    app,
                    channel: name.clone(),
                },
                MEMBER => Delta::Leave {
                    app,
                    channel: name.clone(),
                    user_key: key,
                },
                _ => Delta::SignedOut {
                    app,
                    user: name.clone(),
                },
            };
            for _ in wanted..have {
                self.apply(origin, less.clone(), now, out);
            }
            if wanted <= have {
                continue;
            }
            let more = match (kind, member) {
                (SUBS, _) => Delta::Subscribed { app, channel: name },
                (MEMBER, Some(member)) => Delta::RemoteJoin {
                    app,
                    channel: name,
                    member,
                },
                (MEMBER, None) => continue, // only entries add members, and they carry one
                _ => Delta::SignedIn { app, user: name },
            };
            adds.extend(std::iter::repeat_n(more, (wanted - have) as usize));
        }
        for delta in adds {
            self.apply(origin, delta, now, out);
        }
    }

    /// How much `origin` holds of one key: a channel's subscriptions, a member's connections or
    /// a user's signed-in connections.
    fn held(&self, origin: Origin, kind: u8, app: AppIdx, name: &Arc<str>, key: &str) -> u32 {
        match kind {
            SUBS => self
                .channels
                .get(&(app, name.clone()))
                .map_or(0, |c| c.subs.of(origin)),
            MEMBER => self
                .channels
                .get(&(app, name.clone()))
                .and_then(|c| c.members.get(key))
                .map_or(0, |m| m.conns.of(origin)),
            _ => self
                .users
                .get(&(app, name.clone()))
                .map_or(0, |u| u.conns.of(origin)),
        }
    }

    /// Throttled `subscription_count` events whose interval has passed by `now`.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Effect>) {
        let mut due = Vec::new();
        for ((app, name), ch) in self.channels.iter_mut() {
            if ch.count_pending && now.saturating_sub(ch.count_sent_at) >= COUNT_INTERVAL_MS {
                ch.count_pending = false;
                ch.count_sent_at = now;
                due.push((*app, name.clone(), ch.subs.total()));
            }
        }
        due.sort();
        for (app, channel, count) in due {
            count_event(app, &channel, count, out);
        }
    }

    /// The `subscription_count` rules: presence channels have none, the final 0 only goes to
    /// webhooks (nobody is left to tell), busy channels are throttled.
    fn count_changed(
        &mut self,
        app: AppIdx,
        channel: &Arc<str>,
        count: usize,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        if !self.rules(app).subscription_count || type_of(channel).kind == ChannelKind::Presence {
            return;
        }
        if count == 0 {
            out.push(hook(app, channel, HookKind::SubscriptionCount { count: 0 }));
            return;
        }
        let Some(ch) = self.channels.get_mut(&(app, channel.clone())) else {
            return;
        };
        if count > COUNT_THROTTLE_ABOVE && now.saturating_sub(ch.count_sent_at) < COUNT_INTERVAL_MS
        {
            ch.count_pending = true;
            return;
        }
        ch.count_sent_at = now;
        ch.count_pending = false;
        count_event(app, channel, count, out);
    }

    fn forget_if_empty(&mut self, app: AppIdx, channel: &Arc<str>) {
        let k = (app, channel.clone());
        if self
            .channels
            .get(&k)
            .is_some_and(|c| c.subs.is_empty() && c.members.is_empty())
        {
            self.channels.remove(&k);
        }
    }

    fn forget_user_if_empty(&mut self, k: &(AppIdx, Arc<str>)) {
        if self
            .users
            .get(k)
            .is_some_and(|u| u.conns.is_empty() && u.watchers.is_empty())
        {
            self.users.remove(k);
        }
    }

    /// Facts of one channel.
    pub fn facts(&self, app: AppIdx, channel: &str) -> ChannelFacts {
        self.channels
            .get(&(app, Arc::from(channel)))
            .map(channel_facts)
            .unwrap_or_default()
    }

    /// Occupied channels of an app whose names start with `prefix`.
    pub fn list(&self, app: AppIdx, prefix: &str) -> Vec<(Arc<str>, ChannelFacts)> {
        self.channels
            .iter()
            .filter(|((a, name), c)| *a == app && !c.subs.is_empty() && name.starts_with(prefix))
            .map(|((_, name), c)| (name.clone(), channel_facts(c)))
            .collect()
    }

    /// Raw ids of a presence channel's members, in join order.
    pub fn users(&self, app: AppIdx, channel: &str) -> Vec<String> {
        self.channels
            .get(&(app, Arc::from(channel)))
            .map(|c| {
                c.order
                    .iter()
                    .filter_map(|k| c.members.get(k))
                    .map(|m| m.raw_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `user` has a signed-in connection anywhere (the tests' view; the server learns
    /// it from the notices).
    #[cfg(test)]
    pub fn online(&self, app: AppIdx, user: &str) -> bool {
        self.users
            .get(&(app, Arc::from(user)))
            .is_some_and(|u| !u.conns.is_empty())
    }
}

/// What one origin should hold after a snapshot, per (kind, app, channel or user, member key):
/// a count, and the member to add for presence entries.
type Wanted = BTreeMap<(u8, AppIdx, Arc<str>, Arc<str>), (u32, Option<Arc<Member>>)>;
/// Kinds of [`Wanted`] keys.
const SUBS: u8 = 0;
const MEMBER: u8 = 1;
const USER: u8 = 2;

fn snap_key(e: &SnapEntry) -> (AppIdx, &str, &str) {
    match e {
        SnapEntry::Subs { app, channel, .. } => (*app, channel, ""),
        SnapEntry::Member {
            app,
            channel,
            member,
            ..
        } => (*app, channel, member.key.as_str()),
        SnapEntry::User { app, user, .. } => (*app, "", user),
    }
}

fn channel_facts(c: &Channel) -> ChannelFacts {
    ChannelFacts {
        subscriptions: c.subs.total(),
        users: c.members.len(),
    }
}

/// The `member_removed` webhook and the event to the channel's subscribers.
fn member_removed(
    app: AppIdx,
    channel: &Arc<str>,
    user_id: String,
    raw_id: &str,
    out: &mut Vec<Effect>,
) {
    out.push(hook(app, channel, HookKind::MemberRemoved { user_id }));
    out.push(member_removed_event(app, channel, raw_id));
}

fn member_removed_event(app: AppIdx, channel: &Arc<str>, raw_id: &str) -> Effect {
    let data = encode::member_json(raw_id, None);
    member_event(
        app,
        channel.clone(),
        "pusher_internal:member_removed",
        &data,
        None,
    )
}

fn hook(app: AppIdx, channel: &Arc<str>, kind: HookKind) -> Effect {
    Effect::Hook {
        app,
        channel: channel.clone(),
        kind,
    }
}

fn member_event(
    app: AppIdx,
    channel: Arc<str>,
    name: &str,
    data: &str,
    except: Option<Arc<str>>,
) -> Effect {
    let frame = encode::event_with_string_data(name, Some(&channel), data);
    Effect::Publish {
        app,
        channel,
        frame,
        except,
    }
}

fn count_event(app: AppIdx, channel: &Arc<str>, count: usize, out: &mut Vec<Effect>) {
    let inner = format!("{{\"subscription_count\":{count}}}");
    let frame =
        encode::event_with_string_data("pusher_internal:subscription_count", Some(channel), &inner);
    out.push(hook(app, channel, HookKind::SubscriptionCount { count }));
    out.push(Effect::Publish {
        app,
        channel: channel.clone(),
        frame,
        except: None,
    });
}

fn notify_watchers(watchers: &[ConnRef], user: &Arc<str>, online: bool, out: &mut Vec<Effect>) {
    if watchers.is_empty() {
        return;
    }
    let one = [user.clone()];
    let frame = if online {
        watchlist_frame(&one, &[])
    } else {
        watchlist_frame(&[], &one)
    };
    for w in watchers {
        out.push(Effect::Notice {
            to: *w,
            frame: frame.clone(),
        });
    }
}

/// `pusher_internal:watchlist_events` with online and offline groups (empty groups left out).
fn watchlist_frame(online: &[Arc<str>], offline: &[Arc<str>]) -> Bytes {
    let group = |name: &str, ids: &[Arc<str>]| {
        let list: Vec<String> = ids.iter().map(|i| encode::quoted(i)).collect();
        format!("{{\"name\":\"{name}\",\"user_ids\":[{}]}}", list.join(","))
    };
    let mut events = Vec::new();
    if !online.is_empty() {
        events.push(group("online", online));
    }
    if !offline.is_empty() {
        events.push(group("offline", offline));
    }
    let inner = format!("{{\"events\":[{}]}}", events.join(","));
    encode::event_with_string_data("pusher_internal:watchlist_events", None, &inner)
}

fn presence_json(ch: &Channel) -> String {
    let mut ids = String::from("[");
    let mut hash = String::from("{");
    for (i, key) in ch.order.iter().enumerate() {
        let Some(m) = ch.members.get(key) else {
            continue;
        };
        if i > 0 {
            ids.push(',');
            hash.push(',');
        }
        ids.push_str(&m.raw_id);
        encode::json_str(&mut hash, key);
        hash.push(':');
        hash.push_str(m.info.as_deref().unwrap_or("null"));
    }
    ids.push(']');
    hash.push('}');
    format!(
        "{{\"presence\":{{\"ids\":{ids},\"hash\":{hash},\"count\":{}}}}}",
        ch.members.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConnKey;

    const APP: AppIdx = AppIdx(0);

    fn home(subscription_count: bool, max: usize) -> Home {
        Home::new(vec![AppRules {
            max_presence_members: max,
            subscription_count,
        }])
    }

    fn conn(shard: u16, idx: u32) -> ConnRef {
        ConnRef {
            shard: ShardId(shard),
            key: ConnKey { idx, gen: 1 },
        }
    }

    fn member(id: &str, raw: &str) -> Arc<Member> {
        Arc::new(Member {
            key: id.into(),
            raw_id: raw.into(),
            info: Some(format!("{{\"n\":\"{id}\"}}")),
        })
    }

    fn join(h: &mut Home, c: ConnRef, ch: &str, m: &Arc<Member>) -> Vec<Effect> {
        let mut out = Vec::new();
        let delta = Delta::Join {
            app: APP,
            channel: ch.into(),
            member: m.clone(),
            conn: c,
            socket_id: "1.1".into(),
        };
        h.apply(Origin::of(c), delta, 0, &mut out);
        out
    }

    fn leave(h: &mut Home, o: u16, ch: &str, key: &str) -> Vec<Effect> {
        let mut out = Vec::new();
        let delta = Delta::Leave {
            app: APP,
            channel: ch.into(),
            user_key: key.into(),
        };
        h.apply(Origin::Shard(ShardId(o)), delta, 0, &mut out);
        out
    }

    fn hooks(out: &[Effect]) -> Vec<&'static str> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Hook { kind, .. } => Some(kind.name()),
                _ => None,
            })
            .collect()
    }

    fn published(out: &[Effect]) -> Vec<String> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Publish { frame, .. } => Some(String::from_utf8_lossy(frame).to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn presence_counts_users_once_across_origins() {
        let mut h = home(false, 100);
        let a = member("1", "1");
        let out = join(&mut h, conn(0, 1), "presence-a", &a);
        assert_eq!(hooks(&out), ["channel_occupied", "member_added"]);
        let Effect::JoinAnswer { result: Ok(f), .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert!(String::from_utf8_lossy(f).contains(
            r#"{\"presence\":{\"ids\":[1],\"hash\":{\"1\":{\"n\":\"1\"}},\"count\":1}}"#
        ));
        // The same user from another shard: no second member_added.
        let out = join(&mut h, conn(1, 1), "presence-a", &a);
        assert!(hooks(&out).is_empty() && published(&out).is_empty());
        let b = member("b", "\"b\"");
        assert_eq!(
            hooks(&join(&mut h, conn(1, 2), "presence-a", &b)),
            ["member_added"]
        );
        assert_eq!(
            h.facts(APP, "presence-a"),
            ChannelFacts {
                subscriptions: 3,
                users: 2
            }
        );
        assert_eq!(h.users(APP, "presence-a"), ["1", "\"b\""]);
        // A leave from an origin that holds none of the user's connections changes nothing.
        assert!(leave(&mut h, 2, "presence-a", "1").is_empty());
        assert!(leave(&mut h, 0, "presence-a", "1").is_empty());
        let out = leave(&mut h, 1, "presence-a", "1");
        assert_eq!(hooks(&out), ["member_removed"]);
        assert!(published(&out)[0].contains("member_removed"));
        let out = leave(&mut h, 1, "presence-a", "b");
        assert_eq!(hooks(&out), ["member_removed", "channel_vacated"]);
        assert!(h.list(APP, "").is_empty());
    }

    #[test]
    fn member_limit_counts_users_not_connections() {
        let mut h = home(false, 1);
        join(&mut h, conn(0, 1), "presence-a", &member("1", "1"));
        let out = join(&mut h, conn(0, 2), "presence-a", &member("2", "2"));
        assert!(matches!(
            &out[..],
            [Effect::JoinAnswer { result: Err(_), .. }]
        ));
        // A second tab of an existing member is not a new member.
        let out = join(&mut h, conn(1, 3), "presence-a", &member("1", "1"));
        assert!(matches!(&out[0], Effect::JoinAnswer { result: Ok(_), .. }));
    }

    #[test]
    fn counts_and_throttle() {
        let mut h = home(true, 100);
        let ch: Arc<str> = "c".into();
        let sub = |h: &mut Home, now: u64| {
            let mut out = Vec::new();
            let d = Delta::Subscribed {
                app: APP,
                channel: ch.clone(),
            };
            h.apply(Origin::Shard(ShardId(0)), d, now, &mut out);
            out
        };
        let out = sub(&mut h, 10);
        assert_eq!(hooks(&out), ["channel_occupied", "subscription_count"]);
        for _ in 0..150 {
            sub(&mut h, 20_000);
        }
        // Above 100 subscribers, at most one count per interval; the rest comes from tick.
        assert!(published(&sub(&mut h, 21_000)).is_empty());
        let mut out = Vec::new();
        h.tick(22_000, &mut out);
        assert!(out.is_empty());
        h.tick(25_000, &mut out);
        assert!(published(&out)[0].contains(r#"{\"subscription_count\":152}"#));
        assert_eq!(h.list(APP, "c").len(), 1);
        assert_eq!(h.list(APP, "x").len(), 0);
    }

    #[test]
    fn users_and_watchers() {
        let mut h = home(false, 100);
        let w = conn(1, 3);
        let u: Arc<str> = "u".into();
        let mut out = Vec::new();
        let watch = Delta::Watch {
            app: APP,
            users: vec![u.clone()],
            watcher: w,
            add: true,
        };
        h.apply(Origin::of(w), watch, 0, &mut out);
        let signed_in = Delta::SignedIn {
            app: APP,
            user: u.clone(),
        };
        let signed_out = Delta::SignedOut {
            app: APP,
            user: u.clone(),
        };
        h.apply(Origin::Shard(ShardId(0)), signed_in.clone(), 0, &mut out);
        h.apply(Origin::Shard(ShardId(1)), signed_in, 0, &mut out);
        h.apply(Origin::Shard(ShardId(0)), signed_out.clone(), 0, &mut out);
        h.apply(Origin::Shard(ShardId(1)), signed_out, 0, &mut out);
        let frames: Vec<String> = out
            .iter()
            .map(|e| match e {
                Effect::Notice { to, frame } if *to == w => {
                    String::from_utf8_lossy(frame).to_string()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert!(frames[0].contains("offline") && frames[1].contains("online"));
        assert!(frames[2].contains("offline"));
        let unwatch = Delta::Watch {
            app: APP,
            users: vec![u],
            watcher: w,
            add: false,
        };
        h.apply(Origin::of(w), unwatch, 0, &mut out);
        assert!(h.users.is_empty());
    }

    #[test]
    fn dropping_an_origin_removes_its_whole_contribution() {
        let mut h = home(true, 100);
        let (a, b) = (member("a", "\"a\""), member("b", "\"b\""));
        join(&mut h, conn(0, 1), "presence-x", &a);
        join(&mut h, conn(1, 1), "presence-x", &a);
        join(&mut h, conn(1, 2), "presence-x", &b);
        let mut out = Vec::new();
        let pubsub = Delta::Subscribed {
            app: APP,
            channel: "public".into(),
        };
        h.apply(Origin::Shard(ShardId(1)), pubsub, 0, &mut out);
        let signed_in = Delta::SignedIn {
            app: APP,
            user: "b".into(),
        };
        h.apply(Origin::Shard(ShardId(1)), signed_in, 0, &mut out);
        out.clear();
        h.drop_origin(Origin::Shard(ShardId(1)), 10_000, &mut out);
        // b's only connection was there; a still has one on shard 0.
        assert_eq!(
            hooks(&out),
            ["member_removed", "channel_vacated", "subscription_count"]
        );
        assert_eq!(h.users(APP, "presence-x"), ["\"a\""]);
        assert_eq!(h.facts(APP, "presence-x").subscriptions, 1);
        assert_eq!(h.facts(APP, "public"), ChannelFacts::default());
        assert!(!h.online(APP, "b"));
        // Dropping it again is a no-op.
        out.clear();
        h.drop_origin(Origin::Shard(ShardId(1)), 10_000, &mut out);
        assert!(out.is_empty());
    }
}
