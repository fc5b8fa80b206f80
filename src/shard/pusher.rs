//! Pusher events from clients: ping, subscribe, unsubscribe, sign-in and client events. Auth is
//! checked before any state changes; errors answer with `pusher:error` and keep the connection.

use std::sync::Arc;

use super::conn::{SignedIn, Sub, SubState};
use super::state::{index_add, leave_home, unindex, watch, State};
use super::Shard;
use crate::auth;
use crate::bus::Publication;
use crate::channels::home::Delta;
use crate::ids::{AppIdx, ConnKey};
use crate::metrics::ShardMetrics;
use crate::protocol::channel::{self, ChannelKind, ChannelType, SERVER_TO_USER_PREFIX};
use crate::protocol::limits::{MAX_EVENT_NAME, MAX_SUBSCRIPTIONS, MAX_WATCHLIST};
use crate::protocol::message::{self, ClientMessage, Member};
use crate::protocol::{codes, encode};
use crate::webhooks::HookKind;

fn error(shard: &Shard, st: &mut State, key: ConnKey, code: Option<u16>, msg: &str) {
    shard.send_to(st, key, encode::error(code, msg));
}

/// Handles one complete text message.
pub fn on_message(shard: &Shard, st: &mut State, key: ConnKey, text: &str) {
    if !take_token(shard, st, key) {
        let msg = "Too many messages: slow down";
        return error(shard, st, key, Some(codes::CLIENT_EVENT_REJECTED), msg);
    }
    let msg = match message::parse(text) {
        Ok(m) => m,
        Err(e) => return error(shard, st, key, None, &e.to_string()),
    };
    match msg.event.as_ref() {
        "pusher:ping" => shard.send_to(st, key, encode::pong()),
        "pusher:pong" => {}
        "pusher:subscribe" => subscribe(shard, st, key, &msg),
        "pusher:unsubscribe" => unsubscribe(shard, st, key, &msg),
        "pusher:signin" => signin(shard, st, key, &msg),
        e if e.starts_with("client-") => client_event(shard, st, key, &msg),
        e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => {
            tracing::debug!(event = e, "unknown pusher event from client");
            error(shard, st, key, None, &format!("Unsupported event {e}"));
        }
        _ => error(
            shard,
            st,
            key,
            None,
            "Client events must be prefixed with client-",
        ),
    }
}

/// Every message costs a token; tokens refill at `max_messages_per_second` up to
/// `max_message_burst`. This bounds what one connection can push onto the bus (subscribe and
/// unsubscribe churn, client events) whatever it sends.
fn take_token(shard: &Shard, st: &mut State, key: ConnKey) -> bool {
    let cfg = &shard.shared.config.server;
    let now = shard.now_ms();
    let (rate, burst) = (cfg.max_messages_per_second, cfg.max_message_burst);
    st.conns
        .get_mut(key)
        .is_some_and(|c| c.tokens.take(now, rate, burst))
}

