//! Webhooks: event shapes, signing headers, delay/suppression of channel_vacated,
//! presence and client-event hooks, filters, custom headers and retries.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One webhook POST as received.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    headers: Vec<(String, String)>,
    raw: Vec<u8>,
    body: Value,
}

impl Hook {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A local webhook receiver; answers 500 to the first `fail_first` requests.
struct Receiver {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Hook>,
    /// Events not yet consumed, flattened from received bodies.
    pending: Vec<(Hook, Value)>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let served = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let head_end = loop {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break p;
                            }
                            let mut tmp = [0u8; 8192];
                            match sock.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        buf.drain(..head_end + 4);
                        let mut lines = head.split("\r\n");
                        let request_line = lines.next().unwrap_or("").to_string();
                        let headers: Vec<(String, String)> = lines
                            .filter_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                            })
                            .collect();
                        let len: usize = headers
                            .iter()
                            .find(|(k, _)| k == "content-length")
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        while buf.len() < len {
                            let mut tmp = [0u8; 8192];
                            match sock.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        }
                        let raw: Vec<u8> = buf.drain(..len).collect();
                        let n = served.fetch_add(1, Ordering::SeqCst);
                        let status = if n < fail_first {
                            "500 Internal Server Error"
                        } else {
                            "200 OK"
                        };
                        let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\n{{}}");
                        let _ = sock.write_all(resp.as_bytes()).await;
                        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                        let _ = tx.send(Hook {
                            path,
                            headers,
                            raw,
                            body,
                        });
                    }
                });
            }
        });
        Receiver {
            addr,
            rx,
            pending: Vec::new(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Next raw webhook request within `limit`.
    async fn next_hook(&mut self, limit: Duration) -> Option<Hook> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for an event matching `pred`, returning it with its request.
    /// Other events are kept for later calls.
    async fn wait_for(&mut self, limit: Duration, pred: impl Fn(&Value) -> bool) -> (Hook, Value) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.pending.iter().position(|(_, e)| pred(e)) {
                return self.pending.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let hook = self.next_hook(left).await.unwrap_or_else(|| {
                panic!("no matching webhook; unmatched so far: {:?}", self.events())
            });
            let events = hook.body["events"].as_array().cloned().unwrap_or_default();
            for e in events {
                self.pending.push((hook.clone(), e));
            }
        }
    }

    /// Waits for the event `{"name":name,"channel":channel,...}`.
    async fn wait_event(&mut self, name: &str, channel: &str) -> (Hook, Value) {
        self.wait_for(Duration::from_secs(8), |e| {
            e["name"] == name && e["channel"] == channel
        })
        .await
    }

    /// Collects everything that arrives within `window` (for negative checks).
    async fn collect(&mut self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        while let Some(hook) = self
            .next_hook(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            for e in hook.body["events"].as_array().cloned().unwrap_or_default() {
                self.pending.push((hook.clone(), e));
            }
        }
        self.events()
    }

    fn events(&self) -> Vec<Value> {
        self.pending.iter().map(|(_, e)| e.clone()).collect()
    }
}

