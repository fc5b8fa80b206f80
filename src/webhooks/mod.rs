//! Webhooks: shards describe what happened ([`Hook`]); a side-car thread running a tokio runtime
//! delays, filters, batches, signs and delivers them with retries, so a slow or dead endpoint
//! never touches the shards' fan-out.

mod delivery;
mod sidecar;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::ids::AppIdx;
use crate::protocol::encode::{json_str, quoted};
use crate::protocol::events::WEBHOOK_EVENTS;

/// What happened, as the shards report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookKind {
    /// Subscription count went 0 -> 1.
    ChannelOccupied,
    /// Subscription count went 1 -> 0 (delayed, cancelled by a quick return).
    ChannelVacated,
    /// A user's first connection joined a presence channel.
    MemberAdded {
        /// User id (string form).
        user_id: String,
    },
    /// A user's last connection left a presence channel (delayed, cancelled by a quick return).
    MemberRemoved {
        /// User id (string form).
        user_id: String,
    },
    /// A client event was relayed.
    ClientEvent {
        /// Event name.
        event: String,
        /// Raw JSON of the event's data, passed through unchanged.
        data: String,
        /// Sender's socket id.
        socket_id: String,
        /// Sender's user id on presence channels.
        user_id: Option<String>,
    },
    /// A subscriber found an empty cache channel.
    CacheMiss,
    /// The subscription count changed (throttled like the events).
    SubscriptionCount {
        /// The new count.
        count: usize,
    },
}

impl HookKind {
    /// The webhook event name.
    pub fn name(&self) -> &'static str {
        match self {
            HookKind::ChannelOccupied => WEBHOOK_EVENTS[0],
            HookKind::ChannelVacated => WEBHOOK_EVENTS[1],
            HookKind::MemberAdded { .. } => WEBHOOK_EVENTS[2],
            HookKind::MemberRemoved { .. } => WEBHOOK_EVENTS[3],
            HookKind::ClientEvent { .. } => WEBHOOK_EVENTS[4],
            HookKind::CacheMiss => WEBHOOK_EVENTS[5],
            HookKind::SubscriptionCount { .. } => WEBHOOK_EVENTS[6],
        }
    }
}

/// One event for one app's webhooks.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The app.
    pub app: AppIdx,
    /// The channel.
    pub channel: Arc<str>,
    /// What happened.
    pub kind: HookKind,
}

impl Hook {
    /// The event object as it appears in the webhook body's `events` array.
    pub fn json(&self) -> String {
        let mut out = format!("{{\"name\":\"{}\",\"channel\":", self.kind.name());
        json_str(&mut out, &self.channel);
        match &self.kind {
            HookKind::MemberAdded { user_id } | HookKind::MemberRemoved { user_id } => {
                out.push_str(",\"user_id\":");
                json_str(&mut out, user_id);
            }
            HookKind::ClientEvent {
                event,
                data,
                socket_id,
                user_id,
            } => {
                out.push_str(&format!(
                    ",\"event\":{},\"data\":{data},\"socket_id\":{}",
                    quoted(event),
                    quoted(socket_id)
                ));
                if let Some(u) = user_id {
                    out.push_str(",\"user_id\":");
                    json_str(&mut out, u);
                }
            }
            HookKind::SubscriptionCount { count } => {
                out.push_str(&format!(",\"subscription_count\":{count}"))
            }
            _ => {}
        }
        out.push('}');
        out
    }
}

/// Delivery counters, exported on /metrics.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Requests answered with 2xx.
    pub sent: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Requests given up after the retry window.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full or shutdown came first.
    pub dropped: AtomicU64,
}

enum Command {
    Hook(Hook),
    Finish(Instant),
}

/// The shards' handle on the side-car.
pub struct Webhooks {
    tx: mpsc::Sender<Command>,
    /// Counters.
    pub stats: Arc<WebhookStats>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Webhooks {
    /// Starts the side-car thread when any app has webhooks configured.
    pub fn start(config: &Config) -> anyhow::Result<Option<Webhooks>> {
        if config.apps.iter().all(|a| a.webhooks.is_empty()) {
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel(config.server.webhook_queue);
        let stats = Arc::new(WebhookStats::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (cfg, st) = (config.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || rt.block_on(sidecar::run(cfg, rx, st)))?;
        Ok(Some(Webhooks {
            tx,
            stats,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Queues an event; when the queue is full it is dropped, counted and logged.
    pub fn emit(&self, hook: Hook) {
        if let Err(e) = self.tx.try_send(Command::Hook(hook)) {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped_total = n, reason = %e, "webhook queue full: event dropped");
            }
        }
    }

    /// Delivers what is pending (delayed events at once) and waits for it until `deadline`.
    pub fn finish(&self, deadline: Instant) {
        // Blocking: a full queue must delay the command, not lose it. The side-car keeps
        // consuming, so this waits at most for the events ahead of it to be taken.
        let _ = self.tx.blocking_send(Command::Finish(deadline));
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = handle {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_shapes() {
        let h = |kind| Hook {
            app: AppIdx(0),
            channel: "presence-x".into(),
            kind,
        };
        assert_eq!(
            h(HookKind::ChannelOccupied).json(),
            r#"{"name":"channel_occupied","channel":"presence-x"}"#
        );
        assert_eq!(
            h(HookKind::MemberAdded {
                user_id: "7".into()
            })
            .json(),
            r#"{"name":"member_added","channel":"presence-x","user_id":"7"}"#
        );
        assert_eq!(
            h(HookKind::ClientEvent {
                event: "client-a".into(),
                data: r#"{"k":1}"#.into(),
                socket_id: "1.2".into(),
                user_id: Some("u".into())
            })
            .json(),
            r#"{"name":"client_event","channel":"presence-x","event":"client-a","data":{"k":1},"socket_id":"1.2","user_id":"u"}"#
        );
        assert_eq!(
            h(HookKind::SubscriptionCount { count: 3 }).json(),
            r#"{"name":"subscription_count","channel":"presence-x","subscription_count":3}"#
        );
    }
}
