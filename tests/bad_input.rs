//! Malformed input at the WebSocket-frame and HTTP level. After each case a fresh
//! client is still served and neighbours on every shard still receive publishes.

mod common;

use common::*;
use std::time::Duration;

/// One subscribed client per shard.
async fn neighbours(server: &Server) -> Vec<Client> {
    let mut out = Vec::new();
    for shard in server.connect_spread(1).await {
        for mut c in shard {
            c.subscribe("neighbourhood").await;
            out.push(c);
        }
    }
    out
}

async fn assert_still_served(server: &Server, nb: &mut [Client], tag: &str) {
    let mut fresh = server.connect().await;
    fresh.assert_alive().await;
    server.api().trigger("neighbourhood", "still", tag).await;
    for c in nb.iter_mut() {
        assert_eq!(
            c.recv().await,
            channel_event("neighbourhood", "still", tag),
            "after {tag}"
        );
    }
}

async fn expect_close_code(ws: &mut RawWs, code: u16, what: &str) {
    let (close, _) = ws.read_close(WAIT).await;
    assert_eq!(close, RawClose::Frame(Some(code)), "{what}");
}

#[tokio::test]
async fn raw_handshake_works() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    assert!(is_socket_id(&ws.socket_id));
    ws.ping_pong().await;
}

#[tokio::test]
async fn unmasked_frame_closes_1002() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(
        0x81,
        br#"{"event":"pusher:ping","data":{}}"#,
        false,
    ))
    .await;
    expect_close_code(&mut ws, 1002, "unmasked client frame").await;
    assert_still_served(&server, &mut nb, "unmasked").await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_1007() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    let mut ws = RawWs::connect(&server).await;
    ws.send(1, b"{\"event\":\"\xff\xfe\"}").await;
    expect_close_code(&mut ws, 1007, "invalid UTF-8").await;
    assert_still_served(&server, &mut nb, "utf8").await;
}

#[tokio::test]
async fn invalid_utf8_split_over_fragments_closes_1007() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    // First fragment ends with a lead byte, the continuation starts with a non-continuation byte.
    ws.write(&build_frame(0x01, b"{\"event\":\"\xe2", true))
        .await;
    ws.write(&build_frame(0x80, b"A\"}", true)).await;
    expect_close_code(&mut ws, 1007, "fragmented invalid UTF-8").await;
}

#[tokio::test]
async fn utf8_char_split_over_fragments_is_fine() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    // "€" is E2 82 AC; split it between two fragments of a valid pusher:ping.
    ws.write(&build_frame(
        0x01,
        b"{\"event\":\"pusher:ping\",\"data\":{\"x\":\"\xe2\x82",
        true,
    ))
    .await;
    ws.write(&build_frame(0x80, b"\xac\"}}", true)).await;
    let f = ws.read_frame(WAIT).await.expect("pong");
    let v: serde_json::Value = serde_json::from_slice(&f.payload).expect("json");
    assert_eq!(v["event"], "pusher:pong");
}

#[tokio::test]
async fn interleaved_ping_between_fragments_is_answered() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x01, b"{\"event\":\"pusher:", true))
        .await;
    ws.write(&build_frame(0x89, b"ctl", true)).await;
    ws.write(&build_frame(0x80, b"ping\",\"data\":{}}", true))
        .await;
    let f = ws.read_frame(WAIT).await.expect("pong frame");
    assert_eq!(f.opcode, 0xA, "WS pong for the control frame first");
    assert_eq!(f.payload, b"ctl");
    let f = ws.read_frame(WAIT).await.expect("pusher:pong");
    assert_eq!(f.opcode, 1);
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    let mut ws = RawWs::connect(&server).await;
    let big = format!("{{\"event\":\"x\",\"data\":\"{}\"}}", "a".repeat(70_000));
    ws.send(1, big.as_bytes()).await;
    expect_close_code(&mut ws, 1009, "70 KB message with max_message_size 64 KiB").await;
    assert_still_served(&server, &mut nb, "oversized").await;
}

#[tokio::test]
async fn oversized_fragmented_message_closes_1009() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    let mut ws = RawWs::connect(&server).await;
    let chunk = vec![b'a'; 20_000];
    ws.write(&build_frame(0x01, &chunk, true)).await;
    for _ in 0..3 {
        ws.write(&build_frame(0x00, &chunk, true)).await;
    }
    ws.write(&build_frame(0x80, b"\"}", true)).await;
    expect_close_code(&mut ws, 1009, "fragments adding up to 80 KB").await;
    assert_still_served(&server, &mut nb, "fragmented").await;
}

#[tokio::test]
async fn message_just_under_limit_is_processed() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    let pad = "p".repeat(60_000);
    let msg = format!("{{\"event\":\"pusher:ping\",\"data\":{{\"pad\":\"{pad}\"}}}}");
    ws.send(1, msg.as_bytes()).await;
    let f = ws.read_frame(WAIT).await.expect("reply");
    let v: serde_json::Value = serde_json::from_slice(&f.payload).expect("json");
    assert_eq!(v["event"], "pusher:pong");
}

