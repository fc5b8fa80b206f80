//! The shard's bus consumer: fan-out of publications, home-shard bookkeeping, queries and
//! shutdown. Messages are drained in batches and the dirty connections flushed once per batch,
//! so a burst of publishes leaves each socket in one send.

use std::rc::Rc;
use std::sync::Arc;

use super::outbound::Notice;
use super::state::{flush_dirty, State};
use super::{pusher, Shard};
use crate::bus::{BusMsg, Query};
use crate::cluster::Outbound;
use crate::ids::{home_of, AppIdx, ConnKey};
use crate::protocol::codes;

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
                let now = shard.now_ms();
                while handled < BATCH {
                    let Some(msg) = shard.shared.bus.try_recv(shard.id) else {
                        break;
                    };
                    handle(&shard, &mut st, msg, now);
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

fn handle(shard: &Shard, st: &mut State, msg: BusMsg, now: u64) {
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
                    .is_some_and(|x| st.conns.get(key).is_some_and(|c| *c.socket_id == **x));
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
                    Notice::WithPusherError,
                );
            }
        }
        BusMsg::Home { from, delta } => {
            let mut effects = Vec::new();
            st.home.apply(from, delta, now, &mut effects);
            shard.apply_effects(&st.nodes, &mut effects);
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
        BusMsg::WatchNotice { conn, frame } => shard.send_to(st, conn.key, frame),
        BusMsg::Query(q) => answer(st, q),
        BusMsg::Shutdown => shutdown(shard, st),
        BusMsg::DropOrigin(origin) => {
            let mut effects = Vec::new();
            st.home.drop_origin(origin, now, &mut effects);
            shard.apply_effects(&st.nodes, &mut effects);
        }
        BusMsg::ReplaceOrigin {
            origin,
            piece,
            pieces,
            entries,
        } => {
            let (me, shards) = (shard.id, shard.shared.shards());
            let covers = |app: AppIdx, name: &str| {
                home_of(app, name, pieces as usize).0 == piece && home_of(app, name, shards) == me
            };
            let mut effects = Vec::new();
            st.home
                .replace_origin(origin, covers, &entries, now, &mut effects);
            shard.apply_effects(&st.nodes, &mut effects);
        }
        BusMsg::SnapshotRequest => {
            if let Some(c) = &shard.shared.cluster {
                c.send(Outbound::Snapshot {
                    piece: shard.id.0,
                    pieces: shard.shared.shards() as u16,
                    entries: st.home.snapshot_local(),
                });
            }
        }
        BusMsg::Nodes(live) => st.nodes = live,
    }
}

fn user_conns(st: &State, app: AppIdx, user: &Arc<str>) -> Vec<ConnKey> {
    st.users[app.0 as usize]
        .get(user)
        .cloned()
        .unwrap_or_default()
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
            Notice::WithPusherError,
        );
    }
}
