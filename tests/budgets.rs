//! Every byte a stranger can make the server hold is budgeted. Control frames: a ping asks
//! for a pong. A client that pings and never reads used to get a queued pong per ping, each
//! counted as 2 bytes against `max_outbound_bytes` while its queue entry held far more: RSS grew
//! by hundreds of megabytes before the 4100 close. Control frames now draw from the message
//! budget (over it: unanswered, then closed with 4301), a queued frame is charged its overhead as
//! well as its bytes, and a pong waiting unsent is replaced by the next one.
//!
//! The memory test measures the server's resident set (`VmRSS`, and its peak `VmHWM` after
//! resetting it) and holds it to a bound derived from the configured budget, never to timings.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// What the server may grow by beyond the budgets under test: allocator slack, the tests' own
/// connections and requests, and what a debug build allocates on the side.
const SLACK: u64 = 16 * MIB;

/// `n` masked pings with empty payloads (6 bytes each).
fn pings(n: usize) -> Vec<u8> {
    let one = build_frame(0x89, b"", true);
    one.iter().copied().cycle().take(one.len() * n).collect()
}

/// One subscriber of `channel` on every shard.
async fn watchers(server: &Server, channel: &str) -> Vec<Client> {
    let mut all: Vec<Client> = server
        .connect_spread(1)
        .await
        .into_iter()
        .flatten()
        .collect();
    for w in &mut all {
        w.subscribe(channel).await;
    }
    all
}

/// Publishes `n` on `channel` and checks every watcher gets it.
async fn publish_reaches(server: &Server, watchers: &mut [Client], channel: &str, n: usize) {
    server.api().trigger(channel, "tick", &n.to_string()).await;
    for w in watchers.iter_mut() {
        let ev = w.expect_event("tick").await;
        assert_eq!(ev["data"], json!(n.to_string()), "{ev}");
    }
}

/// Frames a [`RawWs`] reads until the server's close frame: pong payloads, text events, and the
/// close code. None for the code when the stream ended without one, or nothing came in time.
async fn read_until_close(ws: &mut RawWs) -> (Vec<Vec<u8>>, Vec<serde_json::Value>, Option<u16>) {
    let (mut pongs, mut events) = (Vec::new(), Vec::new());
    while let Some(f) = ws.read_frame(WAIT).await {
        match f.opcode {
            10 => pongs.push(f.payload),
            1 => events.push(serde_json::from_slice(&f.payload).expect("json")),
            8 => {
                let code = (f.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
                return (pongs, events, code);
            }
            _ => {}
        }
    }
    (pongs, events, None)
}

#[tokio::test]
async fn ping_floods_stay_within_the_outbound_budget() {
    let budget = MIB; // max_outbound_bytes
    let server = Server::start_with(Config::default().with("max_outbound_bytes", budget));
    let workers = server.workers();
    let ch = uniq("watched");
    let mut watchers = watchers(&server, &ch).await;

    // Two flooders per shard. Each has a small receive buffer and never reads, so the kernel
    // holds little of what the server sends it and the rest would wait in the server.
    let per_shard = 2;
    let mut flooders = Vec::new();
    let mut on = vec![0; workers as usize];
    while flooders.len() < per_shard * workers as usize {
        let f = RawWs::connect_with_rcvbuf(&server, 4096).await;
        let s = f.shard(workers);
        if on[s] < per_shard {
            on[s] += 1;
            flooders.push(f);
        }
    }
    let count = flooders.len() as u64;

    let (rss_before, _) = server.memory_kib();
    server.reset_peak_rss();

    // Three million pings (18 MB) each. Answered one for one, their 2-byte pongs would fill
    // the kernel's buffers (a loopback send buffer grows to megabytes even towards a tiny
    // window) and then a 1 MiB budget counted at 2 bytes a pong: half a million queue entries.
    let per_write = 10_000;
    let writes = 300;
    let chunk = pings(per_write);
    let tasks: Vec<_> = flooders
        .into_iter()
        .map(|mut f| {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                for _ in 0..writes {
                    if !f.write(&chunk).await {
                        break; // closed by the server
                    }
                    sent += per_write;
                }
                (f, sent)
            })
        })
        .collect();

    // Meanwhile a normal subscriber on each shard keeps receiving publishes.
    let mut n = 0;
    while !tasks.iter().all(|t| t.is_finished()) && n < 100 {
        publish_reaches(&server, &mut watchers, &ch, n).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut flooders = Vec::new();
    let mut sent = 0;
    for t in tasks {
        let (f, s) = t.await.expect("flood task");
        sent += s;
        flooders.push(f);
    }
    publish_reaches(&server, &mut watchers, &ch, n).await;

    let (rss_end, peak) = server.memory_kib();
    let growth = peak.saturating_sub(rss_before) * KIB;
    let bound = count * budget + SLACK;
    eprintln!(
        "ping flood: {count} connections, {sent} pings sent in all, {n} publishes; RSS before \
         {rss_before} KiB, peak {peak} KiB, end {rss_end} KiB; growth {} KiB, bound {} KiB",
        growth / KIB,
        bound / KIB
    );
    assert!(
        growth <= bound,
        "peak RSS grew by {} KiB, more than {count} x max_outbound_bytes + slack ({} KiB)",
        growth / KIB,
        bound / KIB
    );
    for w in &mut watchers {
        w.assert_alive().await;
    }
    drop(flooders);
}

