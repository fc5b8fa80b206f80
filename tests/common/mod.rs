//! Shared helpers for the ringpush integration tests: a server process wrapper, a
//! WebSocket client, a raw TCP / raw WebSocket client and a signed HTTP API client.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

/// How long any single awaited frame or response may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long a "nothing else arrives" check listens.
pub const QUIET: Duration = Duration::from_millis(300);

static COUNTER: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// One `[[apps]]` entry of the TOML config, plus the helpers that sign for it.
#[derive(Clone, Debug)]
pub struct App {
    /// App id (used in HTTP API paths).
    pub id: String,
    /// App key (used in WebSocket paths and auth strings).
    pub key: String,
    /// App secret.
    pub secret: String,
    /// Extra `key = value` lines (value already TOML-encoded).
    pub extra: Vec<(String, String)>,
    /// Bodies of `[[apps.webhooks]]` tables (TOML lines).
    pub webhooks: Vec<String>,
}

impl App {
    /// An app with the given credentials and every other setting at its default.
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        App {
            id: id.to_string(),
            key: key.to_string(),
            secret: secret.to_string(),
            extra: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    /// Adds a setting; `value` is written into the TOML file verbatim.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a `[[apps.webhooks]]` table with these TOML lines.
    pub fn webhook(mut self, body: &str) -> Self {
        self.webhooks.push(body.to_string());
        self
    }

    fn to_toml(&self) -> String {
        let mut s = String::from("[[apps]]\n");
        s += &format!("id = {}\n", toml_str(&self.id));
        s += &format!("key = {}\n", toml_str(&self.key));
        s += &format!("secret = {}\n", toml_str(&self.secret));
        for (k, v) in &self.extra {
            s += &format!("{k} = {v}\n");
        }
        for w in &self.webhooks {
            s += &format!("[[apps.webhooks]]\n{w}\n");
        }
        s
    }

    /// Lowercase hex HMAC-SHA256 of `msg` with the app secret.
    pub fn sign(&self, msg: &str) -> String {
        hmac_hex(&self.secret, msg)
    }

    /// `key:hmac(socket_id:channel)`.
    pub fn private_auth(&self, socket_id: &str, channel: &str) -> String {
        format!(
            "{}:{}",
            self.key,
            self.sign(&format!("{socket_id}:{channel}"))
        )
    }

    /// `key:hmac(socket_id:channel:channel_data)`.
    pub fn presence_auth(&self, socket_id: &str, channel: &str, channel_data: &str) -> String {
        format!(
            "{}:{}",
            self.key,
            self.sign(&format!("{socket_id}:{channel}:{channel_data}"))
        )
    }

    /// `key:hmac(socket_id::user::user_data)`.
    pub fn user_auth(&self, socket_id: &str, user_data: &str) -> String {
        format!(
            "{}:{}",
            self.key,
            self.sign(&format!("{socket_id}::user::{user_data}"))
        )
    }
}

impl Default for App {
    fn default() -> Self {
        App::new("app-id", "app-key", "app-secret")
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string encodes")
}

/// The `[server]` table plus the apps.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of shards.
    pub workers: u32,
    /// Seconds of client silence before the server pings.
    pub activity_timeout: u64,
    /// Seconds to wait for a pong.
    pub pong_timeout: u64,
    /// Seconds to finish the HTTP upgrade / request.
    pub handshake_timeout: u64,
    /// Seconds allowed for a graceful shutdown.
    pub shutdown_grace: u64,
    /// Extra `[server]` lines (value already TOML-encoded).
    pub extra: Vec<(String, String)>,
    /// The apps.
    pub apps: Vec<App>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 2,
            activity_timeout: 120,
            pong_timeout: 30,
            handshake_timeout: 10,
            shutdown_grace: 5,
            extra: Vec::new(),
            apps: vec![App::default()],
        }
    }
}

