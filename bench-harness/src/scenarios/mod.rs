//! Scenario plumbing shared by all scenarios: the run context, paced
//! connection opening, and the per-connection receive loop.

pub mod client_events;
pub mod connect;
pub mod fanout;
pub mod idle;
pub mod presence;
pub mod publisher;

use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{Common, Scenario};
use crate::http::AppCreds;
use crate::metrics::{unix_ns, Stats, WorkerReport};
use crate::net::{check_sources, parse_base_url, BaseUrl};
use crate::pusher::{make_payload, parse_frame, payload_time, Failure, PusherConn};
use crate::report::Outcome;
use crate::workers::{Group, Shard, WorkerLink};

/// Event name the harness publishes through the HTTP API.
pub const BENCH_EVENT: &str = "bench-event";
/// Client event name the harness sends.
pub const CLIENT_EVENT: &str = "client-bench";

/// Everything a scenario needs to know about the run.
pub struct Ctx {
    /// Common options.
    pub common: Common,
    /// The scenario and its arguments.
    pub scenario: Scenario,
    /// WebSocket base.
    pub ws: BaseUrl,
    /// HTTP API base.
    pub http: BaseUrl,
    /// App credentials.
    pub creds: AppCreds,
    /// Wall-clock limit of the run.
    pub timeout: Duration,
    /// When the run must be over.
    pub deadline: tokio::time::Instant,
    /// Per-run tag in channel names, so runs against a long-lived server do not mix.
    pub run_tag: String,
}

/// Environment variable carrying the run tag from the parent to its worker processes.
pub const RUN_TAG_ENV: &str = "BENCH_HARNESS_RUN_TAG";

impl Ctx {
    /// Validates the targets and builds the context.
    pub async fn new(common: Common, scenario: Scenario) -> Result<Self> {
        let ws = parse_base_url(&common.ws_url, "ws", common.allow_remote).await?;
        let http = parse_base_url(&common.http_url, "http", common.allow_remote).await?;
        check_sources(&common.source_ips, common.allow_remote)?;
        let timeout = Duration::from_secs_f64(
            common
                .timeout
                .unwrap_or_else(|| scenario.nominal_seconds() + 60.0),
        );
        Ok(Ctx {
            creds: AppCreds {
                app_id: common.app_id.clone(),
                key: common.key.clone(),
                secret: common.secret.clone(),
            },
            common,
            scenario,
            ws,
            http,
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
            run_tag: std::env::var(RUN_TAG_ENV)
                .unwrap_or_else(|_| format!("{:x}", unix_ns() / 1_000_000 % 0xffffff)),
        })
    }

    /// Source address for global connection index `g` (round robin).
    pub fn source_for(&self, g: usize) -> Option<IpAddr> {
        let ips = &self.common.source_ips;
        if ips.is_empty() {
            None
        } else {
            Some(ips[g % ips.len()])
        }
    }

    /// Limit for establishing a connection or a subscription.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.common.connect_timeout)
    }

    /// Channel name `{kind}{prefix}-{tag}-{i}`, e.g. `private-bench-1a2b3c-3`.
    pub fn channel(&self, kind: &str, i: usize) -> String {
        format!("{kind}{}-{}-{i}", self.common.channel_prefix, self.run_tag)
    }

    /// Opens connection `g` and waits for `pusher:connection_established`.
    pub async fn open(&self, g: usize) -> Result<PusherConn, Failure> {
        crate::pusher::connect(
            &self.ws,
            &self.creds.key,
            self.source_for(g),
            self.connect_timeout(),
        )
        .await
    }
}

/// Runs this process's share of the scenario.
pub async fn run_worker(
    ctx: Arc<Ctx>,
    shard: Shard,
    link: &mut WorkerLink,
) -> Result<WorkerReport> {
    match ctx.scenario.clone() {
        Scenario::Connect(a) => connect::worker(ctx, a, shard, link).await,
        Scenario::Idle(a) => idle::worker(ctx, a, shard, link).await,
        Scenario::Fanout(a) => fanout::worker(ctx, a, shard, link).await,
        Scenario::ClientEvents(a) => client_events::worker(ctx, a, shard, link).await,
        Scenario::PresenceChurn(a) => presence::worker(ctx, a, shard, link).await,
    }
}

/// Runs the parent's side of the scenario and gathers the outcome.
pub async fn run_parent(ctx: Arc<Ctx>, group: &mut Group) -> Result<Outcome> {
    match ctx.scenario.clone() {
        Scenario::Connect(a) => connect::parent(ctx, a, group).await,
        Scenario::Idle(a) => idle::parent(ctx, a, group).await,
        Scenario::Fanout(a) => fanout::parent(ctx, a, group).await,
        Scenario::ClientEvents(a) => client_events::parent(ctx, a, group).await,
        Scenario::PresenceChurn(a) => presence::parent(ctx, a, group).await,
    }
}

