//! `idle` scenario: open N/2 then N subscribed connections, read the server's
//! RSS after each population settles and derive bytes per connection from
//! the slope; then hold and check keep-alive health (all still open, all
//! answer `pusher:ping`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{conn_loop, open_paced, stop_all, wait_ready, Ctx, Phase};
use crate::cli::IdleArgs;
use crate::metrics::{unix_ns, Stats, WorkerReport};
use crate::procfs::sample;
use crate::report::Outcome;
use crate::workers::{BarKind, Group, Shard, WorkerLink};

/// Seconds to wait for every `pusher:pong` in the keep-alive check.
const PONG_WAIT_S: u64 = 10;

/// Worker side: two populations, hold, ping check.
pub async fn worker(
    ctx: Arc<Ctx>,
    a: IdleArgs,
    shard: Shard,
    link: &mut WorkerLink,
) -> Result<WorkerReport> {
    let stats = link.stats.clone();
    let (ctl, rx) = watch::channel(Phase::Run);
    let mut tasks = JoinSet::new();
    let half = a.n / 2;
    let k = a.channels.max(1);
    let open_wait = 2.0 * ctx.common.connect_timeout + 1.0;
    for (range, barrier) in [(0..half, "half"), (half..a.n, "full")] {
        let (st, cx, rx) = (stats.clone(), ctx.clone(), rx.clone());
        let target = stats.ready.load(Ordering::Relaxed) + shard.count_in(range.clone()) as u64;
        open_paced(
            &ctx,
            &stats,
            shard,
            range,
            a.rate,
            &mut tasks,
            move |g, mut conn| {
                let (rx, st) = (rx.clone(), st.clone());
                let channel = cx.channel("", g % k);
                let timeout = cx.connect_timeout();
                async move {
                    match conn.subscribe(&channel, None, None, timeout).await {
                        Ok(_) => {
                            st.ready.fetch_add(1, Ordering::Relaxed);
                            conn_loop(conn, rx, st, None).await;
                        }
                        Err(f) => st.error(f.0),
                    }
                }
            },
        )
        .await;
        wait_ready(&stats, target, open_wait).await;
        link.barrier(barrier).await?;
    }
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let _ = ctl.send(Phase::Ping);
    wait_pongs(&stats).await;
    stop_all(&ctl, &mut tasks).await;
    Ok(stats.report())
}

async fn wait_pongs(stats: &Stats) {
    let deadline = std::time::Instant::now() + Duration::from_secs(PONG_WAIT_S);
    loop {
        let open = stats
            .ready
            .load(Ordering::Relaxed)
            .saturating_sub(stats.counter("closed_unexpectedly"));
        if stats.counter("pong") >= open || std::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the server RSS until two readings 250 ms apart agree within 0.5 %
/// (or `settle` seconds pass), processing worker messages meanwhile.
async fn settled_rss(ctx: &Ctx, group: &mut Group, pid: &str, settle: f64) -> Option<u64> {
    let end = ctx.deadline_in(settle);
    let mut last = sample(pid).ok()?.rss_bytes;
    loop {
        group.pump_until(ctx.deadline_in(0.25), |_| false).await;
        let now = sample(pid).ok()?.rss_bytes;
        let diff = now.abs_diff(last) as f64;
        if diff <= 0.005 * now as f64 || tokio::time::Instant::now() >= end {
            return Some(now);
        }
        last = now;
    }
}

/// Parent side: measure RSS at 0, N/2 and N connections; collect keep-alive results.
pub async fn parent(ctx: Arc<Ctx>, a: IdleArgs, group: &mut Group) -> Result<Outcome> {
    let pid = ctx.common.server_pid.map(|p| p.to_string());
    let epoch = unix_ns();
    let rss0 = pid
        .as_deref()
        .and_then(|p| sample(p).ok())
        .map(|s| s.rss_bytes);
    let mut readings = Vec::new();
    let half = a.n / 2;
    for (barrier, n) in [("half", half), ("full", a.n)] {
        group.set_bar(&format!("opening {n}"), BarKind::Ready, n as u64);
        let secs = half.max(1) as f64 / a.rate + 2.0 * ctx.common.connect_timeout + 10.0;
        group.wait_barrier(barrier, ctx.deadline_in(secs)).await?;
        let ready = group.ready();
        let rss = match pid.as_deref() {
            Some(p) => settled_rss(&ctx, group, p, a.settle).await,
            None => None,
        };
        readings.push((ready, rss));
        group.release(barrier, epoch).await?;
    }
    let hold_start = unix_ns();
    group.set_bar("holding", BarKind::Ready, a.n as u64);
    let reports = group
        .results(ctx.deadline_in(a.hold + PONG_WAIT_S as f64 + 20.0))
        .await?;
    let (merged, _) = WorkerReport::merge_all(&reports);

    let mut out = Outcome {
        reports,
        epoch_ns: epoch,
        window: Some((hold_start, unix_ns())),
        ..Default::default()
    };
    let (n1, r1) = readings[0];
    let (n2, r2) = readings[1];
    let m = &mut out.metrics;
    m.insert("connections_half".into(), n1 as f64);
    m.insert("connections_full".into(), n2 as f64);
    match (rss0, r1, r2) {
        (Some(r0), Some(r1), Some(r2)) => {
            m.insert("server_rss_before_bytes".into(), r0 as f64);
            m.insert("server_rss_half_bytes".into(), r1 as f64);
            m.insert("server_rss_full_bytes".into(), r2 as f64);
            if n2 > n1 {
                m.insert(
                    "server_bytes_per_connection_slope".into(),
                    (r2 as f64 - r1 as f64) / (n2 - n1) as f64,
                );
            }
            if n2 > 0 {
                m.insert(
                    "server_bytes_per_connection_total".into(),
                    (r2 as f64 - r0 as f64) / n2 as f64,
                );
            }
        }
        _ => out
            .notes
            .push("no memory figures: pass --server-pid PID".into()),
    }
    let closed = merged.counter("closed_unexpectedly");
    let pongs = merged.counter("pong");
    m.insert("closed_during_hold".into(), closed as f64);
    m.insert("pong_answered".into(), pongs as f64);
    let healthy = closed == 0 && pongs == n2 && n2 == a.n as u64;
    m.insert("keepalive_ok".into(), if healthy { 1.0 } else { 0.0 });
    if !healthy {
        out.notes.push(format!(
            "keep-alive check failed: {n2} of {} connected, {closed} closed, {pongs} answered pusher:ping",
            a.n
        ));
    }
    out.expected = Some(n2);
    out.delivered = Some(pongs);
    Ok(out)
}
