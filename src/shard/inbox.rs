//! The shard's bus consumer: fan-out of publications, home-shard bookkeeping, queries and
//! shutdown. Messages are drained in batches and the dirty connections flushed once per batch,
//! so a burst of publishes leaves each socket in one send.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::state::{flush_dirty, State};
use super::{pusher, Shard};
use crate::bus::{BusMsg, Publication, Query};
use crate::ids::{AppIdx, ConnKey};
use crate::protocol::channel::{type_of, ChannelKind};
use crate::protocol::{codes, encode};
use crate::webhooks::HookKind;

/// Messages handled before the flush and a yield to other tasks.
const BATCH: usize = 1024;

/// Runs the inbox loop until the process exits.
pub async fn run(shard: Rc<Shard>) {
    loop {
        shard.shared.bus.wait(shard.id).await;
        loop {
            let mut handled = 0;
            {
                let mut st = shard.state.borrow_mut();
                while handled < BATCH {
                    let Some(msg) = shard.shared.bus.try_recv(shard.id) else {
                        break;
                    };
                    handle(&shard, &mut st, msg);
                    handled += 1;
                }
            }
            let more = flush_dirty(&shard);
            if handled < BATCH && !more {
                break;
            }
            yield_now().await;
        }
    }
}

async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

fn handle(shard: &Shard, st: &mut State, msg: BusMsg) {
    match msg {
        BusMsg::Publish(p) => shard.deliver(st, &p),
        BusMsg::ToUser {
            app,
            user,
            frame,
            except,
        } => {
            for key in user_conns(st, app, &user) {
                let excluded = except
                    .as_ref()
                    .is_some_and(|x| st.conns.get(key).is_some_and(|c| c.socket_id == *x));
                if !excluded {
                    shard.send_to(st, key, frame.clone());
                }
            }
        }
        BusMsg::Terminate { app, user } => {
            for key in user_conns(st, app, &user) {
                shard.close(
                    st,
                    key,
                    codes::UNAUTHORIZED,
                    "You got disconnected by the app",
                    true,
                );
            }
        }
        BusMsg::SubDelta {
            app,
            channel,
            delta,
        } => {
            let (before, after) = st.home.sub_delta(app, &channel, delta);
            if before == 0 && after > 0 {
                shard.hook(app, &channel, HookKind::ChannelOccupied);
            } else if before > 0 && after == 0 {
                shard.hook(app, &channel, HookKind::ChannelVacated);
            }
            count_changed(shard, st, app, &channel, after);
        }
        BusMsg::PresenceJoin {
            app,
            channel,
            member,
            from,
            socket_id,
        } => {
            let max = shard.shared.app(app).max_presence_members;
            let result = st.home.join(app, &channel, &member, max);
            let reply = match &result {
                Ok(j) => Ok(encode::event_with_string_data(
                    "pusher_internal:subscription_succeeded",
                    Some(&channel),
                    &j.presence_json,
                )),
                Err(e) => Err(e.clone()),
            };
            shard.shared.bus.send(
                from.shard,
                BusMsg::PresenceJoined {
                    conn: from,
                    app,
                    channel: channel.clone(),
                    member: member.clone(),
                    result: reply,
                },
            );
            if let Ok(j) = result {
                if j.occupied {
                    shard.hook(app, &channel, HookKind::ChannelOccupied);
                }
                if j.first {
                    let user_id = member.key.clone();
                    shard.hook(app, &channel, HookKind::MemberAdded { user_id });
                    let data = encode::member_json(&member.raw_id, member.info.as_deref());
                    let except = Some(socket_id);
                    member_event(
                        shard,
                        app,
                        channel,
                        "pusher_internal:member_added",
                        &data,
                        except,
                    );
                }
            }
        }
        BusMsg::PresenceJoined {
            conn,
            app,
            channel,
            member,
            result,
        } => {
            pusher::presence_joined(shard, st, conn.key, app, &channel, &member, result);
        }
        BusMsg::PresenceLeave {
            app,
            channel,
            user_key,
        } => {
            let left = st.home.leave(app, &channel, &user_key);
            if left.removed.is_some() {
                let user_id = user_key.to_string();
                shard.hook(app, &channel, HookKind::MemberRemoved { user_id });
            }
            if left.vacated {
                shard.hook(app, &channel, HookKind::ChannelVacated);
            }
            if let Some(raw_id) = left.removed {
                let data = encode::member_json(&raw_id, None);
                member_event(
                    shard,
                    app,
                    channel,
                    "pusher_internal:member_removed",
                    &data,
                    None,
                );
            }
        }
        BusMsg::UserPresence { app, user, delta } => {
            if let Some(change) = st.home.user_delta(app, &user, delta) {
                let one = [user.clone()];
                let (on, off): (&[Arc<str>], &[Arc<str>]) = if change.online {
                    (&one, &[])
                } else {
                    (&[], &one)
                };
                let frame = watchlist_frame(on, off);
                for w in change.watchers {
                    shard.shared.bus.send(
                        w.shard,
                        BusMsg::WatchNotice {
                            conn: w,
                            frame: frame.clone(),
                        },
                    );
                }
            }
        }
        BusMsg::Watch {
            app,
            users,
            watcher,
            add,
        } => {
            let (on, off) = st.home.watch(app, &users, watcher, add);
            if add {
                let frame = watchlist_frame(&on, &off);
                shard.shared.bus.send(
                    watcher.shard,
                    BusMsg::WatchNotice {
                        conn: watcher,
                        frame,
                    },
                );
            }
        }
        BusMsg::WatchNotice { conn, frame } => shard.send_to(st, conn.key, frame),
        BusMsg::Query(q) => answer(st, q),
        BusMsg::Shutdown => shutdown(shard, st),
    }
}