fn subscribe(shard: &Shard, st: &mut State, key: ConnKey, msg: &ClientMessage<'_>) {
    let sub = match message::subscribe(msg.data.as_deref()) {
        Ok(s) => s,
        Err(e) => return error(shard, st, key, None, &e.to_string()),
    };
    let max_len = shard.shared.config.server.max_channel_name_length;
    let ty = match channel::classify(&sub.channel, max_len) {
        Ok(t) => t,
        Err(e) => return error(shard, st, key, None, &format!("{e}: {}", sub.channel)),
    };
    let Some(conn) = st.conns.get(key) else {
        return;
    };
    let app = conn.app;
    let cfg = shard.shared.app(app);
    if conn.sub(&sub.channel).is_some() {
        return error(
            shard,
            st,
            key,
            None,
            &format!("Existing subscription to channel {}", sub.channel),
        );
    }
    if conn.subs.len() >= MAX_SUBSCRIPTIONS {
        return error(
            shard,
            st,
            key,
            None,
            &format!("Too many subscriptions (limit {MAX_SUBSCRIPTIONS})"),
        );
    }
    let auth = sub.auth.as_deref().unwrap_or("");
    let mut member = None;
    match ty.kind {
        ChannelKind::Public => {}
        ChannelKind::ServerToUser => {
            let wanted = &sub.channel[SERVER_TO_USER_PREFIX.len()..];
            if conn.user.as_ref().map(|u| &*u.id) != Some(wanted) {
                return error(
                    shard,
                    st,
                    key,
                    None,
                    "Subscription to #server-to-user channels requires signing in as that user",
                );
            }
        }
        ChannelKind::Private | ChannelKind::Encrypted => {
            let to_sign = auth::channel_string(&conn.socket_id, &sub.channel, None);
            if !auth::check_client_auth(&cfg.key, &cfg.secret, &to_sign, auth) {
                return auth_error(shard, st, key, &to_sign, auth);
            }
        }
        ChannelKind::Presence => {
            let m = match &sub.channel_data {
                Some(data) => {
                    let to_sign = auth::channel_string(&conn.socket_id, &sub.channel, Some(data));
                    if !auth::check_client_auth(&cfg.key, &cfg.secret, &to_sign, auth) {
                        return auth_error(shard, st, key, &to_sign, auth);
                    }
                    match message::presence_member(
                        data,
                        cfg.max_user_id_length,
                        cfg.max_presence_user_info,
                    ) {
                        Ok(m) => Arc::new(m),
                        Err(e) => {
                            return error(
                                shard,
                                st,
                                key,
                                None,
                                &format!("Invalid channel_data: {e}"),
                            )
                        }
                    }
                }
                None => {
                    // A signed-in connection may join without channel_data: the sign-in's user
                    // is the member, and the signature covers socket_id:channel.
                    let Some(user) = &conn.user else {
                        return error(
                            shard,
                            st,
                            key,
                            None,
                            "Presence subscriptions require channel_data",
                        );
                    };
                    let m = user.member.clone();
                    let to_sign = auth::channel_string(&conn.socket_id, &sub.channel, None);
                    if !auth::check_client_auth(&cfg.key, &cfg.secret, &to_sign, auth) {
                        return auth_error(shard, st, key, &to_sign, auth);
                    }
                    m
                }
            };
            member = Some(m);
        }
    }
    let channel = st.intern(app, &sub.channel);
    let Some(conn) = st.conns.get_mut(key) else {
        return;
    };
    if ty.needs_auth() {
        conn.auth_deadline = None;
    }
    if let Some(m) = member {
        conn.subs.push(Sub {
            channel: channel.clone(),
            ty,
            state: SubState::Pending,
            member: Some(m.clone()),
            slot: 0,
        });
        let socket_id = conn.socket_id.shared();
        let from = shard.conn_ref(key);
        shard.to_home(
            app,
            &channel,
            Delta::Join {
                app,
                channel: channel.clone(),
                member: m,
                conn: from,
                socket_id,
            },
        );
        return;
    }
    let slot = index_add(&mut st.index[app.0 as usize], &channel, key);
    if let Some(conn) = st.conns.get_mut(key) {
        conn.subs.push(Sub {
            channel: channel.clone(),
            ty,
            state: SubState::Active,
            member: None,
            slot,
        });
    }
    shard.send_to(st, key, encode::subscription_succeeded(&channel));
    after_join(shard, st, key, app, &channel, ty);
    if ty.kind != ChannelKind::ServerToUser {
        shard.to_home(
            app,
            &channel,
            Delta::Subscribed {
                app,
                channel: channel.clone(),
            },
        );
    }
}

/// What a fresh subscriber gets right after `subscription_succeeded`: a cache channel's last
/// event or `pusher:cache_miss`.
pub fn after_join(
    shard: &Shard,
    st: &mut State,
    key: ConnKey,
    app: AppIdx,
    channel: &Arc<str>,
    ty: ChannelType,
) {
    if !ty.cache {
        return;
    }
    let now = shard.now_ms();
    let frame = match st.cache[app.0 as usize].get(channel) {
        Some(e) if e.expires > now => e.frame.clone(),
        _ => {
            shard.hook(app, channel, HookKind::CacheMiss);
            encode::event("pusher:cache_miss", Some(channel), None)
        }
    };
    shard.send_to(st, key, frame);
}

