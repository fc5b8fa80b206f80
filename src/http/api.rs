//! The Pusher HTTP API (`/apps/{id}/...`), health and metrics. Requests are verified before any
//! state changes; publishes go through the bus like every other publication.

use std::borrow::Cow;
use std::fmt::Write;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_channel::oneshot;
use serde::Deserialize;
use sonic_rs::{JsonValueTrait, LazyValue};

use super::request::Request;
use super::response::Response;
use crate::auth;
use crate::bus::{BusMsg, Publication, Query};
use crate::channels::home::ChannelFacts;
use crate::ids::{home_of, AppIdx, ShardId};
use crate::metrics::{self, Series};
use crate::protocol::channel::{self, ChannelKind, SERVER_TO_USER_PREFIX};
use crate::protocol::{encode, json};
use crate::shard::Shard;

/// Most channels in one trigger.
pub const MAX_CHANNELS_PER_TRIGGER: usize = 100;
/// Most events in one batch.
pub const MAX_BATCH: usize = 10;
/// Longest event name.
pub const MAX_EVENT_NAME: usize = 200;

/// Routes one request.
pub async fn handle(shard: &Rc<Shard>, req: &Request) -> Response {
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("GET", "/up") | ("GET", "/") | ("GET", "/ready") => {
            if shard.shared.shutting_down.load(Ordering::Relaxed) {
                Response::error(503, "shutting down")
            } else {
                Response::json(200, "{\"status\":\"ok\"}")
            }
        }
        ("GET", "/metrics") => metrics_page(shard),
        _ if path.starts_with("/apps/") => api(shard, req).await,
        ("POST", _) if path.starts_with("/users/") => unprefixed_terminate(shard, req).await,
        _ => Response::error(404, "Not found"),
    }
}

