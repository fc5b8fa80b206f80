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

/// Why an upgrade request is not a valid WebSocket handshake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The method is not GET.
    #[error("WebSocket upgrade requires GET")]
    Method,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("unsupported Sec-WebSocket-Version (13 required)")]
    Version,
    /// `Sec-WebSocket-Key` is absent or not 16 base64-encoded bytes.
    #[error("missing or malformed Sec-WebSocket-Key")]
    Key,
}

/// Validates the upgrade headers and returns the client key.
pub fn validate<'a>(
    method: &str,
    version: Option<&str>,
    key: Option<&'a str>,
) -> Result<&'a str, HandshakeError> {
    if method != "GET" {
        return Err(HandshakeError::Method);
    }
    if version.map(str::trim) != Some("13") {
        return Err(HandshakeError::Version);
    }
    let key = key.map(str::trim).ok_or(HandshakeError::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(key),
        _ => Err(HandshakeError::Key),
    }
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

    #[test]
    fn validation() {
        let k = Some("dGhlIHNhbXBsZSBub25jZQ==");
        assert!(validate("GET", Some("13"), k).is_ok());
        assert_eq!(validate("POST", Some("13"), k), Err(HandshakeError::Method));
        assert_eq!(validate("GET", Some("8"), k), Err(HandshakeError::Version));
        assert_eq!(
            validate("GET", Some("13"), Some("abc")),
            Err(HandshakeError::Key)
        );
    }
}
