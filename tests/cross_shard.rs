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
