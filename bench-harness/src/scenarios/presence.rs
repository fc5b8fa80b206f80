//! `presence-churn` scenario: observers stay subscribed to K presence
//! channels while churner connections join and leave them on a shared
//! schedule; measures join latency (scheduled subscribe to
//! subscription_succeeded) and member_added delivery latency at observers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::{conn_loop, instant_of, open_paced, stop_all, wait_ready, Ctx, Phase};
use crate::cli::PresenceArgs;
use crate::metrics::{unix_ns, Stats, WorkerReport};
use crate::pusher::{parse_frame, PusherConn};
use crate::report::{Outcome, RateCheck};
use crate::signing::presence_auth;
use crate::workers::{BarKind, Group, Shard, WorkerLink};

/// Presence member limit of common servers.
const MEMBER_LIMIT: f64 = 100.0;

/// Presence channel_data; churners put their scheduled join time in user_info.
fn channel_data(user_id: &str, t: Option<u64>) -> String {
    match t {
        Some(t) => format!(r#"{{"user_id":"{user_id}","user_info":{{"t":{t}}}}}"#),
        None => format!(r#"{{"user_id":"{user_id}","user_info":{{}}}}"#),
    }
}

/// Worker side: observers subscribe and watch; churners join and leave on schedule.
pub async fn worker(
    ctx: Arc<Ctx>,
    a: PresenceArgs,
    shard: Shard,
    link: &mut WorkerLink,
) -> Result<WorkerReport> {
    let stats = link.stats.clone();
    let (ctl, rx) = watch::channel(Phase::Run);
    let (epoch_tx, epoch_rx) = watch::channel(0u64);
    let mut tasks = JoinSet::new();
    let k = a.channels.max(1);
    let observers = k * a.observers;
    let total = observers + a.churners;
    let (st, cx, args) = (stats.clone(), ctx.clone(), a.clone());
    open_paced(
        &ctx,
        &stats,
        shard,
        0..total,
        a.connect_rate,
        &mut tasks,
        move |g, conn| {
            let (rx, st, cx, a) = (rx.clone(), st.clone(), cx.clone(), args.clone());
            let epoch_rx = epoch_rx.clone();
            async move {
                if g < observers {
                    observe(cx, st, rx, conn, g, g % k).await;
                } else {
                    churn(cx, st, rx, epoch_rx, conn, g - observers, a).await;
                }
            }
        },
    )
    .await;
    wait_ready(
        &stats,
        shard.count(total) as u64,
        2.0 * ctx.common.connect_timeout + 1.0,
    )
    .await;
    let epoch = link.barrier("ready").await?;
    let _ = epoch_tx.send(epoch);
    link.barrier("done").await?;
    stop_all(&ctl, &mut tasks).await;
    Ok(stats.report())
}

async fn observe(
    ctx: Arc<Ctx>,
    st: Arc<Stats>,
    rx: watch::Receiver<Phase>,
    mut conn: PusherConn,
    g: usize,
    ch: usize,
) {
    let channel = ctx.channel("presence-", ch);
    let data = channel_data(&format!("obs-{g}"), None);
    let auth = presence_auth(
        &ctx.creds.key,
        &ctx.creds.secret,
        &conn.socket_id,
        &channel,
        &data,
    );
    match conn
        .subscribe(&channel, Some(&auth), Some(&data), ctx.connect_timeout())
        .await
    {
        Ok(_) => {
            st.ready.fetch_add(1, Ordering::Relaxed);
            conn_loop(conn, rx, st, None).await;
        }
        Err(f) => st.error(f.0),
    }
}

/// Reads and discards frames (answering pings) until `until`; false when the connection broke.
async fn idle_until(conn: &mut PusherConn, st: &Stats, until: tokio::time::Instant) -> bool {
    loop {
        match tokio::time::timeout_at(until, conn.ws.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(Message::Text(t)))) => {
                let ping = parse_frame(&t).is_some_and(|f| f.event == "pusher:ping");
                if ping && conn.pong().await.is_err() {
                    return false;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                st.error("churner_closed");
                return false;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn churn(
    ctx: Arc<Ctx>,
    st: Arc<Stats>,
    rx: watch::Receiver<Phase>,
    mut epoch_rx: watch::Receiver<u64>,
    mut conn: PusherConn,
    c: usize,
    a: PresenceArgs,
) {
    st.ready.fetch_add(1, Ordering::Relaxed);
    let Ok(epoch) = epoch_rx.wait_for(|e| *e > 0).await.map(|e| *e) else {
        return;
    };
    let k = a.channels.max(1);
    let step = 1e9 / a.rate.max(0.001);
    let end = epoch + (a.duration * 1e9) as u64;
    let mut j = c;
    loop {
        let sched = epoch + (j as f64 * step) as u64;
        if sched >= end {
            break;
        }
        tokio::time::sleep_until(instant_of(sched)).await;
        let channel = ctx.channel("presence-", j % k);
        let data = channel_data(&format!("u-{j}"), Some(sched));
        let auth = presence_auth(
            &ctx.creds.key,
            &ctx.creds.secret,
            &conn.socket_id,
            &channel,
            &data,
        );
        st.count("join_attempts", 1);
        match conn
            .subscribe(&channel, Some(&auth), Some(&data), ctx.connect_timeout())
            .await
        {
            Ok(_) => {
                let now = unix_ns();
                st.record_us("join", now.saturating_sub(sched) / 1000);
                st.count("joins", 1);
                st.tick("joins", now);
                st.expect.fetch_add(a.observers as u64, Ordering::Relaxed);
                let stay = instant_of(sched) + Duration::from_secs_f64(a.stay);
                if !idle_until(&mut conn, &st, stay).await {
                    return;
                }
                if conn.send_unsubscribe(&channel).await.is_err() {
                    st.error("ws_write");
                    return;
                }
                st.count("leaves", 1);
            }
            Err(f) => {
                let broken = f.0.starts_with("closed") || f.0 == "ws_read";
                st.error(f.0);
                if broken {
                    return;
                }
            }
        }
        j += a.churners.max(1);
    }
    conn_loop(conn, rx, st, None).await;
}

/// Parent side: start the churn, wait for it and for member events, collect.
pub async fn parent(ctx: Arc<Ctx>, a: PresenceArgs, group: &mut Group) -> Result<Outcome> {
    let total = a.channels.max(1) * a.observers + a.churners;
    group.set_bar("connecting", BarKind::Ready, total as u64);
    let setup = total as f64 / a.connect_rate + 2.0 * ctx.common.connect_timeout + 10.0;
    group.wait_barrier("ready", ctx.deadline_in(setup)).await?;
    let epoch = unix_ns() + 300_000_000;
    group.set_bar("churning", BarKind::Done, 0);
    group.release("ready", epoch).await?;
    group
        .pump_until(ctx.deadline_in(a.duration + a.stay + 0.5), |_| false)
        .await;
    group.set_bar("draining", BarKind::Done, 0);
    group
        .pump_until(ctx.deadline_in(a.drain), |g| g.done() >= g.expect())
        .await;
    let end = unix_ns();
    group.release("done", epoch).await?;
    let reports = group.results(ctx.deadline_in(20.0)).await?;

    let (merged, _) = WorkerReport::merge_all(&reports);
    let joins = merged.counter("joins");
    let leaves = merged.counter("leaves");
    let obs = a.observers as u64;
    let added = merged.counter("member_added");
    let removed = merged.counter("member_removed");
    let achieved = joins as f64 / a.duration.max(1e-3);
    let mut out = Outcome {
        reports,
        epoch_ns: epoch,
        window: Some((epoch, end)),
        expected: Some(joins * obs),
        delivered: Some(added),
        ..Default::default()
    };
    let m = &mut out.metrics;
    m.insert("join_rate_requested_per_s".into(), a.rate);
    m.insert("join_rate_achieved_per_s".into(), achieved);
    m.insert("joins".into(), joins as f64);
    m.insert("leaves".into(), leaves as f64);
    m.insert("member_added_expected".into(), (joins * obs) as f64);
    m.insert("member_added_received".into(), added as f64);
    m.insert("member_removed_expected".into(), (leaves * obs) as f64);
    m.insert("member_removed_received".into(), removed as f64);
    out.rates.push(RateCheck {
        what: "joins/s".into(),
        requested: a.rate,
        achieved,
        harness_driven: false,
    });
    if removed < leaves * obs {
        out.notes.push(format!(
            "{} member_removed events missing",
            leaves * obs - removed
        ));
    }
    let per_channel = a.observers as f64 + a.rate * a.stay / a.channels.max(1) as f64;
    if per_channel > 0.9 * MEMBER_LIMIT {
        out.notes.push(format!(
            "about {per_channel:.0} members per channel: near the usual limit of {MEMBER_LIMIT}"
        ));
    }
    Ok(out)
}
