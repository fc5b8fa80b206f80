//! Three ringpush nodes (two shards each) sharing a Redis of the test's own behave as one
//! Pusher server: publishes, presence, counts and queries cross nodes; a killed node's members
//! are removed within `node_timeout` + 2 s, a cleanly stopped node's at once; a broker outage
//! leaves every node serving its own clients, and the cluster state is rebuilt when it returns.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Seconds of silence before a node is dropped, in these tests.
const NODE_TIMEOUT: u64 = 2;

/// One cluster at a time: each test runs up to three nodes and a Redis, and ten of them at
/// once on a small machine could starve heartbeats past the short timeout used here.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn node_config(redis: &Redis, prefix: &str) -> Config {
    Config::with_app(
        App::default()
            .with("client_events", true)
            .with("subscription_count", true),
    )
    .clustered(redis.port, prefix, NODE_TIMEOUT)
}

/// Starts `n` nodes and waits until each has heard all the others.
async fn cluster(redis: &Redis, n: usize) -> Vec<Server> {
    let app = App::default()
        .with("client_events", true)
        .with("subscription_count", true);
    cluster_of(redis, n, &app).await
}

/// Starts `n` nodes serving `app` and waits until each has heard all the others.
async fn cluster_of(redis: &Redis, n: usize, app: &App) -> Vec<Server> {
    let prefix = uniq("rp");
    let nodes: Vec<Server> = (0..n)
        .map(|_| {
            let config = Config::with_app(app.clone());
            Server::start_with(config.clustered(redis.port, &prefix, NODE_TIMEOUT))
        })
        .collect();
    for node in &nodes {
        wait_peers(node, n as u64 - 1).await;
    }
    nodes
}

