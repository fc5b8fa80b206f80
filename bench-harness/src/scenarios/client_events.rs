//! `client-events` scenario: connections subscribe to private channels (auth
//! signed by the harness) and send `client-*` events on a shared schedule;
//! the other subscribers of each channel measure delivery latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::fanout::subs_per_channel;
use super::{
    conn_loop, open_paced, server_cpu, stop_all, wait_ready, wait_subscribed, Ctx, Phase, SendPlan,
};
use crate::cli::ClientEventsArgs;
use crate::metrics::{unix_ns, WorkerReport};
use crate::report::{Outcome, RateCheck};
use crate::signing::private_auth;
use crate::workers::{BarKind, Group, Shard, WorkerLink};

/// Default per-connection client event limit of Pusher servers.
const SERVER_LIMIT_PER_CONN: f64 = 10.0;

/// Worker side: subscribe, wait for the shared start, send and receive.
pub async fn worker(
    ctx: Arc<Ctx>,
    a: ClientEventsArgs,
    shard: Shard,
    link: &mut WorkerLink,
) -> Result<WorkerReport> {
    let stats = link.stats.clone();
    let (ctl, rx) = watch::channel(Phase::Run);
    let (epoch_tx, epoch_rx) = watch::channel(0u64);
    let mut tasks = JoinSet::new();
    let (st, cx) = (stats.clone(), ctx.clone());
    let k = a.channels.max(1);
    let subs = subs_per_channel(a.n, k);
    let args = a.clone();
    open_paced(
        &ctx,
        &stats,
        shard,
        0..a.n,
        a.connect_rate,
        &mut tasks,
        move |g, mut conn| {
            let (rx, st, cx, a) = (rx.clone(), st.clone(), cx.clone(), args.clone());
            let mut epoch_rx = epoch_rx.clone();
            let ch = g % k;
            let recipients = subs[ch].saturating_sub(1);
            async move {
                let channel = cx.channel("private-", ch);
                let auth = private_auth(&cx.creds.key, &cx.creds.secret, &conn.socket_id, &channel);
                match conn
                    .subscribe(&channel, Some(&auth), None, cx.connect_timeout())
                    .await
                {
                    Ok(d) => {
                        st.record_us("subscribe", d.as_micros() as u64);
                        st.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(f) => return st.error(f.0),
                }
                let Ok(epoch) = epoch_rx.wait_for(|e| *e > 0).await.map(|e| *e) else {
                    return;
                };
                let step = 1e9 / a.rate.max(0.001);
                let plan = SendPlan {
                    channel,
                    channel_index: ch,
                    first_ns: epoch + (g as f64 * step) as u64,
                    interval_ns: (a.n as f64 * step) as u64,
                    until_ns: epoch + (a.duration * 1e9) as u64,
                    payload_bytes: a.payload_bytes,
                    recipients,
                    sent: 0,
                };
                conn_loop(conn, rx, st, Some(plan)).await;
            }
        },
    )
    .await;
    wait_ready(
        &stats,
        shard.count(a.n) as u64,
        2.0 * ctx.common.connect_timeout + 1.0,
    )
    .await;
    let epoch = link.barrier("subscribed").await?;
    let _ = epoch_tx.send(epoch);
    link.barrier("done").await?;
    stop_all(&ctl, &mut tasks).await;
    Ok(stats.report())
}

/// Parent side: start the schedule, wait for sending and draining, collect.
pub async fn parent(ctx: Arc<Ctx>, a: ClientEventsArgs, group: &mut Group) -> Result<Outcome> {
    let subscribed = wait_subscribed(&ctx, group, a.n, a.connect_rate).await?;
    let epoch = unix_ns() + 300_000_000;
    let cpu0 = server_cpu(&ctx);
    group.set_bar("sending", BarKind::Done, 0);
    group.release("subscribed", epoch).await?;
    group
        .pump_until(ctx.deadline_in(a.duration + 0.5), |_| false)
        .await;
    group.set_bar("draining", BarKind::Done, 0);
    group
        .pump_until(ctx.deadline_in(a.drain), |g| g.done() >= g.expect())
        .await;
    let end = unix_ns();
    let cpu1 = server_cpu(&ctx);
    group.release("done", epoch).await?;
    let reports = group.results(ctx.deadline_in(20.0)).await?;

    let (merged, _) = WorkerReport::merge_all(&reports);
    let subs = subs_per_channel(a.n, a.channels);
    let sent_per_channel = merged
        .vectors
        .get("sent_per_channel")
        .cloned()
        .unwrap_or_default();
    let expected: u64 = sent_per_channel
        .iter()
        .zip(&subs)
        .map(|(s, n)| s * n.saturating_sub(1))
        .sum();
    let delivered = merged.counter("delivered");
    let sent = merged.counter("sent");
    let achieved = sent as f64 / a.duration.max(1e-3);

    let mut out = Outcome {
        reports,
        epoch_ns: epoch,
        window: Some((epoch, end)),
        expected: Some(expected),
        delivered: Some(delivered),
        ..Default::default()
    };
    let m = &mut out.metrics;
    m.insert("connections_ready".into(), subscribed as f64);
    m.insert("send_rate_requested_per_s".into(), a.rate);
    m.insert("send_rate_achieved_per_s".into(), achieved);
    m.insert("sent".into(), sent as f64);
    super::record_deliveries(m, expected, delivered, a.duration.max(1e-3), (cpu0, cpu1));
    out.rates.push(RateCheck {
        what: "client events/s".into(),
        requested: a.rate,
        achieved,
        harness_driven: true,
    });
    let per_conn = a.rate / a.n.max(1) as f64;
    if per_conn > SERVER_LIMIT_PER_CONN {
        out.notes.push(format!(
            "{per_conn:.1} events/s per connection exceeds the usual server limit of {SERVER_LIMIT_PER_CONN}/s (expect 4301 errors); use more connections"
        ));
    }
    Ok(out)
}
