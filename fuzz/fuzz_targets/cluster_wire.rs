//! The cluster wire codec (`cluster::wire`): what a node decodes from the broker, and the
//! encode/decode round trip.
//!
//! Input: read twice. As bytes from the broker, it is decoded; as a recipe (through
//! `arbitrary::Unstructured`), it builds a message that is encoded and decoded again.
//!
//! Invariants:
//! - nothing panics;
//! - decoding allocates at most a small multiple of the message's size (a counting allocator
//!   measures the peak), whatever lengths and counts the message announces;
//! - the encoding is canonical: a message that decodes re-encodes to exactly the same bytes;
//! - every strict prefix of a valid message, and the message with a byte appended, is refused;
//! - round trip: `decode(encode(node, m)) == (node, m)` for any message built from the input.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringpush::fuzzing::{wire_decode, wire_encode, Change, Entry, Message, NodeId, WireError};

/// Counts live heap bytes while `COUNTING` is set, and the peak.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(
                layout.size().min(LIVE.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Decodes with the allocator counting; returns the result and the peak of live heap bytes.
fn measured_decode(bytes: Bytes) -> (Result<(NodeId, Message), WireError>, usize) {
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let r = wire_decode(bytes);
    COUNTING.store(false, Ordering::Relaxed);
    (r, PEAK.load(Ordering::Relaxed))
}

fn string(u: &mut Unstructured<'_>) -> Result<String> {
    String::arbitrary(u)
}

fn opt(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    Option::<String>::arbitrary(u)
}

fn change(u: &mut Unstructured<'_>) -> Result<Change> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => Change::Subscribed {
            channel: string(u)?,
        },
        1 => Change::Unsubscribed {
            channel: string(u)?,
        },
        2 => Change::Joined {
            channel: string(u)?,
            key: string(u)?,
            raw_id: string(u)?,
            info: opt(u)?,
        },
        3 => Change::Left {
            channel: string(u)?,
            key: string(u)?,
        },
        4 => Change::SignedIn { user: string(u)? },
        _ => Change::SignedOut { user: string(u)? },
    })
}

fn entry(u: &mut Unstructured<'_>) -> Result<Entry> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => Entry::Subs {
            app: string(u)?,
            channel: string(u)?,
            count: u.arbitrary()?,
        },
        1 => Entry::Member {
            app: string(u)?,
            channel: string(u)?,
            key: string(u)?,
            raw_id: string(u)?,
            info: opt(u)?,
            conns: u.arbitrary()?,
        },
        _ => Entry::User {
            app: string(u)?,
            user: string(u)?,
            conns: u.arbitrary()?,
        },
    })
}

fn message(u: &mut Unstructured<'_>) -> Result<Message> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => Message::Heartbeat {
            connections: u
                .arbitrary_iter::<(String, u32)>()?
                .collect::<Result<_>>()?,
        },
        1 => Message::Leaving,
        2 => Message::Hello,
        3 => Message::Publish {
            app: string(u)?,
            channel: string(u)?,
            frame: Bytes::from(Vec::<u8>::arbitrary(u)?),
            except: opt(u)?,
            cache_data: opt(u)?,
            cache_stamp: u64::arbitrary(u)?,
        },
        4 => Message::ToUser {
            app: string(u)?,
            user: string(u)?,
            frame: Bytes::from(Vec::<u8>::arbitrary(u)?),
            except: opt(u)?,
        },
        5 => Message::Terminate {
            app: string(u)?,
            user: string(u)?,
        },
        6 => Message::Change {
            app: string(u)?,
            change: change(u)?,
        },
        _ => {
            let (piece, pieces) = (u.arbitrary()?, u.arbitrary()?);
            let mut entries = Vec::new();
            while !u.is_empty() && entries.len() < 64 {
                entries.push(entry(u)?);
            }
            Message::Snapshot {
                piece,
                pieces,
                entries,
            }
        }
    })
}

fuzz_target!(|data: &[u8]| {
    // As received from the broker.
    let (decoded, peak) = measured_decode(Bytes::copy_from_slice(data));
    // Entries are about 130 bytes in memory for at least 13 on the wire; strings are copied.
    let bound = 16 * data.len() + 1024;
    assert!(
        peak <= bound,
        "decoding {} bytes allocated {peak}",
        data.len()
    );
    if let Ok((node, msg)) = decoded {
        let again = wire_encode(node, &msg);
        assert_eq!(&again[..], data, "not canonical: {msg:?}");
        for cut in [0, data.len() / 2, data.len() - 1] {
            assert!(wire_decode(Bytes::copy_from_slice(&data[..cut])).is_err());
        }
        let mut longer = data.to_vec();
        longer.push(0);
        assert_eq!(wire_decode(longer.into()), Err(WireError::Trailing));
    }
    // As a recipe for a message.
    let mut u = Unstructured::new(data);
    if let (Ok(msg), Ok(node)) = (message(&mut u), u64::arbitrary(&mut u)) {
        let wire = wire_encode(NodeId(node), &msg);
        assert_eq!(wire_decode(wire), Ok((NodeId(node), msg)));
    }
});