impl Config {
    /// Default config whose only app is `app`.
    pub fn with_app(app: App) -> Self {
        Config {
            apps: vec![app],
            ..Config::default()
        }
    }

    /// Adds a `[server]` setting written verbatim.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.extra.push((key.to_string(), value.to_string()));
        self
    }

    fn to_toml(&self) -> String {
        let mut s = String::from("[server]\nhost = \"127.0.0.1\"\nport = 0\n");
        s += &format!("workers = {}\n", self.workers);
        s += &format!("activity_timeout = {}\n", self.activity_timeout);
        s += &format!("pong_timeout = {}\n", self.pong_timeout);
        s += &format!("handshake_timeout = {}\n", self.handshake_timeout);
        s += &format!("shutdown_grace = {}\n", self.shutdown_grace);
        for (k, v) in &self.extra {
            s += &format!("{k} = {v}\n");
        }
        for app in &self.apps {
            s += "\n";
            s += &app.to_toml();
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

/// A running ringpush process; SIGTERMed (then killed) on drop.
pub struct Server {
    child: Child,
    /// Address from the "listening on" line.
    pub addr: SocketAddr,
    /// The config it was started with.
    pub config: Config,
    stderr: Arc<Mutex<String>>,
    config_path: PathBuf,
    exit: Option<ExitStatus>,
}

fn binary_path() -> String {
    std::env::var("RINGPUSH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ringpush").to_string())
}

impl Server {
    /// Starts a server with the default config (2 workers, app-id/app-key/app-secret).
    pub fn start() -> Self {
        Self::start_with(Config::default())
    }

    /// Starts a server with the given config and waits for its "listening on" line.
    pub fn start_with(config: Config) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let config_path = std::env::temp_dir().join(format!(
            "ringpush-itest-{}-{n}-{nanos}.toml",
            std::process::id()
        ));
        std::fs::write(&config_path, config.to_toml()).expect("write temp config");
        let mut child = Command::new(binary_path())
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringpush binary");

        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr pipe");
        let err_buf = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                let mut b = err_buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });

        let (tx, rx) = mpsc::channel::<Result<SocketAddr, String>>();
        let out_pipe = child.stdout.take().expect("stdout pipe");
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains("listening on") {
                    sent = true;
                    let res = line
                        .strip_prefix("ringpush listening on ")
                        .ok_or_else(|| format!("unexpected listening line {line:?}"))
                        .and_then(|rest| {
                            rest.trim()
                                .parse::<SocketAddr>()
                                .map_err(|e| format!("bad address in {line:?}: {e}"))
                        });
                    let _ = tx.send(res);
                }
            }
            if !sent {
                let _ = tx.send(Err("stdout closed before the listening line".into()));
            }
        });

        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(addr)) => addr,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                let err = stderr.lock().unwrap().clone();
                let _ = std::fs::remove_file(&config_path);
                panic!(
                    "ringpush did not start: {other:?}\nconfig:\n{}\nstderr:\n{err}",
                    config.to_toml()
                );
            }
        };
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "listening address");
        assert_ne!(addr.port(), 0, "port 0 must be resolved to the real port");
        Server {
            child,
            addr,
            config,
            stderr,
            config_path,
            exit: None,
        }
    }

    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the server process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Number of shards configured.
    pub fn workers(&self) -> u32 {
        self.config.workers
    }

    /// The first app of the config.
    pub fn app(&self) -> App {
        self.config.apps[0].clone()
    }

    /// The app's WebSocket URL with the pusher-js query string.
    pub fn ws_url(&self, key: &str) -> String {
        format!(
            "ws://{}/app/{key}?protocol=7&client=js&version=8.4.0&flash=false",
            self.addr
        )
    }

    /// Connects to the first app and reads connection_established.
    pub async fn connect(&self) -> Client {
        let url = self.ws_url(&self.config.apps[0].key);
        self.connect_url(&url).await
    }

    /// Connects to `ws://addr{path}` and reads connection_established.
    pub async fn connect_path(&self, path: &str) -> Client {
        let url = format!("ws://{}{path}", self.addr);
        self.connect_url(&url).await
    }

    async fn connect_url(&self, url: &str) -> Client {
        let ws = ws_connect(url).await;
        Client::established(ws, self.workers()).await
    }

    /// Opens a WebSocket to `ws://addr{path}` without reading anything.
    pub async fn connect_raw(&self, path: &str) -> WsStream {
        ws_connect(&format!("ws://{}{path}", self.addr)).await
    }

    /// Opens connections until one lands on `shard` (others are closed).
    pub async fn connect_on_shard(&self, shard: usize) -> Client {
        for _ in 0..400 {
            let c = self.connect().await;
            if c.shard == shard {
                return c;
            }
            c.close().await;
        }
        panic!("no connection landed on shard {shard} in 400 tries");
    }

    /// `per_shard` connections on every shard, ordered shard 0 first.
    pub async fn connect_spread(&self, per_shard: usize) -> Vec<Vec<Client>> {
        let workers = self.workers() as usize;
        let mut out: Vec<Vec<Client>> = (0..workers).map(|_| Vec::new()).collect();
        for _ in 0..(400 * per_shard.max(1)) {
            if out.iter().all(|v| v.len() >= per_shard) {
                return out;
            }
            let c = self.connect().await;
            if out[c.shard].len() < per_shard {
                out[c.shard].push(c);
            } else {
                c.close().await;
            }
        }
        panic!("could not spread {per_shard} connections over {workers} shards");
    }

    /// Signed HTTP API client for the first app.
    pub fn api(&self) -> Api {
        Api {
            addr: self.addr,
            app: self.app(),
        }
    }

    /// Signed HTTP API client for the given app.
    pub fn api_for(&self, app: &App) -> Api {
        Api {
            addr: self.addr,
            app: app.clone(),
        }
    }

    /// Sends a signal by name ("TERM", "INT", "KILL") to the process.
    pub fn signal(&self, sig: &str) {
        let signo = match sig {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "KILL" => libc::SIGKILL,
            other => panic!("unsupported signal {other}"),
        };
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signo) };
        assert_eq!(rc, 0, "kill -{sig} failed");
    }

    /// Waits for the process to exit; None if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.exit {
                return Some(st);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.exit = Some(st);
                false
            }
            _ => true,
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.is_running() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(8);
            loop {
                match self.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        break;
                    }
                }
            }
        }
        if std::thread::panicking() {
            let err = self.stderr();
            let tail: String = if err.len() > 6000 {
                err[err.len() - 6000..].to_string()
            } else {
                err
            };
            eprintln!("---- ringpush stderr (tail) ----\n{tail}\n---- end ----");
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

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

/// Hex HMAC-SHA256.
pub fn hmac_hex(secret: &str, msg: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Hex MD5.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
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

/// Retries `f` every 50 ms for up to 10 s until `ok` holds; returns the last value.
pub async fn poll_until<T, Fut, F, P>(mut f: F, ok: P) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    P: Fn(&T) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = f().await;
        if ok(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique channel/user suffix for one test.
pub fn uniq(prefix: &str) -> String {
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::SeqCst))
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

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

async fn ws_connect(url: &str) -> WsStream {
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

    /// Sends pusher:ping and returns every event received before the pong.
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

    /// The connection is open and nothing is queued before a pusher:pong.
    pub async fn assert_alive(&mut self) {
        let seen = self.ping_sync().await;
        assert!(
            seen.is_empty(),
            "socket {}: unexpected events {seen:?}",
            self.socket_id
        );
    }

    /// Nothing at all arrives within `QUIET`.
    pub async fn assert_quiet(&mut self) {
        if let Some(f) = self.next_frame(QUIET).await {
            panic!("socket {}: expected silence, got {f:?}", self.socket_id);
        }
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

// ---------------------------------------------------------------------------
// Raw TCP and raw WebSocket
// ---------------------------------------------------------------------------

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

    /// Writes bytes (errors ignored: the server may already have closed).
    pub async fn write(&mut self, data: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.stream.write_all(data)).await,
            Ok(Ok(()))
        )
    }

    /// Reads more bytes into `buf`. Ok(0) means EOF; Err on timeout.
    async fn fill(&mut self, limit: Duration) -> Result<usize, ()> {
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
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
        let path = format!(
            "/app/{}?protocol=7&client=js&version=8.4.0",
            server.app().key
        );
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut raw = Raw::connect(server.addr).await;
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

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header (name lowercased, value).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// Body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    /// First header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and that an error body is `{"error": "..."}`.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "status; body {:?}", self.text());
        let v = self.json();
        assert!(
            v["error"].is_string(),
            "error body must be {{\"error\":...}}: {v}"
        );
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    raw: Raw,
}

impl HttpConn {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> HttpConn {
        HttpConn {
            raw: Raw::connect(addr).await,
        }
    }

    /// Sends one request and reads its response.
    pub async fn request(&mut self, method: &str, target: &str, body: &[u8]) -> HttpResponse {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if !body.is_empty() || method == "POST" {
            req += "Content-Type: application/json\r\n";
            req += &format!("Content-Length: {}\r\n", body.len());
        }
        req += "\r\n";
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        assert!(self.raw.write(&bytes).await, "write HTTP request");
        self.read_response().await
    }

    /// Reads one response.
    pub async fn read_response(&mut self) -> HttpResponse {
        let head = self.raw.read_head(WAIT).await.unwrap_or_else(|| {
            panic!(
                "no HTTP response head; got {:?}",
                String::from_utf8_lossy(&self.raw.buf)
            )
        });
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.split(' ');
        let version = parts.next().unwrap_or("");
        assert!(
            version.starts_with("HTTP/1."),
            "status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if let Some(len) = get("content-length") {
            let len: usize = len.parse().expect("content-length");
            self.read_exact_buf(len).await
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            self.read_chunked().await
        } else {
            let (b, _) = self.raw.read_to_eof(WAIT).await;
            b
        };
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    async fn read_exact_buf(&mut self, len: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        while self.raw.buf.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.fill(left).await {
                Ok(0) | Err(()) => panic!("HTTP body shorter than content-length"),
                Ok(_) => {}
            }
        }
        self.raw.buf.drain(..len).collect()
    }

    async fn read_line(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pos) = find(&self.raw.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.raw.buf[..pos]).to_string();
                self.raw.buf.drain(..pos + 2);
                return line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.raw.fill(left).await {
                Ok(0) | Err(()) => panic!("chunked body ended early"),
                Ok(_) => {}
            }
        }
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            if size == 0 {
                let _ = self.read_line().await;
                return body;
            }
            body.extend(self.read_exact_buf(size).await);
            let _ = self.read_line().await;
        }
    }

    /// Whether the server closed the connection (EOF) within `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let (_, eof) = self.raw.read_to_eof(limit).await;
        eof
    }
}