fn metrics_page(shard: &Shard) -> Response {
    let bus = &shard.shared.bus;
    let dropped: u64 = (0..bus.shards())
        .map(|i| bus.dropped(ShardId(i as u16)))
        .sum();
    let backlog: usize = (0..bus.shards())
        .map(|i| bus.backlog(ShardId(i as u16)))
        .sum();
    let extra = [
        Series::counter(
            "ringpush_bus_dropped_total",
            "Publications dropped because a shard inbox was full",
            dropped,
        ),
        Series::gauge(
            "ringpush_bus_backlog",
            "Messages waiting in shard inboxes",
            backlog as u64,
        ),
        Series::gauge("ringpush_shards", "Number of shards", bus.shards() as u64),
        Series::gauge(
            "ringpush_io_uring",
            "1 when shards run on io_uring, 0 on the epoll fallback",
            shard.shared.uring as u64,
        ),
    ];
    let mut extra = extra.to_vec();
    if let Some(w) = &shard.shared.webhooks {
        let s = &w.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        extra.extend([
            Series::counter(
                "ringpush_webhooks_sent_total",
                "Webhook requests answered with 2xx",
                load(&s.sent),
            ),
            Series::counter(
                "ringpush_webhooks_retried_total",
                "Webhook attempts that failed and were retried",
                load(&s.retried),
            ),
            Series::counter(
                "ringpush_webhooks_failed_total",
                "Webhook requests given up after the retry window",
                load(&s.failed),
            ),
            Series::counter(
                "ringpush_webhooks_dropped_total",
                "Webhook events dropped (queue full or shutdown)",
                load(&s.dropped),
            ),
        ]);
    }
    Response::text(
        200,
        "text/plain; version=0.0.4",
        metrics::render(&shard.shared.metrics, &extra),
    )
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn api(shard: &Rc<Shard>, req: &Request) -> Response {
    let segs: Vec<&str> = req.path["/apps/".len()..].split('/').collect();
    let Some(&app) = shard.shared.by_id.get(segs[0]) else {
        return Response::error(404, "Unknown app");
    };
    if let Err(refused) = authorize(shard, app, req) {
        return refused;
    }
    match (req.method.as_str(), &segs[1..]) {
        ("POST", ["events"]) => trigger(shard, app, &req.body).await,
        ("POST", ["batch_events"]) => batch(shard, app, &req.body).await,
        ("GET", ["channels"]) => channels(shard, app, req).await,
        ("GET", ["channels", name]) => channel_info(shard, app, name, req).await,
        ("GET", ["channels", name, "users"]) => users(shard, app, name).await,
        ("POST", ["users", user, "terminate_connections"]) => terminate(shard, app, user),
        ("GET", ["connections"]) => {
            let mut total = 0;
            for i in 0..shard.shared.shards() {
                total += ask(shard, ShardId(i as u16), |reply| Query::Connections {
                    app,
                    reply,
                })
                .await
                .unwrap_or(0);
            }
            Response::json(200, format!("{{\"connections\":{total}}}"))
        }
        _ => Response::error(404, "Not found"),
    }
}

/// Closes every connection signed in as `user`, on every shard.
fn terminate(shard: &Shard, app: AppIdx, user: &str) -> Response {
    let user: Arc<str> = user.into();
    shard.shared.bus.broadcast(|| BusMsg::Terminate {
        app,
        user: user.clone(),
    });
    Response::json(200, "{}")
}

/// pusher-http-python (3.3.x) sends `POST /users/{id}/terminate_connections` without the
/// `/apps/{app_id}` prefix, signed over that path. The app is found by `auth_key`.
async fn unprefixed_terminate(shard: &Rc<Shard>, req: &Request) -> Response {
    let Some(&app) = req
        .param("auth_key")
        .and_then(|k| shard.shared.by_key.get(k))
    else {
        return Response::error(401, "unknown auth_key");
    };
    if let Err(refused) = authorize(shard, app, req) {
        return refused;
    }
    let segs: Vec<&str> = req.path[1..].split('/').collect();
    match segs[..] {
        ["users", user, "terminate_connections"] => terminate(shard, app, user),
        _ => Response::error(404, "Not found"),
    }
}

/// Checks the request's signature for `app` (401) and that the app is enabled (403), before
/// anything else happens.
fn authorize(shard: &Shard, app: AppIdx, req: &Request) -> Result<(), Response> {
    let cfg = shard.shared.app(app);
    auth::verify_api_request(
        &cfg.key,
        &cfg.secret,
        &req.method,
        &req.path,
        &req.query,
        &req.body,
        now_unix(),
    )
    .map_err(|e| Response::error(401, &e.to_string()))?;
    if !cfg.enabled {
        return Err(Response::error(403, "Application disabled"));
    }
    Ok(())
}

async fn ask<T>(
    shard: &Shard,
    to: ShardId,
    make: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    shard.shared.bus.send(to, BusMsg::Query(make(tx)));
    rx.await.ok()
}

async fn facts(shard: &Shard, app: AppIdx, channel: &str) -> ChannelFacts {
    let channel: Arc<str> = channel.into();
    let home = home_of(app, &channel, shard.shared.shards());
    ask(shard, home, |reply| Query::Channel {
        app,
        channel,
        reply,
    })
    .await
    .unwrap_or_default()
}

#[derive(Deserialize)]
struct EventBody<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<LazyValue<'a>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// A validated event, ready to publish.
struct Event {
    name: String,
    data: String,
    channels: Vec<String>,
    socket_id: Option<Arc<str>>,
    info: Info,
}

#[derive(Default, Clone, Copy)]
struct Info {
    user_count: bool,
    subscription_count: bool,
}

fn parse_info(info: Option<&str>) -> Result<Info, Response> {
    let mut out = Info::default();
    for attr in info
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match attr {
            "user_count" => out.user_count = true,
            "subscription_count" => out.subscription_count = true,
            other => {
                return Err(Response::error(
                    400,
                    &format!("Unknown info attribute {other}"),
                ))
            }
        }
    }
    Ok(out)
}

fn is_socket_id(s: &str) -> bool {
    let Some((a, b)) = s.split_once('.') else {
        return false;
    };
    !a.is_empty()
        && !b.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit())
        && b.bytes().all(|c| c.is_ascii_digit())
}