#[tokio::test]
async fn huge_declared_length_closes_1009_without_waiting_for_payload() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    // Header announcing a 1 GiB payload; only a few bytes follow.
    let mut hdr = vec![0x81u8, 0x80 | 127];
    hdr.extend_from_slice(&(1u64 << 30).to_be_bytes());
    hdr.extend_from_slice(&[1, 2, 3, 4, b'x']);
    ws.write(&hdr).await;
    expect_close_code(&mut ws, 1009, "1 GiB frame header").await;
}

#[tokio::test]
async fn binary_frame_closes_1003() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    let mut ws = RawWs::connect(&server).await;
    ws.send(2, br#"{"event":"pusher:ping","data":{}}"#).await;
    expect_close_code(&mut ws, 1003, "binary frame").await;
    assert_still_served(&server, &mut nb, "binary").await;
}

#[tokio::test]
async fn reserved_bits_and_opcodes_close_1002() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    // RSV1 set without a negotiated extension.
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0xC1, b"{}", true)).await;
    expect_close_code(&mut ws, 1002, "RSV1 set").await;
    // Reserved opcode 3.
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x83, b"{}", true)).await;
    expect_close_code(&mut ws, 1002, "opcode 3").await;
    // Control frame longer than 125 bytes.
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x89, &[b'x'; 126], true)).await;
    expect_close_code(&mut ws, 1002, "126-byte ping").await;
    // Fragmented control frame.
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x09, b"x", true)).await;
    expect_close_code(&mut ws, 1002, "ping without FIN").await;
    // Continuation without a start.
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x80, b"x", true)).await;
    expect_close_code(&mut ws, 1002, "orphan continuation").await;
    assert_still_served(&server, &mut nb, "protocol-errors").await;
}

#[tokio::test]
async fn junk_http_gets_400_and_close() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    for junk in [
        &b"HELLO WORLD\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ] {
        let mut raw = Raw::connect(server.addr).await;
        raw.write(junk).await;
        let (resp, eof) = raw.read_to_eof(WAIT).await;
        let text = String::from_utf8_lossy(&resp);
        // A TLS ClientHello is not HTTP at all: closing silently is fine there.
        let silent_ok = junk[0] == 0x16 && text.is_empty();
        assert!(
            silent_ok || text.starts_with("HTTP/1.1 400"),
            "junk {junk:?} answered {text:?}"
        );
        assert!(eof, "connection must be closed after junk {junk:?}");
    }
    assert_still_served(&server, &mut nb, "junk").await;
}

#[tokio::test]
async fn oversized_http_head_is_rejected() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    let mut raw = Raw::connect(server.addr).await;
    let mut req = b"GET /up HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        req.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "v".repeat(60)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    raw.write(&req).await;
    let (resp, eof) = raw.read_to_eof(WAIT).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(eof, "a 130 KB request head must end the connection");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "{text:?}"
    );
    assert_still_served(&server, &mut nb, "big-head").await;
}

#[tokio::test]
async fn upgrade_without_key_or_version_is_400() {
    let server = Server::start();
    let mut raw = Raw::connect(server.addr).await;
    raw.write(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .await;
    let head = raw.read_head(WAIT).await.expect("response");
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
}

#[tokio::test]
async fn half_finished_handshakes_do_not_disturb_others() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    let mut halves = Vec::new();
    for i in 0..20 {
        let mut raw = Raw::connect(server.addr).await;
        let req = upgrade_request("/app/app-key?protocol=7", "dGhlIHNhbXBsZSBub25jZQ==");
        let cut = 10 + i * 5;
        raw.write(&req.as_bytes()[..cut.min(req.len() - 1)]).await;
        halves.push(raw);
    }
    assert_still_served(&server, &mut nb, "halves-open").await;
    // Drop half of them abruptly, keep the rest hanging.
    halves.truncate(10);
    assert_still_served(&server, &mut nb, "halves-dropped").await;
}

#[tokio::test]
async fn connection_dropped_mid_frame_does_not_disturb_others() {
    let server = Server::start();
    let mut nb = neighbours(&server).await;
    for _ in 0..5 {
        let mut ws = RawWs::connect(&server).await;
        let frame = build_frame(
            0x81,
            br#"{"event":"pusher:subscribe","data":{"channel":"neighbourhood"}}"#,
            true,
        );
        ws.write(&frame[..frame.len() / 2]).await;
        drop(ws);
    }
    // And a client that vanishes right after subscribing.
    let mut ws = RawWs::connect(&server).await;
    ws.send(
        1,
        br#"{"event":"pusher:subscribe","data":{"channel":"neighbourhood"}}"#,
    )
    .await;
    let f = ws.read_frame(WAIT).await.expect("succeeded");
    assert_eq!(f.opcode, 1);
    drop(ws);
    assert_still_served(&server, &mut nb, "dropped").await;
    assert_still_served(&server, &mut nb, "dropped-again").await;
}

