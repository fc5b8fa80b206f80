//! Running out of file descriptors: with a tiny descriptor limit the accept loop hits EMFILE.
//! It must back off (not spin a core), keep serving the connections it has, and accept again
//! once descriptors are free.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test]
async fn emfile_backs_off_and_recovers() {
    let dir = std::env::temp_dir().join(format!("ringpush-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[server]\nport = 0\nworkers = 1\n[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n",
    )
    .expect("config");
    let bin =
        std::env::var("RINGPUSH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringpush").into());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" --config \"$1\"")
        .arg(&bin)
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr = line.trim().rsplit(' ').next().expect("addr").to_string();
    let url = format!("ws://{addr}/app/k?protocol=7");

    // Hold more sockets than the server has descriptors for.
    let mut held = Vec::new();
    for _ in 0..60 {
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        {
            Ok(Ok((ws, _))) => held.push(ws),
            _ => break,
        }
    }
    assert!(held.len() < 60, "the limit should have been hit");
    assert!(
        held.len() > 10,
        "connections up to the limit are served: {}",
        held.len()
    );
    // While over the limit, pending connects wait in the backlog; the server must not spin.
    let pending = tokio::spawn({
        let url = url.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(20),
                tokio_tungstenite::connect_async(url),
            )
            .await
        }
    });
    let before = cpu_ticks(child.id());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = (cpu_ticks(child.id()) - before) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    assert!(used < 0.5, "accept loop is spinning: {used:.2} cores");
    // An established client is still served.
    let ws = &mut held[0];
    let _ = ws.next().await; // connection_established
    ws.send(Message::text(r#"{"event":"pusher:ping","data":{}}"#))
        .await
        .expect("send");
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("pong in time");
    assert!(format!("{pong:?}").contains("pusher:pong"), "{pong:?}");
    // Free descriptors: the waiting connect now completes.
    for ws in held.drain(1..) {
        drop(ws);
    }
    let (mut ws, _) = pending
        .await
        .expect("join")
        .expect("connect finished")
        .expect("handshake");
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("frame in time");
    assert!(
        format!("{first:?}").contains("connection_established"),
        "{first:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
