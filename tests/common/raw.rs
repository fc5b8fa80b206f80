//! Raw TCP and a hand-rolled WebSocket client for malformed input: [`Raw`] writes any bytes
//! and reads what comes back, [`RawWs`] sends frames a real client library never would
//! (unmasked, bad opcodes, split anywhere), and [`build_frame`] / [`upgrade_request`] build
//! the bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::server::Server;
use super::util::WAIT;

/// A plain TCP connection for malformed input.
pub struct Raw {
    /// The stream.
    pub stream: TcpStream,
    /// Bytes read but not consumed yet.
    pub buf: Vec<u8>,
}

/// Result of reading a raw WebSocket close.
#[derive(Debug, PartialEq, Eq)]
pub enum RawClose {
    /// A close frame with this code (None: empty payload).
    Frame(Option<u16>),
    /// The TCP stream ended (or was reset) without a close frame.
    Eof,
    /// Nothing within the time limit.
    Timeout,
}

impl Raw {
    /// Connects to the server.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("tcp connect timed out")
            .expect("tcp connect");
        stream.set_nodelay(true).ok();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects with a receive buffer of about `rcvbuf` bytes (set before connecting, so the
    /// window never grows past it): a peer that does not read then lets the kernel hold little
    /// of what the server sends it, and the rest waits in the server.
    pub async fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> Raw {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(rcvbuf).expect("rcvbuf");
        let stream = tokio::time::timeout(WAIT, sock.connect(addr))
            .await
            .expect("tcp connect timed out")
            .expect("tcp connect");
        stream.set_nodelay(true).ok();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes bytes (errors ignored: the server may already have closed).
    pub async fn write(&mut self, data: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.stream.write_all(data)).await,
            Ok(Ok(()))
        )
    }

    /// Reads more bytes into `buf`. Ok(0) means EOF; Err on timeout.
    pub(super) async fn fill(&mut self, limit: Duration) -> Result<usize, ()> {
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout(limit, self.stream.read(&mut tmp)).await {
            Err(_) => Err(()),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(n)
            }
            Ok(Err(_)) => Ok(0),
        }
    }

    /// Reads until EOF; returns everything read and whether EOF was seen in time.
    pub async fn read_to_eof(&mut self, limit: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.fill(left).await {
                Ok(0) => return (std::mem::take(&mut self.buf), true),
                Ok(_) => {}
                Err(()) => return (std::mem::take(&mut self.buf), false),
            }
        }
    }

    /// Reads an HTTP response head (through the blank line); None on EOF/timeout.
    pub async fn read_head(&mut self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..pos]).to_string();
                self.buf.drain(..pos + 4);
                return Some(head);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.fill(left).await {
                Ok(0) | Err(()) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// Position of the first `needle` in `hay`.
pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A frame read by [`RawWs`].
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Whether the server masked it (it must not).
    pub masked: bool,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A hand-rolled WebSocket client that can send invalid frames.
pub struct RawWs {
    /// The TCP connection.
    pub raw: Raw,
    /// socket_id from connection_established.
    pub socket_id: String,
}

/// Builds a client frame; `mask` false produces an (illegal) unmasked frame.
pub fn build_frame(first_byte: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![first_byte];
    let mbit = if mask { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= 0xffff {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if mask {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The Sec-WebSocket-Accept value for a key.
pub fn ws_accept(key: &str) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

impl RawWs {
    /// Performs the upgrade for `/app/{key}?protocol=7` and reads connection_established.
    pub async fn connect(server: &Server) -> RawWs {
        RawWs::upgrade(server, Raw::connect(server.addr).await).await
    }

    /// Like [`RawWs::connect`], with a small receive buffer (see [`Raw::connect_with_rcvbuf`]).
    pub async fn connect_with_rcvbuf(server: &Server, rcvbuf: u32) -> RawWs {
        RawWs::upgrade(server, Raw::connect_with_rcvbuf(server.addr, rcvbuf).await).await
    }

    /// The shard the connection landed on (socket ids encode it).
    pub fn shard(&self, workers: u32) -> usize {
        super::client::shard_of(&self.socket_id, workers)
    }

    async fn upgrade(server: &Server, mut raw: Raw) -> RawWs {
        let path = format!(
            "/app/{}?protocol=7&client=js&version=8.4.0",
            server.app().key
        );
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        assert!(raw.write(upgrade_request(&path, key).as_bytes()).await);
        let head = raw.read_head(WAIT).await.expect("upgrade response head");
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade response: {head}");
        let accept = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("sec-websocket-accept")
                    .then(|| v.trim().to_string())
            })
            .expect("Sec-WebSocket-Accept header");
        assert_eq!(accept, ws_accept(key));
        let mut me = RawWs {
            raw,
            socket_id: String::new(),
        };
        let f = me
            .read_frame(WAIT)
            .await
            .expect("connection_established frame");
        assert_eq!(f.opcode, 1, "text frame");
        assert!(!f.masked, "server frames must not be masked");
        let v: Value = serde_json::from_slice(&f.payload).expect("json");
        assert_eq!(v["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(v["data"].as_str().expect("string data")).unwrap();
        me.socket_id = data["socket_id"].as_str().unwrap().to_string();
        me
    }

    /// Sends a masked frame with FIN set.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> bool {
        self.raw
            .write(&build_frame(0x80 | opcode, payload, true))
            .await
    }

    /// Sends raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        self.raw.write(bytes).await
    }

    /// Reads one frame; None on EOF or timeout.
    pub async fn read_frame(&mut self, limit: Duration) -> Option<RawFrame> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((frame, used)) = parse_frame(&self.raw.buf) {
                self.raw.buf.drain(..used);
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.fill(left).await {
                Ok(0) | Err(()) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads frames until a close frame, EOF or timeout. Text frames are collected.
    pub async fn read_close(&mut self, limit: Duration) -> (RawClose, Vec<Value>) {
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            if let Some((frame, used)) = parse_frame(&self.raw.buf) {
                self.raw.buf.drain(..used);
                match frame.opcode {
                    8 => {
                        let code = (frame.payload.len() >= 2)
                            .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                        return (RawClose::Frame(code), events);
                    }
                    1 => {
                        if let Ok(v) = serde_json::from_slice(&frame.payload) {
                            events.push(v);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.fill(left).await {
                Ok(0) => return (RawClose::Eof, events),
                Err(()) => return (RawClose::Timeout, events),
                Ok(_) => {}
            }
        }
    }

    /// Sends a pusher:ping text frame and waits for a pusher:pong text frame.
    pub async fn ping_pong(&mut self) {
        assert!(self.send(1, br#"{"event":"pusher:ping","data":{}}"#).await);
        loop {
            let f = self.read_frame(WAIT).await.expect("pong frame");
            if f.opcode == 1 {
                let v: Value = serde_json::from_slice(&f.payload).expect("json");
                if v["event"] == "pusher:pong" {
                    return;
                }
            }
        }
    }
}

/// Parses one frame from the front of `buf`: the frame and the bytes it used, or None while
/// it is incomplete.
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7f) as usize;
    let mut pos = 2;
    if len == 126 {
        if buf.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[2..10]);
        len = u64::from_be_bytes(b) as usize;
        pos = 10;
    }
    let mut key = [0u8; 4];
    if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        key.copy_from_slice(&buf[pos..pos + 4]);
        pos += 4;
    }
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some((
        RawFrame {
            fin,
            opcode,
            masked,
            payload,
        },
        pos + len,
    ))
}
