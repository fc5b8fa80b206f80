//! The Pusher HTTP API (`/apps/{id}/...`), health and metrics. Requests are verified before any
//! state changes; everything else is asked of the [`Service`].

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sonic_rs::{JsonValueTrait, LazyValue};

use super::request::Request;
use super::response::Response;
use super::service::{Health, Service};
use crate::auth;
use crate::channels::home::ChannelFacts;
use crate::ids::{AppIdx, SocketId};
use crate::protocol::channel::{self, ChannelKind, ChannelType, SERVER_TO_USER_PREFIX};
use crate::protocol::limits::{MAX_BATCH, MAX_CHANNELS_PER_TRIGGER, MAX_EVENT_NAME};
use crate::protocol::{encode, json};

/// Routes one request.
pub async fn handle(svc: &impl Service, req: &Request) -> Response {
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("GET", "/up") | ("GET", "/") | ("GET", "/ready") => health(svc, path),
        ("GET", "/metrics") if svc.server().metrics_port == 0 => health(svc, path),
        _ if path.starts_with("/apps/") => api(svc, req).await,
        ("POST", _) if path.starts_with("/users/") => unprefixed_terminate(svc, req).await,
        _ => Response::error(404, "Not found"),
    }
}

/// `/up` (alive), `/ready` (alive, not draining, and holding the cluster's state) and
/// `/metrics`; on the main port and on the metrics listener alike.
pub fn health(h: &impl Health, path: &str) -> Response {
    match path {
        "/metrics" => Response::text(200, "text/plain; version=0.0.4", h.metrics_text()),
        _ if h.shutting_down() => Response::error(503, "shutting down"),
        "/ready" if !h.synced() => Response::error(
            503,
            "joining the cluster: waiting for the other nodes' state",
        ),
        "/up" | "/" | "/ready" => Response::json(200, "{\"status\":\"ok\"}"),
        _ => Response::error(404, "Not found"),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn api(svc: &impl Service, req: &Request) -> Response {
    let segs: Vec<&str> = req.path["/apps/".len()..].split('/').collect();
    let Some(app) = svc.app_by_id(segs[0]) else {
        return Response::error(404, "Unknown app");
    };
    if let Err(refused) = authorize(svc, app, req) {
        return refused;
    }
    let result = match (req.method.as_str(), &segs[1..]) {
        ("POST", ["events"]) => trigger(svc, app, &req.body).await,
        ("POST", ["batch_events"]) => batch(svc, app, &req.body).await,
        ("GET", ["channels"]) => channels(svc, app, req).await,
        ("GET", ["channels", name]) => channel_info(svc, app, name, req).await,
        ("GET", ["channels", name, "users"]) => users(svc, app, name).await,
        ("POST", ["users", user, "terminate_connections"]) => Ok(terminate(svc, app, user)),
        ("GET", ["connections"]) => {
            let connections = svc.connection_count(app).await;
            Ok(to_json(&ConnectionsOut { connections }))
        }
        _ => Err(Response::error(404, "Not found")),
    };
    result.unwrap_or_else(|refused| refused)
}

/// Closes every connection signed in as `user`, on every shard.
fn terminate(svc: &impl Service, app: AppIdx, user: &str) -> Response {
    svc.terminate_user(app, user);
    Response::json(200, "{}")
}

/// pusher-http-python (3.3.x) sends `POST /users/{id}/terminate_connections` without the
/// `/apps/{app_id}` prefix, signed over that path. The app is found by `auth_key`.
async fn unprefixed_terminate(svc: &impl Service, req: &Request) -> Response {
    let Some(app) = req.param("auth_key").and_then(|k| svc.app_by_key(k)) else {
        return Response::error(401, "unknown auth_key");
    };
    if let Err(refused) = authorize(svc, app, req) {
        return refused;
    }
    let segs: Vec<&str> = req.path[1..].split('/').collect();
    match segs[..] {
        ["users", user, "terminate_connections"] => terminate(svc, app, user),
        _ => Response::error(404, "Not found"),
    }
}

/// Checks the request's signature for `app` (401) and that the app is enabled (403), before
/// anything else happens.
fn authorize(svc: &impl Service, app: AppIdx, req: &Request) -> Result<(), Response> {
    let cfg = svc.app(app);
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

fn to_json(v: &impl Serialize) -> Response {
    match sonic_rs::to_string(v) {
        Ok(body) => Response::json(200, body),
        Err(e) => Response::error(500, &format!("encoding the answer failed: {e}")),
    }
}

/// The `info=` attributes a request asked for.
#[derive(Default, Clone, Copy)]
struct Info {
    user_count: bool,
    subscription_count: bool,
    cache: bool,
}

impl Info {
    /// Parses a comma-separated `info` value; `cache` is only known where `allow_cache` is set.
    fn parse(raw: Option<&str>, allow_cache: bool) -> Result<Info, Response> {
        let mut out = Info::default();
        let attrs = raw.unwrap_or("").split(',').map(str::trim);
        for attr in attrs.filter(|a| !a.is_empty()) {
            match attr {
                "user_count" => out.user_count = true,
                "subscription_count" => out.subscription_count = true,
                "cache" if allow_cache => out.cache = true,
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

    fn any_count(&self) -> bool {
        self.user_count || self.subscription_count
    }
}

/// One channel's answer: the same shape in `GET /channels/{name}`, in `GET /channels` and in
/// a trigger's `info` reply; absent fields are left out.
#[derive(Serialize, Default)]
struct ChannelOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    occupied: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_count: Option<usize>,
    /// `Some(None)` serialises as `"cache":null` (asked for, nothing cached).
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<Option<CacheOut<'a>>>,
}

impl ChannelOut<'_> {
    /// The counts `info` asked for; `user_count` only where `presence`.
    fn counts(f: ChannelFacts, info: Info, presence: bool) -> Self {
        ChannelOut {
            user_count: (info.user_count && presence).then_some(f.users),
            subscription_count: info.subscription_count.then_some(f.subscriptions),
            ..ChannelOut::default()
        }
    }
}

#[derive(Serialize)]
struct CacheOut<'a> {
    data: LazyValue<'a>,
    ttl: u64,
}

#[derive(Serialize)]
struct ChannelsOut<'a> {
    channels: std::collections::BTreeMap<&'a str, ChannelOut<'a>>,
}

#[derive(Serialize)]
struct BatchOut<'a> {
    batch: Vec<ChannelOut<'a>>,
}

#[derive(Serialize)]
struct UsersOut<'a> {
    users: Vec<UserOut<'a>>,
}

