//! Pusher events from clients: ping, subscribe, unsubscribe, sign-in and client events. Auth is
//! checked before any state changes. A handler that refuses a message returns a [`Refusal`];
//! [`on_message`] answers it with `pusher:error`, and the connection stays open.

use std::sync::Arc;

use super::conn::{Conn, SignedIn, Sub, SubState};
use super::refusal::Refusal;
use super::state::{index_add, leave_home, unindex, watch, State};
use super::Shard;
use crate::auth;
use crate::bus::Publication;
use crate::channels::home::Delta;
use crate::config::AppConfig;
use crate::ids::{AppIdx, ConnKey};
use crate::metrics::ShardMetrics;
use crate::protocol::channel::{self, ChannelKind, ChannelType, SERVER_TO_USER_PREFIX};
use crate::protocol::encode;
use crate::protocol::limits::{MAX_EVENT_NAME, MAX_SUBSCRIPTIONS, MAX_WATCHLIST};
use crate::protocol::message::{self, ClientMessage, Member, Subscribe};
use crate::webhooks::HookKind;

/// A client message that was acted on.
#[derive(Debug)]
enum Accepted {
    /// In full.
    Fully,
    /// In part: the rest was refused, and the client is told after the success answer (a
    /// watchlist cut to its first ids follows `pusher:signin_success` with 4302).
    Partly(Refusal),
}

/// Handles one complete text message.
pub fn on_message(shard: &Shard, st: &mut State, key: ConnKey, text: &str) {
    match dispatch(shard, st, key, text) {
        Ok(Accepted::Fully) => {}
        Ok(Accepted::Partly(refusal)) | Err(refusal) => refuse(shard, st, key, &refusal),
    }
}

/// Answers a refusal with its `pusher:error`.
fn refuse(shard: &Shard, st: &mut State, key: ConnKey, refusal: &Refusal) {
    shard.send_to(st, key, refusal.frame());
}

/// Charges the message a token, reads its envelope and hands it to its event's handler.
fn dispatch(shard: &Shard, st: &mut State, key: ConnKey, text: &str) -> Result<Accepted, Refusal> {
    take_token(shard, st, key)?;
    let msg = message::parse(text).map_err(Refusal::BadMessage)?;
    match msg.event.as_ref() {
        "pusher:ping" => shard.send_to(st, key, encode::pong()),
        "pusher:pong" => {}
        "pusher:subscribe" => subscribe(shard, st, key, &msg)?,
        "pusher:unsubscribe" => unsubscribe(shard, st, key, &msg)?,
        "pusher:signin" => return signin(shard, st, key, &msg),
        e if e.starts_with("client-") => client_event(shard, st, key, &msg)?,
        e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => {
            tracing::debug!(event = e, "unknown pusher event from client");
            return Err(Refusal::UnsupportedEvent(e.to_string()));
        }
        _ => return Err(Refusal::NotClientEvent),
    }
    Ok(Accepted::Fully)
}

/// Every message costs a token; tokens refill at `max_messages_per_second` up to
/// `max_message_burst`. This bounds what one connection can push onto the bus (subscribe and
/// unsubscribe churn, client events) whatever it sends.
fn take_token(shard: &Shard, st: &mut State, key: ConnKey) -> Result<(), Refusal> {
    let cfg = &shard.shared.config.server;
    let now = shard.now_ms();
    let (rate, burst) = (cfg.max_messages_per_second, cfg.max_message_burst);
    let taken = st
        .conns
        .get_mut(key)
        .is_some_and(|c| c.tokens.take(now, rate, burst));
    if taken {
        Ok(())
    } else {
        Err(Refusal::TooManyMessages)
    }
}

/// `pusher:subscribe`: checks the channel and the connection's right to it, then joins at once
/// or, for presence, through the channel's home shard.
fn subscribe(
    shard: &Shard,
    st: &mut State,
    key: ConnKey,
    msg: &ClientMessage<'_>,
) -> Result<(), Refusal> {
    let sub = message::subscribe(msg.data.as_deref()).map_err(Refusal::BadMessage)?;
    let max_len = shard.shared.config.server.max_channel_name_length;
    let ty = channel::classify(&sub.channel, max_len).map_err(|error| Refusal::BadChannelName {
        channel: sub.channel.clone(),
        error,
    })?;
    let Some(conn) = st.conns.get(key) else {
        return Ok(());
    };
    let app = conn.app;
    let member = admit(shard.shared.app(app), conn, &sub, ty)?;
    let channel = st.intern(app, &sub.channel);
    let Some(conn) = st.conns.get_mut(key) else {
        return Ok(());
    };
    if ty.needs_auth() {
        conn.auth_deadline = None;
    }
    match member {
        Some(member) => join_presence(shard, conn, key, app, channel, ty, member),
        None => join_now(shard, st, key, app, channel, ty),
    }
    Ok(())
}