fn hooked_app(url: &str, extra_hook_lines: &str) -> App {
    App::default().with("webhook_delay", 1).webhook(&format!(
        "url = {}\n{extra_hook_lines}",
        serde_json::to_string(url).unwrap()
    ))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn check_signed(hook: &Hook, app: &App) {
    assert_eq!(hook.path, "/hook");
    assert_eq!(
        hook.header("content-type"),
        Some("application/json"),
        "exact content type"
    );
    assert_eq!(hook.header("x-pusher-key"), Some(app.key.as_str()));
    let raw = String::from_utf8(hook.raw.clone()).expect("utf-8 body");
    assert_eq!(
        hook.header("x-pusher-signature"),
        Some(hmac_hex(&app.secret, &raw).as_str()),
        "signature over the raw body"
    );
    let t = hook.body["time_ms"].as_i64().expect("time_ms integer");
    assert!((now_ms() - t).abs() < 10_000, "time_ms {t} is current");
}

#[tokio::test]
async fn channel_occupied_and_vacated_are_signed() {
    let mut recv = Receiver::start(0).await;
    let app = hooked_app(&recv.url(), "");
    let server = Server::start_with(Config::with_app(app.clone()));
    let mut c = server.connect().await;
    c.subscribe("hooked").await;
    let (hook, ev) = recv.wait_event("channel_occupied", "hooked").await;
    assert_eq!(ev, json!({"name":"channel_occupied","channel":"hooked"}));
    assert_eq!(
        hook.body["events"].as_array().unwrap().len(),
        1,
        "unbatched: one event per body"
    );
    check_signed(&hook, &app);
    c.unsubscribe("hooked").await;
    let (hook, ev) = recv.wait_event("channel_vacated", "hooked").await;
    assert_eq!(ev, json!({"name":"channel_vacated","channel":"hooked"}));
    check_signed(&hook, &app);
}

#[tokio::test]
async fn occupied_once_for_subscribers_on_both_shards() {
    let mut recv = Receiver::start(0).await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    a.subscribe("two-shards").await;
    recv.wait_event("channel_occupied", "two-shards").await;
    b.subscribe("two-shards").await;
    a.unsubscribe("two-shards").await;
    a.assert_alive().await;
    b.unsubscribe("two-shards").await;
    recv.wait_event("channel_vacated", "two-shards").await;
    let rest = recv.collect(Duration::from_millis(1500)).await;
    assert!(
        !rest.iter().any(|e| e["channel"] == "two-shards"),
        "exactly one occupied and one vacated: extra {rest:?}"
    );
}

#[tokio::test]
async fn quick_return_suppresses_vacated() {
    let mut recv = Receiver::start(0).await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let mut c = server.connect().await;
    c.subscribe("flappy").await;
    recv.wait_event("channel_occupied", "flappy").await;
    c.unsubscribe("flappy").await;
    c.subscribe("flappy").await;
    // webhook_delay is 1 s: nothing about "flappy" may arrive in the next 2.5 s.
    let evs = recv.collect(Duration::from_millis(2500)).await;
    assert!(
        !evs.iter()
            .any(|e| e["channel"] == "flappy" && e["name"] == "channel_vacated"),
        "vacated must be suppressed by a quick return: {evs:?}"
    );
    c.unsubscribe("flappy").await;
    recv.wait_event("channel_vacated", "flappy").await;
}

#[tokio::test]
async fn member_added_and_removed_hooks() {
    let mut recv = Receiver::start(0).await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let app = server.app();
    let mut a = server.connect_on_shard(0).await;
    let mut a2 = server.connect_on_shard(1).await;
    a.subscribe_presence(&app, "presence-hooks", json!("u1"), json!({}))
        .await;
    let (_, ev) = recv.wait_event("member_added", "presence-hooks").await;
    assert_eq!(
        ev,
        json!({"name":"member_added","channel":"presence-hooks","user_id":"u1"})
    );
    a2.subscribe_presence(&app, "presence-hooks", json!("u1"), json!({}))
        .await;
    a.unsubscribe("presence-hooks").await;
    a.assert_alive().await;
    a2.unsubscribe("presence-hooks").await;
    let (_, ev) = recv.wait_event("member_removed", "presence-hooks").await;
    assert_eq!(
        ev,
        json!({"name":"member_removed","channel":"presence-hooks","user_id":"u1"})
    );
    let rest = recv.collect(Duration::from_millis(1500)).await;
    let members: Vec<&Value> = rest
        .iter()
        .filter(|e| e["name"] == "member_added" || e["name"] == "member_removed")
        .collect();
    assert!(
        members.is_empty(),
        "a second tab adds no member hooks: {members:?}"
    );
}

#[tokio::test]
async fn client_event_hook_has_socket_id_and_presence_user_id() {
    let mut recv = Receiver::start(0).await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let app = server.app();
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe_private(&app, "private-ce").await;
    b.subscribe_private(&app, "private-ce").await;
    a.client_event("private-ce", "client-ping", json!({"x":1}))
        .await;
    b.expect_event("client-ping").await;
    let (_, ev) = recv.wait_event("client_event", "private-ce").await;
    assert_eq!(ev["event"], "client-ping", "{ev}");
    assert_eq!(ev["socket_id"], json!(a.socket_id), "{ev}");
    assert!(
        ev.get("user_id").is_none(),
        "no user_id on private channels: {ev}"
    );
    let d = &ev["data"];
    assert!(
        *d == json!({"x":1}) || *d == json!(json!({"x":1}).to_string()),
        "{ev}"
    );

    a.subscribe_presence(&app, "presence-ce", json!("pa"), json!({}))
        .await;
    b.subscribe_presence(&app, "presence-ce", json!("pb"), json!({}))
        .await;
    a.expect_event("pusher_internal:member_added").await;
    b.client_event("presence-ce", "client-hey", json!("s"))
        .await;
    a.expect_event("client-hey").await;
    let (_, ev) = recv.wait_event("client_event", "presence-ce").await;
    assert_eq!(ev["socket_id"], json!(b.socket_id), "{ev}");
    assert_eq!(id_str(&ev["user_id"]), "pb", "{ev}");
}

#[tokio::test]
async fn cache_miss_hook() {
    let mut recv = Receiver::start(0).await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let mut c = server.connect().await;
    c.subscribe("cache-hooked").await;
    c.expect_event("pusher:cache_miss").await;
    let (_, ev) = recv.wait_event("cache_miss", "cache-hooked").await;
    assert_eq!(ev, json!({"name":"cache_miss","channel":"cache-hooked"}));
}

#[tokio::test]
async fn filters_event_types_and_custom_headers() {
    let mut recv = Receiver::start(0).await;
    let lines = "event_types = [\"channel_occupied\"]\nfilter = { prefix = \"presence-\", suffix = \"\" }\nheaders = { \"X-Extra\" = \"1\" }";
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), lines)));
    let app = server.app();
    let mut c = server.connect().await;
    // Neither of these matches the prefix filter.
    c.subscribe("plain-filtered").await;
    c.subscribe_private(&app, "private-filtered").await;
    // This one matches; its member_added is not in event_types.
    c.subscribe_presence(&app, "presence-filtered", json!("f"), json!({}))
        .await;
    let (hook, ev) = recv
        .wait_event("channel_occupied", "presence-filtered")
        .await;
    assert_eq!(hook.header("x-extra"), Some("1"), "custom header");
    assert_eq!(
        ev,
        json!({"name":"channel_occupied","channel":"presence-filtered"})
    );
    c.unsubscribe("presence-filtered").await;
    let rest = recv.collect(Duration::from_millis(2500)).await;
    assert!(rest.is_empty(), "filtered out: {rest:?}");
}