#[derive(Serialize)]
struct UserOut<'a> {
    id: LazyValue<'a>,
}

#[derive(Serialize)]
struct ConnectionsOut {
    connections: usize,
}

/// Raw JSON text kept from a validated input, embedded as it is.
fn raw(text: &str) -> LazyValue<'_> {
    json::from_str(text).unwrap_or_default()
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

fn classify(svc: &impl Service, name: &str) -> Result<ChannelType, Response> {
    channel::classify(name, svc.server().max_channel_name_length)
        .map_err(|e| Response::error(400, &format!("{e}: {name}")))
}

/// The size of `data` that `max_event_data` limits. `data` goes into the frame as the JSON
/// text received (see `publish`), so this is that text's length: for a string (what the SDKs
/// send), its JSON-escaped form without the two quotes, so 10,240 plain characters fit a
/// 10 KiB limit and a NUL counts six bytes as the `\u0000` that is delivered; for any other
/// value, its whole JSON text. The delivered `data` is never bigger than the limit plus the
/// quotes.
fn delivered_size(data: &LazyValue<'_>) -> usize {
    let text = data.as_raw_str().trim();
    if data.is_str() {
        text.len().saturating_sub(2)
    } else {
        text.len()
    }
}

fn validate_event(
    svc: &impl Service,
    app: AppIdx,
    body: EventBody<'_>,
    allow_many: bool,
) -> Result<Event, Response> {
    let cfg = svc.app(app);
    let name = body
        .name
        .ok_or_else(|| Response::error(400, "Missing event name"))?;
    if name.is_empty() || name.len() > MAX_EVENT_NAME {
        return Err(Response::error(
            400,
            &format!("Event name must be 1 to {MAX_EVENT_NAME} characters"),
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
    if delivered_size(&data) > cfg.max_event_data {
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
    let info = Info::parse(body.info.as_deref(), false)?;
    let mut any_presence = false;
    for c in &channels {
        let ty = classify(svc, c)?;
        any_presence |= ty.kind == ChannelKind::Presence;
        if channels.len() > 1 && ty.kind == ChannelKind::Encrypted {
            return Err(Response::error(
                400,
                "Cannot trigger to several channels when one is encrypted",
            ));
        }
    }
    // user_count is reported per channel where it applies (presence); a request where it
    // applies to no channel is malformed. A mixed trigger is delivered and answered per channel.
    if info.user_count && !any_presence {
        return Err(Response::error(
            400,
            "user_count is only available for presence channels",
        ));
    }
    let socket_id = match body.socket_id {
        Some(s) if SocketId::parse(&s).is_some() => Some(Arc::from(s.as_str())),
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

/// Publishes `ev` to each of its channels; false when some shard could not take it.
fn publish(svc: &impl Service, app: AppIdx, ev: &Event) -> bool {
    let mut all = true;
    for c in &ev.channels {
        let json = encode::event_json(&ev.name, Some(c), Some(&ev.data), None);
        let frame = crate::ws::codec::text(json.as_bytes());
        let except = ev.socket_id.clone();
        if let Some(user) = c.strip_prefix(SERVER_TO_USER_PREFIX) {
            all &= svc.send_to_user(app, user, frame, except);
            continue;
        }
        let cache_data = channel::type_of(c)
            .cache
            .then(|| Arc::from(ev.data.as_str()));
        all &= svc.publish(app, c, frame, except, cache_data);
    }
    all
}

async fn counts_of<'a>(
    svc: &impl Service,
    app: AppIdx,
    channel: &str,
    info: Info,
) -> ChannelOut<'a> {
    let f = svc.channel_facts(app, channel).await;
    let presence = channel::type_of(channel).kind == ChannelKind::Presence;
    ChannelOut::counts(f, info, presence)
}

const OVERLOADED: &str = "Server overloaded: the event did not reach every shard";

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(Response::error(400, "Body must be a JSON object"));
    }
    json::from_slice(body).map_err(|e| Response::error(400, &format!("Invalid JSON body: {e}")))
}

async fn trigger(svc: &impl Service, app: AppIdx, body: &[u8]) -> Result<Response, Response> {
    let parsed: EventBody<'_> = parse_body(body)?;
    let ev = validate_event(svc, app, parsed, true)?;
    if !publish(svc, app, &ev) {
        return Err(Response::error(503, OVERLOADED));
    }
    if !ev.info.any_count() {
        return Ok(Response::json(200, "{}"));
    }
    let mut channels = std::collections::BTreeMap::new();
    for c in &ev.channels {
        if !channels.contains_key(c.as_str()) {
            channels.insert(c.as_str(), counts_of(svc, app, c, ev.info).await);
        }
    }
    Ok(to_json(&ChannelsOut { channels }))
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Option<Vec<EventBody<'a>>>,
}

async fn batch(svc: &impl Service, app: AppIdx, body: &[u8]) -> Result<Response, Response> {
    let parsed: BatchBody<'_> = parse_body(body)?;
    let items = parsed
        .batch
        .ok_or_else(|| Response::error(400, "Missing batch"))?;
    if items.len() > MAX_BATCH {
        return Err(Response::error(
            400,
            &format!("At most {MAX_BATCH} events per batch"),
        ));
    }
    let events = items
        .into_iter()
        .map(|item| validate_event(svc, app, item, false))
        .collect::<Result<Vec<_>, _>>()?;
    let mut all = true;
    for ev in &events {
        all &= publish(svc, app, ev);
    }
    if !all {
        return Err(Response::error(503, OVERLOADED));
    }
    if !events.iter().any(|e| e.info.any_count()) {
        return Ok(Response::json(200, "{}"));
    }
    let mut batch = Vec::with_capacity(events.len());
    for ev in &events {
        batch.push(counts_of(svc, app, &ev.channels[0], ev.info).await);
    }
    Ok(to_json(&BatchOut { batch }))
}

async fn channels(svc: &impl Service, app: AppIdx, req: &Request) -> Result<Response, Response> {
    let prefix = req.param("filter_by_prefix").unwrap_or("");
    let info = Info::parse(req.param("info"), false)?;
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(Response::error(
            400,
            "user_count requires filter_by_prefix=presence-",
        ));
    }
    let list = svc.channel_list(app, prefix).await;
    let channels = list
        .iter()
        .map(|(name, f)| (&**name, ChannelOut::counts(*f, info, true)))
        .collect();
    Ok(to_json(&ChannelsOut { channels }))
}

async fn channel_info(
    svc: &impl Service,
    app: AppIdx,
    name: &str,
    req: &Request,
) -> Result<Response, Response> {
    let ty = classify(svc, name)?;
    let info = Info::parse(req.param("info"), true)?;
    if info.user_count && ty.kind != ChannelKind::Presence {
        return Err(Response::error(
            400,
            "user_count is only available for presence channels",
        ));
    }
    if info.cache && !ty.cache {
        return Err(Response::error(
            400,
            "cache is only available for cache channels",
        ));
    }
    let f = svc.channel_facts(app, name).await;
    let cached = info.cache.then(|| svc.cached_event(app, name));
    let out = ChannelOut {
        occupied: Some(f.subscriptions > 0),
        cache: cached.as_ref().map(|c| {
            c.as_ref().map(|e| CacheOut {
                data: raw(&e.data),
                ttl: e.ttl_secs,
            })
        }),
        ..ChannelOut::counts(f, info, true)
    };
    Ok(to_json(&out))
}

async fn users(svc: &impl Service, app: AppIdx, name: &str) -> Result<Response, Response> {
    if classify(svc, name)?.kind != ChannelKind::Presence {
        return Err(Response::error(
            400,
            "Users are only available for presence channels",
        ));
    }
    let ids = svc.presence_users(app, name).await;
    let users = ids.iter().map(|id| UserOut { id: raw(id) }).collect();
    Ok(to_json(&UsersOut { users }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_measured_as_delivered() {
        let size = |body: &str| {
            let b: EventBody<'_> = json::from_str(body).unwrap();
            let data = b.data.unwrap();
            assert!(data.as_raw_str().len() >= delivered_size(&data), "{body}");
            delivered_size(&data)
        };
        assert_eq!(size(r#"{"data":"abc"}"#), 3);
        assert_eq!(size(r#"{"data" :  "abc"  ,"name":"x"}"#), 3);
        assert_eq!(size(r#"{"data":""}"#), 0);
        assert_eq!(size(r#"{"data":"\u0000\"\\"}"#), 10);
        assert_eq!(size(r#"{"data":"é"}"#), 2);
        assert_eq!(size(r#"{"data": {"a": [1, 2]} }"#), 13);
        assert_eq!(size(r#"{"data":12}"#), 2);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_a_400_not_a_panic() {
        // Found by fuzz/api_request: sonic-rs panics ("invalid utf-8 in as_str") on raw bytes
        // that are not UTF-8 inside a value kept as a LazyValue, which killed the process.
        for body in [
            &b"{\"name\":\"e\",\"channel\":\"a\",\"data\":{\"\xeb\":[1]}}"[..],
            b"{\"name\":\"e\",\"channel\":\"a\",\"data\":\"\xff\"}",
            b"{\"batch\":[{\"name\":\"\xc3\",\"data\":1}]}",
        ] {
            match parse_body::<EventBody<'_>>(body) {
                Err(r) => assert_eq!(r.status, 400),
                Ok(_) => panic!("accepted {body:?}"),
            }
            assert!(parse_body::<BatchBody<'_>>(body).is_err());
        }
    }

    #[test]
    fn channel_answers_keep_their_shape() {
        let f = ChannelFacts {
            subscriptions: 3,
            users: 2,
        };
        let all = Info {
            user_count: true,
            subscription_count: true,
            cache: false,
        };
        let s = |v: &ChannelOut<'_>| sonic_rs::to_string(v).unwrap();
        assert_eq!(
            s(&ChannelOut::counts(f, all, true)),
            r#"{"user_count":2,"subscription_count":3}"#
        );
        assert_eq!(
            s(&ChannelOut::counts(f, all, false)),
            r#"{"subscription_count":3}"#
        );
        let with_cache = ChannelOut {
            occupied: Some(true),
            cache: Some(Some(CacheOut {
                data: raw(r#""{\"a\":1}""#),
                ttl: 4,
            })),
            ..ChannelOut::default()
        };
        assert_eq!(
            s(&with_cache),
            r#"{"occupied":true,"cache":{"data":"{\"a\":1}","ttl":4}}"#
        );
        let missed = ChannelOut {
            occupied: Some(false),
            cache: Some(None),
            ..ChannelOut::default()
        };
        assert_eq!(s(&missed), r#"{"occupied":false,"cache":null}"#);
        let users = UsersOut {
            users: vec![UserOut { id: raw("1") }, UserOut { id: raw("\"b\"") }],
        };
        assert_eq!(
            sonic_rs::to_string(&users).unwrap(),
            r#"{"users":[{"id":1},{"id":"b"}]}"#
        );
    }

    #[test]
    fn info_attributes() {
        assert!(Info::parse(Some("user_count, subscription_count"), false).is_ok());
        assert!(Info::parse(Some("cache"), false).is_err());
        assert!(Info::parse(Some("cache"), true).unwrap().cache);
        assert!(Info::parse(Some("bogus"), true).is_err());
        assert!(!Info::parse(None, false).unwrap().any_count());
    }
}
