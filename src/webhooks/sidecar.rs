//! The side-car loop: applies the vacated/member_removed delay (cancelled by a quick return),
//! filters per webhook, batches when the app asks for it, and hands requests to delivery tasks.
//! Everything waiting here counts against `server.webhook_queue`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::delivery::{self, Delivery, HttpClient};
use super::{Command, Hook, HookKind, WebhookStats};
use crate::auth;
use crate::config::{Config, WebhookConfig};

/// Most events in one batched request.
const MAX_BATCH_EVENTS: usize = 100;
/// Window in which repeated cache misses of one channel are reported once.
const CACHE_MISS_DEDUP: Duration = Duration::from_secs(5);

/// (app, channel, user id for member_removed).
type DelayKey = (usize, Arc<str>, Option<String>);

fn delay_key(hook: &Hook) -> DelayKey {
    let user = match &hook.kind {
        HookKind::MemberRemoved { user_id } | HookKind::MemberAdded { user_id } => {
            Some(user_id.clone())
        }
        _ => None,
    };
    (hook.app.0 as usize, hook.channel.clone(), user)
}

struct Delayed {
    due: Instant,
    hook: Hook,
}

struct Batch {
    app: usize,
    hook: usize,
    opened: Instant,
    events: Vec<String>,
}

struct Sidecar {
    config: Config,
    stats: Arc<WebhookStats>,
    client: HttpClient,
    /// Departures waiting out the delay, keyed so a return finds its departure in O(1).
    delayed: HashMap<DelayKey, Delayed>,
    batches: Vec<Batch>,
    /// Cache misses reported in the last [`CACHE_MISS_DEDUP`], by (app, channel).
    recent_misses: HashMap<(usize, Arc<str>), Instant>,
    tasks: JoinSet<()>,
    permits: Arc<Semaphore>,
}

/// Runs until a `Finish` command, then drains within its deadline.
pub async fn run(config: Config, mut rx: mpsc::Receiver<Command>, stats: Arc<WebhookStats>) {
    let permits = Arc::new(Semaphore::new(config.server.webhook_concurrency));
    let mut s = Sidecar {
        config,
        stats,
        client: delivery::client(),
        delayed: HashMap::new(),
        batches: Vec::new(),
        recent_misses: HashMap::new(),
        tasks: JoinSet::new(),
        permits,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let deadline = loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Hook(h)) => s.on_hook(h),
                Some(Command::Finish(deadline)) => break deadline,
                None => break Instant::now(),
            },
            _ = tick.tick() => s.on_tick(false),
            Some(_) = s.tasks.join_next(), if !s.tasks.is_empty() => {}
        }
    };
    // Shutdown: whatever was queued behind the Finish command, then everything delayed or
    // batched goes out now; deliveries get until the deadline.
    while let Ok(Command::Hook(h)) = rx.try_recv() {
        s.on_hook(h);
    }
    s.on_tick(true);
    let left = tokio::time::timeout_at(deadline.into(), async {
        while s.tasks.join_next().await.is_some() {}
    })
    .await;
    if left.is_err() {
        let n = s.tasks.len() as u64;
        s.stats.dropped.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(
            pending = n,
            "shutdown grace ended with webhooks still undelivered"
        );
        s.tasks.abort_all();
    }
}

impl Sidecar {
    fn outstanding(&self) -> usize {
        self.delayed.len()
            + self.batches.iter().map(|b| b.events.len()).sum::<usize>()
            + self.tasks.len()
    }