/// Whether `conn` may join `sub.channel`: not joined yet, under the subscription limit, and
/// entitled to the channel's kind. For presence, returns the member to join as.
fn admit(
    cfg: &AppConfig,
    conn: &Conn,
    sub: &Subscribe,
    ty: ChannelType,
) -> Result<Option<Arc<Member>>, Refusal> {
    if conn.sub(&sub.channel).is_some() {
        return Err(Refusal::AlreadySubscribed(sub.channel.clone()));
    }
    if conn.subs.len() >= MAX_SUBSCRIPTIONS {
        return Err(Refusal::TooManySubscriptions);
    }
    let auth = sub.auth.as_deref().unwrap_or("");
    match ty.kind {
        ChannelKind::Public => Ok(None),
        ChannelKind::ServerToUser => {
            let wanted = &sub.channel[SERVER_TO_USER_PREFIX.len()..];
            if conn.user.as_ref().map(|u| &*u.id) != Some(wanted) {
                return Err(Refusal::NotThatUser);
            }
            Ok(None)
        }
        ChannelKind::Private | ChannelKind::Encrypted => {
            authorize_subscription(cfg, conn, &sub.channel, None, auth)?;
            Ok(None)
        }
        ChannelKind::Presence => presence_member(cfg, conn, sub, auth).map(Some),
    }
}

/// The member a presence subscription joins as: the signed `channel_data`, or, for a
/// signed-in connection that sends none, the sign-in's user (the signature then covers
/// `socket_id:channel` only).
fn presence_member(
    cfg: &AppConfig,
    conn: &Conn,
    sub: &Subscribe,
    auth: &str,
) -> Result<Arc<Member>, Refusal> {
    let Some(data) = &sub.channel_data else {
        let user = conn.user.as_ref().ok_or(Refusal::NoChannelData)?;
        authorize_subscription(cfg, conn, &sub.channel, None, auth)?;
        return Ok(user.member.clone());
    };
    authorize_subscription(cfg, conn, &sub.channel, Some(data), auth)?;
    let max_id = cfg.max_user_id_length;
    let member = message::presence_member(data, max_id, cfg.max_presence_user_info)
        .map_err(Refusal::BadChannelData)?;
    Ok(Arc::new(member))
}

