//! Webhook delivery under trouble: a receiver that never answers must not slow channel
//! messages, and SIGTERM must deliver webhooks still waiting out their delay before the process
//! exits.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A loopback HTTP receiver. With `hang`, it reads requests and never answers; otherwise it
/// answers 200 and forwards each body.
async fn receiver(hang: bool) -> (String, mpsc::UnboundedReceiver<String>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (tx, counter) = (tx.clone(), counter.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                    buf.drain(..end + 4 + len);
                    counter.fetch_add(1, Ordering::SeqCst);
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                    let _ = tx.send(body);
                }
            });
        }
    });
    (url, rx, seen)
}

fn hooked_app(url: &str, extra: &[(&str, String)]) -> App {
    let mut app = App::default().with("webhooks", format!("[{{ url = {url:?} }}]"));
    for (k, v) in extra {
        app = app.with(k, v);
    }
    app
}

#[tokio::test]
async fn hanging_receiver_does_not_delay_channel_messages() {
    let (url, _rx, seen) = receiver(true).await;
    let server = Server::start_with(Config::with_app(hooked_app(&url, &[])));
    let api = server.api();
    let mut subs = Vec::new();
    // Each new channel produces a channel_occupied webhook that the receiver never answers.
    for i in 0..8 {
        let mut c = server.connect().await;
        c.subscribe(&uniq(&format!("hang{i}"))).await;
        subs.push(c);
    }
    let ch = uniq("busy");
    for c in subs.iter_mut() {
        c.subscribe(&ch).await;
    }
    let contacted = poll_until(|| async { seen.load(Ordering::SeqCst) }, |n| *n >= 8).await;
    assert!(
        contacted >= 8,
        "the receiver got the webhooks it now sits on: {contacted}"
    );
    for i in 0..20 {
        let start = Instant::now();
        api.trigger(&ch, "tick", &i.to_string()).await;
        for c in subs.iter_mut() {
            assert_eq!(c.expect_event("tick").await["data"], json!(i.to_string()));
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "delivery waited on webhooks"
        );
    }
}

#[tokio::test]
async fn sigterm_delivers_delayed_webhooks_before_exit() {
    vacated_is_delivered_on_sigterm(Config::default().shutdown_grace).await;
}

/// The client below never answers the server's close frame, so it lingers until the server cuts
/// it; with a short grace that used to take all of it and leave the webhooks none.
#[tokio::test]
async fn lingering_clients_leave_webhooks_part_of_a_short_grace() {
    vacated_is_delivered_on_sigterm(2).await;
}

async fn vacated_is_delivered_on_sigterm(grace: u64) {
    let (url, mut rx, _) = receiver(false).await;
    let extra = [
        ("webhook_delay", "60".to_string()),
        ("webhook_retry_window", "5".to_string()),
    ];
    let mut server = Server::start_with(Config {
        shutdown_grace: grace,
        ..Config::with_app(hooked_app(&url, &extra))
    });
    let ch = uniq("bye");
    let mut c = server.connect().await;
    c.subscribe(&ch).await;
    let occupied = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("occupied");
    assert!(occupied.expect("body").contains("channel_occupied"));
    c.unsubscribe(&ch).await;
    c.assert_alive().await;
    // channel_vacated now waits out a 60 s delay; SIGTERM must send it anyway.
    server.signal("TERM");
    let body = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("vacated delivered on shutdown")
        .expect("body");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["events"],
        json!([{"name":"channel_vacated","channel":ch}])
    );
    let status = server
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits");
    assert!(status.success(), "exit status {status:?}");
}
