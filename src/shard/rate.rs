//! The two per-connection rate limits: a token bucket for every message and a one-second window
//! for client events. Both are pure arithmetic on a clock passed in (milliseconds), so they are
//! tested without a connection.

/// Every message a connection sends costs a token; tokens come back at a steady rate up to a
/// burst. This bounds what one connection can put on the bus (subscribe churn, client events)
/// whatever it sends: refused messages answer `pusher:error` 4301.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens left.
    tokens: u32,
    /// When (ms) tokens were last added. Only moves when at least one whole token was added,
    /// so time between refills accumulates instead of being rounded away.
    refilled_at: u64,
}

impl TokenBucket {
    /// A bucket holding `burst` tokens at `now`, as a new connection starts.
    pub fn full(burst: u32, now: u64) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            refilled_at: now,
        }
    }

    /// Adds the tokens earned since the last refill (`rate_per_sec` a second, never more than
    /// `burst` in all), then takes one. False, and nothing taken, when the bucket is empty.
    pub fn take(&mut self, now: u64, rate_per_sec: u32, burst: u32) -> bool {
        let earned = now.saturating_sub(self.refilled_at) * rate_per_sec as u64 / 1000;
        if earned > 0 {
            self.tokens = (self.tokens as u64 + earned).min(burst as u64) as u32;
            self.refilled_at = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Client events counted in one-second windows. A window opens with the first event after the
/// previous window closed (not at the clock's second boundaries), so a burst is judged the same
/// wherever it falls; over the limit, events are refused with `pusher:error` 4301.
///
/// A new connection's window counts as opened at time 0 with nothing in it, as before this type
/// existed: within the first second of the process's clock, events share that window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateWindow {
    /// When (ms) the current window opened.
    opened_at: u64,
    /// Events counted in it, refused ones included.
    count: u32,
}

impl RateWindow {
    /// Length of a window.
    pub const WINDOW_MS: u64 = 1000;

    /// Counts an event at `now`, opening a new window if the current one is over. True while
    /// the window holds at most `limit` events.
    pub fn admit(&mut self, now: u64, limit: u32) -> bool {
        if now.saturating_sub(self.opened_at) >= Self::WINDOW_MS {
            self.opened_at = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_the_burst_then_refuses() {
        let mut b = TokenBucket::full(3, 1_000);
        assert!(b.take(1_000, 10, 3));
        assert!(b.take(1_000, 10, 3));
        assert!(b.take(1_000, 10, 3));
        assert!(!b.take(1_000, 10, 3));
        // Refusing takes nothing and does not push the refill time forward: the 50 ms count
        // towards the next token.
        assert!(!b.take(1_050, 10, 3));
        assert!(b.take(1_100, 10, 3));
        assert!(!b.take(1_100, 10, 3));
    }

    #[test]
    fn tokens_come_back_at_the_rate_and_fractions_accumulate() {
        let mut b = TokenBucket::full(1, 0);
        assert!(b.take(0, 10, 5)); // empty now; 10/s is one token per 100 ms
        assert!(!b.take(60, 10, 5)); // 0.6 of a token: none yet
        assert!(b.take(100, 10, 5)); // the 60 ms were not lost
        assert!(!b.take(100, 10, 5));
        assert!(b.take(300, 10, 5)); // two earned, one taken
        assert!(b.take(300, 10, 5));
        assert!(!b.take(300, 10, 5));
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let mut b = TokenBucket::full(0, 0);
        // An hour idle at 100/s earns far more than the burst of 4.
        for _ in 0..4 {
            assert!(b.take(3_600_000, 100, 4));
        }
        assert!(!b.take(3_600_000, 100, 4));
    }

    #[test]
    fn a_clock_behind_the_refill_time_earns_nothing() {
        let mut b = TokenBucket::full(1, 5_000);
        assert!(b.take(4_000, 100, 1));
        assert!(!b.take(4_000, 100, 1));
    }

    #[test]
    fn the_window_opens_at_the_first_event_not_at_a_clock_second() {
        let mut w = RateWindow::default();
        // First event at 10.9 s: the window runs until 11.9 s, not 11.0 s.
        assert!(w.admit(10_900, 2));
        assert!(w.admit(11_000, 2));
        assert!(!w.admit(11_500, 2)); // third event inside the window
        assert!(!w.admit(11_899, 2));
        // 11.9 s: a new window, opened by this event.
        assert!(w.admit(11_900, 2));
        assert!(w.admit(12_899, 2));
        assert!(!w.admit(12_899, 2));
    }

    #[test]
    fn an_idle_gap_opens_a_fresh_window() {
        let mut w = RateWindow::default();
        assert!(w.admit(5_000, 1));
        assert!(!w.admit(5_999, 1));
        assert!(w.admit(9_123, 1));
        assert!(!w.admit(10_000, 1)); // still inside the window opened at 9.123 s
        assert!(w.admit(10_123, 1));
    }

    #[test]
    fn refused_events_count_in_their_window() {
        let mut w = RateWindow::default();
        assert!(w.admit(2_000, 1));
        for t in 2_001..2_100 {
            assert!(!w.admit(t, 1));
        }
        assert!(w.admit(3_000, 1));
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let mut w = RateWindow::default();
        assert!(!w.admit(1_000, 0));
        assert!(!w.admit(5_000, 0));
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// Event times from gaps (several events may share an instant), starting at `start`.
        fn times(start: u64, gaps: &[u64]) -> Vec<u64> {
            gaps.iter()
                .scan(start, |t, g| {
                    *t += g;
                    Some(*t)
                })
                .collect()
        }

        /// Gaps of 0 (same instant) to a few seconds, mostly short.
        fn gaps() -> impl Strategy<Value = Vec<u64>> {
            vec(
                prop_oneof![4 => Just(0u64), 4 => 0u64..50, 1 => 0u64..3000],
                1..300,
            )
        }

        proptest! {
            #[test]
            fn the_bucket_never_allows_more_than_burst_at_once_nor_more_than_the_rate(
                burst in 1u32..40,
                rate in 1u32..500,
                start in 0u64..10_000,
                gaps in gaps(),
            ) {
                let ts = times(start, &gaps);
                let mut b = TokenBucket::full(burst, start);
                let ok: Vec<bool> = ts.iter().map(|&t| b.take(t, rate, burst)).collect();
                let admitted = |from: u64, to: u64| {
                    ts.iter()
                        .zip(&ok)
                        .filter(|(&t, &a)| a && t >= from && t <= to)
                        .count() as u64
                };
                for &t in &ts {
                    // One instant: at most the burst.
                    prop_assert!(admitted(t, t) <= burst as u64);
                }
                // From the start: the burst plus what the rate earned, rounded down.
                let last = *ts.last().unwrap();
                prop_assert!(
                    admitted(start, last) <= burst as u64 + (last - start) * rate as u64 / 1000
                );
                // Any window between two events: the burst plus the rate over the window (plus
                // less than one token earned before it, hence rounding up).
                for (i, &a) in ts.iter().enumerate().step_by(7) {
                    for &z in ts[i..].iter().step_by(5) {
                        let earned = ((z - a) * rate as u64).div_ceil(1000);
                        prop_assert!(admitted(a, z) <= burst as u64 + earned);
                    }
                }
            }

            #[test]
            fn a_quiet_spell_of_one_token_always_earns_one(
                burst in 1u32..40,
                rate in 1u32..500,
                gaps in gaps(),
            ) {
                let ts = times(0, &gaps);
                let mut b = TokenBucket::full(burst, 0);
                for &t in &ts {
                    b.take(t, rate, burst);
                }
                let quiet = 1000u64.div_ceil(rate as u64);
                prop_assert!(b.take(ts.last().unwrap() + quiet, rate, burst));
            }

            #[test]
            fn a_window_opens_at_its_first_event_and_holds_at_most_the_limit(
                limit in 0u32..6,
                start in 0u64..5_000,
                gaps in gaps(),
            ) {
                let ts = times(start, &gaps);
                let mut w = RateWindow::default();
                let mut in_window = 0u32;
                for &t in &ts {
                    let before = w;
                    let ok = w.admit(t, limit);
                    if w.opened_at != before.opened_at {
                        // Opened by this very event, once the previous window was over.
                        prop_assert_eq!(w.opened_at, t);
                        prop_assert!(t - before.opened_at >= RateWindow::WINDOW_MS);
                        in_window = 0;
                    } else {
                        prop_assert!(t - w.opened_at < RateWindow::WINDOW_MS);
                    }
                    in_window += 1;
                    // The first `limit` events of a window pass, the rest do not.
                    prop_assert_eq!(ok, in_window <= limit);
                }
            }

            #[test]
            fn after_a_second_of_quiet_the_next_burst_gets_the_whole_limit(
                limit in 1u32..6,
                busy in gaps(),
                quiet in 1000u64..5000,
                offsets in vec(0u64..1000, 1..12),
            ) {
                let mut w = RateWindow::default();
                let ts = times(0, &busy);
                for &t in &ts {
                    w.admit(t, limit);
                }
                let opener = ts.last().unwrap() + quiet;
                let mut offsets = offsets;
                offsets.sort_unstable();
                for (i, off) in offsets.iter().enumerate() {
                    let ok = w.admit(opener + off, limit);
                    // Anchored at the opener, whatever the clock's second boundaries.
                    prop_assert_eq!(ok, (i as u32) < limit, "event {} at +{}", i, off);
                }
            }
        }
    }
}
