//! `server.metrics_port`: `/metrics`, `/up` and `/ready` on a listener of their own (loopback by
//! default), and `/metrics` no longer on the public port.

mod common;

use std::net::{SocketAddr, TcpListener};

use common::*;

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut conn = HttpConn::connect(addr).await;
    conn.request("GET", path, b"").await
}

#[tokio::test]
async fn metrics_move_to_their_own_listener() {
    let port = free_port();
    let server = Server::start_with(Config::default().with("metrics_port", port));
    let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
    let _c = server.connect().await;
    let r = get(metrics, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("ringpush_connections_opened_total 1"),
        "{}",
        r.text()
    );
    for path in ["/up", "/ready"] {
        assert_eq!(
            get(metrics, path).await.status,
            200,
            "{path} on the metrics port"
        );
        assert_eq!(
            get(server.addr, path).await.status,
            200,
            "{path} on the main port"
        );
    }
    assert_eq!(get(server.addr, "/metrics").await.status, 404);
    assert_eq!(get(metrics, "/apps/app-id/channels").await.status, 404);
    let mut conn = HttpConn::connect(metrics).await;
    assert_eq!(conn.request("POST", "/metrics", b"").await.status, 405);
    // The public port goes on serving everything else.
    server.api().trigger("still", "e", "x").await;
}

#[tokio::test]
async fn without_a_metrics_port_metrics_stay_on_the_main_port() {
    let server = Server::start();
    let r = get(server.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("ringpush_shards 2"), "{}", r.text());
}