    fn on_hook(&mut self, hook: Hook) {
        let app = &self.config.apps[hook.app.0 as usize];
        let now = Instant::now();
        match &hook.kind {
            HookKind::ChannelVacated | HookKind::MemberRemoved { .. } if app.webhook_delay > 0 => {
                if self.outstanding() >= self.config.server.webhook_queue {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let due = now + Duration::from_secs(app.webhook_delay);
                self.delayed.insert(delay_key(&hook), Delayed { due, hook });
                return;
            }
            // A return within the delay cancels the pending departure and this arrival.
            HookKind::ChannelOccupied | HookKind::MemberAdded { .. }
                if self.delayed.remove(&delay_key(&hook)).is_some() =>
            {
                return;
            }
            HookKind::CacheMiss => {
                let key = (hook.app.0 as usize, hook.channel.clone());
                match self.recent_misses.get(&key) {
                    Some(t) if now.duration_since(*t) < CACHE_MISS_DEDUP => return,
                    _ => {
                        if self.recent_misses.len() >= self.config.server.webhook_queue {
                            // Bounded like everything else here; forgetting only risks a repeat.
                            self.recent_misses.clear();
                        }
                        self.recent_misses.insert(key, now);
                    }
                }
            }
            _ => {}
        }
        self.route(hook);
    }

    /// Sends the event to every matching webhook of its app, batched or not.
    fn route(&mut self, hook: Hook) {
        let app_idx = hook.app.0 as usize;
        let json = hook.json();
        let now = Instant::now();
        let hooks = self.config.apps[app_idx].webhooks.clone();
        let batching = self.config.apps[app_idx].batch_webhooks;
        for (i, w) in hooks.iter().enumerate() {
            if !matches(w, &hook) {
                continue;
            }
            if self.outstanding() >= self.config.server.webhook_queue {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %w.url, "webhook queue full: event dropped");
                continue;
            }
            if batching {
                match self
                    .batches
                    .iter_mut()
                    .find(|b| b.app == app_idx && b.hook == i)
                {
                    Some(b) => b.events.push(json.clone()),
                    None => self.batches.push(Batch {
                        app: app_idx,
                        hook: i,
                        opened: now,
                        events: vec![json.clone()],
                    }),
                }
            } else {
                self.send(app_idx, i, std::slice::from_ref(&json));
            }
        }
        self.flush_batches(false);
    }

    fn on_tick(&mut self, all: bool) {
        let now = Instant::now();
        let mut due = Vec::new();
        self.delayed.retain(|_, d| {
            if all || d.due <= now {
                due.push((d.due, d.hook.clone()));
                false
            } else {
                true
            }
        });
        // Oldest first, so departures keep their order when several fall due in one tick.
        due.sort_by_key(|(due, _)| *due);
        let due: Vec<Hook> = due.into_iter().map(|(_, h)| h).collect();
        self.recent_misses
            .retain(|_, t| now.duration_since(*t) < CACHE_MISS_DEDUP);
        for hook in due {
            self.route(hook);
        }
        self.flush_batches(all);
    }

    fn flush_batches(&mut self, all: bool) {
        let now = Instant::now();
        let mut ready = Vec::new();
        let config = &self.config;
        self.batches.retain_mut(|b| {
            let window = Duration::from_millis(config.apps[b.app].webhook_batch_ms);
            if all || b.events.len() >= MAX_BATCH_EVENTS || now.duration_since(b.opened) >= window {
                ready.push((b.app, b.hook, std::mem::take(&mut b.events)));
                false
            } else {
                true
            }
        });
        for (app, hook, events) in ready {
            for chunk in events.chunks(MAX_BATCH_EVENTS) {
                self.send(app, hook, chunk);
            }
        }
    }

    fn send(&mut self, app_idx: usize, hook_idx: usize, events: &[String]) {
        let app = &self.config.apps[app_idx];
        let w = &app.webhooks[hook_idx];
        let Ok(url) = w.url.parse::<hyper::Uri>() else {
            return;
        };
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let body = format!(
            "{{\"time_ms\":{time_ms},\"events\":[{}]}}",
            events.join(",")
        );
        let d = Delivery {
            url,
            key: app.key.clone(),
            signature: auth::sign(&app.secret, body.as_bytes()),
            headers: w
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: Bytes::from(body),
            created: Instant::now(),
            retry_window: Duration::from_secs(app.webhook_retry_window),
            timeout: Duration::from_secs(self.config.server.webhook_timeout),
        };
        let (client, stats, permits) = (
            self.client.clone(),
            self.stats.clone(),
            self.permits.clone(),
        );
        self.tasks
            .spawn(async move { delivery::deliver(client, d, stats, permits).await });
    }
}

fn matches(w: &WebhookConfig, hook: &Hook) -> bool {
    (w.event_types.is_empty() || w.event_types.iter().any(|t| t == hook.kind.name()))
        && hook.channel.starts_with(w.filter.prefix.as_str())
        && hook.channel.ends_with(w.filter.suffix.as_str())
}