fn validate_event(
    shard: &Shard,
    app: AppIdx,
    body: EventBody<'_>,
    allow_many: bool,
) -> Result<Event, Response> {
    let cfg = shard.shared.app(app);
    let name = body
        .name
        .ok_or_else(|| Response::error(400, "Missing event name"))?;
    if name.is_empty() || name.len() > MAX_EVENT_NAME {
        return Err(Response::error(
            400,
            "Event name must be 1 to 200 characters",
        ));
    }
    if name.starts_with("pusher:") || name.starts_with("pusher_internal:") {
        return Err(Response::error(
            400,
            "Only Pusher can publish events with the prefix pusher:",
        ));
    }
    let data = body
        .data
        .ok_or_else(|| Response::error(400, "Missing event data"))?;
    let size = if data.is_str() {
        data.as_str().map_or(0, str::len)
    } else {
        data.as_raw_str().len()
    };
    if size > cfg.max_event_data {
        return Err(Response::error(
            413,
            &format!("Event data is larger than {} bytes", cfg.max_event_data),
        ));
    }
    let channels = match (body.channel, body.channels) {
        (Some(c), None) => vec![c],
        (None, Some(cs)) if allow_many => cs,
        (Some(_), Some(_)) => {
            return Err(Response::error(
                400,
                "Give either channel or channels, not both",
            ))
        }
        _ => return Err(Response::error(400, "Missing channel")),
    };
    if channels.is_empty() {
        return Err(Response::error(400, "No channels given"));
    }
    if channels.len() > MAX_CHANNELS_PER_TRIGGER {
        return Err(Response::error(
            400,
            &format!("At most {MAX_CHANNELS_PER_TRIGGER} channels per event"),
        ));
    }
    let max_len = shard.shared.config.server.max_channel_name_length;
    let info = parse_info(body.info.as_deref())?;
    for c in &channels {
        let ty = channel::classify(c, max_len)
            .map_err(|e| Response::error(400, &format!("{e}: {c}")))?;
        if channels.len() > 1 && ty.kind == ChannelKind::Encrypted {
            return Err(Response::error(
                400,
                "Cannot trigger to several channels when one is encrypted",
            ));
        }
    }
    // user_count is reported per channel where it applies (presence); a request where it
    // applies to no channel is malformed. A mixed trigger is delivered and answered per channel.
    if info.user_count && !channels.iter().any(|c| is_presence(c)) {
        return Err(Response::error(
            400,
            "user_count is only available for presence channels",
        ));
    }
    let socket_id = match body.socket_id {
        Some(s) if is_socket_id(&s) => Some(Arc::from(s.as_str())),
        Some(_) => return Err(Response::error(400, "Invalid socket_id")),
        None => None,
    };
    Ok(Event {
        name: name.into_owned(),
        data: data.as_raw_str().to_owned(),
        channels,
        socket_id,
        info,
    })
}

fn publish(shard: &Shard, app: AppIdx, ev: &Event) -> bool {
    let mut all = true;
    for c in &ev.channels {
        let json = encode::event_json(&ev.name, Some(c), Some(&ev.data), None);
        let frame = crate::ws::codec::text(json.as_bytes());
        if let Some(user) = c.strip_prefix(SERVER_TO_USER_PREFIX) {
            let user: Arc<str> = user.into();
            all &= shard.shared.bus.broadcast(|| BusMsg::ToUser {
                app,
                user: user.clone(),
                frame: frame.clone(),
                except: ev.socket_id.clone(),
            }) == 0;
            continue;
        }
        let cache_data = channel::type_of(c)
            .cache
            .then(|| Arc::from(ev.data.as_str()));
        all &= shard.publish(Publication {
            app,
            channel: c.as_str().into(),
            frame,
            except: ev.socket_id.clone(),
            cache_data,
            essential: false,
        });
    }
    all
}

async fn info_json(shard: &Shard, app: AppIdx, channel: &str, info: Info) -> String {
    let f = facts(shard, app, channel).await;
    let mut parts = Vec::new();
    if info.user_count && is_presence(channel) {
        parts.push(format!("\"user_count\":{}", f.users));
    }
    if info.subscription_count {
        parts.push(format!("\"subscription_count\":{}", f.subscriptions));
    }
    format!("{{{}}}", parts.join(","))
}

fn is_presence(name: &str) -> bool {
    channel::type_of(name).kind == ChannelKind::Presence
}

const OVERLOADED: &str = "Server overloaded: the event did not reach every shard";

async fn trigger(shard: &Rc<Shard>, app: AppIdx, body: &[u8]) -> Response {
    if !body.trim_ascii_start().starts_with(b"{") {
        return Response::error(400, "Body must be a JSON object");
    }
    let parsed: EventBody<'_> = match json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, &format!("Invalid JSON body: {e}")),
    };
    let ev = match validate_event(shard, app, parsed, true) {
        Ok(ev) => ev,
        Err(r) => return r,
    };
    if !publish(shard, app, &ev) {
        return Response::error(503, OVERLOADED);
    }
    if !ev.info.user_count && !ev.info.subscription_count {
        return Response::json(200, "{}");
    }
    let mut out = String::from("{\"channels\":{");
    let mut seen = std::collections::HashSet::new();
    for c in ev.channels.iter().filter(|c| seen.insert(c.as_str())) {
        if out.len() > 13 {
            out.push(',');
        }
        encode::json_str(&mut out, c);
        out.push(':');
        out.push_str(&info_json(shard, app, c, ev.info).await);
    }
    out.push_str("}}");
    Response::json(200, out)
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Option<Vec<EventBody<'a>>>,
}

