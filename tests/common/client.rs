//! The WebSocket client side: [`Client`], a connected Pusher client with helpers for every
//! protocol step, the [`Frame`]s it reads, free functions for a bare [`WsStream`], and the
//! socket-id and event-shape helpers tests compare against.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use super::server::{App, Server};
use super::util::WAIT;

/// tokio-tungstenite client stream.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One thing read from a WebSocket.
#[derive(Debug)]
pub enum Frame {
    /// A text frame holding a JSON object.
    Event(Value),
    /// A text frame that is not JSON.
    Text(String),
    /// Binary frame.
    Binary(Vec<u8>),
    /// WebSocket ping.
    Ping(Vec<u8>),
    /// WebSocket pong.
    Pong(Vec<u8>),
    /// Close frame: code (if any) and reason.
    Close(Option<u16>, String),
    /// Stream ended or errored.
    End(String),
}

/// Opens a WebSocket to `url` (the HTTP upgrade only; nothing is read).
pub(super) async fn ws_connect(url: &str) -> WsStream {
    match tokio::time::timeout(WAIT, connect_async(url)).await {
        Ok(Ok((ws, _resp))) => ws,
        Ok(Err(e)) => panic!("WebSocket connect to {url} failed: {e}"),
        Err(_) => panic!("WebSocket connect to {url} timed out"),
    }
}

/// Reads the next frame from a raw stream; None on timeout.
pub async fn next_frame(ws: &mut WsStream, limit: Duration) -> Option<Frame> {
    let msg = match tokio::time::timeout(limit, ws.next()).await {
        Err(_) => return None,
        Ok(None) => return Some(Frame::End("stream ended".into())),
        Ok(Some(Err(e))) => return Some(Frame::End(format!("error: {e}"))),
        Ok(Some(Ok(m))) => m,
    };
    Some(match msg {
        Message::Text(t) => match serde_json::from_str::<Value>(t.as_str()) {
            Ok(v) if v.is_object() => Frame::Event(v),
            _ => Frame::Text(t.as_str().to_string()),
        },
        Message::Binary(b) => Frame::Binary(b.to_vec()),
        Message::Ping(b) => Frame::Ping(b.to_vec()),
        Message::Pong(b) => Frame::Pong(b.to_vec()),
        Message::Close(Some(cf)) => Frame::Close(Some(u16::from(cf.code)), cf.reason.to_string()),
        Message::Close(None) => Frame::Close(None, String::new()),
        Message::Frame(_) => Frame::Text("<raw frame>".into()),
    })
}

/// Reads frames until a JSON event, skipping WS ping/pong; panics on anything else.
pub async fn recv_event(ws: &mut WsStream, what: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            None => panic!("timed out waiting for {what}"),
            Some(Frame::Event(v)) => return v,
            Some(Frame::Ping(_)) | Some(Frame::Pong(_)) => continue,
            Some(other) => panic!("waiting for {what}, got {other:?}"),
        }
    }
}

/// Reads frames until a close frame (skipping pings); returns its code. Panics
/// if a JSON event or the end of stream comes first.
pub async fn recv_close(ws: &mut WsStream, what: &str) -> Option<u16> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            None => panic!("timed out waiting for close ({what})"),
            Some(Frame::Close(code, _)) => return code,
            Some(Frame::Ping(_)) | Some(Frame::Pong(_)) => continue,
            Some(other) => panic!("waiting for close ({what}), got {other:?}"),
        }
    }
}

/// Connects to `ws://addr{path}` and expects `pusher:error` with `code` followed by
/// a close frame with the same code.
pub async fn expect_rejected(server: &Server, path: &str, code: u16) {
    let mut ws = server.connect_raw(path).await;
    let ev = recv_event(&mut ws, &format!("pusher:error {code} for {path}")).await;
    assert_eq!(ev["event"], "pusher:error", "for {path}: {ev}");
    assert!(
        ev["data"].is_object(),
        "pusher:error data must be an object: {ev}"
    );
    assert_eq!(ev["data"]["code"], json!(code), "for {path}: {ev}");
    assert!(ev["data"]["message"].is_string(), "message string: {ev}");
    let close = recv_close(&mut ws, path).await;
    assert_eq!(close, Some(code), "close code for {path}");
}

/// A connected Pusher client (connection_established already read).
pub struct Client {
    /// The underlying stream.
    pub ws: WsStream,
    /// socket_id from connection_established.
    pub socket_id: String,
    /// activity_timeout from connection_established.
    pub activity_timeout: u64,
    /// Shard owning the connection (second socket id number % workers).
    pub shard: usize,
}