/// Checks a subscription's `auth` against the app's signature of
/// `socket_id:channel[:channel_data]`, in constant time.
fn authorize_subscription(
    cfg: &AppConfig,
    conn: &Conn,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> Result<(), Refusal> {
    let to_sign = auth::channel_string(&conn.socket_id, channel, channel_data);
    if auth::check_client_auth(&cfg.key, &cfg.secret, &to_sign, auth) {
        return Ok(());
    }
    Err(Refusal::BadChannelSignature {
        to_sign,
        got: auth.to_string(),
    })
}

/// A presence subscription waits, pending, for the home shard to add the member; the answer
/// arrives in [`presence_joined`].
fn join_presence(
    shard: &Shard,
    conn: &mut Conn,
    key: ConnKey,
    app: AppIdx,
    channel: Arc<str>,
    ty: ChannelType,
    member: Arc<Member>,
) {
    conn.subs.push(Sub {
        channel: channel.clone(),
        ty,
        state: SubState::Pending,
        member: Some(member.clone()),
        slot: 0,
    });
    let delta = Delta::Join {
        app,
        channel: channel.clone(),
        member,
        conn: shard.conn_ref(key),
        socket_id: conn.socket_id.shared(),
    };
    shard.to_home(app, &channel, delta);
}

/// Any other subscription is active at once: indexed, answered, and counted at the home shard
/// (a user's own `#server-to-user-` channel is not counted).
fn join_now(
    shard: &Shard,
    st: &mut State,
    key: ConnKey,
    app: AppIdx,
    channel: Arc<str>,
    ty: ChannelType,
) {
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
        let delta = Delta::Subscribed {
            app,
            channel: channel.clone(),
        };
        shard.to_home(app, &channel, delta);
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

/// `pusher:unsubscribe`: leaves the channel; a channel not joined gets no answer.
fn unsubscribe(
    shard: &Shard,
    st: &mut State,
    key: ConnKey,
    msg: &ClientMessage<'_>,
) -> Result<(), Refusal> {
    let sub = message::subscribe(msg.data.as_deref()).map_err(|_| Refusal::BadUnsubscribe)?;
    let Some(conn) = st.conns.get_mut(key) else {
        return Ok(());
    };
    let app = conn.app;
    let Some(pos) = conn.subs.iter().position(|s| *s.channel == *sub.channel) else {
        return Ok(()); // no reply for unsubscribing from a channel not joined
    };
    let removed = conn.subs.swap_remove(pos);
    if removed.state == SubState::Active {
        unindex(st, app, &removed.channel, key, removed.slot);
        if removed.ty.kind != ChannelKind::ServerToUser {
            leave_home(shard, app, &removed);
        }
    }
    Ok(())
}

/// `pusher:signin`: checks the signature and the user data, records the user, answers
/// `pusher:signin_success` and, with watchlist events on, registers the user and their watchlist
/// at the home shards. A watchlist over [`MAX_WATCHLIST`] is cut to its first ids, and the
/// sign-in is accepted only [`Accepted::Partly`].
fn signin(
    shard: &Shard,
    st: &mut State,
    key: ConnKey,
    msg: &ClientMessage<'_>,
) -> Result<Accepted, Refusal> {
    let s = message::signin(msg.data.as_deref()).map_err(Refusal::BadSignin)?;
    let Some(conn) = st.conns.get(key) else {
        return Ok(Accepted::Fully);
    };
    let app = conn.app;
    let cfg = shard.shared.app(app);
    let to_sign = auth::user_string(&conn.socket_id, &s.user_data);
    if !auth::check_client_auth(&cfg.key, &cfg.secret, &to_sign, &s.auth) {
        return Err(Refusal::BadUserSignature {
            to_sign,
            got: s.auth,
        });
    }
    let max_id = cfg.max_user_id_length;
    let data = message::user_data(&s.user_data, max_id, cfg.max_presence_user_info)
        .map_err(Refusal::BadUserData)?;
    if let Some(existing) = &conn.user {
        if *existing.id != *data.member.key {
            return Err(Refusal::SignedInAsOther);
        }
        shard.send_to(st, key, signin_success(&s.user_data));
        return Ok(Accepted::Fully);
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
        return Ok(Accepted::Fully);
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
    if !cfg.watchlist_events {
        return Ok(Accepted::Fully);
    }
    // These go to home shards over the bus and queue nothing on this connection, so the 4302
    // that the caller sends still comes right after signin_success.
    let delta = Delta::SignedIn {
        app,
        user: id.clone(),
    };
    shard.to_home(app, &id, delta);
    watch(shard, app, key, &watchlist, true);
    Ok(if over {
        Accepted::Partly(Refusal::WatchlistTruncated)
    } else {
        Accepted::Fully
    })
}

fn signin_success(user_data: &str) -> bytes::Bytes {
    let inner = format!("{{\"user_data\":{}}}", encode::quoted(user_data));
    encode::event_with_string_data("pusher:signin_success", None, &inner)
}

/// A `client-` event: allowed for the app, on an active private or presence subscription,
/// within the rate and size limits; then published to the channel's other subscribers on every
/// shard, with the sender's user id on presence channels.
fn client_event(
    shard: &Shard,
    st: &mut State,
    key: ConnKey,
    msg: &ClientMessage<'_>,
) -> Result<(), Refusal> {
    let now = shard.now_ms();
    let Some(conn) = st.conns.get_mut(key) else {
        return Ok(());
    };
    let app = conn.app;
    let cfg = shard.shared.app(app);
    if !cfg.client_events {
        return Err(Refusal::ClientEventsDisabled);
    }
    let channel = msg.channel.as_deref().ok_or(Refusal::NoChannel)?;
    let Some(sub) = conn
        .subs
        .iter()
        .find(|s| &*s.channel == channel && s.state == SubState::Active)
    else {
        return Err(Refusal::NotSubscribed(channel.to_string()));
    };
    if !sub.ty.allows_client_events() {
        return Err(Refusal::ClientEventsForbidden);
    }
    if !conn.rate.admit(now, cfg.client_event_rate) {
        return Err(Refusal::ClientEventRateLimit);
    }
    let data = msg.data.as_deref().unwrap_or("null");
    if data.len() > cfg.max_event_data || msg.event.len() > MAX_EVENT_NAME {
        return Err(Refusal::ClientEventTooLarge);
    }
    let presence_member = sub
        .member
        .as_ref()
        .filter(|_| sub.ty.kind == ChannelKind::Presence);
    let user_id = presence_member.map(|m| m.raw_id.clone());
    let channel = sub.channel.clone();
    let json = encode::event_json(&msg.event, Some(&channel), Some(data), user_id.as_deref());
    let frame = crate::ws::codec::text(json.as_bytes());
    ShardMetrics::add(&shard.metrics().client_events, 1);
    let hook = HookKind::ClientEvent {
        event: msg.event.to_string(),
        data: data.to_string(),
        socket_id: conn.socket_id.to_string(),
        user_id: presence_member.map(|m| m.key.clone()),
    };
    shard.hook(app, &channel, hook);
    shard.publish_everywhere(Publication {
        app,
        channel,
        frame,
        except: Some(conn.socket_id.shared()),
        cache_data: None,
        cache_stamp: 0,
        essential: false,
    });
    Ok(())
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
            refuse(shard, st, key, &Refusal::PresenceJoinRefused(msg));
        }
    }
}
