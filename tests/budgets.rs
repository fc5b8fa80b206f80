//! Every byte a stranger can make the server hold is budgeted. Two ways to make it hold bytes
//! without being anyone:
//!
//! - **Control frames.** A ping asks for a pong. A client that pings and never reads used to get
//!   a queued pong per ping, each counted as 2 bytes against `max_outbound_bytes` while its
//!   queue entry held far more: RSS grew by hundreds of megabytes before the 4100 close. Control
//!   frames now draw from the message budget (over it: unanswered, then closed with 4301), a
//!   queued frame is charged its overhead as well as its bytes, and a pong waiting unsent is
//!   replaced by the next one.
//! - **Request bodies.** Nothing is authenticated before the body is in, so announcing a big
//!   Content-Length and sending part of it made the server hold the part for
//!   `handshake_timeout`. Bodies the server waits for now reserve their announced length in a
//!   per-shard budget (`max_pending_body_bytes`), and a request that does not fit gets 503.
//!
//! The memory tests measure the server's resident set (`VmRSS`, and its peak `VmHWM` after
//! resetting it) and hold it to a bound derived from the configured budgets, never to timings.

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

/// An unsigned request head for `POST /apps/app-id/events` announcing `len` body bytes.
fn announce(len: u64) -> Vec<u8> {
    format!(
        "POST /apps/app-id/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

/// A signed trigger on `channel` whose head and body arrive 200 ms apart, so that the server
/// reads the head alone and has to wait for the body.
async fn split_trigger(server: &Server, channel: &str) -> HttpResponse {
    let api = server.api();
    let body = json!({"name": "split", "channel": channel, "data": "{}"}).to_string();
    let path = api.path("/events");
    let target = api.signed_target("POST", &path, &[], body.as_bytes(), &SignOpts::default());
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut conn = HttpConn::connect(server.addr).await;
    assert!(conn.write(head.as_bytes()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = conn.write(body.as_bytes()).await; // refused already, maybe
    conn.read_response().await
}

/// The gauge of reserved body bytes, once it reads `want` (or the last value after 10 s).
async fn pending_bodies(server: &Server, want: u64) -> u64 {
    poll_until(
        || async { server.metric("ringpush_pending_body_bytes").await },
        |v| *v == Some(want),
    )
    .await
    .expect("ringpush_pending_body_bytes in /metrics")
}

#[tokio::test]
async fn a_body_that_does_not_fit_gets_503_and_reservations_come_back() {
    let mut config = Config::default().with("max_pending_body_bytes", 3 * MIB);
    config.workers = 1; // one shard, one budget: every figure is exact
    let server = Server::start_with(config);
    let ch = uniq("bodies");
    let mut watcher = server.connect().await;
    watcher.subscribe(&ch).await;

    // Three strangers announce 1 MiB each and send a little: the budget is full.
    let mut held = Vec::new();
    for k in 1..=3 {
        let mut c = HttpConn::connect(server.addr).await;
        let mut bytes = announce(MIB);
        bytes.extend(vec![b' '; 1000]);
        assert!(c.write(&bytes).await);
        assert_eq!(pending_bodies(&server, k * MIB).await, k * MIB);
        held.push(c);
    }

    // A fourth does not fit: 503 with a JSON error, and the connection closes.
    let mut c = HttpConn::connect(server.addr).await;
    let r = c.send_raw(&announce(MIB)).await;
    r.assert_error(503);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(WAIT).await, "the refused connection closes");
    assert_eq!(
        server.metric("ringpush_bodies_refused_total").await,
        Some(1)
    );

    // A signed trigger that arrives whole is never waited for and is served; one whose body
    // the server has to wait for needs room in the budget like any other.
    server.api().trigger(&ch, "whole", "{}").await;
    watcher.expect_event("whole").await;
    split_trigger(&server, &ch).await.assert_error(503);
    assert_eq!(
        server.metric("ringpush_bodies_refused_total").await,
        Some(2)
    );

    // A connection that goes gives its reservation back...
    drop(held.remove(0));
    assert_eq!(pending_bodies(&server, 2 * MIB).await, 2 * MIB);
    let r = split_trigger(&server, &ch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    watcher.expect_event("split").await;
    assert_eq!(pending_bodies(&server, 2 * MIB).await, 2 * MIB);

    // ... and so does a body read to its end and handled (unsigned: 401).
    let c = &mut held[0];
    assert!(c.write(&vec![b' '; (MIB - 1000) as usize]).await);
    let r = c.read_response().await;
    r.assert_error(401);
    assert_eq!(pending_bodies(&server, MIB).await, MIB);
    drop(held);
    assert_eq!(pending_bodies(&server, 0).await, 0);
    watcher.assert_alive().await;
}

/// What became of one stranger's request.
enum Outcome {
    /// Answered 503 and closed.
    Refused,
    /// No answer: the server is waiting for the rest of the body.
    Waiting(HttpConn),
}

#[tokio::test]
async fn many_announced_bodies_stay_within_the_shard_budgets() {
    // The defaults: 1 MiB bodies at most, 32 MiB of them waited for per shard.
    let server = Server::start();
    let per_shard = 32 * MIB;
    let budget = per_shard * server.workers() as u64;
    let (strangers, announced, sent) = (300u64, MIB, 3 * MIB / 4);
    let ch = uniq("busy");
    let mut watchers = watchers(&server, &ch).await;

    let (rss_before, _) = server.memory_kib();
    server.reset_peak_rss();

    // Each stranger announces 1 MiB and sends 64 KiB of it; one that gets no answer goes on
    // to send three quarters in all, and then stalls.
    let tasks: Vec<_> = (0..strangers)
        .map(|_| {
            let addr = server.addr;
            tokio::spawn(async move {
                let mut c = HttpConn::connect(addr).await;
                let mut first = announce(announced);
                first.extend(vec![b' '; 64 * KIB as usize]);
                assert!(c.write(&first).await, "write the head");
                let answer = tokio::time::timeout(Duration::from_secs(3), c.read_response());
                match answer.await {
                    Ok(r) => {
                        r.assert_error(503);
                        assert!(c.closed_within(WAIT).await, "the refused connection closes");
                        Outcome::Refused
                    }
                    Err(_) => {
                        let rest = vec![b' '; (sent - 64 * KIB) as usize];
                        assert!(c.write(&rest).await, "write more of the body");
                        Outcome::Waiting(c)
                    }
                }
            })
        })
        .collect();

    // Meanwhile signed triggers are served and subscribers on every shard get them.
    let mut n = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        publish_reaches(&server, &mut watchers, &ch, n).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut waiting = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("stranger task") {
            Outcome::Refused => refused += 1,
            Outcome::Waiting(c) => waiting.push(c),
        }
    }
    publish_reaches(&server, &mut watchers, &ch, n).await;
    let pending = server.metric("ringpush_pending_body_bytes").await;

    let (rss_end, peak) = server.memory_kib();
    let growth = peak.saturating_sub(rss_before) * KIB;
    // A reserved body's buffer is allocated whole when its head is read, and the allocator
    // rounds it up to its size class (mimalloc's are at most an eighth apart); each connection
    // also costs something of its own (about 11 KiB measured for a waiting HTTP connection).
    let bound = budget + budget / 8 + strangers * 16 * KIB + SLACK;
    eprintln!(
        "bodies: {strangers} strangers announcing {} KiB and sending {} KiB; {refused} got \
         503, {} waited for ({pending:?} bytes reserved); RSS before {rss_before} KiB, peak \
         {peak} KiB, end {rss_end} KiB; growth {} KiB, bound {} KiB",
        announced / KIB,
        sent / KIB,
        waiting.len(),
        growth / KIB,
        bound / KIB
    );
    let fit = budget / announced; // whole bodies the shards' budgets hold
    assert!(
        waiting.len() as u64 <= fit,
        "at most {fit} bodies waited for, got {}",
        waiting.len()
    );
    assert!(refused >= strangers - fit, "{refused} refused");
    assert_eq!(pending, Some(waiting.len() as u64 * announced));
    assert!(
        growth <= bound,
        "peak RSS grew by {} KiB, more than the body budgets allow ({} KiB)",
        growth / KIB,
        bound / KIB
    );

    // When the strangers go, their reservations come back, and a body that has to be waited
    // for fits again.
    drop(waiting);
    assert_eq!(pending_bodies(&server, 0).await, 0);
    let r = split_trigger(&server, &ch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for w in &mut watchers {
        w.expect_event("split").await;
    }
}
