//! The HTTP API: signature checks (`auth::verify_api_request`, fixed key and secret) and the
//! API's query and body parsing (`http::api::handle`, against a fake `Service` that records
//! what it is asked to publish).
//!
//! Input: a raw HTTP request, parsed by the server's own request parser. It is checked as sent,
//! then signed properly (the fuzzer cannot guess HMACs) and handed to the API.
//!
//! Invariants:
//! - nothing panics;
//! - as sent: `verify_api_request` accepts only when key, version, timestamp, `body_md5` and the
//!   HMAC over the canonical string all match;
//! - signed: a properly signed request always passes `verify_api_request`; one changed hex
//!   digit of the signature fails with `Signature`; a changed body fails with `BodyMd5` (or
//!   `MissingBodyMd5` where the request had no body);
//! - the API never answers 401 to a properly signed request for an enabled app, and 403 (not
//!   200) for a disabled one; every status is one the API documents; every answer but
//!   `/metrics` is JSON, and errors are `{"error": "..."}`;
//! - every frame published is one unmasked text frame whose payload is a JSON object with
//!   `event`, `channel` (the channel it went to) and `data`; a 200 trigger publishes at least
//!   once; no request publishes more than a batch of triggers allows.
#![no_main]

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringpush::config::{AppConfig, ServerConfig};
use ringpush::fuzzing::{
    api_string, handle_api, md5_hex, parse_request, sign, verify_api_request, ApiAuthError, AppIdx,
    CachedEvent, ChannelFacts, Health, Parsed, Request, Service, MAX_BATCH,
    MAX_CHANNELS_PER_TRIGGER,
};

const KEY: &str = "fuzz-key";
const SECRET: &str = "fuzz-secret";
const APP_ID: &str = "fuzz-app";
const OFF_KEY: &str = "off-key";
const OFF_ID: &str = "off-app";

struct Fake {
    server: ServerConfig,
    apps: Vec<AppConfig>,
    /// (channel or `#user`, frame)
    published: RefCell<Vec<(String, Bytes)>>,
}

impl Fake {
    fn new() -> Fake {
        let app = |id: &str, key: &str, enabled| AppConfig {
            id: id.into(),
            key: key.into(),
            secret: SECRET.into(),
            enabled,
            max_event_data: 512,
            ..AppConfig::default()
        };
        Fake {
            server: ServerConfig::default(),
            apps: vec![app(APP_ID, KEY, true), app(OFF_ID, OFF_KEY, false)],
            published: RefCell::new(Vec::new()),
        }
    }
}

impl Service for Fake {
    fn server(&self) -> &ServerConfig {
        &self.server
    }
    fn app(&self, app: AppIdx) -> &AppConfig {
        &self.apps[app.0 as usize]
    }
    fn app_by_id(&self, id: &str) -> Option<AppIdx> {
        self.apps
            .iter()
            .position(|a| a.id == id)
            .map(|i| AppIdx(i as u16))
    }
    fn app_by_key(&self, key: &str) -> Option<AppIdx> {
        self.apps
            .iter()
            .position(|a| a.key == key)
            .map(|i| AppIdx(i as u16))
    }
    fn publish(
        &self,
        _app: AppIdx,
        channel: &str,
        frame: Bytes,
        _except: Option<Arc<str>>,
        _cache_data: Option<Arc<str>>,
    ) -> bool {
        self.published
            .borrow_mut()
            .push((channel.to_string(), frame));
        true
    }
    fn send_to_user(
        &self,
        _app: AppIdx,
        user: &str,
        frame: Bytes,
        _except: Option<Arc<str>>,
    ) -> bool {
        let channel = format!("#server-to-user-{user}");
        self.published.borrow_mut().push((channel, frame));
        true
    }
    fn terminate_user(&self, _app: AppIdx, _user: &str) {}
    async fn channel_facts(&self, _app: AppIdx, channel: &str) -> ChannelFacts {
        ChannelFacts {
            subscriptions: channel.len() % 3,
            users: channel.len() % 2,
        }
    }
    async fn channel_list(&self, _app: AppIdx, prefix: &str) -> Vec<(Arc<str>, ChannelFacts)> {
        let facts = ChannelFacts {
            subscriptions: 2,
            users: 1,
        };
        vec![
            (Arc::from(format!("{prefix}a")), facts),
            (Arc::from(format!("{prefix}b\"\\\u{1}")), facts),
        ]
    }
    async fn presence_users(&self, _app: AppIdx, _channel: &str) -> Vec<String> {
        vec!["\"u1\"".into(), "42".into()]
    }
    async fn connection_count(&self, _app: AppIdx) -> usize {
        3
    }
    fn cached_event(&self, _app: AppIdx, channel: &str) -> Option<CachedEvent> {
        (channel.len() % 2 == 0).then(|| CachedEvent {
            data: Arc::from("{\"k\":[1,\"x\"]}"),
            ttl_secs: 30,
        })
    }
}

impl Health for Fake {
    fn shutting_down(&self) -> bool {
        false
    }
    fn synced(&self) -> bool {
        true
    }
    fn metrics_text(&self) -> String {
        String::new()
    }
}

