//! HTTP API publishers for `fanout`: several keep-alive connections trigger
//! events on a fixed global schedule; each payload carries its scheduled send
//! time so latency is measured from the schedule (no coordinated omission).

use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use super::{precise_sleep_until, Ctx, BENCH_EVENT};
use crate::cli::FanoutArgs;
use crate::http::ApiClient;
use crate::metrics::{unix_ns, Stats};
use crate::pusher::make_payload;

/// Seconds a publisher may run past the end of the schedule before it gives up.
const GRACE_S: f64 = 2.0;

/// Publishes `rate * duration` events starting at `epoch_ns`; message m goes
/// to channel m mod K. Returns successful publishes per channel.
pub async fn publish(ctx: Arc<Ctx>, a: FanoutArgs, epoch_ns: u64, stats: Arc<Stats>) -> Vec<u64> {
    let total = (a.rate * a.duration).round().max(0.0) as u64;
    let k = a.channels.max(1);
    let publishers = a.publishers.max(1) as u64;
    let ok = Arc::new(Mutex::new(vec![0u64; k]));
    let interval = 1e9 / a.rate.max(0.001);
    let give_up_ns = epoch_ns + ((a.duration + GRACE_S) * 1e9) as u64;
    let mut tasks = JoinSet::new();
    for j in 0..publishers {
        let ctx = ctx.clone();
        let stats = stats.clone();
        let ok = ok.clone();
        let channels: Vec<String> = (0..k).map(|c| ctx.channel("", c)).collect();
        let bytes = a.payload_bytes;
        tasks.spawn(async move {
            let mut client = ApiClient::new(
                ctx.http.clone(),
                ctx.creds.clone(),
                None,
                ctx.connect_timeout(),
            );
            let mut m = j;
            while m < total {
                let sched = epoch_ns + (m as f64 * interval) as u64;
                if unix_ns() > give_up_ns {
                    // Never sent, so never expected: an error, or the run would look clean
                    // with part of its schedule missing.
                    let skipped = (total - m).div_ceil(publishers);
                    stats.count("publish_skipped", skipped);
                    stats.errors_n("publish skipped: the schedule ran out of time", skipped);
                    break;
                }
                precise_sleep_until(sched).await;
                let lag = unix_ns().saturating_sub(sched) / 1000;
                stats.record_us("publish_lag", lag);
                let ch = (m % k as u64) as usize;
                let data = make_payload(sched, m, bytes);
                let t0 = std::time::Instant::now();
                match client.trigger(&channels[ch], BENCH_EVENT, &data).await {
                    Ok(resp) if resp.status == 200 => {
                        stats.record_us("publish_http", t0.elapsed().as_micros() as u64);
                        stats.count("published", 1);
                        let now = unix_ns();
                        stats.tick("published", now);
                        stats.extreme("published_ns", now);
                        ok.lock().unwrap_or_else(|e| e.into_inner())[ch] += 1;
                    }
                    Ok(resp) => {
                        if stats.counter("http_error_logged") == 0 {
                            stats.count("http_error_logged", 1);
                            eprintln!(
                                "publish failed: HTTP {} {}",
                                resp.status,
                                resp.body.chars().take(200).collect::<String>()
                            );
                        }
                        stats.error(format!("http_{}", resp.status));
                    }
                    Err(_) => stats.error("http_io"),
                }
                m += publishers;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let v = ok.lock().unwrap_or_else(|e| e.into_inner()).clone();
    v
}