impl Ctx {
    /// Deadline `secs` from now, capped by the run's overall deadline.
    pub fn deadline_in(&self, secs: f64) -> tokio::time::Instant {
        (tokio::time::Instant::now() + Duration::from_secs_f64(secs.max(0.0))).min(self.deadline)
    }
}

/// What connection tasks are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Keep receiving.
    Run,
    /// Send one `pusher:ping` and time the pong.
    Ping,
    /// Close and finish.
    Stop,
}

/// Opens the connections with global indices in `range` that this shard owns,
/// paced at `rate` per second (all workers together), and runs `per_conn` for
/// each established connection in its own task. Connect time, failures and
/// the `connected` timeline are recorded here.
pub async fn open_paced<F, Fut>(
    ctx: &Arc<Ctx>,
    stats: &Arc<Stats>,
    shard: Shard,
    range: Range<usize>,
    rate: f64,
    tasks: &mut JoinSet<()>,
    per_conn: F,
) where
    F: Fn(usize, PusherConn) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = tokio::time::Instant::now();
    let first = range.start;
    for g in range.filter(|g| g % shard.procs == shard.index) {
        let at = start + Duration::from_secs_f64((g - first) as f64 / rate.max(0.001));
        tokio::time::sleep_until(at).await;
        let ctx = ctx.clone();
        let stats = stats.clone();
        let per_conn = per_conn.clone();
        stats.count("connect_attempts", 1);
        tasks.spawn(async move {
            let t0 = Instant::now();
            match ctx.open(g).await {
                Ok(conn) => {
                    stats.record_us("connect", t0.elapsed().as_micros() as u64);
                    stats.count("connected", 1);
                    let now = unix_ns();
                    stats.tick("connected", now);
                    stats.extreme("connected_ns", now);
                    per_conn(g, conn).await;
                }
                Err(f) => stats.error(f.0),
            }
        });
    }
}

/// Optional schedule of client events a connection sends from its receive loop.
pub struct SendPlan {
    /// Channel to send on.
    pub channel: String,
    /// Index of that channel (for the per-channel send counts).
    pub channel_index: usize,
    /// Unix ns of the first scheduled send.
    pub first_ns: u64,
    /// Nanoseconds between sends.
    pub interval_ns: u64,
    /// No sends scheduled at or after this unix ns.
    pub until_ns: u64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Connections that should receive each sent event (added to the expected count).
    pub recipients: u64,
    /// Sends done so far.
    pub sent: u64,
}

impl SendPlan {
    fn next_ns(&self) -> Option<u64> {
        let t = self.first_ns + self.sent * self.interval_ns;
        (t < self.until_ns).then_some(t)
    }
}

/// The tokio instant corresponding to a unix-ns time (now when it is past).
pub fn instant_of(unix: u64) -> tokio::time::Instant {
    let now = unix_ns();
    let now_i = tokio::time::Instant::now();
    if unix >= now {
        now_i + Duration::from_nanos(unix - now)
    } else {
        now_i
    }
}

/// Waits until unix time `target_ns` more precisely than the runtime's 1 ms
/// timer: sleeps to about 1 ms before, then yields until the time is reached.
pub async fn precise_sleep_until(target_ns: u64) {
    const SPIN_NS: u64 = 1_000_000;
    if target_ns > unix_ns() + SPIN_NS {
        tokio::time::sleep_until(instant_of(target_ns - SPIN_NS)).await;
    }
    while unix_ns() < target_ns {
        tokio::task::yield_now().await;
    }
}

/// Receives on an established (and usually subscribed) connection until told
/// to stop: answers server pings, records bench deliveries, member events,
/// errors and unexpected closes, times pongs in the ping phase, and sends
/// client events when a [`SendPlan`] is given.
pub async fn conn_loop(
    mut conn: PusherConn,
    mut ctl: watch::Receiver<Phase>,
    stats: Arc<Stats>,
    mut plan: Option<SendPlan>,
) {
    let mut ping_sent: Option<Instant> = None;
    loop {
        let next_send = plan.as_ref().and_then(|p| p.next_ns());
        tokio::select! {
            msg = conn.ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if handle_text(&t, &mut conn, &stats, &mut ping_sent).await.is_err() {
                        stats.error("ws_write");
                        stats.count("closed_unexpectedly", 1);
                        return;
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.map(|c| u16::from(c.code)).unwrap_or(0);
                    stats.error(format!("closed_{code}"));
                    stats.count("closed_unexpectedly", 1);
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    stats.error("ws_read");
                    stats.count("closed_unexpectedly", 1);
                    return;
                }
            },
            changed = ctl.changed() => {
                let phase = if changed.is_err() { Phase::Stop } else { *ctl.borrow_and_update() };
                match phase {
                    Phase::Stop => {
                        conn.close().await;
                        return;
                    }
                    Phase::Ping => {
                        ping_sent = Some(Instant::now());
                        if conn.ping().await.is_err() {
                            stats.error("ws_write");
                        }
                    }
                    Phase::Run => {}
                }
            },
            _ = tokio::time::sleep_until(instant_of(next_send.unwrap_or(0))), if next_send.is_some() => {
                if let (Some(p), Some(at)) = (plan.as_mut(), next_send) {
                    let data = make_payload(at, p.sent, p.payload_bytes);
                    let msg = format!(
                        r#"{{"event":"{CLIENT_EVENT}","channel":"{}","data":{data}}}"#,
                        p.channel
                    );
                    p.sent += 1;
                    if conn.send(msg).await.is_err() {
                        stats.error("ws_write");
                    } else {
                        stats.count("sent", 1);
                        stats.tick("sent", unix_ns());
                        stats.add_at("sent_per_channel", p.channel_index, 1);
                        stats.expect.fetch_add(p.recipients, Ordering::Relaxed);
                    }
                }
            },
        }
    }
}