#[tokio::test]
async fn control_frames_draw_from_the_message_budget() {
    let config = Config::default()
        .with("max_messages_per_second", 1)
        .with("max_message_burst", 10);
    let server = Server::start_with(config);

    // Twenty pings in one write: the burst of ten is admitted (and, arriving together, answered
    // by one pong for the latest), the rest is over the budget. Refused control frames get no
    // answer, and more of them within a second than the sustained rate (1) close the
    // connection with 4301.
    let mut ws = RawWs::connect(&server).await;
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend(build_frame(0x89, format!("p{i}").as_bytes(), true));
    }
    assert!(ws.write(&burst).await);
    let (pongs, events, code) = read_until_close(&mut ws).await;
    let pongs: Vec<String> = pongs
        .into_iter()
        .map(|p| String::from_utf8(p).unwrap())
        .collect();
    assert_eq!(pongs.last().map(String::as_str), Some("p9"), "{pongs:?}");
    assert!(
        pongs.len() < 10,
        "answered only within the budget, coalesced: {pongs:?}"
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "pusher:error", "{events:?}");
    assert_eq!(events[0]["data"]["code"], json!(4301), "{events:?}");
    assert_eq!(code, Some(4301));

    // Unsolicited pongs are charged too.
    let mut ws = RawWs::connect(&server).await;
    let mut burst = Vec::new();
    for _ in 0..20 {
        burst.extend(build_frame(0x8a, b"x", true));
    }
    assert!(ws.write(&burst).await);
    let (pongs, events, code) = read_until_close(&mut ws).await;
    assert!(pongs.is_empty(), "{pongs:?}");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["code"], json!(4301), "{events:?}");
    assert_eq!(code, Some(4301));

    // Within the budget nothing changes: a ping now and then is answered, and so is a text
    // message after it.
    let mut ws = RawWs::connect(&server).await;
    assert!(ws.send(0x9, b"hello").await);
    let f = ws.read_frame(WAIT).await.expect("pong");
    assert_eq!((f.opcode, f.payload.as_slice()), (10, &b"hello"[..]));
    ws.ping_pong().await;
}

#[tokio::test]
async fn pongs_waiting_unsent_are_replaced_by_the_latest() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    // Fifty pings in one write are read together; their pongs would all wait in the queue
    // until the batch is flushed, so only the answer to the latest is sent (RFC 6455 5.5.3).
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend(build_frame(0x89, format!("p{i}").as_bytes(), true));
    }
    assert!(ws.write(&burst).await);
    let mut pongs = Vec::new();
    while pongs.last().map(String::as_str) != Some("p49") {
        let f = ws
            .read_frame(WAIT)
            .await
            .unwrap_or_else(|| panic!("no pong for p49; got {pongs:?}"));
        assert_eq!(f.opcode, 10, "only pongs: {f:?}");
        pongs.push(String::from_utf8(f.payload).unwrap());
    }
    assert!(pongs.len() < 50, "pongs were coalesced: {pongs:?}");
    // The next ping is answered on its own.
    assert!(ws.send(0x9, b"next").await);
    let f = ws.read_frame(WAIT).await.expect("pong");
    assert_eq!((f.opcode, f.payload.as_slice()), (10, &b"next"[..]));
    ws.ping_pong().await;
}
