//! Server-to-client frames. Each is JSON text wrapped once in a WebSocket text frame; the result
//! is shared by every receiver.

use bytes::Bytes;

use crate::ws::codec;

/// Appends `s` as a JSON string literal.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// `s` as a JSON string literal.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    json_str(&mut out, s);
    out
}

/// The JSON text of a channel or connection event. `data` is raw JSON (already a string literal
/// where the protocol double-encodes); `user_id` is raw JSON too.
pub fn event_json(
    event: &str,
    channel: Option<&str>,
    data: Option<&str>,
    user_id: Option<&str>,
) -> String {
    let mut out = String::with_capacity(
        32 + event.len() + channel.map_or(0, str::len) + data.map_or(0, str::len),
    );
    out.push_str("{\"event\":");
    json_str(&mut out, event);
    if let Some(c) = channel {
        out.push_str(",\"channel\":");
        json_str(&mut out, c);
    }
    if let Some(d) = data {
        out.push_str(",\"data\":");
        out.push_str(d);
    }
    if let Some(u) = user_id {
        out.push_str(",\"user_id\":");
        out.push_str(u);
    }
    out.push('}');
    out
}

/// A complete WebSocket frame for an event.
pub fn event(event: &str, channel: Option<&str>, data: Option<&str>) -> Bytes {
    codec::text(event_json(event, channel, data, None).as_bytes())
}

/// A frame whose `data` is the JSON string holding `inner` (double encoding).
pub fn event_with_string_data(name: &str, channel: Option<&str>, inner: &str) -> Bytes {
    event(name, channel, Some(&quoted(inner)))
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> Bytes {
    let inner = format!(
        "{{\"socket_id\":{},\"activity_timeout\":{}}}",
        quoted(socket_id),
        activity_timeout
    );
    event_with_string_data("pusher:connection_established", None, &inner)
}

/// `pusher:error` with an object `data`, as the real service sends it.
pub fn error(code: Option<u16>, message: &str) -> Bytes {
    let code = code.map_or_else(|| "null".to_string(), |c| c.to_string());
    let data = format!("{{\"code\":{code},\"message\":{}}}", quoted(message));
    event("pusher:error", None, Some(&data))
}

/// `pusher:pong`.
pub fn pong() -> Bytes {
    event("pusher:pong", None, Some("\"{}\""))
}

/// `pusher:ping` from the server.
pub fn ping() -> Bytes {
    event("pusher:ping", None, Some("\"{}\""))
}

/// `pusher_internal:subscription_succeeded` for non-presence channels.
pub fn subscription_succeeded(channel: &str) -> Bytes {
    event(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Some("\"{}\""),
    )
}

/// Presence member data: `{"user_id":<raw>,"user_info":<raw>}`.
pub fn member_json(raw_id: &str, info: Option<&str>) -> String {
    match info {
        Some(i) => format!("{{\"user_id\":{raw_id},\"user_info\":{i}}}"),
        None => format!("{{\"user_id\":{raw_id}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &Bytes) -> &str {
        let start = if frame[1] == 126 { 4 } else { 2 };
        std::str::from_utf8(&frame[start..]).unwrap()
    }

    #[test]
    fn escapes() {
        assert_eq!(quoted("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\u0001é""#);
    }

    #[test]
    fn shapes() {
        assert_eq!(
            payload(&connection_established("1.2", 120)),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#
        );
        assert_eq!(
            payload(&error(Some(4009), "no")),
            r#"{"event":"pusher:error","data":{"code":4009,"message":"no"}}"#
        );
        assert_eq!(
            payload(&error(None, "x")),
            r#"{"event":"pusher:error","data":{"code":null,"message":"x"}}"#
        );
        assert_eq!(
            payload(&subscription_succeeded("c")),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#
        );
        assert_eq!(
            event_json("client-a", Some("presence-x"), Some("{}"), Some("5")),
            r#"{"event":"client-a","channel":"presence-x","data":{},"user_id":5}"#
        );
    }
}