/// A signature mismatch, worded like the real service. Subscriptions answer with code null
/// (as Pusher does; clients such as pysher treat 4000-4099 as fatal and would drop the whole
/// connection), sign-ins with 4009.
fn auth_error(shard: &Shard, st: &mut State, key: ConnKey, to_sign: &str, got: &str) {
    sig_error(shard, st, key, None, to_sign, got);
}

fn sig_error(
    shard: &Shard,
    st: &mut State,
    key: ConnKey,
    code: Option<u16>,
    to_sign: &str,
    got: &str,
) {
    let msg =
        format!("Invalid signature: Expected HMAC SHA256 hex digest of {to_sign}, but got {got}");
    error(shard, st, key, code, &msg);
}

fn unsubscribe(shard: &Shard, st: &mut State, key: ConnKey, msg: &ClientMessage<'_>) {
    let Ok(sub) = message::subscribe(msg.data.as_deref()) else {
        return error(shard, st, key, None, "Invalid data for pusher:unsubscribe");
    };
    let Some(conn) = st.conns.get_mut(key) else {
        return;
    };
    let app = conn.app;
    let Some(pos) = conn.subs.iter().position(|s| *s.channel == *sub.channel) else {
        return; // no reply for unsubscribing from a channel not joined
    };
    let removed = conn.subs.swap_remove(pos);
    if removed.state == SubState::Active {
        unindex(st, app, &removed.channel, key, removed.slot);
        if removed.ty.kind != ChannelKind::ServerToUser {
            leave_home(shard, app, &removed);
        }
    }
}

fn signin(shard: &Shard, st: &mut State, key: ConnKey, msg: &ClientMessage<'_>) {
    let s = match message::signin(msg.data.as_deref()) {
        Ok(s) => s,
        Err(e) => return error(shard, st, key, Some(codes::UNAUTHORIZED), &e.to_string()),
    };
    let Some(conn) = st.conns.get(key) else {
        return;
    };
    let app = conn.app;
    let cfg = shard.shared.app(app);
    let to_sign = auth::user_string(&conn.socket_id, &s.user_data);
    if !auth::check_client_auth(&cfg.key, &cfg.secret, &to_sign, &s.auth) {
        return sig_error(shard, st, key, Some(codes::UNAUTHORIZED), &to_sign, &s.auth);
    }
    let data = match message::user_data(
        &s.user_data,
        cfg.max_user_id_length,
        cfg.max_presence_user_info,
    ) {
        Ok(d) => d,
        Err(e) => {
            return error(
                shard,
                st,
                key,
                Some(codes::UNAUTHORIZED),
                &format!("Invalid user_data: {e}"),
            )
        }
    };
    if let Some(existing) = &conn.user {
        if *existing.id != *data.member.key {
            return error(
                shard,
                st,
                key,
                Some(codes::UNAUTHORIZED),
                "Connection is already signed in as a different user",
            );
        }
        return shard.send_to(st, key, signin_success(&s.user_data));
    }
    let id: Arc<str> = data.member.key.as_str().into();
    let mut watchlist: Vec<Arc<str>> = Vec::new();
    let over = data.watchlist.len() > MAX_WATCHLIST;
    if cfg.watchlist_events {
        watchlist = data
            .watchlist
            .iter()
            .take(MAX_WATCHLIST)
            .map(|w| Arc::from(w.as_str()))
            .collect();
    }
    let Some(conn) = st.conns.get_mut(key) else {
        return;
    };
    conn.auth_deadline = None;
    conn.user = Some(Box::new(SignedIn {
        id: id.clone(),
        member: Arc::new(data.member),
        watchlist: watchlist.clone(),
    }));
    st.users[app.0 as usize]
        .entry(id.clone())
        .or_default()
        .push(key);
    shard.send_to(st, key, signin_success(&s.user_data));
    if cfg.watchlist_events {
        if over {
            error(
                shard,
                st,
                key,
                Some(codes::WATCHLIST_LIMIT),
                &format!(
                    "Watchlist limit exceeded: only the first {MAX_WATCHLIST} user ids are watched"
                ),
            );
        }
        shard.to_home(
            app,
            &id,
            Delta::SignedIn {
                app,
                user: id.clone(),
            },
        );
        watch(shard, app, key, &watchlist, true);
    }
}

