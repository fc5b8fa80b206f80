//! HTTP API: request signing checks, POST /events and /batch_events, channel
//! queries, error statuses, keep-alive and the health endpoints.

mod common;

use common::*;
use serde_json::{json, Value};

fn counting_server() -> Server {
    Server::start_with(Config::with_app(
        App::default().with("subscription_count", true),
    ))
}

#[tokio::test]
async fn up_endpoint_is_200() {
    let server = Server::start();
    let mut conn = HttpConn::connect(server.addr).await;
    let r = conn.request("GET", "/up", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status":"ok"}));
}

#[tokio::test]
async fn metrics_endpoint_is_prometheus_text() {
    let server = Server::start();
    let mut conn = HttpConn::connect(server.addr).await;
    let r = conn.request("GET", "/metrics", b"").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("# TYPE ") || l.starts_with("# HELP ")),
        "{text}"
    );
}

#[tokio::test]
async fn valid_signature_is_accepted_with_empty_object_reply() {
    let server = Server::start();
    let r = server
        .api()
        .events(&json!({"name":"e","channel":"c","data":"d"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({}));
}

#[tokio::test]
async fn bad_signature_is_401() {
    let server = Server::start();
    let api = server.api();
    let body = json!({"name":"e","channel":"c","data":"d"}).to_string();
    let opts = SignOpts {
        corrupt_signature: true,
        ..Default::default()
    };
    let r = api
        .request_opts("POST", &api.path("/events"), &[], body.as_bytes(), &opts)
        .await;
    r.assert_error(401);
    // Signed with the wrong secret.
    let wrong = Api {
        addr: server.addr,
        app: App::new("app-id", "app-key", "not-the-secret"),
    };
    let r = wrong.get("/channels", &[]).await;
    r.assert_error(401);
    // Unknown auth_key.
    let opts = SignOpts {
        key: Some("someone-else".into()),
        ..Default::default()
    };
    let r = api
        .request_opts("GET", &api.path("/channels"), &[], b"", &opts)
        .await;
    r.assert_error(401);
}

#[tokio::test]
async fn missing_auth_params_are_401() {
    let server = Server::start();
    let mut conn = HttpConn::connect(server.addr).await;
    let r = conn.request("GET", "/apps/app-id/channels", b"").await;
    r.assert_error(401);
    let r = conn
        .request(
            "GET",
            "/apps/app-id/channels?auth_key=app-key&auth_version=1.0",
            b"",
        )
        .await;
    r.assert_error(401);
}

#[tokio::test]
async fn timestamp_skew_beyond_600s_is_401() {
    let server = Server::start();
    let api = server.api();
    let path = api.path("/channels");
    // A few seconds either side of the 600 s limit: the server reads its clock a moment after
    // the test signs, and a second boundary may pass in between.
    for (offset, status) in [(605, 401), (-605, 401), (-590, 200), (590, 200)] {
        let opts = SignOpts {
            ts_offset: offset,
            ..Default::default()
        };
        let r = api.request_opts("GET", &path, &[], b"", &opts).await;
        assert_eq!(r.status, status, "offset {offset}: {}", r.text());
    }
}

#[tokio::test]
async fn wrong_body_md5_is_401() {
    let server = Server::start();
    let api = server.api();
    let body = json!({"name":"e","channel":"c","data":"d"}).to_string();
    let opts = SignOpts {
        body_md5: Some(md5_hex(b"something else")),
        ..Default::default()
    };
    let r = api
        .request_opts("POST", &api.path("/events"), &[], body.as_bytes(), &opts)
        .await;
    r.assert_error(401);
    // POST with a body but no body_md5 at all.
    let opts = SignOpts {
        body_md5: Some(String::new()),
        ..Default::default()
    };
    let r = api
        .request_opts("POST", &api.path("/events"), &[], body.as_bytes(), &opts)
        .await;
    r.assert_error(401);
}

#[tokio::test]
async fn get_with_empty_body_md5_is_accepted() {
    // pusher-http-python sends body_md5 = md5("") on GET requests.
    let server = Server::start();
    let api = server.api();
    let opts = SignOpts {
        md5_on_empty: true,
        ..Default::default()
    };
    let r = api
        .request_opts("GET", &api.path("/channels"), &[], b"", &opts)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api
        .request_opts("GET", &api.path("/channels/some-channel"), &[], b"", &opts)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"occupied":false}));
    // But a wrong md5 on GET is still rejected.
    let bad = SignOpts {
        body_md5: Some(md5_hex(b"x")),
        ..Default::default()
    };
    let r = api
        .request_opts("GET", &api.path("/channels"), &[], b"", &bad)
        .await;
    r.assert_error(401);
}

