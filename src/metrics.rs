//! Counters and gauges. Each shard writes only its own cache-line-aligned block, so counting never
//! bounces cache lines between cores; a scrape sums the blocks into Prometheus text. (A metrics
//! library would put shared atomics on the hot path, which is why this is written by hand.)

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// One shard's counters.
#[derive(Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    /// WebSocket connections accepted.
    pub connections_opened: AtomicU64,
    /// WebSocket connections closed.
    pub connections_closed: AtomicU64,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumers: AtomicU64,
    /// Pusher messages received from clients.
    pub messages_in: AtomicU64,
    /// Frames queued to connections by fan-out.
    pub deliveries: AtomicU64,
    /// Publications handled (one per channel per publish).
    pub publications: AtomicU64,
    /// HTTP requests served.
    pub http_requests: AtomicU64,
    /// Client events relayed.
    pub client_events: AtomicU64,
    /// Accept errors (EMFILE and the like).
    pub accept_errors: AtomicU64,
    /// Webhook events queued.
    pub webhooks_queued: AtomicU64,
    /// Turns of the shard's timer sweep: it only advances while the shard's event loop runs,
    /// which is what the systemd watchdog is fed from.
    pub loop_turns: AtomicU64,
    /// Bytes HTTP request bodies being received hold reserved (a gauge, set by the shard).
    pub pending_body_bytes: AtomicU64,
    /// HTTP requests refused (503) because their body did not fit `max_pending_body_bytes`.
    pub bodies_refused: AtomicU64,
}

impl ShardMetrics {
    /// Adds `n` to a counter owned by the calling shard.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Named series for the exposition.
#[derive(Clone, Copy)]
pub struct Series<'a> {
    /// Metric name.
    pub name: &'a str,
    /// HELP text.
    pub help: &'a str,
    /// counter or gauge.
    pub kind: &'a str,
    /// Value.
    pub value: u64,
}

impl<'a> Series<'a> {
    /// A monotonically increasing counter.
    pub fn counter(name: &'a str, help: &'a str, value: u64) -> Self {
        Series {
            name,
            help,
            kind: "counter",
            value,
        }
    }

    /// A value that goes up and down.
    pub fn gauge(name: &'a str, help: &'a str, value: u64) -> Self {
        Series {
            name,
            help,
            kind: "gauge",
            value,
        }
    }
}

/// Sums the shards' counters into Prometheus text, followed by extra series.
pub fn render(shards: &[ShardMetrics], extra: &[Series<'_>]) -> String {
    let sum = |f: fn(&ShardMetrics) -> &AtomicU64| -> u64 {
        shards.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    };
    let opened = sum(|s| &s.connections_opened);
    let closed = sum(|s| &s.connections_closed);
    let mut series = vec![
        Series::gauge(
            "ringpush_connections",
            "Open WebSocket connections",
            opened.saturating_sub(closed),
        ),
        Series::counter(
            "ringpush_connections_opened_total",
            "WebSocket connections accepted",
            opened,
        ),
        Series::counter(
            "ringpush_slow_consumers_closed_total",
            "Connections closed with 4100 because their outbound queue overflowed",
            sum(|s| &s.slow_consumers),
        ),
        Series::counter(
            "ringpush_messages_received_total",
            "Pusher messages received from clients",
            sum(|s| &s.messages_in),
        ),
        Series::counter(
            "ringpush_deliveries_total",
            "Frames queued to subscribers",
            sum(|s| &s.deliveries),
        ),
        Series::counter(
            "ringpush_publications_total",
            "Channel publications fanned out (per shard)",
            sum(|s| &s.publications),
        ),
        Series::counter(
            "ringpush_client_events_total",
            "Client events relayed",
            sum(|s| &s.client_events),
        ),
        Series::counter(
            "ringpush_http_requests_total",
            "HTTP requests served",
            sum(|s| &s.http_requests),
        ),
        Series::counter(
            "ringpush_webhook_events_queued_total",
            "Webhook events handed to the side-car",
            sum(|s| &s.webhooks_queued),
        ),
        Series::gauge(
            "ringpush_pending_body_bytes",
            "Bytes reserved by HTTP request bodies being received (max_pending_body_bytes per shard)",
            sum(|s| &s.pending_body_bytes),
        ),
        Series::counter(
            "ringpush_bodies_refused_total",
            "HTTP requests refused with 503 because their body did not fit max_pending_body_bytes",
            sum(|s| &s.bodies_refused),
        ),
        Series::counter(
            "ringpush_accept_errors_total",
            "Failed accept calls",
            sum(|s| &s.accept_errors),
        ),
    ];
    series.extend(extra.iter().copied());
    let mut out = String::new();
    for s in series {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}\n{} {}",
            s.name, s.help, s.name, s.kind, s.name, s.value
        );
    }
    out
}