fn signin_success(user_data: &str) -> bytes::Bytes {
    let inner = format!("{{\"user_data\":{}}}", encode::quoted(user_data));
    encode::event_with_string_data("pusher:signin_success", None, &inner)
}

fn client_event(shard: &Shard, st: &mut State, key: ConnKey, msg: &ClientMessage<'_>) {
    let now = shard.now_ms();
    let Some(conn) = st.conns.get_mut(key) else {
        return;
    };
    let app = conn.app;
    let cfg = shard.shared.app(app);
    if !cfg.client_events {
        return error(
            shard,
            st,
            key,
            None,
            "To send client events, you must enable this feature for the app",
        );
    }
    let Some(channel) = msg.channel.as_deref() else {
        return error(shard, st, key, None, "Client events need a channel");
    };
    let Some(sub) = conn
        .subs
        .iter()
        .find(|s| &*s.channel == channel && s.state == SubState::Active)
    else {
        let m = format!(
            "Cannot broadcast client event (connection not subscribed to channel {channel})"
        );
        return error(shard, st, key, None, &m);
    };
    if !sub.ty.allows_client_events() {
        return error(
            shard,
            st,
            key,
            None,
            "Client events are only allowed on private and presence channels",
        );
    }
    if !conn.rate.admit(now, cfg.client_event_rate) {
        return error(
            shard,
            st,
            key,
            Some(codes::CLIENT_EVENT_REJECTED),
            "Client event rejected due to rate limit",
        );
    }
    let data = msg.data.as_deref().unwrap_or("null");
    if data.len() > cfg.max_event_data || msg.event.len() > MAX_EVENT_NAME {
        return error(
            shard,
            st,
            key,
            Some(codes::CLIENT_EVENT_REJECTED),
            "Client event rejected: event name or data too large",
        );
    }
    let user_id = match (&sub.member, sub.ty.kind) {
        (Some(m), ChannelKind::Presence) => Some(m.raw_id.clone()),
        _ => None,
    };
    let channel = sub.channel.clone();
    let json = encode::event_json(&msg.event, Some(&channel), Some(data), user_id.as_deref());
    let frame = crate::ws::codec::text(json.as_bytes());
    ShardMetrics::add(&shard.metrics().client_events, 1);
    let hook_user = sub
        .member
        .as_ref()
        .filter(|_| sub.ty.kind == ChannelKind::Presence)
        .map(|m| m.key.clone());
    let hook = HookKind::ClientEvent {
        event: msg.event.to_string(),
        data: data.to_string(),
        socket_id: conn.socket_id.to_string(),
        user_id: hook_user,
    };
    shard.hook(app, &channel, hook);
    shard.publish(Publication {
        app,
        channel,
        frame,
        except: Some(conn.socket_id.shared()),
        cache_data: None,
        essential: false,
    });
}

/// Handles the home shard's answer to a presence join made from this shard.
pub fn presence_joined(
    shard: &Shard,
    st: &mut State,
    key: ConnKey,
    app: AppIdx,
    channel: &Arc<str>,
    member: &Arc<Member>,
    result: Result<bytes::Bytes, String>,
) {
    let pending = st.conns.get_mut(key).and_then(|c| {
        c.subs.iter_mut().find(|s| {
            *s.channel == **channel
                && s.state == SubState::Pending
                && s.member.as_ref().is_some_and(|m| Arc::ptr_eq(m, member))
        })
    });
    let Some(sub) = pending else {
        // The connection left or unsubscribed while the join was in flight: undo it.
        if result.is_ok() {
            shard.to_home(
                app,
                channel,
                Delta::Leave {
                    app,
                    channel: channel.clone(),
                    user_key: member.key.as_str().into(),
                },
            );
        }
        return;
    };
    match result {
        Ok(frame) => {
            sub.state = SubState::Active;
            sub.slot = index_add(&mut st.index[app.0 as usize], channel, key);
            let ty = sub.ty;
            shard.send_to(st, key, frame);
            after_join(shard, st, key, app, channel, ty);
        }
        Err(msg) => {
            if let Some(c) = st.conns.get_mut(key) {
                c.subs
                    .retain(|s| !(*s.channel == **channel && s.state == SubState::Pending));
            }
            error(shard, st, key, None, &msg);
        }
    }
}
