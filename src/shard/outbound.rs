//! The sending side of a connection: the queue of frames waiting for the socket, the budget it
//! is held to, and where the connection stands in closing. No IO happens here: when the budget
//! needs the kernel to take what is queued first, the caller is told to flush
//! ([`NeedsFlush`]), and the caller does the syscalls. That keeps the rules testable without a
//! socket.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::protocol::encode;
use crate::ws::codec;

/// Ring slots an empty queue may keep; a burst that grew it beyond this gives the memory back.
const SPARE_FRAMES: usize = 16;

/// Frames waiting to be sent, front first, with their total size kept in step on every change.
/// The front frame may be partly sent already (it is advanced in place), so it is never dropped
/// on its own.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    /// Appends a frame.
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Bytes still to send, counting only the unsent part of the front frame.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether everything was sent.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The unsent bytes, frame by frame, front first: what a gather-send hands to the kernel.
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().map(|b| &b[..])
    }

    /// Removes `sent` bytes from the front, as the kernel took them: whole frames leave, a
    /// partly sent one is advanced in place.
    pub fn consume(&mut self, mut sent: usize) {
        debug_assert!(sent <= self.bytes, "sent more than was queued");
        while let Some(front) = self.frames.front_mut() {
            if front.len() <= sent {
                sent -= front.len();
                self.bytes -= front.len();
                self.frames.pop_front();
            } else {
                front.advance(sent);
                self.bytes -= sent;
                break;
            }
        }
    }

    /// Drops every frame behind the front one. The front frame may be partly on the wire
    /// already, and cutting it would corrupt the stream, so it stays.
    pub fn keep_front(&mut self) {
        self.frames.truncate(1);
        self.bytes = self.frames.front().map_or(0, |b| b.len());
    }

    /// Drops everything (the socket is gone).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// Gives back a ring that a burst left large, once it is empty: idle connections should not
    /// keep it.
    pub fn release_spare(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > SPARE_FRAMES {
            self.frames = VecDeque::new();
        }
    }
}

/// Where a connection stands in closing. Once it is anything but `No`, input is discarded and
/// nothing more is queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Closing {
    /// Open.
    #[default]
    No,
    /// Our close frame was queued at this time (ms). Once it is sent the socket is half-closed;
    /// a peer that does not answer within the linger period is cut.
    Since(u64),
    /// The socket failed while the connection was open. It was shut down and its queue
    /// dropped; the next timer sweep cuts it again, whatever the clock says.
    Failed,
}

impl Closing {
    /// Whether a close started (or the socket failed).
    pub fn is_closing(self) -> bool {
        self != Closing::No
    }

    /// Whether the socket should be cut at `now`: a close that waited more than `linger_ms` for
    /// the peer, or a failed socket.
    pub fn cut_due(self, now: u64, linger_ms: u64) -> bool {
        match self {
            Closing::No => false,
            Closing::Since(at) => now.saturating_sub(at) > linger_ms,
            Closing::Failed => true,
        }
    }
}

/// What a closing client is told before the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A `pusher:error` with the close code and reason, then the close frame (Pusher closes
    /// 4000-4999, which clients read as events).
    WithPusherError,
    /// Only the close frame (WebSocket protocol errors, answering the client's close).
    CloseFrameOnly,
}

/// What happens to frames still waiting when a close starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// They are sent before the close.
    Keep,
    /// They are dropped, except a partly sent front frame (slow consumers: the queue is the
    /// problem).
    Discard,
}

/// Where a queued frame ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued on a connection that had nothing pending: the caller puts it on the dirty list.
    NewlyDirty,
    /// Queued behind output that is already listed dirty or waits for a writer task.
    Added,
    /// Over the outbound budget even with what the kernel would take: the connection must be
    /// closed as a slow consumer.
    Overflow,
    /// The connection is closing; the frame was dropped.
    Closing,
}

/// A frame [`Outbound::try_queue`] could not queue within the budget while what is queued might
/// still go to the kernel. The caller flushes the connection's queue, then hands the frame to
/// [`Outbound::queue_after_flush`]: a burst queued within one batch is sent before the
/// connection is judged slow.
#[derive(Debug, PartialEq, Eq)]
pub struct NeedsFlush(pub Bytes);

