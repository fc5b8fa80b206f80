//! The server process: its TOML configuration ([`Config`] with its [`App`]s) and [`Server`],
//! which starts the ringpush binary on a free port, connects clients to it and stops it on
//! drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{ws_connect, Client, WsStream};
use super::http::Api;
use super::sign::hmac_hex;
use super::util::uniq;

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

    /// This app as an `[[apps]]` table.
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

/// A TOML basic string (JSON string escapes are valid TOML).
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
    /// A `[cluster]` table's lines (values TOML-encoded), when the server is a cluster node.
    pub cluster: Vec<(String, String)>,
    /// Extra environment variables for the server process.
    pub env: Vec<(String, String)>,
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
            cluster: Vec::new(),
            env: Vec::new(),
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

    /// The whole config file.
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
        if !self.cluster.is_empty() {
            s += "\n[cluster]\n";
            for (k, v) in &self.cluster {
                s += &format!("{k} = {v}\n");
            }
        }
        for app in &self.apps {
            s += "\n";
            s += &app.to_toml();
        }
        s
    }

    /// Makes the server a node of the cluster on the Redis at `port`, with `node_timeout`.
    pub fn clustered(mut self, redis_port: u16, prefix: &str, node_timeout: u64) -> Self {
        self.cluster = vec![
            ("adapter".into(), "\"redis\"".into()),
            ("url".into(), format!("\"redis://127.0.0.1:{redis_port}\"")),
            ("prefix".into(), format!("\"{prefix}\"")),
            ("node_timeout".into(), node_timeout.to_string()),
        ];
        self
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

/// The binary under test: `RINGPUSH_BIN` (as tests/run-all.sh sets it), else the one cargo built
/// for this test run.
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
        let n = uniq("");
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
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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

    /// The server's resident memory now and at its peak, in KiB: `VmRSS` and `VmHWM` of
    /// /proc/PID/status. The peak is since start or the last [`Server::reset_peak_rss`].
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/PID/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Resets the peak resident memory (`VmHWM`) to what is resident now, so that a later
    /// [`Server::memory_kib`] shows the peak of what happened in between.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("write 5 to /proc/PID/clear_refs");
    }

    /// The value of a series in `/metrics` (None when the server does not export it).
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let mut conn = super::http::HttpConn::connect(self.addr).await;
        let text = conn.request("GET", "/metrics", b"").await.text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
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

    /// Connects to `url` and reads connection_established.
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
