//! The HTTP/1.1 request parser (`http::request::parse`) and its percent-decoding.
//!
//! Input: byte 0 picks the body limit; the rest is what a client sent on the connection.
//!
//! Invariants:
//! - nothing panics; errors are 400, 411, 413 or 431;
//! - a complete request uses at most the bytes given, its head is at most `MAX_HEAD`, its body
//!   is exactly `Content-Length` bytes within the limit; the same request parses the same from
//!   exactly its own bytes and with more bytes after it;
//! - however the bytes arrive: every strict prefix of a complete request is "partial" (inside
//!   the head) or "need the body" with the same total length (inside the body), never an error
//!   and never another request;
//! - "need the body" asks for more than was given, within head limit plus body limit, names
//!   the body's length within the body limit, and those bytes then complete the request;
//! - "partial" holds no more than `MAX_HEAD` bytes; an error stays an error with more bytes;
//! - header names come out lower-case; path and query values are what a plain reference
//!   percent-decoder makes of the raw target; percent-decoding undoes percent-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpush::fuzzing::{parse_request, percent_decode, Parsed, Request, MAX_HEAD};

/// Percent-decoding written as plainly as possible: `%` and two hex digits is a byte.
fn reference_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = (*b.get(i + 1)? as char).to_digit(16)?;
            let lo = (*b.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn same(a: &Request, b: &Request) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// The request target of the first line, as sent.
fn raw_target(buf: &[u8]) -> Option<&str> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.split(' ').nth(1)
}

fn check_complete(buf: &[u8], max_body: usize, req: &Request, used: usize) {
    assert!(used <= buf.len());
    assert!(req.body.len() <= max_body);
    let head = used - req.body.len();
    assert!(head <= MAX_HEAD, "head of {head} bytes accepted");
    assert_eq!(&req.body[..], &buf[head..used]);
    assert!(req.minor_version <= 1);
    for (k, _) in &req.headers {
        assert_eq!(*k, k.to_ascii_lowercase());
    }
    if let Some(c) = req.header("connection") {
        if c.to_ascii_lowercase().contains("close") {
            assert!(!req.keep_alive);
        }
    }
    if let Some(target) = raw_target(buf) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        assert_eq!(reference_decode(path).as_deref(), Some(req.path.as_str()));
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (reference_decode(k).unwrap(), reference_decode(v).unwrap())
            })
            .collect();
        assert_eq!(pairs, req.query);
    }
    // Exactly its own bytes, and with more after them: the same request.
    match parse_request(&buf[..used], max_body) {
        Parsed::Complete(again, n) => assert!(n == used && same(req, &again)),
        other => panic!("its own bytes: {other:?}"),
    }
    let mut longer = buf[..used].to_vec();
    longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    match parse_request(&longer, max_body) {
        Parsed::Complete(again, n) => assert!(n == used && same(req, &again)),
        other => panic!("with bytes after it: {other:?}"),
    }
    // Every prefix: partial inside the head, waiting for the body inside the body.
    let cuts = [
        0,
        1,
        head / 2,
        head.saturating_sub(1),
        head,
        (head + used) / 2,
        used - 1,
    ];
    for k in cuts.into_iter().filter(|&k| k < used) {
        match parse_request(&buf[..k], max_body) {
            Parsed::Partial => assert!(k < head, "partial at {k} after the head ({head})"),
            Parsed::NeedBody { total, body } => assert!(
                total == used && body == req.body.len() && k >= head,
                "NeedBody({total}, {body}) at {k}"
            ),
            other => panic!("prefix of {k} of {used} bytes: {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let max_body = [0, 16, 1024, 1 << 20][sel as usize % 4];
    match parse_request(buf, max_body) {
        Parsed::Complete(req, used) => check_complete(buf, max_body, &req, used),
        Parsed::NeedBody { total: n, body } => {
            assert!(n > buf.len() && n <= MAX_HEAD + max_body, "NeedBody({n})");
            assert!(body <= max_body && body <= n, "NeedBody({n}, {body})");
            let mut full = buf.to_vec();
            full.resize(n, b'x');
            match parse_request(&full, max_body) {
                Parsed::Complete(req, used) => {
                    assert_eq!((used, req.body.len()), (n, body));
                    check_complete(&full, max_body, &req, used);
                }
                Parsed::Error(400, reason) if reason.contains("percent") => {}
                other => panic!("NeedBody({n}) then {other:?}"),
            }
        }
        Parsed::Partial => assert!(buf.len() <= MAX_HEAD),
        Parsed::Error(status, _) => {
            assert!([400, 411, 413, 431].contains(&status), "status {status}");
            let mut more = buf.to_vec();
            more.extend_from_slice(b"\r\n\r\n");
            assert!(
                matches!(parse_request(&more, max_body), Parsed::Error(..)),
                "an error went away with more bytes"
            );
        }
    }
    if let Ok(s) = std::str::from_utf8(buf) {
        assert_eq!(percent_decode(s), reference_decode(s), "{s:?}");
        assert_eq!(percent_decode(&encode_all(s)).as_deref(), Some(s));
    }
});
