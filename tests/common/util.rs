//! Small shared helpers: the time limit for anything awaited, unique names and polling.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long any single awaited frame or response may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// Source of [`uniq`] numbers, shared by everything in one test binary.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Retries `f` every 50 ms for up to 10 s until `ok` holds; returns the last value.
pub async fn poll_until<T, Fut, F, P>(mut f: F, ok: P) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    P: Fn(&T) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = f().await;
        if ok(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique channel/user suffix for one test.
pub fn uniq(prefix: &str) -> String {
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::SeqCst))
}
