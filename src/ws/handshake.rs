//! The WebSocket upgrade: checks the request headers and builds the 101 response.

use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut h = Sha1::new();
    h.update(client_key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The `101 Switching Protocols` response for a valid upgrade.
pub fn switching_response(client_key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(client_key)
    )
    .into_bytes()
}

/// Why an upgrade request is not a valid WebSocket handshake (RFC 6455 section 4.2.1).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The method is not GET.
    #[error("WebSocket upgrade requires GET")]
    Method,
    /// HTTP/1.0: an upgrade needs HTTP/1.1 or later.
    #[error("WebSocket upgrade requires HTTP/1.1")]
    HttpVersion,
    /// No `Host` header, an empty one, or more than one.
    #[error("WebSocket upgrade requires exactly one non-empty Host header")]
    Host,
    /// No `Upgrade` header with the token `websocket`.
    #[error("WebSocket upgrade requires an Upgrade header with the token websocket")]
    Upgrade,
    /// No `Connection` header with the token `Upgrade`.
    #[error("WebSocket upgrade requires a Connection header with the token Upgrade")]
    Connection,
    /// `Sec-WebSocket-Key` is absent or not 16 base64-encoded bytes.
    #[error("missing or malformed Sec-WebSocket-Key (16 bytes, base64)")]
    Key,
    /// `Sec-WebSocket-Version` is absent or not 13.
    #[error("unsupported Sec-WebSocket-Version (13 required)")]
    Version,
}

impl HandshakeError {
    /// The HTTP status it is answered with: 426 (with `Sec-WebSocket-Version: 13`, RFC 6455
    /// section 4.2.2) for a version we do not speak, 400 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Version => 426,
            _ => 400,
        }
    }
}

/// The parts of a request the handshake checks.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeRequest<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The HTTP/1.x minor version (0 or 1).
    pub minor_version: u8,
    /// Every header, names lower-cased, repeats kept in order.
    pub headers: &'a [(String, String)],
}

impl<'a> UpgradeRequest<'a> {
    fn values(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether any `name` header (lower-case) holds `token` in its comma-separated list, compared
/// case-insensitively (`Connection: keep-alive, Upgrade` holds `upgrade`). A list may be split
/// over several header lines (RFC 9110 section 5.3).
pub fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Validates an opening handshake as RFC 6455 section 4.2.1 describes it and returns the
/// client key: GET, HTTP/1.1 or later, one `Host`, `Upgrade` holding `websocket`, `Connection`
/// holding `Upgrade`, a `Sec-WebSocket-Key` of 16 base64-encoded bytes and
/// `Sec-WebSocket-Version: 13`.
pub fn validate<'a>(req: &UpgradeRequest<'a>) -> Result<&'a str, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::Method);
    }
    if req.minor_version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    let mut hosts = req.values("host");
    match (hosts.next(), hosts.next()) {
        (Some(h), None) if !h.trim().is_empty() => {}
        _ => return Err(HandshakeError::Host),
    }
    if !has_token(req.headers, "upgrade", "websocket") {
        return Err(HandshakeError::Upgrade);
    }
    if !has_token(req.headers, "connection", "upgrade") {
        return Err(HandshakeError::Connection);
    }
    let key = req
        .values("sec-websocket-key")
        .next()
        .map(str::trim)
        .ok_or(HandshakeError::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::Key),
    }
    if req.values("sec-websocket-version").next().map(str::trim) != Some("13") {
        return Err(HandshakeError::Version);
    }
    Ok(key)
}

/// The complete HTTP response refusing a handshake: the status of [`HandshakeError::status`],
/// `Sec-WebSocket-Version: 13` on a 426, and an `{"error": ...}` body; the connection closes.
pub fn refusal(e: &HandshakeError) -> Vec<u8> {
    let (status, reason, extra) = match e.status() {
        426 => (426, "Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
        _ => (400, "Bad Request", ""),
    };
    // The messages are fixed ASCII without quotes or backslashes, so they need no escaping.
    let body = format!("{{\"error\":\"{e}\"}}");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_example_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const GOOD: [(&str, &str); 5] = [
        ("host", "example.com"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    fn check(method: &str, minor: u8, h: &[(String, String)]) -> Result<String, HandshakeError> {
        validate(&UpgradeRequest {
            method,
            minor_version: minor,
            headers: h,
        })
        .map(str::to_owned)
    }

    /// GOOD with header `name` replaced by `value` (removed when None).
    fn with(name: &str, value: Option<&str>) -> Vec<(String, String)> {
        let mut h: Vec<(&str, &str)> = GOOD.iter().copied().filter(|(k, _)| *k != name).collect();
        if let Some(v) = value {
            h.push((name, v));
        }
        headers(&h)
    }

    #[test]
    fn validation() {
        let good = headers(&GOOD);
        assert_eq!(
            check("GET", 1, &good).as_deref(),
            Ok("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(check("POST", 1, &good), Err(HandshakeError::Method));
        assert_eq!(check("GET", 0, &good), Err(HandshakeError::HttpVersion));
        use HandshakeError as E;
        for (name, value, err) in [
            ("host", None, E::Host),
            ("host", Some(" "), E::Host),
            ("upgrade", None, E::Upgrade),
            ("upgrade", Some("h2c"), E::Upgrade),
            ("upgrade", Some("websockets"), E::Upgrade),
            ("connection", None, E::Connection),
            ("connection", Some("keep-alive"), E::Connection),
            ("connection", Some("upgraded"), E::Connection),
            ("sec-websocket-key", None, E::Key),
            ("sec-websocket-key", Some("abc"), E::Key),
            ("sec-websocket-key", Some("YWJjZGVmZ2hpamtsbW5v"), E::Key), // 15 bytes
            ("sec-websocket-version", None, E::Version),
            ("sec-websocket-version", Some("8"), E::Version),
        ] {
            assert_eq!(
                check("GET", 1, &with(name, value)),
                Err(err),
                "{name}: {value:?}"
            );
        }
        let mut two_hosts = good.clone();
        two_hosts.push(("host".into(), "other.example".into()));
        assert_eq!(check("GET", 1, &two_hosts), Err(E::Host));
        for (name, value) in [
            ("connection", "keep-alive, Upgrade"),
            ("connection", "upgrade"),
            ("connection", " , UPGRADE ,"),
            ("upgrade", "WebSocket"),
            ("upgrade", "h2c, websocket"),
        ] {
            assert!(check("GET", 1, &with(name, Some(value))).is_ok(), "{value}");
        }
        // A list split over two header lines.
        let mut split = with("connection", Some("keep-alive"));
        split.push(("connection".into(), "Upgrade".into()));
        assert!(check("GET", 1, &split).is_ok());
    }

    #[test]
    fn refusals() {
        let r = String::from_utf8(refusal(&HandshakeError::Version)).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{r}");
        assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{r}");
        let r = String::from_utf8(refusal(&HandshakeError::Connection)).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(!r.contains("Sec-WebSocket-Version"), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{r}"
        );
        assert_eq!(
            body,
            r#"{"error":"WebSocket upgrade requires a Connection header with the token Upgrade"}"#
        );
    }
}