/// A connection's outbound state.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Frames waiting to be sent, bounded by `max_outbound_bytes`.
    pub queue: OutQueue,
    /// Whether, and since when, the connection is closing.
    pub closing: Closing,
    /// A writer task is waiting for writability and will finish the flush.
    pub writer_active: bool,
    /// Listed in the shard's dirty list.
    pub dirty: bool,
}

impl Outbound {
    /// Queues a frame if it fits in `limit` bytes with what is waiting. Over the limit, the
    /// frame comes back as [`NeedsFlush`] when a flush could make room (no writer task is
    /// already waiting on a full socket), else the answer is [`Queued::Overflow`].
    pub fn try_queue(&mut self, frame: Bytes, limit: usize) -> Result<Queued, NeedsFlush> {
        if self.closing.is_closing() {
            return Ok(Queued::Closing);
        }
        if self.fits(&frame, limit) {
            return Ok(self.push(frame));
        }
        if self.writer_active {
            return Ok(Queued::Overflow);
        }
        Err(NeedsFlush(frame))
    }

    /// Second try after [`NeedsFlush`] and a flush: queues the frame if it fits now, else the
    /// connection overflowed.
    pub fn queue_after_flush(&mut self, frame: Bytes, limit: usize) -> Queued {
        if self.closing.is_closing() {
            return Queued::Closing;
        }
        if self.fits(&frame, limit) {
            self.push(frame)
        } else {
            Queued::Overflow
        }
    }

    /// Starts closing at `now`: what is waiting is kept or dropped per `backlog`, then the
    /// optional `pusher:error` and the close frame are queued (outside the budget: a close
    /// always goes out). Returns true when the connection must be put on the dirty list; false
    /// also when it was already closing, and then nothing changed.
    pub fn start_close(
        &mut self,
        code: u16,
        reason: &str,
        notice: Notice,
        backlog: Backlog,
        now: u64,
    ) -> bool {
        if self.closing.is_closing() {
            return false;
        }
        if backlog == Backlog::Discard {
            self.queue.keep_front();
        }
        if notice == Notice::WithPusherError {
            self.queue.push(encode::error(Some(code), reason));
        }
        self.queue.push(codec::close_frame(code, reason));
        self.closing = Closing::Since(now);
        self.mark_dirty() == Queued::NewlyDirty
    }

    /// After a flush that sent everything: gives back spare queue memory, and says whether the
    /// close frame is out so the socket should be half-closed (FIN) now.
    pub fn flushed(&mut self) -> bool {
        self.queue.release_spare();
        self.closing.is_closing() && self.queue.is_empty()
    }

    /// The socket failed: nothing more can be sent, and the connection is to be cut (the caller
    /// shuts the socket down). A close already under way keeps its start time.
    pub fn fail(&mut self) {
        self.queue.clear();
        if !self.closing.is_closing() {
            self.closing = Closing::Failed;
        }
    }

    fn fits(&self, frame: &Bytes, limit: usize) -> bool {
        self.queue.bytes() + frame.len() <= limit
    }

    fn push(&mut self, frame: Bytes) -> Queued {
        self.queue.push(frame);
        self.mark_dirty()
    }

