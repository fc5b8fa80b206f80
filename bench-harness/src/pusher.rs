//! Minimal Pusher protocol client on tokio-tungstenite: connect and wait for
//! `pusher:connection_established`, send events, subscribe, and decode
//! incoming frames.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::net::{connect_tcp, BaseUrl};

/// An established WebSocket to the server.
pub type Ws = WebSocketStream<TcpStream>;

/// Why a connection attempt or a subscription failed, as a short label for the error counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl Failure {
    fn new(kind: &str) -> Self {
        Failure(kind.to_string())
    }
}

/// A connected, established Pusher client connection.
pub struct PusherConn {
    /// The WebSocket.
    pub ws: Ws,
    /// socket_id from `pusher:connection_established`.
    pub socket_id: String,
}

/// A decoded server frame; `data` stays raw JSON.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    /// Event name.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// Channel, when the event belongs to one.
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    /// Raw JSON of the `data` member.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

impl Frame<'_> {
    /// The `data` member as text: a JSON string is decoded, anything else is returned raw.
    pub fn data_text(&self) -> Option<Cow<'_, str>> {
        let raw = self.data?.get();
        if raw.starts_with('"') {
            serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(raw))
        }
    }

    /// Error code of a `pusher:error` frame, as a label (`pusher_error_4301`, `pusher_error_null`).
    pub fn error_label(&self) -> String {
        let code = self
            .data_text()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("code").and_then(|c| c.as_i64()));
        match code {
            Some(c) => format!("pusher_error_{c}"),
            None => "pusher_error_null".to_string(),
        }
    }
}

/// Decodes a text frame.
pub fn parse_frame(text: &str) -> Option<Frame<'_>> {
    serde_json::from_str(text).ok()
}

