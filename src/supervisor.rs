//! Talking to the service manager (systemd's notify protocol, through `sd-notify`): `READY=1`
//! once every shard accepts, `STATUS=` with the connection count, `STOPPING=1` when the drain
//! starts, and `WATCHDOG=1` only while every shard's event loop is turning, so a shard stuck in
//! a loop gets the service restarted. Without `NOTIFY_SOCKET` (not under systemd) every call is
//! a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The notify state of this process.
pub struct Supervisor {
    watchdog: Option<Duration>,
    last_ping: Instant,
    last_turns: Vec<u64>,
    last_status: Instant,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// Reads `WATCHDOG_USEC` (when the unit sets `WatchdogSec=`).
    pub fn new() -> Supervisor {
        let now = Instant::now();
        Supervisor {
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: now,
            last_turns: Vec::new(),
            last_status: now,
        }
    }

    /// How often [`Supervisor::tick`] should run: a quarter of the watchdog period (so a ping
    /// goes out at about half of it), at most every 250 ms.
    pub fn tick_every(&self) -> Duration {
        self.watchdog.map_or(Duration::from_millis(250), |w| {
            (w / 4).min(Duration::from_millis(250))
        })
    }

    /// Every shard accepts.
    pub fn ready(&mut self, connections: usize, turns: Vec<u64>) {
        self.last_turns = turns;
        let status = status_line(connections);
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// Called every [`Supervisor::tick_every`]: refreshes the status and feeds the watchdog when
    /// every shard's loop turned since the last ping.
    pub fn tick(&mut self, connections: usize, turns: Vec<u64>) {
        let now = Instant::now();
        if now.duration_since(self.last_status) >= STATUS_EVERY {
            self.last_status = now;
            notify(&[NotifyState::Status(&status_line(connections))]);
        }
        let Some(period) = self.watchdog else { return };
        if now.duration_since(self.last_ping) < period / 2 {
            return;
        }
        if all_turned(&self.last_turns, &turns) {
            self.last_turns = turns;
            self.last_ping = now;
            notify(&[NotifyState::Watchdog]);
        } else {
            // No ping: if this lasts, systemd kills and restarts the service. Say why, once
            // per missed period.
            if now.duration_since(self.last_ping) >= period {
                tracing::error!(turns = ?turns, "a shard's event loop is stuck; not feeding the watchdog");
                self.last_ping = now;
            }
        }
    }
}

/// The graceful drain starts.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn status_line(connections: usize) -> String {
    format!("serving {connections} connection(s)")
}

fn notify(state: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "service manager notification failed");
    }
}

/// Whether every shard's loop turned: each counter moved since `before` (a new shard list, as
/// at start, counts as turned only when it has the same length and moved).
fn all_turned(before: &[u64], now: &[u64]) -> bool {
    before.len() == now.len() && before.iter().zip(now).all(|(b, n)| n > b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_when_every_shard_moved() {
        assert!(all_turned(&[1, 5], &[2, 6]));
        assert!(!all_turned(&[1, 5], &[2, 5]), "shard 1 stuck");
        assert!(!all_turned(&[1, 5], &[1, 9]), "shard 0 stuck");
        assert!(!all_turned(&[1], &[2, 3]), "a different shard list");
        assert!(all_turned(&[], &[]));
    }
}