#[tokio::test]
async fn failed_delivery_is_retried() {
    let mut recv = Receiver::start(1).await;
    let server = Server::start_with(Config::with_app(hooked_app(&recv.url(), "")));
    let mut c = server.connect().await;
    c.subscribe("retry-me").await;
    let first = recv
        .next_hook(Duration::from_secs(8))
        .await
        .expect("first attempt");
    let second = recv
        .next_hook(Duration::from_secs(20))
        .await
        .expect("a retry after the 500");
    assert_eq!(
        first.body["events"], second.body["events"],
        "the same events are resent"
    );
    assert_eq!(first.body["events"][0]["name"], "channel_occupied");
}

#[tokio::test]
async fn batched_webhooks_carry_all_events() {
    let mut recv = Receiver::start(0).await;
    let app = hooked_app(&recv.url(), "").with("batch_webhooks", true);
    let server = Server::start_with(Config::with_app(app.clone()));
    let mut c = server.connect().await;
    for i in 0..5 {
        c.subscribe(&format!("batch-{i}")).await;
    }
    for i in 0..5 {
        let (hook, _) = recv
            .wait_event("channel_occupied", &format!("batch-{i}"))
            .await;
        check_signed(&hook, &app);
    }
}

#[tokio::test]
async fn a_dead_endpoint_does_not_starve_other_webhooks_of_slots() {
    // Two delivery slots in all; app "dead" has an endpoint that always answers 500.
    let mut dead = Receiver::start(usize::MAX).await;
    let mut good = Receiver::start(0).await;
    let dead_app = App::new("dead-id", "dead-key", "dead-secret").webhook(&format!(
        "url = {}",
        serde_json::to_string(&dead.url()).unwrap()
    ));
    let good_app = hooked_app(&good.url(), "");
    let config = Config {
        apps: vec![dead_app, good_app.clone()],
        ..Config::default()
    }
    .with("webhook_concurrency", 2);
    let server = Server::start_with(config);
    // Four occupied events for the dead endpoint: each is retried with backoff for minutes.
    let mut c = server.connect_path("/app/dead-key?protocol=7").await;
    for i in 0..4 {
        c.subscribe(&format!("doomed-{i}")).await;
    }
    for _ in 0..4 {
        dead.next_hook(WAIT)
            .await
            .expect("first attempts reach the dead endpoint");
    }
    // Another app's event still goes out promptly: the retrying ones hold no slot while they
    // wait out their backoff.
    let mut g = server
        .connect_path(&format!("/app/{}?protocol=7", good_app.key))
        .await;
    g.subscribe("lively").await;
    let (hook, ev) = good.wait_event("channel_occupied", "lively").await;
    assert_eq!(ev["channel"], "lively");
    check_signed(&hook, &good_app);
}

#[tokio::test]
async fn subscription_count_hooks_follow_every_change_down_to_zero() {
    let mut recv = Receiver::start(0).await;
    let app = hooked_app(&recv.url(), "event_types = [\"subscription_count\"]")
        .with("subscription_count", true);
    let server = Server::start_with(Config::with_app(app));
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    a.subscribe("counted").await;
    b.subscribe("counted").await;
    a.unsubscribe("counted").await;
    a.ping_sync().await;
    b.unsubscribe("counted").await;
    b.ping_sync().await;
    // Requests are concurrent, so they may arrive in any order: compare as a multiset.
    let mut counts = Vec::new();
    while counts.len() < 4 {
        let (_, ev) = recv
            .wait_for(Duration::from_secs(8), |e| {
                e["name"] == "subscription_count"
            })
            .await;
        assert_eq!(ev["channel"], "counted", "{ev}");
        counts.push(ev["subscription_count"].as_u64().expect("count"));
    }
    counts.sort_unstable();
    assert_eq!(counts, vec![0, 1, 1, 2]);
}
