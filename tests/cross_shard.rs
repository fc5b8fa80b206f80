//! Cross-shard behaviour: one publish reaches subscribers on every shard, counts
//! are aggregated across shards, and per-subscriber order is preserved.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn one_publish_reaches_subscribers_on_all_shards() {
    let server = Server::start();
    let api = server.api();
    let mut spread = server.connect_spread(3).await;
    for shard in spread.iter_mut() {
        for c in shard.iter_mut() {
            c.subscribe("everywhere").await;
        }
    }
    api.trigger("everywhere", "hello", "{\"to\":\"all\"}").await;
    for (i, shard) in spread.iter_mut().enumerate() {
        for c in shard.iter_mut() {
            assert_eq!(c.shard, i);
            assert_eq!(
                c.recv().await,
                channel_event("everywhere", "hello", "{\"to\":\"all\"}")
            );
        }
    }
    for shard in spread.iter_mut() {
        for c in shard.iter_mut() {
            c.assert_alive().await;
        }
    }
}

#[tokio::test]
async fn publish_reaches_channel_occupied_only_on_other_shard() {
    // Whichever shard takes the HTTP request, a channel whose only subscriber lives
    // on one shard must still be reached. Several HTTP connections make it likely
    // that both shards act as the publisher.
    let server = Server::start();
    let api = server.api();
    let mut s0 = server.connect_on_shard(0).await;
    let mut s1 = server.connect_on_shard(1).await;
    s0.subscribe("only-zero").await;
    s1.subscribe("only-one").await;
    for i in 0..10 {
        let d = i.to_string();
        api.trigger("only-zero", "z", &d).await;
        api.trigger("only-one", "o", &d).await;
        assert_eq!(s0.recv().await, channel_event("only-zero", "z", &d));
        assert_eq!(s1.recv().await, channel_event("only-one", "o", &d));
    }
}