/// Knobs for request signing in negative tests.
#[derive(Clone, Debug, Default)]
pub struct SignOpts {
    /// Added to the current Unix time.
    pub ts_offset: i64,
    /// Overrides body_md5 (sent even on GET; an empty string leaves it out).
    pub body_md5: Option<String>,
    /// Sends md5("") as body_md5 on requests with an empty body (pusher-http-python).
    pub md5_on_empty: bool,
    /// Flips one character of the signature.
    pub corrupt_signature: bool,
    /// Uses this auth_key instead of the app key.
    pub key: Option<String>,
    /// Leaves commas and slashes unescaped in the query string (pusher-http-node style).
    pub raw_query: bool,
}

/// Signed HTTP API client for one app.
#[derive(Clone, Debug)]
pub struct Api {
    /// Server address.
    pub addr: SocketAddr,
    /// The app whose credentials sign requests.
    pub app: App,
}

fn pct(s: &str, raw: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (raw && matches!(b, b',' | b'/' | b':' | b'@'));
        if keep {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

impl Api {
    /// `/apps/{id}{suffix}`.
    pub fn path(&self, suffix: &str) -> String {
        format!("/apps/{}{suffix}", self.app.id)
    }

    /// Builds the signed request target (path + query).
    pub fn signed_target(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
        opts: &SignOpts,
    ) -> String {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + opts.ts_offset;
        let mut params: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        params.push((
            "auth_key".into(),
            opts.key.clone().unwrap_or_else(|| self.app.key.clone()),
        ));
        params.push(("auth_timestamp".into(), ts.to_string()));
        params.push(("auth_version".into(), "1.0".into()));
        if let Some(m) = &opts.body_md5 {
            if !m.is_empty() {
                params.push(("body_md5".into(), m.clone()));
            }
        } else if !body.is_empty() || opts.md5_on_empty {
            params.push(("body_md5".into(), md5_hex(body)));
        }
        params.sort();
        let qs = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let to_sign = format!("{}\n{}\n{}", method.to_ascii_uppercase(), path, qs);
        let mut sig = self.app.sign(&to_sign);
        if opts.corrupt_signature {
            let first = if sig.starts_with('0') { "1" } else { "0" };
            sig.replace_range(0..1, first);
        }
        params.push(("auth_signature".into(), sig));
        let enc = params
            .iter()
            .map(|(k, v)| format!("{}={}", pct(k, opts.raw_query), pct(v, opts.raw_query)))
            .collect::<Vec<_>>()
            .join("&");
        format!("{path}?{enc}")
    }

    /// A signed request on a fresh connection.
    pub async fn request_opts(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
        opts: &SignOpts,
    ) -> HttpResponse {
        let target = self.signed_target(method, path, query, body, opts);
        let mut conn = HttpConn::connect(self.addr).await;
        conn.request(method, &target, body).await
    }

    /// A signed request with default signing.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        self.request_opts(method, path, query, body, &SignOpts::default())
            .await
    }

    /// Signed GET of `/apps/{id}{suffix}`.
    pub async fn get(&self, suffix: &str, query: &[(&str, &str)]) -> HttpResponse {
        self.request("GET", &self.path(suffix), query, b"").await
    }

    /// Signed POST of JSON to `/apps/{id}{suffix}`.
    pub async fn post(&self, suffix: &str, body: &Value) -> HttpResponse {
        self.request("POST", &self.path(suffix), &[], body.to_string().as_bytes())
            .await
    }

    /// POST /events with `body`.
    pub async fn events(&self, body: &Value) -> HttpResponse {
        self.post("/events", body).await
    }

    /// Triggers `name` with string `data` on `channel` and asserts 200.
    pub async fn trigger(&self, channel: &str, name: &str, data: &str) {
        let r = self
            .events(&json!({"name":name,"channel":channel,"data":data}))
            .await;
        assert_eq!(r.status, 200, "trigger to {channel}: {}", r.text());
    }

    /// GET /channels/{c} with info; asserts 200 and returns the JSON body.
    pub async fn channel_info(&self, channel: &str, info: &str) -> Value {
        let suffix = format!("/channels/{channel}");
        let r = if info.is_empty() {
            self.get(&suffix, &[]).await
        } else {
            self.get(&suffix, &[("info", info)]).await
        };
        assert_eq!(r.status, 200, "channel info {channel}: {}", r.text());
        r.json()
    }
}

/// The event that a subscriber receives for an HTTP trigger.
pub fn channel_event(channel: &str, name: &str, data: &str) -> Value {
    json!({"event": name, "channel": channel, "data": data})
}
