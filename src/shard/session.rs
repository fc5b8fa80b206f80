//! One TCP connection's task: HTTP requests (keep-alive) until an upgrade to `/app/{key}`, then
//! the WebSocket read loop. The task waits for readiness only; bytes are read into the shard's
//! scratch buffer, so an idle connection holds no buffer.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::conn::Conn;
use super::outbound::Outbound;
use super::rate::{RateWindow, TokenBucket};
use super::sock::{self, Recv};
use super::state::{flush_dirty, remove_conn};
use super::{frames, Shard};
use crate::http::api;
use crate::http::request::{self, Parsed, Request};
use crate::http::response::Response;
use crate::ids::{AppIdx, SocketId};
use crate::metrics::ShardMetrics;
use crate::protocol::{codes, encode};
use crate::ws::{codec, handshake};

/// Serves one accepted connection until it closes.
pub async fn run(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(stream);
    let fd = stream.as_raw_fd();
    let mut buf: Vec<u8> = Vec::new();
    let limit = Duration::from_secs(shard.shared.config.server.handshake_timeout);
    let max_body = shard.shared.config.server.max_request_body;
    loop {
        let deadline = Instant::now() + limit;
        // Bytes the request in progress needs in all, once its head is known: a body that
        // trickles in is not re-parsed on every read.
        let mut need = 0;
        // The body's reservation in the shard's budget while the server waits for it, until
        // the request was handled (or the connection went).
        let mut claim: Option<BodyClaim> = None;
        let req = loop {
            if !buf.is_empty() && buf.len() >= need {
                match request::parse(&buf, max_body) {
                    Parsed::Complete(req, used) => {
                        buf.drain(..used);
                        if buf.capacity() > request::MAX_HEAD {
                            buf.shrink_to_fit(); // the body was copied out of it
                        }
                        break req;
                    }
                    Parsed::Partial => {}
                    Parsed::NeedBody { total, body } => {
                        need = total;
                        if claim.is_none() {
                            // A body that arrived with its head is handled at once and never
                            // reaches this: only bodies the server has to wait for draw from
                            // the budget, so strangers who stall cannot crowd out requests
                            // that come whole.
                            let Some(taken) = BodyClaim::take(&shard, body) else {
                                ShardMetrics::add(&shard.metrics().bodies_refused, 1);
                                let msg = "too many request bodies in progress; retry later";
                                let read = std::mem::take(&mut buf);
                                return refuse_http(&stream, read, 503, msg, limit).await;
                            };
                            claim = Some(taken);
                            // Room for exactly this request: reading it grows nothing more.
                            buf.reserve_exact(total - buf.len());
                        }
                    }
                    Parsed::Error(status, msg) => {
                        drop(claim.take());
                        let read = std::mem::take(&mut buf);
                        return refuse_http(&stream, read, status, msg, limit).await;
                    }
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let ready = monoio::select! {
                r = stream.readable(false) => r.is_ok(),
                _ = monoio::time::sleep(remaining) => false,
            };
            if !ready {
                return; // handshake timeout (slowloris) or socket error: just close
            }
            // A known request is read up to its end only; the next one waits its turn.
            let max = if need > 0 {
                need
            } else {
                request::MAX_HEAD + max_body
            };
            match read_into(&shard, fd, &mut buf, max) {
                Recv::Data(_) | Recv::WouldBlock => {}
                Recv::Closed => return,
            }
        };
        ShardMetrics::add(&shard.metrics().http_requests, 1);
        if req.is_upgrade() {
            // An upgrade has no use for a body.
            drop(claim);
            let mut req = req;
            req.body = Vec::new();
            // Boxed so this task's future stays small; the upgrade ends this task and the
            // connection continues in a lean read-loop task of its own.
            Box::pin(websocket(shard, stream, *req, buf)).await;
            return;
        }
        if shard.shared.shutting_down.load(Ordering::Relaxed) {
            drop(claim);
            let resp = Response::error(503, "server is shutting down");
            let _ = write_all(&stream, &resp.to_bytes(false), limit).await;
            return;
        }
        let resp = Box::pin(api::handle(&*shard, &req)).await;
        let keep_alive = req.keep_alive;
        // The body was handled: it and its reservation go before the answer is written, which
        // may wait for a client that does not read.
        drop(req);
        drop(claim);
        if write_all(&stream, &resp.to_bytes(keep_alive), limit)
            .await
            .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// A body's reservation in its shard's [`BodyBudget`](super::bodies::BodyBudget), given back
/// when dropped: once its request was handled, or when the connection went.
struct BodyClaim {
    shard: Rc<Shard>,
    bytes: usize,
}

impl BodyClaim {
    /// Reserves `bytes` (an announced Content-Length), or None when they do not fit.
    fn take(shard: &Rc<Shard>, bytes: usize) -> Option<BodyClaim> {
        if !shard.bodies.reserve(bytes) {
            return None;
        }
        show_pending_bodies(shard);
        Some(BodyClaim {
            shard: shard.clone(),
            bytes,
        })
    }
}

impl Drop for BodyClaim {
    fn drop(&mut self) {
        self.shard.bodies.release(self.bytes);
        show_pending_bodies(&self.shard);
    }
}

/// Sets the shard's pending-body gauge.
fn show_pending_bodies(shard: &Shard) {
    let held = shard.bodies.held() as u64;
    shard
        .metrics()
        .pending_body_bytes
        .store(held, Ordering::Relaxed);
}

/// Answers a request that will not be served with an error and closes the connection. What was
/// read of it is dropped first; after the answer the socket lingers, so that a client still
/// sending its body reads the answer instead of a reset.
async fn refuse_http(stream: &TcpStream, read: Vec<u8>, status: u16, msg: &str, limit: Duration) {
    drop(read);
    let resp = Response::error(status, msg).to_bytes(false);
    if write_all(stream, &resp, limit).await.is_ok() {
        // The client may still be sending (a body over a limit): closing with unread input
        // would reset the connection and lose the answer.
        linger(stream).await;
    }
}

/// Appends what the socket has to `buf` (through the shard's scratch buffer, so a connection
/// only ever holds the bytes it received), up to `max` bytes in total.
fn read_into(shard: &Shard, fd: i32, buf: &mut Vec<u8>, max: usize) -> Recv {
    if buf.len() >= max {
        return Recv::Closed;
    }
    let mut scratch = shard.scratch.borrow_mut();
    let want = (max - buf.len()).min(scratch.len());
    let r = sock::recv(fd, &mut scratch[..want]);
    if let Recv::Data(n) = r {
        buf.extend_from_slice(&scratch[..n]);
    }
    r
}

/// Writes all of `data`, waiting for writability when the socket buffer is full, for at most
/// `limit` in all: a client that stops reading its responses cannot hold the task, the socket
/// and its buffers forever.
pub async fn write_all(stream: &TcpStream, data: &[u8], limit: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + limit;
    let fd = stream.as_raw_fd();
    let mut off = 0;
    while off < data.len() {
        let n = sock::send_some(fd, &data[off..])?;
        off += n;
        if off < data.len() && n == 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            monoio::select! {
                r = stream.writable(false) => r?,
                _ = monoio::time::sleep(remaining) => {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            }
        }
    }
    Ok(())
}

/// Refuses a WebSocket after the upgrade: `pusher:error`, close frame, then linger briefly so the
/// client reads both before the socket goes.
async fn refuse(stream: &TcpStream, limit: Duration, code: u16, message: &str) {
    let mut out = encode::error(Some(code), message).to_vec();
    out.extend_from_slice(&codec::close_frame(code, message));
    if write_all(stream, &out, limit).await.is_ok() {
        linger(stream).await;
    }
}

/// Half-closes after a final answer and reads (discarding) until the peer closes or 2 s pass, so
/// the answer is not lost to a reset caused by input we never read.
async fn linger(stream: &TcpStream) {
    sock::shutdown(stream.as_raw_fd(), libc::SHUT_WR);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ready = monoio::select! {
            r = stream.readable(false) => r.is_ok(),
            _ = monoio::time::sleep(remaining) => false,
        };
        if !ready {
            return;
        }
        if let Recv::Closed = sock::recv(stream.as_raw_fd(), &mut sink) {
            return;
        }
    }
}

/// Reads the `protocol` query parameter: missing means 7; 5 to 7 are supported.
fn protocol_ok(req: &Request) -> bool {
    match req.param("protocol") {
        None => true,
        Some(p) => matches!(p.parse::<u32>(), Ok(5..=7)),
    }
}

async fn websocket(shard: Rc<Shard>, stream: Rc<TcpStream>, req: Request, leftover: Vec<u8>) {
    let limit = Duration::from_secs(shard.shared.config.server.handshake_timeout);
    let key = match handshake::validate(&handshake::UpgradeRequest {
        method: &req.method,
        minor_version: req.minor_version,
        headers: &req.headers,
    }) {
        Ok(k) => k.to_string(),
        Err(e) => {
            let _ = write_all(&stream, &handshake::refusal(&e), limit).await;
            return;
        }
    };
    if write_all(&stream, &handshake::switching_response(&key), limit)
        .await
        .is_err()
    {
        return;
    }
    let shared = shard.shared.clone();
    if shared.shutting_down.load(Ordering::Relaxed) {
        return refuse(&stream, limit, codes::RECONNECT, "Server is shutting down").await;
    }
    let Some(app_key) = req
        .path
        .strip_prefix("/app/")
        .filter(|k| !k.is_empty() && !k.contains('/'))
    else {
        return refuse(&stream, limit, codes::PATH_NOT_FOUND, "Path not found").await;
    };
    if !protocol_ok(&req) {
        return refuse(
            &stream,
            limit,
            codes::BAD_PROTOCOL,
            "Unsupported protocol version",
        )
        .await;
    }
    let Some(&app) = shared.by_key.get(app_key) else {
        return refuse(
            &stream,
            limit,
            codes::APP_NOT_FOUND,
            "Application does not exist",
        )
        .await;
    };
    let cfg = shared.app(app);
    if !cfg.enabled {
        return refuse(&stream, limit, codes::APP_DISABLED, "Application disabled").await;
    }
    if !cfg.origin_allowed(req.header("origin")) {
        return refuse(&stream, limit, codes::UNAUTHORIZED, "Origin not allowed").await;
    }
    let count = &shared.app_connections[app.0 as usize];
    let now_open = count.fetch_add(1, Ordering::Relaxed) + 1;
    // In a cluster the quota counts every node: the others' connections as of their last
    // heartbeat (at most a second old), or none for a node dropped after node_timeout.
    let elsewhere = shared
        .cluster
        .as_ref()
        .map_or(0, |c| c.remote_connections(app) as usize);
    if cfg.max_connections > 0 && now_open + elsewhere > cfg.max_connections {
        count.fetch_sub(1, Ordering::Relaxed);
        return refuse(
            &stream,
            limit,
            codes::OVER_QUOTA,
            "Application is over connection quota",
        )
        .await;
    }
    let ckey = register(&shard, stream.clone(), app);
    ShardMetrics::add(&shard.metrics().connections_opened, 1);
    if !leftover.is_empty() {
        let mut data = leftover;
        let mut st = shard.state.borrow_mut();
        frames::process(&shard, &mut st, ckey, &mut data);
    }
    flush_dirty(&shard);
    monoio::spawn(read_loop(shard, stream, ckey));
}

/// The life of an established WebSocket: wait for readiness, read, repeat. Its future holds
/// only the shard, the socket and the key.
async fn read_loop(shard: Rc<Shard>, stream: Rc<TcpStream>, ckey: crate::ids::ConnKey) {
    loop {
        if stream.readable(false).await.is_err() {
            break;
        }
        if !frames::on_readable(&shard, ckey) {
            break;
        }
    }
    remove_conn(&shard, ckey);
    flush_dirty(&shard);
}

/// Inserts the connection into the shard's slab and queues `connection_established`.
fn register(shard: &Rc<Shard>, stream: Rc<TcpStream>, app: AppIdx) -> crate::ids::ConnKey {
    let now = shard.now_ms();
    let shards = shard.shared.shards();
    let cfg = shard.shared.app(app);
    let mut st = shard.state.borrow_mut();
    st.seq += 1;
    // The second number modulo the shard count is the owning shard (tests rely on it).
    let socket_id = SocketId::generate(fastrand::u32(1..1_000_000_000), st.seq, shard.id, shards);
    let fd = stream.as_raw_fd();
    let auth_deadline = (cfg.authorized_connections_timeout > 0)
        .then(|| now + cfg.authorized_connections_timeout * 1000);
    let key = st.conns.insert(|_| Conn {
        stream,
        fd,
        app,
        socket_id: socket_id.clone(),
        subs: Vec::new(),
        user: None,
        out: Outbound::default(),
        last_rx: now,
        ping_sent: None,
        auth_deadline,
        rate: RateWindow::default(),
        tokens: TokenBucket::full(shard.shared.config.server.max_message_burst, now),
        control_refused: RateWindow::default(),
        partial: Vec::new(),
        fragments: None,
    });
    let frame =
        encode::connection_established(&socket_id, shard.shared.config.server.activity_timeout);
    shard.send_to(&mut st, key, frame);
    key
}