#[tokio::test]
async fn query_values_sign_identically_escaped_or_not() {
    let server = counting_server();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe("pre-signed").await;
    for raw_query in [false, true] {
        let opts = SignOpts {
            raw_query,
            ..Default::default()
        };
        let r = api
            .request_opts(
                "GET",
                &api.path("/channels"),
                &[("filter_by_prefix", "pre-"), ("info", "subscription_count")],
                b"",
                &opts,
            )
            .await;
        assert_eq!(r.status, 200, "raw_query={raw_query}: {}", r.text());
    }
}

#[tokio::test]
async fn trigger_to_several_channels() {
    let server = Server::start();
    let api = server.api();
    let mut subs = Vec::new();
    for ch in ["s-1", "s-2", "s-3"] {
        let mut c = server.connect().await;
        c.subscribe(ch).await;
        subs.push((ch, c));
    }
    let r = api
        .events(&json!({"name":"multi","channels":["s-1","s-2","s-3"],"data":"{\"n\":1}"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({}));
    for (ch, c) in subs.iter_mut() {
        assert_eq!(c.recv().await, channel_event(ch, "multi", "{\"n\":1}"));
        c.assert_alive().await;
    }
}

#[tokio::test]
async fn socket_id_excludes_that_connection() {
    let server = Server::start();
    let api = server.api();
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("excl").await;
    b.subscribe("excl").await;
    let r = api
        .events(&json!({"name":"first","channel":"excl","data":"1","socket_id":a.socket_id}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    api.trigger("excl", "second", "2").await;
    // Per channel order is preserved, so `a` sees "second" first iff it was excluded from "first".
    assert_eq!(a.recv().await, channel_event("excl", "second", "2"));
    assert_eq!(b.recv().await, channel_event("excl", "first", "1"));
    assert_eq!(b.recv().await, channel_event("excl", "second", "2"));
}

#[tokio::test]
async fn channel_limits_101_is_400_and_100_is_ok() {
    let server = Server::start();
    let api = server.api();
    let names: Vec<String> = (0..101).map(|i| format!("lim-{i}")).collect();
    let r = api
        .events(&json!({"name":"e","channels":names,"data":"d"}))
        .await;
    r.assert_error(400);
    let r = api
        .events(&json!({"name":"e","channels":names[..100],"data":"d"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn data_over_10kb_is_413() {
    let server = Server::start();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe("big").await;
    let ok = "a".repeat(10240);
    api.trigger("big", "fits", &ok).await;
    assert_eq!(c.recv().await, channel_event("big", "fits", &ok));
    let r = api
        .events(&json!({"name":"e","channel":"big","data":"a".repeat(10241)}))
        .await;
    r.assert_error(413);
    c.assert_alive().await;
}

/// `max_event_data` holds the bytes delivered: a string's JSON-escaped text (without its
/// quotes), so escapes cannot make a frame several times the limit.
#[tokio::test]
async fn data_limit_counts_escaped_bytes() {
    let server = Server::start();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe("esc").await;
    // 2,000 NULs are 12,000 bytes as `\u0000` escapes; 6,000 quotes 12,000 as `\"`.
    for (what, data) in [
        ("NULs", "\u{0}".repeat(2000)),
        ("quotes", "\"".repeat(6000)),
    ] {
        let r = api
            .events(&json!({"name":"e","channel":"esc","data":data}))
            .await;
        r.assert_error(413);
        let body = json!({"batch":[{"name":"e","channel":"esc","data":data}]});
        let r = api.post("/batch_events", &body).await;
        assert_eq!(r.status, 413, "batch of {what}: {}", r.text());
    }
    // Exactly 10,240 escaped bytes are accepted and delivered; one more is not.
    let fits = format!("{}{}", "\u{0}".repeat(1700), "a".repeat(40));
    assert_eq!(json!(fits).to_string().len(), 10240 + 2);
    api.trigger("esc", "fits", &fits).await;
    assert_eq!(c.recv().await, channel_event("esc", "fits", &fits));
    let over = format!("{fits}a");
    let r = api
        .events(&json!({"name":"e","channel":"esc","data":over}))
        .await;
    r.assert_error(413);
    c.assert_alive().await;
}

#[tokio::test]
async fn missing_fields_are_400() {
    let server = Server::start();
    let api = server.api();
    for body in [
        json!({"channel":"c","data":"d"}),
        json!({"name":"e","data":"d"}),
        json!({"name":"e","channel":"c"}),
        json!({"name":"e","channels":[],"data":"d"}),
        json!({"name":5,"channel":"c","data":"d"}),
    ] {
        let r = api.events(&body).await;
        r.assert_error(400);
    }
    // Not JSON at all.
    let r = api
        .request("POST", &api.path("/events"), &[], b"{not json")
        .await;
    r.assert_error(400);
}

#[tokio::test]
async fn invalid_channel_name_in_trigger_is_400() {
    let server = Server::start();
    let r = server
        .api()
        .events(&json!({"name":"e","channel":"bad name$","data":"d"}))
        .await;
    r.assert_error(400);
}

#[tokio::test]
async fn events_info_subscription_count() {
    let server = counting_server();
    let api = server.api();
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("counted").await;
    b.subscribe("counted").await;
    let body = json!({"name":"e","channels":["counted","empty-one"],"data":"d","info":"subscription_count"});
    let r = poll_until(
        || api.events(&body),
        |r| r.status == 200 && r.json()["channels"]["counted"]["subscription_count"] == json!(2),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["channels"]["counted"]["subscription_count"],
        json!(2),
        "{v}"
    );
    // One entry per channel; an unoccupied channel counts 0 (if the count is given).
    let empty = &v["channels"]["empty-one"];
    assert!(empty.is_object(), "entry for every channel: {v}");
    assert!(
        empty
            .get("subscription_count")
            .is_none_or(|n| *n == json!(0)),
        "{v}"
    );
}

#[tokio::test]
async fn batch_events_10_ok_11_rejected() {
    let server = Server::start();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe("batched").await;
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"name":format!("b{i}"),"channel":"batched","data":i.to_string()}))
        .collect();
    let r = api.post("/batch_events", &json!({ "batch": batch })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({}));
    for i in 0..10 {
        assert_eq!(
            c.recv().await,
            channel_event("batched", &format!("b{i}"), &i.to_string())
        );
    }
    let eleven: Vec<Value> = (0..11)
        .map(|i| json!({"name":"x","channel":"batched","data":i.to_string()}))
        .collect();
    let r = api.post("/batch_events", &json!({ "batch": eleven })).await;
    r.assert_error(400);
    // Nothing from the rejected batch was delivered.
    api.trigger("batched", "marker", "m").await;
    assert_eq!(c.recv().await, channel_event("batched", "marker", "m"));
}

#[tokio::test]
async fn batch_events_info_is_index_aligned() {
    let server = counting_server();
    let api = server.api();
    let mut c = server.connect().await;
    c.subscribe("bi-1").await;
    let body = json!({"batch":[
        {"name":"a","channel":"bi-1","data":"1","info":"subscription_count"},
        {"name":"b","channel":"bi-2","data":"2"},
        {"name":"c","channel":"bi-1","data":"3","info":"subscription_count"}
    ]});
    let r = api.post("/batch_events", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let arr = v["batch"]
        .as_array()
        .unwrap_or_else(|| panic!("batch array: {v}"));
    assert_eq!(arr.len(), 3, "{v}");
    assert_eq!(arr[0]["subscription_count"], json!(1), "{v}");
    assert_eq!(arr[1], json!({}), "{v}");
    assert_eq!(arr[2]["subscription_count"], json!(1), "{v}");
}

#[tokio::test]
async fn batch_item_data_over_10kb_is_413() {
    let server = Server::start();
    let body = json!({"batch":[{"name":"a","channel":"c","data":"z".repeat(10241)}]});
    let r = server.api().post("/batch_events", &body).await;
    r.assert_error(413);
}

#[tokio::test]
async fn channels_lists_occupied_only_with_prefix_filter() {
    let server = Server::start();
    let api = server.api();
    let mut c = server.connect().await;
    for ch in ["pre-a", "pre-b", "other-c"] {
        c.subscribe(ch).await;
    }
    c.unsubscribe("pre-b").await;
    c.assert_alive().await;
    let r = poll_until(
        || api.get("/channels", &[("filter_by_prefix", "pre-")]),
        |r| r.status == 200 && r.json() == json!({"channels":{"pre-a":{}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"channels":{"pre-a":{}}}));
    let r = api.get("/channels", &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let chans = v["channels"].as_object().expect("channels object");
    assert!(
        chans.contains_key("pre-a") && chans.contains_key("other-c"),
        "{v}"
    );
    assert!(!chans.contains_key("pre-b"), "vacated channel listed: {v}");
    // After the connection closes everything is vacated.
    c.close().await;
    let r = poll_until(
        || api.get("/channels", &[]),
        |r| r.status == 200 && r.json() == json!({"channels":{}}),
    )
    .await;
    assert_eq!(r.json(), json!({"channels":{}}));
}

#[tokio::test]
async fn channels_user_count_needs_presence_prefix() {
    let server = Server::start();
    let api = server.api();
    let r = api.get("/channels", &[("info", "user_count")]).await;
    r.assert_error(400);
    let r = api
        .get(
            "/channels",
            &[("info", "user_count"), ("filter_by_prefix", "presence-")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn channel_info_occupied_and_subscription_count() {
    let server = counting_server();
    let api = server.api();
    assert_eq!(
        api.channel_info("info-ch", "").await,
        json!({"occupied":false})
    );
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    a.subscribe("info-ch").await;
    b.subscribe("info-ch").await;
    let v = poll_until(
        || api.channel_info("info-ch", "subscription_count"),
        |v| v["subscription_count"] == json!(2),
    )
    .await;
    assert_eq!(v, json!({"occupied":true,"subscription_count":2}));
    assert_eq!(
        api.channel_info("info-ch", "").await,
        json!({"occupied":true})
    );
    // user_count on a non-presence channel is a bad request.
    let r = api
        .get("/channels/info-ch", &[("info", "user_count")])
        .await;
    r.assert_error(400);
    // users on a non-presence channel is a bad request.
    let r = api.get("/channels/info-ch/users", &[]).await;
    r.assert_error(400);
}

#[tokio::test]
async fn unknown_app_is_404() {
    let server = Server::start();
    let api = Api {
        addr: server.addr,
        app: App::new("no-such-app", "app-key", "app-secret"),
    };
    let r = api.get("/channels", &[]).await;
    r.assert_error(404);
    let r = api
        .events(&json!({"name":"e","channel":"c","data":"d"}))
        .await;
    r.assert_error(404);
}

#[tokio::test]
async fn unknown_route_is_404() {
    let server = Server::start();
    let r = server.api().get("/nothing-here", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start();
    let api = server.api();
    let mut conn = HttpConn::connect(server.addr).await;
    let body = json!({"name":"e","channel":"ka","data":"d"}).to_string();
    let t1 = api.signed_target(
        "POST",
        &api.path("/events"),
        &[],
        body.as_bytes(),
        &SignOpts::default(),
    );
    let r1 = conn.request("POST", &t1, body.as_bytes()).await;
    assert_eq!(r1.status, 200, "{}", r1.text());
    let t2 = api.signed_target(
        "GET",
        &api.path("/channels"),
        &[],
        b"",
        &SignOpts::default(),
    );
    let r2 = conn.request("GET", &t2, b"").await;
    assert_eq!(r2.status, 200, "{}", r2.text());
    let r3 = conn.request("GET", "/up", b"").await;
    assert_eq!(r3.status, 200);
    let r4 = conn.request("POST", &t1, body.as_bytes()).await;
    assert_eq!(r4.status, 200, "{}", r4.text());
}

#[tokio::test]
async fn terminate_connections_returns_empty_object() {
    let server = Server::start();
    let r = server
        .api()
        .post("/users/nobody/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({}));
}

#[tokio::test]
async fn reserved_event_name_prefix_is_400() {
    let server = Server::start();
    let api = server.api();
    for name in ["pusher:fake", "pusher_internal:fake"] {
        let r = api
            .events(&json!({"name":name,"channel":"c","data":"d"}))
            .await;
        r.assert_error(400);
    }
}

#[tokio::test]
async fn terminate_without_apps_prefix_as_pusher_http_python_sends_it() {
    let server = Server::start();
    let api = server.api();
    let r = api
        .request("POST", "/users/u1/terminate_connections", &[], b"{}")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({}));
    let wrong = Api {
        addr: server.addr,
        app: App::new("app-id", "app-key", "not-the-secret"),
    };
    let r = wrong
        .request("POST", "/users/u1/terminate_connections", &[], b"{}")
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
}