    /// Output is pending: lists the connection as dirty unless it is, or a writer task will
    /// send it.
    fn mark_dirty(&mut self) -> Queued {
        if self.dirty || self.writer_active {
            return Queued::Added;
        }
        self.dirty = true;
        Queued::NewlyDirty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>())
    }

    fn contents(q: &OutQueue) -> Vec<u8> {
        q.frames().flatten().copied().collect()
    }

    #[test]
    fn the_byte_count_follows_pushes_and_whole_frame_drains() {
        let mut q = OutQueue::default();
        assert!(q.is_empty());
        q.push(frame(10));
        q.push(frame(20));
        q.push(frame(5));
        assert_eq!(q.bytes(), 35);
        q.consume(30);
        assert_eq!(q.bytes(), 5);
        assert_eq!(q.frames().count(), 1);
        q.consume(5);
        assert_eq!(q.bytes(), 0);
        assert!(q.is_empty());
    }

    #[test]
    fn a_partial_drain_advances_the_front_frame_in_place() {
        let mut q = OutQueue::default();
        q.push(frame(10));
        q.push(frame(4));
        q.consume(7);
        assert_eq!(q.bytes(), 7);
        let lens: Vec<usize> = q.frames().map(<[u8]>::len).collect();
        assert_eq!(lens, [3, 4]);
        assert_eq!(contents(&q), [7, 8, 9, 0, 1, 2, 3]);
        // Across the rest of the front frame and into the next one.
        q.consume(5);
        assert_eq!(q.bytes(), 2);
        assert_eq!(contents(&q), [2, 3]);
        q.consume(0);
        assert_eq!(q.bytes(), 2);
    }

    #[test]
    fn keeping_the_front_counts_only_what_is_left_of_it() {
        let mut q = OutQueue::default();
        q.push(frame(10));
        q.push(frame(20));
        q.push(frame(30));
        q.consume(4); // the front is partly on the wire
        q.keep_front();
        assert_eq!(q.bytes(), 6);
        assert_eq!(q.frames().count(), 1);
        q.push(frame(3));
        assert_eq!(q.bytes(), 9);

        let mut empty = OutQueue::default();
        empty.keep_front();
        assert_eq!(empty.bytes(), 0);
        assert!(empty.is_empty());
    }

    #[test]
    fn clearing_and_releasing_spare_room() {
        let mut q = OutQueue::default();
        for _ in 0..100 {
            q.push(frame(1));
        }
        q.release_spare(); // not empty: kept
        assert_eq!(q.bytes(), 100);
        q.clear();
        assert_eq!(q.bytes(), 0);
        assert!(q.is_empty());
        q.release_spare();
        assert!(q.frames.capacity() <= SPARE_FRAMES);
    }

    #[test]
    fn queueing_within_the_budget_marks_dirty_once() {
        let mut o = Outbound::default();
        assert_eq!(o.try_queue(frame(10), 100), Ok(Queued::NewlyDirty));
        assert!(o.dirty);
        assert_eq!(o.try_queue(frame(90), 100), Ok(Queued::Added));
        assert_eq!(o.queue.bytes(), 100);
    }

    #[test]
    fn a_waiting_writer_means_no_dirty_listing() {
        let mut o = Outbound {
            writer_active: true,
            ..Outbound::default()
        };
        assert_eq!(o.try_queue(frame(10), 100), Ok(Queued::Added));
        assert!(!o.dirty);
    }

    #[test]
    fn over_budget_asks_for_a_flush_first_then_judges() {
        let mut o = Outbound::default();
        o.try_queue(frame(80), 100).unwrap();
        let f = frame(30);
        let Err(NeedsFlush(back)) = o.try_queue(f.clone(), 100) else {
            panic!("expected a flush request");
        };
        assert_eq!(back, f, "the frame comes back untouched");
        assert_eq!(o.queue.bytes(), 80, "nothing queued yet");

        // The kernel took 60 bytes: now it fits.
        o.queue.consume(60);
        assert_eq!(o.queue_after_flush(back, 100), Queued::Added);
        assert_eq!(o.queue.bytes(), 50);

        // The kernel took nothing: overflow.
        let mut o = Outbound::default();
        o.try_queue(frame(80), 100).unwrap();
        let Err(NeedsFlush(back)) = o.try_queue(frame(30), 100) else {
            panic!("expected a flush request");
        };
        assert_eq!(o.queue_after_flush(back, 100), Queued::Overflow);
        assert_eq!(o.queue.bytes(), 80);
    }

    #[test]
    fn over_budget_with_a_writer_waiting_overflows_at_once() {
        let mut o = Outbound::default();
        o.try_queue(frame(80), 100).unwrap();
        o.writer_active = true;
        assert_eq!(o.try_queue(frame(30), 100), Ok(Queued::Overflow));
    }

    #[test]
    fn a_frame_bigger_than_the_budget_never_fits() {
        let mut o = Outbound::default();
        let Err(NeedsFlush(back)) = o.try_queue(frame(101), 100) else {
            panic!("expected a flush request");
        };
        assert_eq!(o.queue_after_flush(back, 100), Queued::Overflow);
    }

    #[test]
    fn a_closing_connection_drops_frames() {
        let mut o = Outbound::default();
        assert!(o.start_close(1000, "", Notice::CloseFrameOnly, Backlog::Keep, 5));
        let before = o.queue.bytes();
        assert_eq!(o.try_queue(frame(1), 100), Ok(Queued::Closing));
        assert_eq!(o.queue_after_flush(frame(1), 100), Queued::Closing);
        assert_eq!(o.queue.bytes(), before);
    }

    #[test]
    fn closing_queues_the_notice_and_close_frame_once() {
        let mut o = Outbound::default();
        o.try_queue(frame(10), 1000).unwrap();
        o.dirty = false; // as if flush_dirty took it and the socket blocked partway
        o.writer_active = false;
        assert!(o.start_close(4200, "bye", Notice::WithPusherError, Backlog::Keep, 42));
        assert_eq!(o.closing, Closing::Since(42));
        let expected = [
            frame(10),
            encode::error(Some(4200), "bye"),
            codec::close_frame(4200, "bye"),
        ];
        let frames: Vec<&[u8]> = o.queue.frames().collect();
        assert_eq!(frames, expected.iter().map(|b| &b[..]).collect::<Vec<_>>());
        assert_eq!(
            o.queue.bytes(),
            expected.iter().map(Bytes::len).sum::<usize>()
        );
        // A second close changes nothing.
        assert!(!o.start_close(4009, "again", Notice::WithPusherError, Backlog::Discard, 99));
        assert_eq!(o.closing, Closing::Since(42));
        assert_eq!(o.queue.frames().count(), 3);
    }

    #[test]
    fn a_slow_consumer_close_keeps_only_the_partly_sent_front() {
        let mut o = Outbound::default();
        o.try_queue(frame(10), 1000).unwrap();
        o.try_queue(frame(20), 1000).unwrap();
        o.queue.consume(3);
        let close = codec::close_frame(4100, "slow");
        // Already dirty: no second listing.
        assert!(!o.start_close(4100, "slow", Notice::CloseFrameOnly, Backlog::Discard, 1));
        assert_eq!(o.queue.bytes(), 7 + close.len());
        let frames: Vec<&[u8]> = o.queue.frames().collect();
        assert_eq!(frames, [&frame(10)[3..], &close[..]]);
    }

    #[test]
    fn a_finished_flush_of_a_closing_connection_calls_for_fin() {
        let mut o = Outbound::default();
        o.try_queue(frame(10), 100).unwrap();
        o.queue.consume(10);
        assert!(!o.flushed(), "open: no FIN");
        o.start_close(1000, "", Notice::CloseFrameOnly, Backlog::Keep, 0);
        assert!(!o.flushed(), "close frame not sent yet");
        let n = o.queue.bytes();
        o.queue.consume(n);
        assert!(o.flushed());
    }

    #[test]
    fn failing_drops_the_queue_and_cuts_now() {
        let mut o = Outbound::default();
        o.try_queue(frame(10), 100).unwrap();
        o.fail();
        assert!(o.queue.is_empty());
        assert_eq!(o.queue.bytes(), 0);
        assert_eq!(o.closing, Closing::Failed);
        assert!(
            o.closing.cut_due(0, 2_000),
            "cut at once, even at clock zero"
        );
        assert_eq!(o.try_queue(frame(1), 100), Ok(Queued::Closing));
        assert!(!o.start_close(1000, "", Notice::CloseFrameOnly, Backlog::Keep, 5));

        // A close under way keeps its start and linger.
        let mut o = Outbound::default();
        o.start_close(1000, "", Notice::CloseFrameOnly, Backlog::Keep, 500);
        o.fail();
        assert_eq!(o.closing, Closing::Since(500));
    }

    #[test]
    fn a_close_is_cut_after_the_linger() {
        assert!(!Closing::No.cut_due(u64::MAX, 2_000));
        assert!(!Closing::Since(1_000).cut_due(3_000, 2_000));
        assert!(Closing::Since(1_000).cut_due(3_001, 2_000));
        assert!(!Closing::Since(5_000).cut_due(4_000, 2_000), "clock behind");
    }
}
