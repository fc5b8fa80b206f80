//! `fanout` scenario: N subscribers over K public channels; the parent
//! publishes through the signed HTTP API on a fixed schedule and the
//! subscribers measure end-to-end latency from each message's scheduled time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::publisher::publish;
use super::{conn_loop, open_paced, server_cpu, stop_all, wait_ready, wait_subscribed, Ctx, Phase};
use crate::cli::FanoutArgs;
use crate::metrics::{unix_ns, Stats, WorkerReport};
use crate::report::{Outcome, RateCheck};
use crate::workers::{BarKind, Group, Shard, WorkerLink};

/// Subscribers per channel when subscriber g joins channel g mod K.
pub fn subs_per_channel(n: usize, k: usize) -> Vec<u64> {
    let k = k.max(1);
    (0..k).map(|c| ((n + k - 1 - c) / k) as u64).collect()
}

/// Worker side: subscribe this shard's connections, receive until released.
pub async fn worker(
    ctx: Arc<Ctx>,
    a: FanoutArgs,
    shard: Shard,
    link: &mut WorkerLink,
) -> Result<WorkerReport> {
    let stats = link.stats.clone();
    let (ctl, rx) = watch::channel(Phase::Run);
    let mut tasks = JoinSet::new();
    let (st, cx) = (stats.clone(), ctx.clone());
    let k = a.channels.max(1);
    open_paced(
        &ctx,
        &stats,
        shard,
        0..a.n,
        a.connect_rate,
        &mut tasks,
        move |g, mut conn| {
            let (rx, st) = (rx.clone(), st.clone());
            let channel = cx.channel("", g % k);
            let timeout = cx.connect_timeout();
            async move {
                match conn.subscribe(&channel, None, None, timeout).await {
                    Ok(d) => {
                        st.record_us("subscribe", d.as_micros() as u64);
                        st.ready.fetch_add(1, Ordering::Relaxed);
                        conn_loop(conn, rx, st, None).await;
                    }
                    Err(f) => st.error(f.0),
                }
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
    link.barrier("subscribed").await?;
    link.barrier("done").await?;
    stop_all(&ctl, &mut tasks).await;
    Ok(stats.report())
}

/// Parent side: wait for subscribers, publish on schedule, drain, collect.
pub async fn parent(ctx: Arc<Ctx>, a: FanoutArgs, group: &mut Group) -> Result<Outcome> {
    let subscribed = wait_subscribed(&ctx, group, a.n, a.connect_rate).await?;
    let epoch = unix_ns() + 200_000_000;
    let pub_stats = Arc::new(Stats::default());
    pub_stats.set_epoch(epoch);
    let planned = (a.rate * a.duration).round() as u64;
    let per_channel = subs_per_channel(a.n, a.channels);
    let expected_planned: u64 = (0..planned)
        .map(|m| per_channel[(m % per_channel.len() as u64) as usize])
        .sum();
    group.set_bar("publishing", BarKind::Done, expected_planned);
    let cpu0 = server_cpu(&ctx);
    group.release("subscribed", epoch).await?;

    let ok = group
        .pump_during(publish(ctx.clone(), a.clone(), epoch, pub_stats.clone()))
        .await;
    let expected: u64 = ok.iter().zip(&per_channel).map(|(m, s)| m * s).sum();
    group.set_bar("draining", BarKind::Done, expected);
    group
        .pump_until(ctx.deadline_in(a.drain), |g| g.done() >= expected)
        .await;
    let end = unix_ns();
    let cpu1 = server_cpu(&ctx);
    group.release("done", epoch).await?;
    let mut reports = group.results(ctx.deadline_in(20.0)).await?;
    reports.push(pub_stats.report());

    let (merged, _) = WorkerReport::merge_all(&reports);
    let delivered = merged.counter("delivered");
    let published = merged.counter("published");
    let pub_window = merged
        .extremes
        .get("published_ns")
        .map(|&(_, last)| (last.saturating_sub(epoch) as f64 / 1e9).max(a.duration))
        .unwrap_or(a.duration);
    let achieved_pub = published as f64 / pub_window;
    let deliver_window = merged
        .extremes
        .get("delivered")
        .map(|&(first, last)| (last.saturating_sub(first) as f64 / 1e9).max(1e-3))
        .unwrap_or(a.duration);

    let mut out = Outcome {
        reports,
        epoch_ns: epoch,
        window: Some((epoch, end)),
        expected: Some(expected),
        delivered: Some(delivered),
        ..Default::default()
    };
    let m = &mut out.metrics;
    m.insert("subscribers_requested".into(), a.n as f64);
    m.insert("subscribers_ready".into(), subscribed as f64);
    m.insert("channels".into(), a.channels as f64);
    m.insert("publish_rate_requested_per_s".into(), a.rate);
    m.insert("publish_rate_achieved_per_s".into(), achieved_pub);
    m.insert("published".into(), published as f64);
    super::record_deliveries(m, expected, delivered, deliver_window, (cpu0, cpu1));
    out.rates.push(RateCheck {
        what: "publishes/s".into(),
        requested: a.rate,
        achieved: achieved_pub,
        harness_driven: true,
    });
    if subscribed < a.n as u64 {
        out.notes.push(format!(
            "only {subscribed} of {} subscribers were ready",
            a.n
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_shares() {
        assert_eq!(subs_per_channel(10, 3), vec![4, 3, 3]);
        assert_eq!(subs_per_channel(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(subs_per_channel(200, 1), vec![200]);
    }
}