async fn batch(shard: &Rc<Shard>, app: AppIdx, body: &[u8]) -> Response {
    if !body.trim_ascii_start().starts_with(b"{") {
        return Response::error(400, "Body must be a JSON object");
    }
    let parsed: BatchBody<'_> = match json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, &format!("Invalid JSON body: {e}")),
    };
    let Some(items) = parsed.batch else {
        return Response::error(400, "Missing batch");
    };
    if items.len() > MAX_BATCH {
        return Response::error(400, &format!("At most {MAX_BATCH} events per batch"));
    }
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        match validate_event(shard, app, item, false) {
            Ok(e) => events.push(e),
            Err(r) => return r,
        }
    }
    let mut all = true;
    for ev in &events {
        all &= publish(shard, app, ev);
    }
    if !all {
        return Response::error(503, OVERLOADED);
    }
    if events
        .iter()
        .all(|e| !e.info.user_count && !e.info.subscription_count)
    {
        return Response::json(200, "{}");
    }
    let mut parts = Vec::new();
    for ev in &events {
        parts.push(info_json(shard, app, &ev.channels[0], ev.info).await);
    }
    Response::json(200, format!("{{\"batch\":[{}]}}", parts.join(",")))
}

async fn channels(shard: &Rc<Shard>, app: AppIdx, req: &Request) -> Response {
    let prefix = req.param("filter_by_prefix").unwrap_or("").to_string();
    let info = match parse_info(req.param("info")) {
        Ok(i) => i,
        Err(r) => return r,
    };
    if info.user_count && !prefix.starts_with("presence-") {
        return Response::error(400, "user_count requires filter_by_prefix=presence-");
    }
    let mut all = Vec::new();
    for i in 0..shard.shared.shards() {
        let p = prefix.clone();
        if let Some(list) = ask(shard, ShardId(i as u16), |reply| Query::List {
            app,
            prefix: p,
            reply,
        })
        .await
        {
            all.extend(list);
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::from("{\"channels\":{");
    for (i, (name, f)) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        encode::json_str(&mut out, name);
        let mut attrs = Vec::new();
        if info.user_count {
            attrs.push(format!("\"user_count\":{}", f.users));
        }
        if info.subscription_count {
            attrs.push(format!("\"subscription_count\":{}", f.subscriptions));
        }
        let _ = write!(out, ":{{{}}}", attrs.join(","));
    }
    out.push_str("}}");
    Response::json(200, out)
}

async fn channel_info(shard: &Rc<Shard>, app: AppIdx, name: &str, req: &Request) -> Response {
    let ty = match channel::classify(name, shard.shared.config.server.max_channel_name_length) {
        Ok(t) => t,
        Err(e) => return Response::error(400, &format!("{e}: {name}")),
    };
    let mut want_cache = false;
    let mut info = Info::default();
    for attr in req
        .param("info")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match attr {
            "user_count" if ty.kind == ChannelKind::Presence => info.user_count = true,
            "user_count" => {
                return Response::error(400, "user_count is only available for presence channels")
            }
            "subscription_count" => info.subscription_count = true,
            "cache" if ty.cache => want_cache = true,
            "cache" => return Response::error(400, "cache is only available for cache channels"),
            other => return Response::error(400, &format!("Unknown info attribute {other}")),
        }
    }
    let f = facts(shard, app, name).await;
    let mut out = format!("{{\"occupied\":{}", f.subscriptions > 0);
    if info.user_count {
        let _ = write!(out, ",\"user_count\":{}", f.users);
    }
    if info.subscription_count {
        let _ = write!(out, ",\"subscription_count\":{}", f.subscriptions);
    }
    if want_cache {
        let now = shard.now_ms();
        let st = shard.state.borrow();
        match st.cache[app.0 as usize].get(name) {
            Some(e) if e.expires > now => {
                let _ = write!(
                    out,
                    ",\"cache\":{{\"data\":{},\"ttl\":{}}}",
                    e.data,
                    (e.expires - now) / 1000
                );
            }
            _ => out.push_str(",\"cache\":null"),
        }
    }
    out.push('}');
    Response::json(200, out)
}

async fn users(shard: &Rc<Shard>, app: AppIdx, name: &str) -> Response {
    match channel::classify(name, shard.shared.config.server.max_channel_name_length) {
        Ok(t) if t.kind == ChannelKind::Presence => {}
        Ok(_) => return Response::error(400, "Users are only available for presence channels"),
        Err(e) => return Response::error(400, &format!("{e}: {name}")),
    }
    let channel: Arc<str> = name.into();
    let home = home_of(app, name, shard.shared.shards());
    let ids = ask(shard, home, |reply| Query::Users {
        app,
        channel,
        reply,
    })
    .await
    .unwrap_or_default();
    let list: Vec<String> = ids.iter().map(|id| format!("{{\"id\":{id}}}")).collect();
    Response::json(200, format!("{{\"users\":[{}]}}", list.join(",")))
}