/// Publishes a presence member event to the channel's subscribers on every shard.
fn member_event(
    shard: &Shard,
    app: AppIdx,
    channel: Arc<str>,
    name: &str,
    data: &str,
    except: Option<Arc<str>>,
) {
    let frame = encode::event_with_string_data(name, Some(&channel), data);
    shard.publish(Publication {
        app,
        channel,
        frame,
        except,
        cache_data: None,
        essential: true,
    });
}

fn user_conns(st: &State, app: AppIdx, user: &Arc<str>) -> Vec<ConnKey> {
    st.users[app.0 as usize]
        .get(user)
        .cloned()
        .unwrap_or_default()
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

fn count_changed(shard: &Shard, st: &mut State, app: AppIdx, channel: &Arc<str>, count: usize) {
    if !shard.shared.app(app).subscription_count || type_of(channel).kind == ChannelKind::Presence {
        return;
    }
    if count == 0 {
        // Nobody is left to tell, but the webhook reports every change, the last one included.
        shard.hook(app, channel, HookKind::SubscriptionCount { count: 0 });
    } else if st.home.count_now(app, channel, count, shard.now_ms()) {
        publish_count(shard, app, channel, count);
    }
}

/// Publishes `pusher_internal:subscription_count` to a channel's subscribers.
pub fn publish_count(shard: &Shard, app: AppIdx, channel: &Arc<str>, count: usize) {
    let inner = format!("{{\"subscription_count\":{count}}}");
    let frame =
        encode::event_with_string_data("pusher_internal:subscription_count", Some(channel), &inner);
    shard.hook(app, channel, HookKind::SubscriptionCount { count });
    shard.publish(Publication {
        app,
        channel: channel.clone(),
        frame,
        except: None,
        cache_data: None,
        essential: true,
    });
}

fn answer(st: &mut State, q: Query) {
    match q {
        Query::Channel {
            app,
            channel,
            reply,
        } => {
            let _ = reply.send(st.home.facts(app, &channel));
        }
        Query::List { app, prefix, reply } => {
            let _ = reply.send(st.home.list(app, &prefix));
        }
        Query::Users {
            app,
            channel,
            reply,
        } => {
            let _ = reply.send(st.home.users(app, &channel));
        }
        Query::Connections { app, reply } => {
            let n = st.conns.iter_mut().filter(|(_, c)| c.app == app).count();
            let _ = reply.send(n);
        }
    }
}

fn shutdown(shard: &Shard, st: &mut State) {
    if let Some(c) = st.accept_canceller.take() {
        c.cancel();
    }
    for key in st.conns.keys() {
        shard.close(
            st,
            key,
            codes::RECONNECT,
            "Server is closing. Please reconnect shortly.",
            true,
        );
    }
}