#[tokio::test]
async fn close_frame_with_invalid_code_closes_1002() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x88, &999u16.to_be_bytes(), true))
        .await;
    expect_close_code(&mut ws, 1002, "close code 999").await;
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x88, &[3], true)).await;
    expect_close_code(&mut ws, 1002, "one-byte close body").await;
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x88, &[0x03, 0xe8, 0xff, 0xfe], true))
        .await;
    expect_close_code(&mut ws, 1007, "close reason not UTF-8").await;
    let mut ws = RawWs::connect(&server).await;
    ws.write(&build_frame(0x88, &[0x0f, 0xa0, b'o', b'k'], true))
        .await;
    expect_close_code(&mut ws, 4000, "valid close echoed").await;
}

#[tokio::test]
async fn non_ascii_origin_is_refused_without_harm() {
    let app = App::default().with("allowed_origins", r#"["*.example.org"]"#);
    let server = Server::start_with(Config::with_app(app));
    let mut nb = neighbours(&server).await;
    for origin in [
        "https://ééééééé",
        "https://\u{1F600}\u{1F600}.org",
        "https://é.org",
    ] {
        let mut raw = Raw::connect(server.addr).await;
        let req = upgrade_request("/app/app-key?protocol=7", "dGhlIHNhbXBsZSBub25jZQ==").replacen(
            "\r\n\r\n",
            &format!("\r\nOrigin: {origin}\r\n\r\n"),
            1,
        );
        raw.write(req.as_bytes()).await;
        let (resp, _) = raw.read_to_eof(WAIT).await;
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 101"), "{origin}: {text:?}");
        assert!(
            text.contains("4009"),
            "{origin} must be refused with 4009: {text:?}"
        );
    }
    assert_still_served(&server, &mut nb, "non-ascii-origin").await;
}

#[tokio::test]
async fn client_that_never_reads_its_responses_is_dropped() {
    let server = Server::start_with(Config {
        handshake_timeout: 1,
        ..Config::default()
    });
    let mut nb = neighbours(&server).await;
    let mut raw = Raw::connect(server.addr).await;
    // Far more response bytes than the two socket buffers hold, then read nothing.
    let requests = 4000;
    let one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    raw.write(&one.repeat(requests)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_still_served(&server, &mut nb, "stalled-reader").await;
    // The server gave up on the stalled write and closed: reading now ends early at EOF
    // instead of streaming every pipelined response.
    let (resp, eof) = raw.read_to_eof(Duration::from_secs(20)).await;
    let answered = resp.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert!(eof, "the connection must be closed");
    assert!(
        answered > 0 && answered < requests,
        "answered {answered} of {requests}"
    );
}

#[tokio::test]
async fn frames_trickled_in_small_pieces_are_reassembled() {
    let server = Server::start();
    let mut ws = RawWs::connect(&server).await;
    // Two pings back to back (a large one and a small one), sent a few bytes at a time with a
    // pause now and then so the server sees many partial reads and a frame boundary mid-read.
    let pad = "p".repeat(20_000);
    let big = format!(r#"{{"event":"pusher:ping","data":{{"pad":"{pad}"}}}}"#);
    let mut bytes = build_frame(0x81, big.as_bytes(), true);
    bytes.extend_from_slice(&build_frame(
        0x81,
        br#"{"event":"pusher:ping","data":{}}"#,
        true,
    ));
    for (i, piece) in bytes.chunks(7).enumerate() {
        assert!(ws.write(piece).await, "write");
        if i % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for _ in 0..2 {
        let f = ws.read_frame(WAIT).await.expect("pusher:pong");
        let v: serde_json::Value = serde_json::from_slice(&f.payload).expect("json");
        assert_eq!(v["event"], "pusher:pong");
    }
}

#[tokio::test]
async fn oversized_body_still_gets_its_413() {
    let server = Server::start();
    let mut raw = Raw::connect(server.addr).await;
    let body = vec![b'x'; 2 << 20]; // over the 1 MiB default max_request_body
    let head = format!(
        "POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    raw.write(head.as_bytes()).await;
    // Keep sending the body the server has already refused, as a client that does not read
    // between writes would. (On loopback the answer arrives before any reset could, so this
    // checks the answer, not the linger that protects it on real networks.)
    let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &body).await;
    let (resp, _) = raw.read_to_eof(WAIT).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
}

#[tokio::test]
async fn a_signed_body_that_is_not_utf8_is_a_400_and_the_server_lives() {
    // Found by fuzz/api_request: invalid UTF-8 inside the event's data panicked the JSON
    // parser, and the panic hook ends the process.
    let server = Server::start();
    let api = server.api();
    for body in [
        &b"{\"name\":\"e\",\"channel\":\"c\",\"data\":{\"\xeb\":1}}"[..],
        b"{\"batch\":[{\"name\":\"e\",\"channel\":\"c\",\"data\":\"\xff\"}]}",
    ] {
        for path in ["/events", "/batch_events"] {
            let r = api.request("POST", &api.path(path), &[], body).await;
            r.assert_error(400);
        }
    }
    api.trigger("c", "e", "still here").await;
}
