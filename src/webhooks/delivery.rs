//! One webhook request: POST the signed body, retry with exponential backoff and jitter until the
//! retry window closes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use super::WebhookStats;

/// The pooled HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the client used for every delivery.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A request ready to send.
pub struct Delivery {
    /// Target URL.
    pub url: hyper::Uri,
    /// App key for `X-Pusher-Key`.
    pub key: String,
    /// Hex HMAC-SHA256 of the body.
    pub signature: String,
    /// Extra configured headers.
    pub headers: Vec<(String, String)>,
    /// `{"time_ms":..,"events":[..]}`.
    pub body: Bytes,
    /// When the request was built; the retry window counts from here, so time spent waiting
    /// for a free slot counts too.
    pub created: Instant,
    /// Give up this long after `created`.
    pub retry_window: Duration,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

async fn attempt(client: &HttpClient, d: &Delivery) -> Result<(), String> {
    let mut req = hyper::Request::post(d.url.clone())
        .header("Content-Type", "application/json")
        .header("X-Pusher-Key", &d.key)
        .header("X-Pusher-Signature", &d.signature);
    for (k, v) in &d.headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(d.body.clone()))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(d.timeout, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("status {}", resp.status())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Sends until success or until the retry window (or the shutdown deadline) runs out. Each
/// attempt holds one of the `permits` (the concurrency limit) only while it is in flight, so
/// deliveries waiting out a backoff to a dead endpoint do not block everyone else's.
pub async fn deliver(
    client: HttpClient,
    d: Delivery,
    stats: Arc<WebhookStats>,
    permits: Arc<Semaphore>,
) {
    let start = d.created;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let outcome = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            attempt(&client, &d).await
        };
        match outcome {
            Ok(()) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                let jitter = 0.5 + fastrand::f64();
                let wait = backoff.mul_f64(jitter);
                if start.elapsed() + wait > d.retry_window {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %d.url, error = %e, attempts_for = ?start.elapsed(), "webhook given up after the retry window");
                    return;
                }
                stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %d.url, error = %e, retry_in = ?wait, "webhook failed; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