/// The `ringpush_cluster_peers` gauge of a node.
async fn peers(node: &Server) -> u64 {
    let mut conn = HttpConn::connect(node.addr).await;
    let r = conn.request("GET", "/metrics", b"").await;
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("ringpush_cluster_peers "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_peers(node: &Server, want: u64) {
    let got = poll_until(|| peers(node), |&p| p == want).await;
    assert_eq!(got, want, "peers of {}", node.addr);
}

/// The ids `GET /channels/{c}/users` lists on `node`.
async fn users_on(node: &Server, channel: &str) -> Vec<String> {
    let r = node
        .api()
        .get(&format!("/channels/{channel}/users"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ids: Vec<String> = r.json()["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| id_str(&u["id"]))
        .collect();
    ids.sort();
    ids
}

/// Waits until `node` lists exactly `want` on `channel`.
async fn wait_users(node: &Server, channel: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let got = poll_until(|| users_on(node, channel), |ids| *ids == want).await;
    assert_eq!(got, want, "users of {channel} on {}", node.addr);
}

#[tokio::test]
async fn events_from_any_node_reach_subscribers_on_every_node_in_order() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let nodes = cluster(&redis, 3).await;
    let mut subs = Vec::new();
    for node in &nodes {
        for shard in node.connect_spread(1).await {
            for mut c in shard {
                c.subscribe("news").await;
                subs.push(c);
            }
        }
    }
    // Wait until every node counts all six subscribers (the replicas are in place).
    for node in &nodes {
        let n = poll_until(
            || async { node.api().channel_info("news", "subscription_count").await },
            |v| v["subscription_count"] == 6,
        )
        .await;
        assert_eq!(n["subscription_count"], 6, "on {}", node.addr);
    }
    for (i, node) in nodes.iter().enumerate() {
        for k in 0..5 {
            node.api().trigger("news", "e", &format!("{i}-{k}")).await;
        }
    }
    for c in subs.iter_mut() {
        let mut got: Vec<Vec<String>> = vec![Vec::new(); 3];
        for _ in 0..15 {
            let ev = c.wait_event("e").await;
            let data = ev["data"].as_str().expect("string data").to_string();
            let from: usize = data[..1].parse().unwrap();
            got[from].push(data);
        }
        for (i, list) in got.iter().enumerate() {
            let want: Vec<String> = (0..5).map(|k| format!("{i}-{k}")).collect();
            assert_eq!(list, &want, "events from node {i} in order");
        }
    }
}

#[tokio::test]
async fn presence_is_one_member_list_across_nodes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let nodes = cluster(&redis, 3).await;
    let app = nodes[0].app();
    let ch = "presence-room";
    let mut observer = nodes[0].connect().await;
    observer
        .subscribe_presence(&app, ch, json!("watcher"), json!({}))
        .await;
    wait_users(&nodes[1], ch, &["watcher"]).await;
    // u1's first connection, on node 1: announced once.
    let mut a = nodes[1].connect().await;
    let p = a
        .subscribe_presence(&app, ch, json!("u1"), json!({"n": 1}))
        .await;
    assert_eq!(
        p["count"], 2,
        "succeeded lists members from every node: {p}"
    );
    let added = observer.wait_event("pusher_internal:member_added").await;
    assert_eq!(data_of(&added)["user_id"], "u1");
    // A second connection of u1, on node 2: no new member anywhere.
    let mut b = nodes[2].connect().await;
    b.subscribe_presence(&app, ch, json!("u1"), json!({"n": 1}))
        .await;
    for node in &nodes {
        wait_users(node, ch, &["u1", "watcher"]).await;
    }
    // The first connection goes: u1 is still there through node 2.
    a.close().await;
    let info = poll_until(
        || async {
            nodes[0]
                .api()
                .channel_info(ch, "user_count,subscription_count")
                .await
        },
        |v| v["subscription_count"] == 2,
    )
    .await;
    assert_eq!(info["user_count"], 2, "{info}");
    // The last one goes: member_removed once.
    b.close().await;
    let removed = observer.wait_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed)["user_id"], "u1");
    observer.assert_alive().await;
    for node in &nodes {
        wait_users(node, ch, &["watcher"]).await;
    }
}

#[tokio::test]
async fn client_events_server_to_user_and_terminate_cross_nodes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let app = nodes[0].app();
    let mut a = nodes[0].connect().await;
    let mut b = nodes[1].connect().await;
    a.subscribe_private(&app, "private-chat").await;
    b.subscribe_private(&app, "private-chat").await;
    poll_until(
        || async {
            nodes[0]
                .api()
                .channel_info("private-chat", "subscription_count")
                .await
        },
        |v| v["subscription_count"] == 2,
    )
    .await;
    a.client_event("private-chat", "client-hi", json!({"x": 1}))
        .await;
    let ev = b.wait_event("client-hi").await;
    assert_eq!(ev["data"], json!({"x": 1}));
    // Never echoed to the sender (the pong comes after anything queued before it).
    let before_pong = a.ping_sync().await;
    assert!(
        before_pong.iter().all(|e| e["event"] != "client-hi"),
        "{before_pong:?}"
    );
    // #server-to-user- and terminate_connections reach the user wherever they are.
    b.signin(&app, r#"{"id":"bob"}"#).await;
    let api = nodes[0].api();
    api.trigger("#server-to-user-bob", "hello", "hi bob").await;
    assert_eq!(b.wait_event("hello").await["data"], "hi bob");
    let r = api
        .post("/users/bob/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.status, 200);
    b.expect_error_and_close(4009).await;
}

#[tokio::test]
async fn a_killed_node_is_dropped_within_the_timeout_and_a_stopped_one_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let mut nodes = cluster(&redis, 3).await;
    let app = nodes[0].app();
    let ch = "presence-crash";
    let mut observer = nodes[0].connect().await;
    observer
        .subscribe_presence(&app, ch, json!("watcher"), json!({}))
        .await;
    let mut victim = nodes[2].connect().await;
    victim
        .subscribe_presence(&app, ch, json!("doomed"), json!({}))
        .await;
    let mut leaver = nodes[1].connect().await;
    leaver
        .subscribe_presence(&app, ch, json!("polite"), json!({}))
        .await;
    for node in &nodes {
        wait_users(node, ch, &["doomed", "polite", "watcher"]).await;
    }
    observer.wait_event("pusher_internal:member_added").await;
    observer.wait_event("pusher_internal:member_added").await;

    // SIGKILL: nothing is announced; silence past node_timeout drops the node's members.
    let killed = Instant::now();
    nodes[2].signal("KILL");
    let removed = observer.wait_event("pusher_internal:member_removed").await;
    let took = killed.elapsed();
    assert_eq!(data_of(&removed)["user_id"], "doomed");
    assert!(
        took < Duration::from_secs(NODE_TIMEOUT + 2),
        "member_removed after {took:?}"
    );
    eprintln!("killed node's member removed after {took:?}");
    wait_users(&nodes[1], ch, &["polite", "watcher"]).await;

    // SIGTERM: the node announces its departure; no waiting for the timeout.
    let stopped = Instant::now();
    nodes[1].signal("TERM");
    let removed = observer.wait_event("pusher_internal:member_removed").await;
    let took = stopped.elapsed();
    assert_eq!(data_of(&removed)["user_id"], "polite");
    assert!(
        took < Duration::from_millis(NODE_TIMEOUT * 1000 / 2),
        "member_removed after a clean stop took {took:?}"
    );
    eprintln!("stopped node's member removed after {took:?}");
    assert!(nodes[1].wait_exit(Duration::from_secs(10)).await.is_some());
    wait_users(&nodes[0], ch, &["watcher"]).await;
}

#[tokio::test]
async fn a_broker_outage_leaves_nodes_serving_and_state_is_rebuilt() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let app = nodes[0].app();
    let ch = "presence-outage";
    let mut a = nodes[0].connect().await;
    a.subscribe_presence(&app, ch, json!("alice"), json!({}))
        .await;
    let mut b = nodes[1].connect().await;
    b.subscribe_presence(&app, ch, json!("bob"), json!({}))
        .await;
    for node in &nodes {
        wait_users(node, ch, &["alice", "bob"]).await;
    }

    redis.stop();
    let down = Instant::now();
    // Past node_timeout each node has dropped the other's members...
    wait_users(&nodes[0], ch, &["alice"]).await;
    wait_users(&nodes[1], ch, &["bob"]).await;
    eprintln!(
        "other node's members dropped {:?} into the outage",
        down.elapsed()
    );
    // ...and keeps serving its own clients: connects, subscribes, presence, local fan-out.
    let mut c = nodes[0].connect().await;
    c.subscribe_presence(&app, ch, json!("carol"), json!({}))
        .await;
    nodes[0].api().trigger(ch, "during", "local").await;
    assert_eq!(a.wait_event("during").await["data"], "local");
    assert_eq!(c.wait_event("during").await["data"], "local");

    redis.restart();
    let back = Instant::now();
    // Back: the nodes find each other again and rebuild; carol joined during the outage.
    for node in &nodes {
        wait_peers(node, 1).await;
        wait_users(node, ch, &["alice", "bob", "carol"]).await;
    }
    eprintln!("state rebuilt {:?} after Redis came back", back.elapsed());
    nodes[1].api().trigger(ch, "after", "crossed").await;
    assert_eq!(a.wait_event("after").await["data"], "crossed");
    assert_eq!(b.wait_event("after").await["data"], "crossed");
}