/// Finds `"t":<digits>` in decoded event data (the scheduled send time in unix ns).
pub fn payload_time(data: &str) -> Option<u64> {
    let i = data.find("\"t\":")? + 4;
    let digits: &str = data[i..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits.parse().ok()
}

/// Builds a payload `{"t":<sched_ns>,"s":<seq>,"p":"xxx.."}` of roughly `bytes` bytes.
pub fn make_payload(sched_ns: u64, seq: u64, bytes: usize) -> String {
    let head = format!("{{\"t\":{sched_ns},\"s\":{seq},\"p\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: the harness holds many thousands of mostly idle sockets.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(4 << 20)
}

/// Connects to `/app/{key}` and waits for `pusher:connection_established`.
pub async fn connect(
    base: &BaseUrl,
    key: &str,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<PusherConn, Failure> {
    match tokio::time::timeout(timeout, connect_inner(base, key, source)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::new("connect_timeout")),
    }
}

async fn connect_inner(
    base: &BaseUrl,
    key: &str,
    source: Option<IpAddr>,
) -> Result<PusherConn, Failure> {
    let tcp = connect_tcp(base.addr, source).await.map_err(|e| {
        Failure(match e.raw_os_error() {
            Some(libc::EADDRNOTAVAIL) => "tcp_no_ports".to_string(),
            Some(libc::EMFILE) | Some(libc::ENFILE) => "tcp_fd_limit".to_string(),
            Some(libc::ECONNREFUSED) => "tcp_refused".to_string(),
            _ => "tcp_connect".to_string(),
        })
    })?;
    let url = format!(
        "ws://{}{}/app/{key}?protocol=7&client=js&version=8.4.0&flash=false",
        base.host, base.prefix
    );
    let (mut ws, _resp) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
        .await
        .map_err(|_| Failure::new("ws_handshake"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let frame = parse_frame(&t).ok_or_else(|| Failure::new("bad_frame"))?;
                match frame.event.as_ref() {
                    "pusher:connection_established" => {
                        let data = frame.data_text().unwrap_or_default();
                        let v: serde_json::Value = serde_json::from_str(&data)
                            .map_err(|_| Failure::new("bad_established"))?;
                        let socket_id = v
                            .get("socket_id")
                            .and_then(|s| s.as_str())
                            .ok_or_else(|| Failure::new("bad_established"))?
                            .to_string();
                        return Ok(PusherConn { ws, socket_id });
                    }
                    "pusher:error" => return Err(Failure(frame.error_label())),
                    _ => return Err(Failure::new("unexpected_first_frame")),
                }
            }
            Some(Ok(Message::Close(c))) => {
                let code = c.map(|c| u16::from(c.code)).unwrap_or(0);
                return Err(Failure(format!("closed_{code}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(Failure::new("ws_read")),
        }
    }
}

impl PusherConn {
    /// Sends one text frame.
    pub async fn send(&mut self, text: String) -> Result<(), Failure> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|_| Failure::new("ws_write"))
    }

    /// Sends `pusher:subscribe` for `channel` with optional auth and channel_data.
    pub async fn send_subscribe(
        &mut self,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Result<(), Failure> {
        let mut data = serde_json::json!({ "channel": channel });
        if let Some(a) = auth {
            data["auth"] = a.into();
        }
        if let Some(cd) = channel_data {
            data["channel_data"] = cd.into();
        }
        let msg = serde_json::json!({ "event": "pusher:subscribe", "data": data });
        self.send(msg.to_string()).await
    }

    /// Sends `pusher:unsubscribe` for `channel`.
    pub async fn send_unsubscribe(&mut self, channel: &str) -> Result<(), Failure> {
        let msg =
            serde_json::json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } });
        self.send(msg.to_string()).await
    }

    /// Subscribes and waits until `pusher_internal:subscription_succeeded` for
    /// `channel` arrives (other frames are skipped, pings answered).
    pub async fn subscribe(
        &mut self,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
        timeout: Duration,
    ) -> Result<Duration, Failure> {
        let start = Instant::now();
        self.send_subscribe(channel, auth, channel_data).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(Failure::new("subscribe_timeout")),
                Ok(m) => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let Some(frame) = parse_frame(&t) else {
                        return Err(Failure::new("bad_frame"));
                    };
                    match frame.event.as_ref() {
                        "pusher_internal:subscription_succeeded"
                            if frame.channel.as_deref() == Some(channel) =>
                        {
                            return Ok(start.elapsed());
                        }
                        "pusher:error" => return Err(Failure(frame.error_label())),
                        "pusher:subscription_error" => {
                            return Err(Failure::new("subscription_error"))
                        }
                        "pusher:ping" => self.pong().await?,
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.map(|c| u16::from(c.code)).unwrap_or(0);
                    return Err(Failure(format!("closed_{code}")));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Failure::new("ws_read")),
            }
        }
    }

    /// Answers a server `pusher:ping`.
    pub async fn pong(&mut self) -> Result<(), Failure> {
        self.send(r#"{"event":"pusher:pong","data":{}}"#.to_string())
            .await
    }

    /// Sends a client `pusher:ping`.
    pub async fn ping(&mut self) -> Result<(), Failure> {
        self.send(r#"{"event":"pusher:ping","data":{}}"#.to_string())
            .await
    }

    /// Starts a close handshake and waits briefly for the server's close frame.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip() {
        let p = make_payload(123456789, 7, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(payload_time(&p), Some(123456789));
        let frame_text = serde_json::json!({"event":"e","channel":"c","data":p}).to_string();
        let f = parse_frame(&frame_text).unwrap();
        assert_eq!(payload_time(&f.data_text().unwrap()), Some(123456789));
        let obj = format!(r#"{{"event":"client-x","channel":"c","data":{p}}}"#);
        let f = parse_frame(&obj).unwrap();
        assert_eq!(payload_time(&f.data_text().unwrap()), Some(123456789));
    }

    #[test]
    fn error_labels() {
        let f =
            parse_frame(r#"{"event":"pusher:error","data":{"code":4301,"message":"x"}}"#).unwrap();
        assert_eq!(f.error_label(), "pusher_error_4301");
        let f = parse_frame(r#"{"event":"pusher:error","data":"{\"code\":null}"}"#).unwrap();
        assert_eq!(f.error_label(), "pusher_error_null");
    }
}