impl Client {
    /// Reads and checks connection_established.
    pub async fn established(mut ws: WsStream, workers: u32) -> Client {
        let ev = recv_event(&mut ws, "pusher:connection_established").await;
        assert_eq!(
            ev["event"], "pusher:connection_established",
            "first frame: {ev}"
        );
        let raw = ev["data"]
            .as_str()
            .unwrap_or_else(|| panic!("connection_established data must be a string: {ev}"));
        let data: Value = serde_json::from_str(raw).expect("data is JSON");
        let socket_id = data["socket_id"]
            .as_str()
            .unwrap_or_else(|| panic!("socket_id string: {data}"))
            .to_string();
        assert!(is_socket_id(&socket_id), "socket id format {socket_id:?}");
        let activity_timeout = data["activity_timeout"]
            .as_u64()
            .unwrap_or_else(|| panic!("activity_timeout integer: {data}"));
        assert!(activity_timeout > 0, "activity_timeout must be > 0");
        let shard = shard_of(&socket_id, workers);
        Client {
            ws,
            socket_id,
            activity_timeout,
            shard,
        }
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, s: &str) {
        tokio::time::timeout(WAIT, self.ws.send(Message::text(s.to_string())))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Sends a raw WebSocket message.
    pub async fn send_msg(&mut self, m: Message) {
        tokio::time::timeout(WAIT, self.ws.send(m))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Next frame of any kind within `limit` (None on timeout).
    pub async fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        next_frame(&mut self.ws, limit).await
    }

    /// Next JSON event (WS ping/pong skipped); panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        let what = format!("an event on {}", self.socket_id);
        recv_event(&mut self.ws, &what).await
    }

    /// Next event, which must be `name`.
    pub async fn expect_event(&mut self, name: &str) -> Value {
        let ev = self.recv().await;
        assert_eq!(
            ev["event"], name,
            "socket {}: expected {name}, got {ev}",
            self.socket_id
        );
        ev
    }

