//! The systemd notify protocol, against a fake `NOTIFY_SOCKET` (a Unix datagram socket this
//! test reads): `READY=1` with a status once the server accepts, `WATCHDOG=1` at about half of
//! `WATCHDOG_USEC` while the shards turn, `STOPPING=1` when SIGTERM starts the drain.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

/// Reads datagrams until one contains `needle` (or `limit` passes); returns all read.
fn read_until(sock: &UnixDatagram, needle: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = msg.contains(needle);
                got.push(msg);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[tokio::test]
async fn ready_watchdog_and_stopping_reach_the_service_manager() {
    let path = std::env::temp_dir().join(format!("{}.sock", uniq("ringpush-notify-")));
    let sock = UnixDatagram::bind(&path).expect("bind the fake notify socket");
    let config = Config {
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "1000000".into()),
        ],
        ..Config::default()
    };
    let mut server = Server::start_with(config);
    let got = read_until(&sock, "READY=1", Duration::from_secs(10));
    let ready = got.iter().find(|m| m.contains("READY=1")).expect("READY=1");
    assert!(ready.contains("STATUS=serving 0 connection(s)"), "{got:?}");
    // Pings come while the shards turn: several within a few watchdog periods.
    let mut pings = 0;
    let start = Instant::now();
    while pings < 3 && start.elapsed() < Duration::from_secs(10) {
        let got = read_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
        pings += got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    }
    assert!(pings >= 3, "watchdog pings: {pings}");
    // The status follows the connections.
    let _c = server.connect().await;
    let got = read_until(&sock, "serving 1 connection(s)", Duration::from_secs(10));
    assert!(
        got.iter()
            .any(|m| m.contains("STATUS=serving 1 connection(s)")),
        "{got:?}"
    );
    server.signal("TERM");
    let got = read_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    assert!(server.wait_exit(Duration::from_secs(15)).await.is_some());
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn without_a_watchdog_nothing_pings() {
    let path = std::env::temp_dir().join(format!("{}.sock", uniq("ringpush-notify-")));
    let sock = UnixDatagram::bind(&path).expect("bind the fake notify socket");
    let config = Config {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..Config::default()
    };
    let _server = Server::start_with(config);
    let got = read_until(&sock, "READY=1", Duration::from_secs(10));
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    // Timed on purpose: a ping would come within half of any watchdog period; there is none.
    let got = read_until(&sock, "WATCHDOG=1", Duration::from_millis(1500));
    assert!(got.iter().all(|m| !m.contains("WATCHDOG=1")), "{got:?}");
    let _ = std::fs::remove_file(&path);
}
