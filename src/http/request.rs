//! HTTP/1.1 request parsing (httparse for the head), with limits on head and body size.

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

/// A complete request.
#[derive(Debug, Default)]
pub struct Request {
    /// Method, as sent.
    pub method: String,
    /// Path without the query string, percent-decoded.
    pub path: String,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Headers with lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The HTTP/1.x minor version: 0 or 1.
    pub minor_version: u8,
}

impl Request {
    /// First header with this lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// First query parameter with this name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is meant as a WebSocket opening handshake, valid or not: an `Upgrade`
    /// header holding `websocket`, or any request for the WebSocket path `/app/...` (answered
    /// 400 by the handshake when it is not a valid upgrade, rather than 404 by the API).
    pub fn is_upgrade(&self) -> bool {
        crate::ws::handshake::has_token(&self.headers, "upgrade", "websocket")
            || self.path.starts_with("/app/")
    }
}

/// Result of trying to parse the bytes received so far.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// The head is complete but the body is not: the whole request is `total` bytes, so there
    /// is no point parsing again before they are all in; `body` of them are the body (its
    /// Content-Length).
    NeedBody {
        /// Head and body.
        total: usize,
        /// The body alone.
        body: usize,
    },
    /// A request, and how many bytes it used.
    Complete(Box<Request>, usize),
    /// A malformed or oversized request: answer with this status and close.
    Error(u16, &'static str),
}

/// Parses one request from the start of `buf`.
pub fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    // The limit is on the head's length, however its bytes arrived: a head that came in one
    // read is held to it as much as one that trickled in.
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Parsed::Error(431, "request head too large");
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Parsed::Error(431, "request head too large")
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parsed::Error(431, "too many headers"),
        Err(_) => return Parsed::Error(400, "malformed HTTP request"),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Error(400, "malformed HTTP request");
    };
    let version = req.version.unwrap_or(1);
    let mut out = Request {
        method: method.to_string(),
        minor_version: version,
        ..Request::default()
    };
    for h in req.headers.iter() {
        let Ok(v) = std::str::from_utf8(h.value) else {
            return Parsed::Error(400, "header value is not UTF-8");
        };
        out.headers
            .push((h.name.to_ascii_lowercase(), v.trim().to_string()));
    }
    if out.header("transfer-encoding").is_some() {
        return Parsed::Error(411, "chunked bodies are not supported; send Content-Length");
    }
    // Digits only, and one value: a sign or conflicting duplicates are how request smuggling
    // starts (RFC 9112 6.3).
    let mut lengths = out.headers.iter().filter(|(k, _)| k == "content-length");
    let len = match lengths.next() {
        Some((_, v)) if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) => {
            match v.parse::<usize>() {
                Ok(n) if lengths.all(|(_, w)| w == v) => n,
                _ => return Parsed::Error(400, "bad Content-Length"),
            }
        }
        Some(_) => return Parsed::Error(400, "bad Content-Length"),
        None => 0,
    };
    if len > max_body {
        return Parsed::Error(413, "request body too large");
    }
    if buf.len() < head_len + len {
        return Parsed::NeedBody {
            total: head_len + len,
            body: len,
        };
    }
    out.body = buf[head_len..head_len + len].to_vec();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    out.path = match percent_decode(path) {
        Some(p) => p,
        None => return Parsed::Error(400, "bad percent-encoding in path"),
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(k), percent_decode(v)) {
            (Some(k), Some(v)) => out.query.push((k, v)),
            _ => return Parsed::Error(400, "bad percent-encoding in query"),
        }
    }
    let conn = out.header("connection").map(str::to_ascii_lowercase);
    out.keep_alive = match conn.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => version >= 1,
    };
    Parsed::Complete(Box::new(out), head_len + len)
}

/// Decodes `%XX` escapes (a `+` stays a `+`: SDKs sign the raw values). None on bad escapes or
/// non-UTF-8 results.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None; // from_str_radix alone would accept a sign, as in "%+1"
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_and_body() {
        let raw = b"POST /apps/1/events?auth_key=k&info=user_count%2Csubscription_count HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}extra";
        let Parsed::Complete(r, used) = parse(raw, 100) else {
            panic!()
        };
        assert_eq!(used, raw.len() - 5);
        assert_eq!(r.path, "/apps/1/events");
        assert_eq!(r.param("info"), Some("user_count,subscription_count"));
        assert_eq!(r.body, b"{}");
        assert!(r.keep_alive);
    }

    #[test]
    fn partial_and_errors() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost", 10),
            Parsed::Partial
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 10),
            Parsed::NeedBody { total: 43, body: 5 }
        ));
        assert!(matches!(
            parse(b"\x00\x01 junk\r\n\r\n", 10),
            Parsed::Error(400, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 50\r\n\r\n", 10),
            Parsed::Error(413, _)
        ));
        assert!(matches!(
            parse(b"GET /?a=%zz HTTP/1.1\r\n\r\n", 10),
            Parsed::Error(400, _)
        ));
        assert!(matches!(
            parse(b"GET /?a=%+1 HTTP/1.1\r\n\r\n", 10),
            Parsed::Error(400, _)
        ));
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\nab"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        ] {
            assert!(matches!(parse(head, 10), Parsed::Error(400, _)), "{head:?}");
        }
        let same = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
        assert!(matches!(parse(same, 10), Parsed::Complete(..)));
        let c = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        let Parsed::Complete(r, _) = parse(c, 10) else {
            panic!()
        };
        assert!(!r.keep_alive);
    }

    #[test]
    fn head_limit_is_on_the_head_however_it_arrived() {
        let head = |len: usize| {
            let start = "GET / HTTP/1.1\r\nX: ";
            let pad = "v".repeat(len - start.len() - 4);
            format!("{start}{pad}\r\n\r\n").into_bytes()
        };
        let fits = head(MAX_HEAD);
        assert!(matches!(parse(&fits, 10), Parsed::Complete(_, n) if n == MAX_HEAD));
        // One byte more, complete in one buffer, with or without bytes after it.
        let mut over = head(MAX_HEAD + 1);
        assert!(matches!(parse(&over, 10), Parsed::Error(431, _)));
        over.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(parse(&over, 10), Parsed::Error(431, _)));
        // Incomplete: refused once the buffer holds more than the limit.
        assert!(matches!(parse(&over[..MAX_HEAD], 10), Parsed::Partial));
        assert!(matches!(
            parse(&over[..MAX_HEAD + 1], 10),
            Parsed::Error(431, _)
        ));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(3);
        let pieces: [&[u8]; 12] = [
            b"GET ",
            b"POST ",
            b"/apps/1?",
            b"a=%",
            b"%2",
            b"\r\n",
            b"Content-Length: ",
            b"9",
            b"\r\n\r\n",
            b"HTTP/1.1",
            b"\xff",
            b"Transfer-Encoding: chunked",
        ];
        for _ in 0..20_000 {
            let n = rng.usize(0..10);
            let buf: Vec<u8> = (0..n)
                .flat_map(|_| pieces[rng.usize(..pieces.len())].to_vec())
                .collect();
            let _ = parse(&buf, 64);
        }
    }
}
