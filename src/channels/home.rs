//! Home-shard facts: per channel the subscription count and presence members, per user the
//! number of signed-in connections and who watches them. Each fact has exactly one home shard,
//! which receives deltas over the bus; this module holds the state and decides transitions.
//! No IO: the shard turns the returned outcomes into bus messages and frames.

use std::collections::HashMap;
use std::sync::Arc;

use crate::bus::ChannelFacts;
use crate::ids::{AppIdx, ConnRef};
use crate::protocol::encode;
use crate::protocol::message::Member;

/// Subscription counts above this are announced at most every [`COUNT_INTERVAL_MS`].
pub const COUNT_THROTTLE_ABOVE: usize = 100;
/// Minimum spacing of `subscription_count` events on busy channels.
pub const COUNT_INTERVAL_MS: u64 = 5_000;

#[derive(Debug, Default)]
struct Channel {
    subs: usize,
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
    conns: u32,
}

#[derive(Debug, Default)]
struct User {
    conns: u32,
    watchers: Vec<ConnRef>,
}

/// What a presence join did.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined {
    /// The user's first connection in the channel: announce `member_added`.
    pub first: bool,
    /// The channel went from empty to occupied.
    pub occupied: bool,
    /// The `{"presence":{...}}` JSON for `subscription_succeeded`.
    pub presence_json: String,
}

/// What a presence leave did.
#[derive(Debug, PartialEq, Eq)]
pub struct Left {
    /// The user's raw id, when this was their last connection: announce `member_removed`.
    pub removed: Option<String>,
    /// The channel became empty.
    pub vacated: bool,
}

/// A user went online or offline.
#[derive(Debug, PartialEq, Eq)]
pub struct UserChange {
    /// Online (first connection) or offline (last one gone).
    pub online: bool,
    /// Connections watching the user.
    pub watchers: Vec<ConnRef>,
}

/// All facts homed on one shard.
#[derive(Debug, Default)]
pub struct Home {
    channels: HashMap<(AppIdx, Arc<str>), Channel>,
    users: HashMap<(AppIdx, Arc<str>), User>,
}

impl Home {
    /// Applies a non-presence subscription delta; returns the counts before and after.
    pub fn sub_delta(&mut self, app: AppIdx, channel: &Arc<str>, delta: i32) -> (usize, usize) {
        let ch = self.channels.entry((app, channel.clone())).or_default();
        let before = ch.subs;
        ch.subs = if delta >= 0 {
            ch.subs + delta as usize
        } else {
            ch.subs.saturating_sub(delta.unsigned_abs() as usize)
        };
        let after = ch.subs;
        self.forget_if_empty(app, channel);
        (before, after)
    }

    /// Adds a presence connection; refuses a new user beyond `max_members`.
    pub fn join(
        &mut self,
        app: AppIdx,
        channel: &Arc<str>,
        m: &Member,
        max_members: usize,
    ) -> Result<Joined, String> {
        let ch = self.channels.entry((app, channel.clone())).or_default();
        let first = match ch.members.get_mut(m.key.as_str()) {
            Some(existing) => {
                existing.conns += 1;
                false
            }
            None => {
                if ch.members.len() >= max_members {
                    let empty = ch.subs == 0 && ch.members.is_empty();
                    if empty {
                        self.channels.remove(&(app, channel.clone()));
                    }
                    return Err(format!(
                        "Presence channel {channel} is full ({max_members} members)"
                    ));
                }
                let key: Arc<str> = m.key.as_str().into();
                ch.members.insert(
                    key.clone(),
                    HomeMember {
                        raw_id: m.raw_id.clone(),
                        info: m.info.clone(),
                        conns: 1,
                    },
                );
                ch.order.push(key);
                true
            }
        };
        ch.subs += 1;
        Ok(Joined {
            first,
            occupied: ch.subs == 1,
            presence_json: presence_json(ch),
        })
    }

    /// Removes one presence connection of `user_key`.
    pub fn leave(&mut self, app: AppIdx, channel: &Arc<str>, user_key: &str) -> Left {
        let Some(ch) = self.channels.get_mut(&(app, channel.clone())) else {
            return Left {
                removed: None,
                vacated: false,
            };
        };
        let mut removed = None;
        if let Some(m) = ch.members.get_mut(user_key) {
            m.conns -= 1;
            if m.conns == 0 {
                removed = ch.members.remove(user_key).map(|m| m.raw_id);
                ch.order.retain(|k| &**k != user_key);
            }
        }
        ch.subs = ch.subs.saturating_sub(1);
        let vacated = ch.subs == 0;
        self.forget_if_empty(app, channel);
        Left { removed, vacated }
    }

