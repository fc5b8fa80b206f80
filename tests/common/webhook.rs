//! A webhook receiver: a small HTTP/1.1 server on a free loopback port that records every
//! request it reads (path, headers, body) and answers each with the status it is told to, or
//! never answers at all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A response with this status code and a `{}` body.
    Status(u16),
    /// No response ever; the connection stays open until the test ends.
    Never,
}

/// One webhook request as received.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Request path (the target without its host).
    pub path: String,
    /// Headers, names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body exactly as sent.
    pub raw: Vec<u8>,
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl Hook {
    /// First header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).to_string()
    }

    /// The events of a Pusher webhook body (`{"time_ms":..,"events":[..]}`); empty if none.
    pub fn events(&self) -> Vec<Value> {
        self.body["events"].as_array().cloned().unwrap_or_default()
    }
}

/// Decides the reply to the n-th request (counting from 0 over all connections).
type ReplyPlan = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

/// A running receiver; it lives as long as the test's tokio runtime.
pub struct WebhookReceiver {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Hook>,
    received: Arc<AtomicUsize>,
    /// Events read by [`WebhookReceiver::wait_for`] or [`WebhookReceiver::collect`] and not
    /// consumed yet, each with the request that carried it.
    pending: Vec<(Hook, Value)>,
}

impl WebhookReceiver {
    /// A receiver that answers 200 to every request.
    pub async fn start() -> WebhookReceiver {
        WebhookReceiver::replying(|_| Reply::Status(200)).await
    }

    /// A receiver that answers the n-th request (from 0, over all connections) with `plan(n)`.
    pub async fn replying(
        plan: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let (tx, rx) = mpsc::unbounded_channel();
        let received = Arc::new(AtomicUsize::new(0));
        let plan: ReplyPlan = Arc::new(plan);
        let counter = received.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, tx.clone(), counter.clone(), plan.clone()));
            }
        });
        WebhookReceiver {
            addr,
            rx,
            received,
            pending: Vec::new(),
        }
    }

    /// The URL to configure as the webhook: `http://127.0.0.1:port/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Requests read completely so far, answered or not.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// The next request within `limit`, in the order they were recorded: an answered request
    /// after its response was written, an unanswered one as soon as it was read. Requests
    /// already taken apart by [`WebhookReceiver::wait_for`] or [`WebhookReceiver::collect`]
    /// are not returned again.
    pub async fn next_hook(&mut self, limit: Duration) -> Option<Hook> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits up to `limit` for an event matching `pred` and returns it with its request.
    /// Other events are kept for later calls. Panics, listing what came, if none matches.
    pub async fn wait_for(
        &mut self,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Hook, Value) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.pending.iter().position(|(_, e)| pred(e)) {
                return self.pending.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let hook = self.next_hook(left).await.unwrap_or_else(|| {
                panic!("no matching webhook; unmatched so far: {:?}", self.events())
            });
            self.keep(hook);
        }
    }

    /// Waits up to 8 s for the event `{"name": name, "channel": channel, ...}`.
    pub async fn wait_event(&mut self, name: &str, channel: &str) -> (Hook, Value) {
        self.wait_for(Duration::from_secs(8), |e| {
            e["name"] == name && e["channel"] == channel
        })
        .await
    }

    /// Listens for the whole of `window` and returns every event not consumed yet (for
    /// negative checks that no barrier can replace; say why at the call site).
    pub async fn collect(&mut self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        while let Some(hook) = self
            .next_hook(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            self.keep(hook);
        }
        self.events()
    }

    /// Events received but not consumed yet.
    pub fn events(&self) -> Vec<Value> {
        self.pending.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Adds a request's events to the unconsumed ones.
    fn keep(&mut self, hook: Hook) {
        for e in hook.events() {
            self.pending.push((hook.clone(), e));
        }
    }
}

/// Serves one connection: keep-alive requests with a `Content-Length` body, until EOF.
async fn serve(
    mut sock: TcpStream,
    tx: mpsc::UnboundedSender<Hook>,
    received: Arc<AtomicUsize>,
    plan: ReplyPlan,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            if !read_more(&mut sock, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            if !read_more(&mut sock, &mut buf).await {
                return;
            }
        }
        let raw: Vec<u8> = buf.drain(..len).collect();
        let n = received.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let hook = Hook {
            path,
            headers,
            raw,
            body,
        };
        match plan(n) {
            Reply::Status(code) => {
                let resp = format!(
                    "HTTP/1.1 {code} {}\r\nContent-Length: 2\r\n\r\n{{}}",
                    reason(code)
                );
                let written = sock.write_all(resp.as_bytes()).await.is_ok();
                let _ = tx.send(hook);
                if !written {
                    return;
                }
            }
            Reply::Never => {
                let _ = tx.send(hook);
                // Keep the connection open, unanswered, for as long as the test runs.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Reads more bytes onto `buf`; false on EOF or a read error.
async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match sock.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A reason phrase for the status line (clients ignore it).
fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