#[tokio::test]
async fn subscription_count_is_aggregated_across_shards() {
    let server = Server::start_with(Config::with_app(
        App::default().with("subscription_count", true),
    ));
    let api = server.api();
    let mut spread = server.connect_spread(2).await;
    for shard in spread.iter_mut() {
        for c in shard.iter_mut() {
            c.send_subscribe("agg", Some(""), None).await;
            c.wait_event("pusher_internal:subscription_succeeded").await;
        }
    }
    let v = poll_until(
        || api.channel_info("agg", "subscription_count"),
        |v| v["subscription_count"] == json!(4),
    )
    .await;
    assert_eq!(v, json!({"occupied":true,"subscription_count":4}));
    // Drop one subscriber from each shard.
    let gone0 = spread[0].pop().unwrap();
    gone0.close().await;
    let mut stay1 = spread[1].pop().unwrap();
    stay1.unsubscribe("agg").await;
    let v = poll_until(
        || api.channel_info("agg", "subscription_count"),
        |v| v["subscription_count"] == json!(2),
    )
    .await;
    assert_eq!(v, json!({"occupied":true,"subscription_count":2}));
    // The listing agrees, and empties when the last ones leave.
    let r = api
        .get("/channels", &[("info", "subscription_count")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["channels"]["agg"]["subscription_count"],
        json!(2),
        "{}",
        r.text()
    );
    for shard in spread.iter_mut() {
        for c in shard.iter_mut() {
            c.unsubscribe("agg").await;
        }
    }
    let v = poll_until(
        || api.channel_info("agg", ""),
        |v| *v == json!({"occupied":false}),
    )
    .await;
    assert_eq!(v, json!({"occupied":false}));
}

#[tokio::test]
async fn per_subscriber_order_of_200_publishes_is_preserved() {
    let server = Server::start();
    let api = server.api();
    let mut spread = server.connect_spread(2).await;
    for shard in spread.iter_mut() {
        for c in shard.iter_mut() {
            c.subscribe("ordered").await;
        }
    }
    // 200 quick publishes over one keep-alive connection, each acknowledged before the next.
    let mut conn = HttpConn::connect(server.addr).await;
    for i in 0..200 {
        let body = json!({"name":"seq","channel":"ordered","data":i.to_string()}).to_string();
        let target = api.signed_target(
            "POST",
            &api.path("/events"),
            &[],
            body.as_bytes(),
            &SignOpts::default(),
        );
        let r = conn.request("POST", &target, body.as_bytes()).await;
        assert_eq!(r.status, 200, "publish {i}: {}", r.text());
    }
    for shard in spread.iter_mut() {
        for c in shard.iter_mut() {
            for i in 0..200 {
                let ev = c.recv().await;
                assert_eq!(
                    ev,
                    channel_event("ordered", "seq", &i.to_string()),
                    "socket {} shard {}",
                    c.socket_id,
                    c.shard
                );
            }
        }
    }
}

#[tokio::test]
async fn order_is_preserved_with_publishers_on_parallel_connections() {
    // Two publishers on separate HTTP connections: each publisher's own sequence
    // must arrive in order at every subscriber.
    let server = Server::start();
    let api = server.api();
    let mut spread = server.connect_spread(1).await;
    for shard in spread.iter_mut() {
        shard[0].subscribe("two-pubs").await;
    }
    let mut tasks = Vec::new();
    for p in 0..2 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(api.addr).await;
            for i in 0..50 {
                let body =
                    json!({"name":format!("p{p}"),"channel":"two-pubs","data":i.to_string()})
                        .to_string();
                let target = api.signed_target(
                    "POST",
                    &api.path("/events"),
                    &[],
                    body.as_bytes(),
                    &SignOpts::default(),
                );
                let r = conn.request("POST", &target, body.as_bytes()).await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    for shard in spread.iter_mut() {
        let c = &mut shard[0];
        let mut next = [0u32; 2];
        for _ in 0..100 {
            let ev = c.recv().await;
            let p: usize = if ev["event"] == "p0" { 0 } else { 1 };
            assert_eq!(
                ev["data"],
                json!(next[p].to_string()),
                "publisher {p} order at shard {}",
                c.shard
            );
            next[p] += 1;
        }
        assert_eq!(next, [50, 50]);
    }
}

#[tokio::test]
async fn multi_channel_trigger_across_shards_delivers_once_per_subscription() {
    let server = Server::start();
    let api = server.api();
    let mut a = server.connect_on_shard(0).await;
    let mut b = server.connect_on_shard(1).await;
    a.subscribe("mc-1").await;
    a.subscribe("mc-2").await;
    b.subscribe("mc-2").await;
    let r = api
        .events(&json!({"name":"mc","channels":["mc-1","mc-2"],"data":"d"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut got: Vec<String> = vec![a.recv().await, a.recv().await]
        .into_iter()
        .map(|e| e["channel"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, vec!["mc-1", "mc-2"]);
    assert_eq!(b.recv().await, channel_event("mc-2", "mc", "d"));
    a.assert_alive().await;
    b.assert_alive().await;
}

/// Subscribers leave in a scrambled order (by unsubscribe and by disconnect, some presence
/// members among them): every publish after that reaches exactly the ones still there.
#[tokio::test]
async fn leaving_in_any_order_keeps_the_channel_index_exact() {
    let server = Server::start();
    let app = server.app();
    let ch = uniq("churn");
    let pch = format!("presence-{}", uniq("churn"));
    let mut clients = Vec::new();
    for i in 0..30 {
        let mut c = server.connect().await;
        c.subscribe(&ch).await;
        c.subscribe_presence(&app, &pch, json!(format!("u{i}")), json!({}))
            .await;
        clients.push(Some(c));
    }
    let mut seen: Vec<Vec<serde_json::Value>> = vec![Vec::new(); clients.len()];
    let api = server.api();
    // A fixed scramble of 20 of the 30: even steps unsubscribe, odd steps disconnect.
    let leaving: Vec<usize> = (0..20).map(|i| (i * 7 + 3) % 30).collect();
    for (n, &i) in leaving.iter().enumerate() {
        if n % 2 == 0 {
            let c = clients[i].as_mut().expect("client");
            c.unsubscribe(&ch).await;
            c.unsubscribe(&pch).await;
            // The pong comes after the server handled both unsubscribes.
            seen[i].extend(c.ping_sync().await);
        } else {
            clients[i] = None;
            // Its departure reaches the other members once the server saw the close.
            let j = (0..clients.len())
                .find(|j| !leaving.contains(j))
                .expect("a staying client");
            let c = clients[j].as_mut().expect("client");
            loop {
                let ev = c.recv().await;
                seen[j].push(ev.clone());
                let gone = ev["event"] == "pusher_internal:member_removed"
                    && ev["data"]
                        .as_str()
                        .is_some_and(|d| d.contains(&format!("\"u{i}\"")));
                if gone {
                    break;
                }
            }
        }
        // Publish after every departure so a stale slot would show up at once.
        api.trigger(&ch, "tick", &n.to_string()).await;
        api.trigger(&pch, "ptick", &n.to_string()).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let Some(c) = c else { continue };
        if let Some(pos) = leaving.iter().position(|&l| l == i) {
            // Unsubscribed at step `pos`: it may hold publishes from before, never after.
            seen[i].extend(c.ping_sync().await);
            for ev in &seen[i] {
                if ev["event"] == "tick" || ev["event"] == "ptick" {
                    let k: usize = ev["data"].as_str().expect("data").parse().expect("n");
                    assert!(k < pos, "client {i} left at step {pos} but got publish {k}");
                }
            }
        } else {
            // Still subscribed: every publish of both channels, each channel in order.
            let (mut ticks, mut pticks) = (0, 0);
            let mut earlier = std::mem::take(&mut seen[i]).into_iter();
            while ticks < leaving.len() || pticks < leaving.len() {
                let ev = match earlier.next() {
                    Some(ev) => ev,
                    None => c.recv().await,
                };
                let want = match ev["event"].as_str() {
                    Some("tick") => &mut ticks,
                    Some("ptick") => &mut pticks,
                    _ => continue,
                };
                assert_eq!(ev["data"], json!(want.to_string()), "client {i}: {ev}");
                *want += 1;
            }
        }
    }
}