    fn forget_if_empty(&mut self, app: AppIdx, channel: &Arc<str>) {
        let k = (app, channel.clone());
        if self
            .channels
            .get(&k)
            .is_some_and(|c| c.subs == 0 && c.members.is_empty())
        {
            self.channels.remove(&k);
        }
    }

    /// Facts of one channel.
    pub fn facts(&self, app: AppIdx, channel: &Arc<str>) -> ChannelFacts {
        self.channels
            .get(&(app, channel.clone()))
            .map(|c| ChannelFacts {
                subscriptions: c.subs,
                users: c.members.len(),
            })
            .unwrap_or_default()
    }

    /// Occupied channels of an app whose names start with `prefix`.
    pub fn list(&self, app: AppIdx, prefix: &str) -> Vec<(Arc<str>, ChannelFacts)> {
        self.channels
            .iter()
            .filter(|((a, name), c)| *a == app && c.subs > 0 && name.starts_with(prefix))
            .map(|((_, name), c)| {
                (
                    name.clone(),
                    ChannelFacts {
                        subscriptions: c.subs,
                        users: c.members.len(),
                    },
                )
            })
            .collect()
    }

    /// Raw ids of a presence channel's members, in join order.
    pub fn users(&self, app: AppIdx, channel: &Arc<str>) -> Vec<String> {
        self.channels
            .get(&(app, channel.clone()))
            .map(|c| {
                c.order
                    .iter()
                    .filter_map(|k| c.members.get(k))
                    .map(|m| m.raw_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Decides whether a `subscription_count` event goes out now. Busy channels are throttled;
    /// their pending count is picked up by [`Home::due_counts`].
    pub fn count_now(&mut self, app: AppIdx, channel: &Arc<str>, count: usize, now: u64) -> bool {
        let Some(ch) = self.channels.get_mut(&(app, channel.clone())) else {
            return false;
        };
        if count > COUNT_THROTTLE_ABOVE && now.saturating_sub(ch.count_sent_at) < COUNT_INTERVAL_MS
        {
            ch.count_pending = true;
            return false;
        }
        ch.count_sent_at = now;
        ch.count_pending = false;
        true
    }

    /// Throttled counts whose interval has passed.
    pub fn due_counts(&mut self, now: u64) -> Vec<(AppIdx, Arc<str>, usize)> {
        let mut due = Vec::new();
        for ((app, name), ch) in self.channels.iter_mut() {
            if ch.count_pending && now.saturating_sub(ch.count_sent_at) >= COUNT_INTERVAL_MS {
                ch.count_pending = false;
                ch.count_sent_at = now;
                due.push((*app, name.clone(), ch.subs));
            }
        }
        due
    }

    /// Applies a signed-in connection delta for a user; reports online/offline transitions.
    pub fn user_delta(&mut self, app: AppIdx, user: &Arc<str>, delta: i32) -> Option<UserChange> {
        let k = (app, user.clone());
        let u = self.users.entry(k.clone()).or_default();
        let before = u.conns;
        u.conns = if delta >= 0 {
            u.conns + delta as u32
        } else {
            u.conns.saturating_sub(delta.unsigned_abs())
        };
        let change = match (before, u.conns) {
            (0, n) if n > 0 => Some(true),
            (b, 0) if b > 0 => Some(false),
            _ => None,
        };
        let out = change.map(|online| UserChange {
            online,
            watchers: u.watchers.clone(),
        });
        if u.conns == 0 && u.watchers.is_empty() {
            self.users.remove(&k);
        }
        out
    }

    /// Adds or removes a watcher of users; returns the (online, offline) ids when adding.
    pub fn watch(
        &mut self,
        app: AppIdx,
        users: &[Arc<str>],
        watcher: ConnRef,
        add: bool,
    ) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for id in users {
            let k = (app, id.clone());
            if add {
                let u = self.users.entry(k).or_default();
                u.watchers.push(watcher);
                if u.conns > 0 {
                    on.push(id.clone())
                } else {
                    off.push(id.clone())
                }
            } else if let Some(u) = self.users.get_mut(&k) {
                u.watchers.retain(|w| *w != watcher);
                if u.conns == 0 && u.watchers.is_empty() {
                    self.users.remove(&k);
                }
            }
        }
        (on, off)
    }
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
    use crate::ids::{ConnKey, ShardId};

    fn member(id: &str, raw: &str) -> Member {
        Member {
            key: id.into(),
            raw_id: raw.into(),
            info: Some(format!("{{\"n\":\"{id}\"}}")),
        }
    }

    #[test]
    fn presence_counts_users_once() {
        let mut h = Home::default();
        let (app, ch): (AppIdx, Arc<str>) = (AppIdx(0), "presence-a".into());
        let a = member("1", "1");
        let j1 = h.join(app, &ch, &a, 100).unwrap();
        assert!(j1.first && j1.occupied);
        assert_eq!(
            j1.presence_json,
            r#"{"presence":{"ids":[1],"hash":{"1":{"n":"1"}},"count":1}}"#
        );
        let j2 = h.join(app, &ch, &a, 100).unwrap();
        assert!(!j2.first && !j2.occupied);
        let b = member("b", "\"b\"");
        assert!(h.join(app, &ch, &b, 100).unwrap().first);
        assert_eq!(
            h.facts(app, &ch),
            ChannelFacts {
                subscriptions: 3,
                users: 2
            }
        );
        assert_eq!(
            h.users(app, &ch),
            vec!["1".to_string(), "\"b\"".to_string()]
        );
        assert_eq!(
            h.leave(app, &ch, "1"),
            Left {
                removed: None,
                vacated: false
            }
        );
        assert_eq!(
            h.leave(app, &ch, "1"),
            Left {
                removed: Some("1".into()),
                vacated: false
            }
        );
        assert_eq!(
            h.leave(app, &ch, "b"),
            Left {
                removed: Some("\"b\"".into()),
                vacated: true
            }
        );
        assert!(h.list(app, "").is_empty());
    }

    #[test]
    fn member_limit() {
        let mut h = Home::default();
        let (app, ch): (AppIdx, Arc<str>) = (AppIdx(0), "presence-a".into());
        h.join(app, &ch, &member("1", "1"), 1).unwrap();
        assert!(h.join(app, &ch, &member("2", "2"), 1).is_err());
        // A second tab of an existing member is not a new member.
        assert!(h.join(app, &ch, &member("1", "1"), 1).is_ok());
    }

    #[test]
    fn counts_and_throttle() {
        let mut h = Home::default();
        let (app, ch): (AppIdx, Arc<str>) = (AppIdx(0), "c".into());
        assert_eq!(h.sub_delta(app, &ch, 1), (0, 1));
        assert!(h.count_now(app, &ch, 1, 10));
        for _ in 0..150 {
            h.sub_delta(app, &ch, 1);
        }
        assert!(h.count_now(app, &ch, 151, 20_000));
        assert!(!h.count_now(app, &ch, 151, 21_000));
        assert!(h.due_counts(22_000).is_empty());
        assert_eq!(h.due_counts(25_000), vec![(app, ch.clone(), 151)]);
        assert_eq!(h.list(app, "c").len(), 1);
        assert_eq!(h.list(app, "x").len(), 0);
    }

    #[test]
    fn users_and_watchers() {
        let mut h = Home::default();
        let app = AppIdx(0);
        let w = ConnRef {
            shard: ShardId(1),
            key: ConnKey { idx: 3, gen: 1 },
        };
        let u: Arc<str> = "u".into();
        assert_eq!(
            h.watch(app, std::slice::from_ref(&u), w, true),
            (vec![], vec![u.clone()])
        );
        assert_eq!(
            h.user_delta(app, &u, 1),
            Some(UserChange {
                online: true,
                watchers: vec![w]
            })
        );
        assert_eq!(h.user_delta(app, &u, 1), None);
        assert_eq!(h.user_delta(app, &u, -1), None);
        assert_eq!(
            h.user_delta(app, &u, -1),
            Some(UserChange {
                online: false,
                watchers: vec![w]
            })
        );
        h.watch(app, std::slice::from_ref(&u), w, false);
        assert!(h.users.is_empty());
    }
}