async fn handle_text(
    text: &str,
    conn: &mut PusherConn,
    stats: &Stats,
    ping_sent: &mut Option<Instant>,
) -> Result<(), Failure> {
    let Some(frame) = parse_frame(text) else {
        stats.error("bad_frame");
        return Ok(());
    };
    match frame.event.as_ref() {
        BENCH_EVENT | CLIENT_EVENT => {
            let now = unix_ns();
            match frame.data_text().as_deref().and_then(payload_time) {
                Some(t) => stats.delivery("delivered", "latency", t, now),
                None => stats.error("bad_payload"),
            }
        }
        "pusher_internal:member_added" => {
            let now = unix_ns();
            match frame.data_text().as_deref().and_then(payload_time) {
                Some(t) => stats.delivery("member_added", "member_added_latency", t, now),
                None => stats.count("member_added_untimed", 1),
            }
        }
        "pusher_internal:member_removed" => stats.count("member_removed", 1),
        "pusher:ping" => conn.pong().await?,
        "pusher:pong" => {
            if let Some(t) = ping_sent.take() {
                stats.record_us("ping_rtt", t.elapsed().as_micros() as u64);
                stats.count("pong", 1);
            }
        }
        "pusher:error" => stats.error(frame.error_label()),
        _ => {}
    }
    Ok(())
}

/// Current CPU seconds of the server process, when --server-pid is given.
/// Parent side: shows the subscribing bar and waits until every worker's `n` connections are
/// subscribed (or the setup deadline passes); returns how many are ready.
pub async fn wait_subscribed(
    ctx: &Ctx,
    group: &mut Group,
    n: usize,
    connect_rate: f64,
) -> Result<u64> {
    group.set_bar("subscribing", crate::workers::BarKind::Ready, n as u64);
    let setup = n as f64 / connect_rate + 2.0 * ctx.common.connect_timeout + 10.0;
    group
        .wait_barrier("subscribed", ctx.deadline_in(setup))
        .await?;
    Ok(group.ready())
}

/// Records the delivery figures every fan-out style scenario reports: expected and delivered
/// counts, the delivery ratio, delivered messages per second over `window_s`, and server CPU
/// (total and per million deliveries) from two `/proc` readings.
pub fn record_deliveries(
    m: &mut std::collections::BTreeMap<String, f64>,
    expected: u64,
    delivered: u64,
    window_s: f64,
    cpu: (Option<f64>, Option<f64>),
) {
    m.insert("expected_deliveries".into(), expected as f64);
    m.insert("delivered".into(), delivered as f64);
    let ratio = if expected > 0 {
        delivered as f64 / expected as f64
    } else {
        0.0
    };
    m.insert("delivery_ratio".into(), ratio);
    m.insert("delivered_msgs_per_s".into(), delivered as f64 / window_s);
    if let (Some(c0), Some(c1)) = cpu {
        m.insert("server_cpu_seconds".into(), c1 - c0);
        if delivered > 0 {
            m.insert(
                "server_cpu_s_per_million_deliveries".into(),
                (c1 - c0) * 1e6 / delivered as f64,
            );
        }
    }
}

pub fn server_cpu(ctx: &Ctx) -> Option<f64> {
    let pid = ctx.common.server_pid?;
    crate::procfs::cpu_seconds(&pid.to_string()).ok()
}

/// Waits until `stats.ready` + errors reach `target` or `secs` pass.
pub async fn wait_ready(stats: &Stats, target: u64, secs: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let ready = stats.ready.load(Ordering::Relaxed);
        let failed = stats.errors_total.load(Ordering::Relaxed);
        if ready + failed >= target || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tells every connection task to stop and waits (bounded) for them to finish.
pub async fn stop_all(ctl: &watch::Sender<Phase>, tasks: &mut JoinSet<()>) {
    let _ = ctl.send(Phase::Stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}
