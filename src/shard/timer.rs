//! The timer sweep: server pings, pong timeouts, sign-in deadlines, lingering closes, cache
//! expiry and throttled subscription counts.

use std::rc::Rc;
use std::time::Duration;

use super::outbound::Notice;
use super::sock;
use super::state::{flush_dirty, CLOSE_LINGER_MS};
use super::Shard;
use crate::metrics::ShardMetrics;
use crate::protocol::{codes, encode};

/// The timer sweep, every 500 ms: server pings, pong timeouts (4201), sign-in deadlines (4009),
/// lingering closes, expired cache entries, throttled subscription counts.
pub async fn tick(shard: Rc<Shard>) {
    let cfg = &shard.shared.config.server;
    let activity = cfg.activity_timeout * 1000;
    let pong = cfg.pong_timeout * 1000;
    loop {
        monoio::time::sleep(Duration::from_millis(500)).await;
        ShardMetrics::add(&shard.metrics().loop_turns, 1);
        let now = shard.now_ms();
        {
            let mut st = shard.state.borrow_mut();
            let mut to_close = Vec::new();
            let mut to_ping = Vec::new();
            for (key, c) in st.conns.iter_mut() {
                if c.is_closing() {
                    if c.out.closing.cut_due(now, CLOSE_LINGER_MS) {
                        sock::shutdown(c.fd, libc::SHUT_RDWR);
                    }
                    continue;
                }
                if let Some(sent) = c.ping_sent {
                    if now.saturating_sub(sent) >= pong {
                        to_close.push((
                            key,
                            codes::PONG_TIMEOUT,
                            "Pong reply not received in time",
                        ));
                    }
                } else if now.saturating_sub(c.last_rx) >= activity {
                    c.ping_sent = Some(now);
                    to_ping.push(key);
                }
                if let Some(deadline) = c.auth_deadline {
                    if now >= deadline {
                        to_close.push((
                            key,
                            codes::UNAUTHORIZED,
                            "Connection not authorized within timeout",
                        ));
                    }
                }
            }
            for key in to_ping {
                shard.send_to(&mut st, key, encode::ping());
            }
            for (key, code, reason) in to_close {
                shard.close(&mut st, key, code, reason, Notice::WithPusherError);
            }
            for cache in st.cache.iter_mut() {
                cache.retain(|_, e| e.expires > now);
            }
            let mut effects = Vec::new();
            st.home.tick(now, &mut effects);
            let nodes = st.nodes.clone();
            drop(st);
            shard.apply_effects(&nodes, &mut effects);
        }
        flush_dirty(&shard);
    }
}
