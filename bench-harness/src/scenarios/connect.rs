//! `connect` scenario: open N connections at a target rate and measure the
//! time from TCP connect to `pusher:connection_established`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{conn_loop, open_paced, stop_all, wait_ready, Ctx, Phase};
use crate::cli::ConnectArgs;
use crate::metrics::{unix_ns, WorkerReport};
use crate::report::{Outcome, RateCheck};
use crate::workers::{BarKind, Group, Shard, WorkerLink};

/// Worker side: open this shard's connections on the shared schedule, hold, close.
pub async fn worker(
    ctx: Arc<Ctx>,
    a: ConnectArgs,
    shard: Shard,
    link: &mut WorkerLink,
) -> Result<WorkerReport> {
    let stats = link.stats.clone();
    link.barrier("start").await?;
    let (ctl, rx) = watch::channel(Phase::Run);
    let mut tasks = JoinSet::new();
    let st = stats.clone();
    open_paced(
        &ctx,
        &stats,
        shard,
        0..a.n,
        a.rate,
        &mut tasks,
        move |_g, conn| {
            let rx = rx.clone();
            let st = st.clone();
            async move {
                st.ready.fetch_add(1, Ordering::Relaxed);
                conn_loop(conn, rx, st, None).await;
            }
        },
    )
    .await;
    wait_ready(
        &stats,
        shard.count(a.n) as u64,
        ctx.common.connect_timeout + 1.0,
    )
    .await;
    link.barrier("connected").await?;
    stop_all(&ctl, &mut tasks).await;
    Ok(stats.report())
}

/// Parent side: start everyone together, wait, hold, collect.
pub async fn parent(ctx: Arc<Ctx>, a: ConnectArgs, group: &mut Group) -> Result<Outcome> {
    group.wait_barrier("start", ctx.deadline_in(30.0)).await?;
    let epoch = unix_ns();
    group.set_bar("connecting", BarKind::Ready, a.n as u64);
    group.release("start", epoch).await?;
    let open_secs = a.n as f64 / a.rate + ctx.common.connect_timeout + 10.0;
    group
        .wait_barrier("connected", ctx.deadline_in(open_secs))
        .await?;
    let open_at = unix_ns();
    group.set_bar("holding", BarKind::Ready, a.n as u64);
    group.pump_until(ctx.deadline_in(a.hold), |_| false).await;
    group.release("connected", epoch).await?;
    let reports = group.results(ctx.deadline_in(20.0)).await?;

    let (merged, _) = WorkerReport::merge_all(&reports);
    let connected = merged.counter("connected");
    let achieved = match merged.extremes.get("connected_ns") {
        Some(&(first, last)) if connected > 1 && last > first => {
            (connected - 1) as f64 / ((last - first) as f64 / 1e9)
        }
        _ => connected as f64,
    };
    let mut out = Outcome {
        reports,
        epoch_ns: epoch,
        window: Some((epoch, open_at)),
        ..Default::default()
    };
    out.metrics
        .insert("connections_requested".into(), a.n as f64);
    out.metrics
        .insert("connections_established".into(), connected as f64);
    out.metrics
        .insert("connect_rate_achieved_per_s".into(), achieved);
    out.metrics
        .insert("connect_rate_requested_per_s".into(), a.rate);
    out.rates.push(RateCheck {
        what: "connections/s".into(),
        requested: a.rate,
        achieved,
        harness_driven: false,
    });
    Ok(out)
}