#[tokio::test]
async fn a_late_joiner_gets_the_cluster_state() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let prefix = uniq("rp");
    let first = Server::start_with(node_config(&redis, &prefix));
    let app = first.app();
    let mut a = first.connect().await;
    a.subscribe_presence(&app, "presence-late", json!(7), json!({"n": "seven"}))
        .await;
    a.subscribe("counted").await;
    let late = Server::start_with(node_config(&redis, &prefix));
    // Not ready until it holds the other nodes' state; from then on it answers for them.
    let ready = poll_until(
        || async {
            let mut conn = HttpConn::connect(late.addr).await;
            conn.request("GET", "/ready", b"").await.status
        },
        |&s| s == 200,
    )
    .await;
    assert_eq!(ready, 200);
    assert_eq!(users_on(&late, "presence-late").await, ["7"]);
    let info = late
        .api()
        .channel_info("counted", "subscription_count")
        .await;
    assert_eq!(info["subscription_count"], 1, "{info}");
    assert_eq!(info["occupied"], true, "{info}");
    // And its own subscriber sees the member list with the id's JSON type kept.
    let mut b = late.connect().await;
    let p = b
        .subscribe_presence(&app, "presence-late", json!("x"), json!({}))
        .await;
    assert_eq!(p["hash"]["7"], json!({"n": "seven"}), "{p}");
    assert!(p["ids"].as_array().unwrap().contains(&json!(7)), "{p}");
}