    /// Skips events until one named `name`.
    pub async fn wait_event(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match next_frame(&mut self.ws, left).await {
                None => panic!("socket {}: timed out waiting for {name}", self.socket_id),
                Some(Frame::Event(v)) if v["event"] == name => return v,
                Some(Frame::Event(_)) | Some(Frame::Ping(_)) | Some(Frame::Pong(_)) => {}
                Some(other) => panic!(
                    "socket {}: waiting for {name}, got {other:?}",
                    self.socket_id
                ),
            }
        }
    }

    /// Next event must be pusher:error; returns (code, message).
    pub async fn expect_error(&mut self) -> (Value, String) {
        let ev = self.expect_event("pusher:error").await;
        let data = &ev["data"];
        assert!(
            data.is_object(),
            "pusher:error data must be an object: {ev}"
        );
        let msg = data["message"]
            .as_str()
            .unwrap_or_else(|| panic!("pusher:error message string: {ev}"))
            .to_string();
        (data["code"].clone(), msg)
    }

    /// Next event must be pusher:error with `code` (null or an integer).
    pub async fn expect_error_code(&mut self, code: Value) -> String {
        let (c, msg) = self.expect_error().await;
        assert_eq!(c, code, "pusher:error code (message {msg:?})");
        msg
    }

    /// Next event must be pusher:error with code null or 4009.
    pub async fn expect_soft_error(&mut self) -> String {
        let (c, msg) = self.expect_error().await;
        assert!(
            c.is_null() || c == json!(4009),
            "expected pusher:error code null or 4009, got {c} ({msg})"
        );
        msg
    }

    /// Next non-ping frame must be a close frame; returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let what = format!("close of {}", self.socket_id);
        recv_close(&mut self.ws, &what).await
    }

    /// Expects pusher:error `code` followed by close `code`.
    pub async fn expect_error_and_close(&mut self, code: u16) {
        self.expect_error_code(json!(code)).await;
        assert_eq!(self.expect_close().await, Some(code), "close code");
    }

    /// Sends pusher:ping and returns every event received before the pong (the ping barrier;
    /// see the `barrier` module for when it is sound).
    pub async fn ping_sync(&mut self) -> Vec<Value> {
        self.send(json!({"event":"pusher:ping","data":{}})).await;
        let mut seen = Vec::new();
        loop {
            let ev = self.recv().await;
            if ev["event"] == "pusher:pong" {
                return seen;
            }
            seen.push(ev);
        }
    }

    /// The connection is open and no event comes before the pong of a pusher:ping sent now:
    /// the ping barrier, sound against frames this connection's own shard would queue while
    /// handling earlier messages of this connection (see the `barrier` module).
    pub async fn assert_alive(&mut self) {
        let seen = self.ping_sync().await;
        assert!(
            seen.is_empty(),
            "socket {}: unexpected events {seen:?}",
            self.socket_id
        );
    }

    /// Sends pusher:subscribe with optional auth and channel_data.
    pub async fn send_subscribe(
        &mut self,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) {
        let mut data = json!({ "channel": channel });
        if let Some(a) = auth {
            data["auth"] = json!(a);
        }
        if let Some(cd) = channel_data {
            data["channel_data"] = json!(cd);
        }
        self.send(json!({"event":"pusher:subscribe","data":data}))
            .await;
    }

    /// Subscribes to a public channel (auth "") and expects subscription_succeeded.
    pub async fn subscribe(&mut self, channel: &str) {
        self.send_subscribe(channel, Some(""), None).await;
        self.expect_succeeded(channel).await;
    }

    /// Subscribes with a valid private auth and expects success.
    pub async fn subscribe_private(&mut self, app: &App, channel: &str) {
        let auth = app.private_auth(&self.socket_id, channel);
        self.send_subscribe(channel, Some(&auth), None).await;
        self.expect_succeeded(channel).await;
    }

    /// Subscribes to a presence channel as `user_id` (with `user_info`) and returns
    /// the decoded `presence` object from subscription_succeeded.
    pub async fn subscribe_presence(
        &mut self,
        app: &App,
        channel: &str,
        user_id: Value,
        user_info: Value,
    ) -> Value {
        let cd = json!({"user_id": user_id, "user_info": user_info}).to_string();
        let auth = app.presence_auth(&self.socket_id, channel, &cd);
        self.send_subscribe(channel, Some(&auth), Some(&cd)).await;
        let ev = self
            .expect_event("pusher_internal:subscription_succeeded")
            .await;
        assert_eq!(ev["channel"], channel, "{ev}");
        assert!(
            ev["data"].is_string(),
            "presence succeeded data must be a string: {ev}"
        );
        let data = data_of(&ev);
        let presence = data["presence"].clone();
        assert!(presence.is_object(), "presence payload: {ev}");
        presence
    }

    /// Expects subscription_succeeded for `channel` with data "{}".
    pub async fn expect_succeeded(&mut self, channel: &str) {
        let ev = self
            .expect_event("pusher_internal:subscription_succeeded")
            .await;
        assert_eq!(ev["channel"], channel, "{ev}");
        assert_eq!(ev["data"], json!("{}"), "succeeded data: {ev}");
    }

    /// Sends pusher:unsubscribe.
    pub async fn unsubscribe(&mut self, channel: &str) {
        self.send(json!({"event":"pusher:unsubscribe","data":{"channel":channel}}))
            .await;
    }

    /// Sends pusher:signin for `user_data`.
    pub async fn send_signin(&mut self, app: &App, user_data: &str) {
        let auth = app.user_auth(&self.socket_id, user_data);
        self.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}))
            .await;
    }

    /// Signs in and expects signin_success carrying the same user_data string.
    pub async fn signin(&mut self, app: &App, user_data: &str) {
        self.send_signin(app, user_data).await;
        let ev = self.expect_event("pusher:signin_success").await;
        let data = data_of(&ev);
        assert_eq!(data["user_data"], json!(user_data), "signin_success: {ev}");
    }

    /// Sends a client event.
    pub async fn client_event(&mut self, channel: &str, name: &str, data: Value) {
        self.send(json!({"event":name,"channel":channel,"data":data}))
            .await;
    }

    /// Sends a close frame and drops the connection.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })),
        )
        .await;
    }
}

/// `second number % workers` of a socket id (the owning shard).
pub fn shard_of(socket_id: &str, workers: u32) -> usize {
    let (_, b) = socket_id
        .split_once('.')
        .unwrap_or_else(|| panic!("socket id {socket_id:?} has no dot"));
    let b: u128 = b
        .parse()
        .unwrap_or_else(|_| panic!("socket id {socket_id:?} second part not a number"));
    (b % workers as u128) as usize
}

/// Whether `s` matches `^\d+\.\d+$`.
pub fn is_socket_id(s: &str) -> bool {
    match s.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// `data` of a frame decoded: JSON strings are parsed, objects returned as is.
pub fn data_of(frame: &Value) -> Value {
    match frame.get("data") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

/// Compares two JSON user ids as strings (`1` and `"1"` are equal).
pub fn id_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The event that a subscriber receives for an HTTP trigger.
pub fn channel_event(channel: &str, name: &str, data: &str) -> Value {
    json!({"event": name, "channel": channel, "data": data})
}