/// The fake service never waits, so one poll finishes the call.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the API waited on a service that never waits"),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// As sent: accepted only when everything matches.
fn check_as_sent(req: &Request) {
    let now = param(&req.query, "auth_timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(0);
    let r = verify_api_request(
        KEY,
        SECRET,
        &req.method,
        &req.path,
        &req.query,
        &req.body,
        now,
    );
    if r.is_ok() {
        let q = &req.query;
        assert_eq!(param(q, "auth_key"), Some(KEY));
        assert_eq!(param(q, "auth_version"), Some("1.0"));
        let expected = sign(SECRET, api_string(&req.method, &req.path, q).as_bytes());
        assert_eq!(param(q, "auth_signature"), Some(expected.as_str()));
        match param(q, "body_md5") {
            Some(m) => assert_eq!(m, md5_hex(&req.body)),
            None => assert!(req.body.is_empty()),
        }
    }
}

/// The query with fresh auth parameters and a correct signature.
fn signed(req: &Request, key: &str, now: i64) -> Vec<(String, String)> {
    let mut q: Vec<(String, String)> = req
        .query
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "auth_key" | "auth_timestamp" | "auth_version" | "auth_signature" | "body_md5"
            )
        })
        .cloned()
        .collect();
    q.push(("auth_key".into(), key.into()));
    q.push(("auth_timestamp".into(), now.to_string()));
    q.push(("auth_version".into(), "1.0".into()));
    if !req.body.is_empty() || param(&req.query, "body_md5").is_some() {
        q.push(("body_md5".into(), md5_hex(&req.body)));
    }
    let sig = sign(SECRET, api_string(&req.method, &req.path, &q).as_bytes());
    q.push(("auth_signature".into(), sig));
    q
}

fn check_signed(req: &Request, q: &[(String, String)], now: i64) {
    let verify = |q: &[(String, String)], body: &[u8]| {
        verify_api_request(KEY, SECRET, &req.method, &req.path, q, body, now)
    };
    assert_eq!(
        verify(q, &req.body),
        Ok(()),
        "a properly signed request refused"
    );
    let mut tampered = q.to_vec();
    let sig = &mut tampered.last_mut().unwrap().1;
    let last = if sig.ends_with('0') { "1" } else { "0" };
    sig.replace_range(sig.len() - 1.., last);
    assert!(matches!(
        verify(&tampered, &req.body),
        Err(ApiAuthError::Signature { .. })
    ));
    let mut body = req.body.clone();
    body.push(b'x');
    let expected = if param(q, "body_md5").is_some() {
        ApiAuthError::BodyMd5
    } else {
        ApiAuthError::MissingBodyMd5
    };
    assert_eq!(verify(q, &body), Err(expected));
}

/// A published frame: one unmasked, final text frame of a JSON event for `channel`.
fn check_frame(channel: &str, frame: &[u8]) {
    assert_eq!(frame[0], 0x81, "not a final text frame");
    let (len, at) = match frame[1] {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    assert!(frame[1] & 0x80 == 0, "server frames are not masked");
    assert_eq!(frame.len(), at + len, "one frame");
    let payload = &frame[at..];
    let text = std::str::from_utf8(payload).expect("UTF-8 payload");
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        // serde_json refuses lone surrogate escapes and huge numbers, which JSON.parse reads.
        Err(e) if text.contains("\\u") || e.to_string().contains("number") => return,
        Err(e) => panic!("published frame is not JSON ({e}): {text}"),
    };
    let obj = v.as_object().expect("an object");
    assert!(obj.get("event").is_some_and(|e| e.is_string()));
    assert_eq!(obj.get("channel").and_then(|c| c.as_str()), Some(channel));
    assert!(obj.contains_key("data"));
}

fn check_response(req: &Request, app_enabled: Option<bool>, status: u16, body: &[u8]) {
    assert!(
        [200, 400, 401, 403, 404, 413, 503].contains(&status),
        "status {status}"
    );
    if req.path == "/metrics" {
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
    if status != 200 {
        assert!(v.get("error").is_some_and(|e| e.is_string()), "error shape");
    }
    match app_enabled {
        Some(true) => assert_ne!(status, 401, "signed request refused: {v}"),
        Some(false) => assert_eq!(status, 403, "disabled app"),
        None => {}
    }
}

fn check_api(req: &Request, key: &str, enabled: bool, now: i64) {
    let mut signed_req = Request {
        method: req.method.clone(),
        path: req.path.clone(),
        query: signed(req, key, now),
        headers: req.headers.clone(),
        body: req.body.clone(),
        keep_alive: req.keep_alive,
        minor_version: req.minor_version,
    };
    let fake = Fake::new();
    let resp = run(handle_api(&fake, &signed_req));
    // The app is known from the path (or from auth_key on the unprefixed terminate path).
    let id = if enabled { APP_ID } else { OFF_ID };
    let addressed = req
        .path
        .strip_prefix("/apps/")
        .is_some_and(|rest| rest.split('/').next() == Some(id))
        || (req.method == "POST" && req.path.starts_with("/users/"));
    check_response(req, addressed.then_some(enabled), resp.status, &resp.body);
    let published = fake.published.borrow();
    if !enabled {
        assert!(published.is_empty(), "a disabled app published");
    }
    assert!(published.len() <= MAX_CHANNELS_PER_TRIGGER.max(MAX_BATCH));
    for (channel, frame) in published.iter() {
        check_frame(channel, frame);
    }
    if resp.status == 200 && req.method == "POST" && req.path.ends_with("/events") {
        assert!(!published.is_empty(), "a 200 trigger published nothing");
    }
    // The request as sent is not refused by a panic either.
    signed_req.query = req.query.clone();
    let _ = run(handle_api(&fake, &signed_req));
}

fuzz_target!(|data: &[u8]| {
    let Parsed::Complete(req, _) = parse_request(data, 1 << 16) else {
        return;
    };
    check_as_sent(&req);
    let now = now_unix();
    // Signed as the app's own key, on a clean query.
    check_signed(&req, &signed(&req, KEY, now), now);
    check_api(&req, KEY, true, now);
    check_api(&req, OFF_KEY, false, now);
});