#[tokio::test]
async fn webhooks_fire_once_per_cluster() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let mut recv = WebhookReceiver::start().await;
    let app = App::default().with("webhook_delay", 0).webhook(&format!(
        "url = {}",
        serde_json::to_string(&recv.url()).unwrap()
    ));
    let nodes = cluster_of(&redis, 3, &app).await;
    // Subscribers of one presence channel on every node, several with the same user.
    let ch = "presence-hooks";
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.connect().await;
        let user = if i == 2 { "u0" } else { "u1" };
        c.subscribe_presence(&app, ch, json!(user), json!({})).await;
        clients.push(c);
    }
    for node in &nodes {
        wait_users(node, ch, &["u0", "u1"]).await;
    }
    for c in clients {
        c.close().await;
    }
    for node in &nodes {
        wait_users(node, ch, &[]).await;
    }
    // Every transition is in; webhook requests are concurrent and unordered, so collect for a
    // while (a duplicate from a second node would come within the same broker hop).
    let events = recv.collect(Duration::from_millis(1500)).await;
    let mut names: Vec<String> = events
        .iter()
        .filter(|e| e["channel"] == ch)
        .map(|e| {
            let user = e["user_id"].as_str().unwrap_or("");
            format!("{} {user}", e["name"].as_str().unwrap())
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "channel_occupied ",
            "channel_vacated ",
            "member_added u0",
            "member_added u1",
            "member_removed u0",
            "member_removed u1"
        ],
        "{events:?}"
    );
}

#[tokio::test]
async fn cache_channels_and_watchlists_span_nodes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let app = App::default().with("watchlist_events", true);
    let nodes = cluster_of(&redis, 2, &app).await;
    // An event published through node 0 is the cache for a subscriber on node 1.
    let mut first = nodes[0].connect().await;
    first.subscribe("cache-prices").await;
    first.expect_event("pusher:cache_miss").await;
    nodes[0].api().trigger("cache-prices", "price", "42").await;
    assert_eq!(first.wait_event("price").await["data"], "42");
    // The publication reaches node 1 a broker hop later: poll with fresh subscribers.
    let got = poll_until(
        || async {
            let mut c = nodes[1].connect().await;
            c.subscribe("cache-prices").await;
            c.next_frame(WAIT).await
        },
        |f| matches!(f, Some(Frame::Event(e)) if e["event"] == "price"),
    )
    .await;
    match got {
        Some(Frame::Event(e)) => assert_eq!(e["data"], "42", "{e}"),
        other => panic!("no cached event on node 1: {other:?}"),
    }
    // A watcher on node 1 sees a user sign in and out on node 0.
    let mut watcher = nodes[1].connect().await;
    watcher
        .signin(&app, r#"{"id":"w","watchlist":["star"]}"#)
        .await;
    let ev = watcher.wait_event("pusher_internal:watchlist_events").await;
    assert_eq!(data_of(&ev)["events"][0]["name"], "offline", "{ev}");
    let mut star = nodes[0].connect().await;
    star.signin(&app, r#"{"id":"star"}"#).await;
    let ev = watcher.wait_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data_of(&ev)["events"],
        json!([{"name":"online","user_ids":["star"]}])
    );
    star.close().await;
    let ev = watcher.wait_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data_of(&ev)["events"],
        json!([{"name":"offline","user_ids":["star"]}])
    );
}

#[tokio::test]
async fn the_connection_quota_counts_every_node() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let app = App::default().with("max_connections", 2);
    let nodes = cluster_of(&redis, 2, &app).await;
    let _a = nodes[0].connect().await;
    let _b = nodes[1].connect().await;
    // Each node learns the other's count from its next heartbeat.
    for node in &nodes {
        let n = poll_until(
            || async { node.api().get("/connections", &[]).await.json() },
            |v: &Value| v["connections"] == 2,
        )
        .await;
        assert_eq!(n["connections"], 2, "on {}", node.addr);
    }
    let path = format!("/app/{}?protocol=7", app.key);
    expect_rejected(&nodes[0], &path, 4004).await;
    expect_rejected(&nodes[1], &path, 4004).await;
}

#[tokio::test]
async fn the_later_of_two_cache_events_through_different_nodes_stays_cached() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    for round in 0..10 {
        let ch = format!("cache-race-{round}");
        // One event through each node, the second sent after the first was answered; they
        // may reach a node in either order.
        nodes[0].api().trigger(&ch, "v", "first").await;
        nodes[1].api().trigger(&ch, "v", "second").await;
        for node in &nodes {
            let got = poll_until(
                || async {
                    let mut c = node.connect().await;
                    c.subscribe(&ch).await;
                    c.next_frame(WAIT).await
                },
                |f| matches!(f, Some(Frame::Event(e)) if e["data"] == "second"),
            )
            .await;
            assert!(
                matches!(&got, Some(Frame::Event(e)) if e["data"] == "second"),
                "round {round} on {}: {got:?}",
                node.addr
            );
        }
    }
}
