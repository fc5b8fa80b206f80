//! The shard's budget for HTTP request bodies it is waiting for. Nothing about a request is
//! known to be genuine before its whole body is in (the API signature covers the body), so a
//! stranger who announces a large body and sends it slowly makes the server hold those bytes
//! for up to `handshake_timeout`, and many strangers would make it hold them many times over.
//! A body that has to be waited for first reserves its announced length here, out of
//! `max_pending_body_bytes`; one that does not fit in what is left is refused (503) instead of
//! read. Pure bookkeeping, tested without sockets; `session` reserves and gives back.

use std::cell::Cell;

/// Bytes reserved by the bodies being received on one shard, out of a limit.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    held: Cell<usize>,
}

impl BodyBudget {
    /// An empty budget of `limit` bytes.
    pub fn new(limit: usize) -> BodyBudget {
        BodyBudget {
            limit,
            held: Cell::new(0),
        }
    }

    /// Reserves `n` bytes if they fit in what is left; false, and nothing reserved, if not.
    pub fn reserve(&self, n: usize) -> bool {
        match self.held.get().checked_add(n) {
            Some(total) if total <= self.limit => {
                self.held.set(total);
                true
            }
            _ => false,
        }
    }

    /// Gives back `n` bytes reserved before.
    pub fn release(&self, n: usize) {
        debug_assert!(n <= self.held.get(), "released more than was reserved");
        self.held.set(self.held.get().saturating_sub(n));
    }

    /// Bytes reserved now.
    pub fn held(&self) -> usize {
        self.held.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_the_limit_and_come_back() {
        let b = BodyBudget::new(3 << 20);
        assert!(b.reserve(1 << 20));
        assert!(b.reserve(1 << 20));
        assert!(b.reserve(1 << 20));
        assert_eq!(b.held(), 3 << 20);
        assert!(!b.reserve(1), "full: not even a byte more");
        assert_eq!(b.held(), 3 << 20, "a refusal reserves nothing");
        b.release(1 << 20);
        assert!(!b.reserve((1 << 20) + 1), "bigger than what is left");
        assert!(b.reserve(1 << 20), "exactly what is left");
        for _ in 0..3 {
            b.release(1 << 20);
        }
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_zero_length_reservation_always_fits_and_huge_ones_never_overflow() {
        let b = BodyBudget::new(10);
        assert!(b.reserve(10));
        assert!(b.reserve(0));
        assert!(!b.reserve(usize::MAX));
        b.release(10);
        assert!(!b.reserve(usize::MAX));
        assert_eq!(b.held(), 0);
    }
}
