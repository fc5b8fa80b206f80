//! The sending side of a connection: the queue of frames waiting for the socket, the budget it
//! is held to, and where the connection stands in closing. No IO happens here: when the budget
//! needs the kernel to take what is queued first, the caller is told to flush
//! ([`NeedsFlush`]), and the caller does the syscalls. That keeps the rules testable without a
//! socket.

use std::collections::VecDeque;
use std::mem::size_of;

use bytes::{Buf, Bytes};

use crate::protocol::encode;
use crate::ws::codec;

/// Ring slots an empty queue may keep; a burst that grew it beyond this gives the memory back.
const SPARE_FRAMES: usize = 16;

/// What one queued frame holds beyond its bytes, charged to the outbound budget with them, so
/// that many tiny frames cannot hold far more memory than the budget says. Rough, from the
/// entry types (glibc on 64-bit):
///
/// - its ring slot: a `Bytes` (`size_of::<Bytes>()`, 32 bytes), and up to as much again while
///   the ring, which doubles, is at most half full;
/// - its buffer's allocation rounding: a frame made for this connection alone (a pong, a
///   `pusher:error`) is a small allocation of its own, rounded up to 16 bytes with an 8-byte
///   header, at least 32 bytes (a 2-byte pong takes 32);
/// - the 24-byte header (a 32-byte allocation) that `Bytes` adds to share a buffer with room
///   to spare, as every frame `codec::encode` builds has (room for the longest header).
///
/// That is 2 x 32 + 32 + 32 = 128 bytes. A fan-out frame shares its buffer with the shard's
/// other subscribers, but a slow consumer may be the last one holding it, so it is charged the
/// same.
pub const FRAME_OVERHEAD: usize = 2 * size_of::<Bytes>() + 64;

/// Frames waiting to be sent, front first, with their total size kept in step on every change.
/// The front frame may be partly sent already (it is advanced in place), so it is never dropped
/// on its own.
///
/// At most one pong waits unsent: a newer one takes the place of the one queued (RFC 6455
/// 5.5.3 lets an endpoint answer only the most recent ping), unless that one is partly on the
/// wire already.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    /// Unsent bytes.
    bytes: usize,
    /// Frames that left the front since the queue was made: a frame's position counted this
    /// way stays the same while the frames ahead of it leave.
    popped: u64,
    /// Position (counted like `popped`) of the queued pong, if one is queued.
    pong: Option<u64>,
    /// Whether the front frame is partly sent.
    front_started: bool,
}

impl OutQueue {
    /// Appends a frame.
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Puts `frame` in the place of the pong waiting unsent, if there is one and it is not
    /// partly on the wire; else hands `frame` back.
    pub fn replace_pong(&mut self, frame: Bytes) -> Result<(), Bytes> {
        let Some(at) = self.pong else {
            return Err(frame);
        };
        let i = (at - self.popped) as usize;
        if i == 0 && self.front_started {
            return Err(frame);
        }
        let old = std::mem::replace(&mut self.frames[i], frame);
        self.bytes = self.bytes - old.len() + self.frames[i].len();
        Ok(())
    }

    /// Appends a pong, which newer pongs then replace while it waits.
    pub fn push_pong(&mut self, frame: Bytes) {
        self.push(frame);
        self.pong = Some(self.popped + self.frames.len() as u64 - 1);
    }

    /// Bytes still to send, counting only the unsent part of the front frame.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the queue holds for the outbound budget: the unsent bytes plus
    /// [`FRAME_OVERHEAD`] per frame.
    pub fn cost(&self) -> usize {
        self.bytes + self.frames.len() * FRAME_OVERHEAD
    }

    /// Whether everything was sent.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether a pong waits in the queue.
    #[cfg(test)]
    pub fn has_pong(&self) -> bool {
        self.pong.is_some()
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
                self.pop_front();
            } else {
                if sent > 0 {
                    front.advance(sent);
                    self.bytes -= sent;
                    self.front_started = true;
                }
                break;
            }
        }
    }

    fn pop_front(&mut self) {
        self.frames.pop_front();
        if self.pong == Some(self.popped) {
            self.pong = None;
        }
        self.popped += 1;
        self.front_started = false;
    }

    /// Drops every frame behind the front one. The front frame may be partly on the wire
    /// already, and cutting it would corrupt the stream, so it stays.
    pub fn keep_front(&mut self) {
        self.frames.truncate(1);
        self.bytes = self.frames.front().map_or(0, |b| b.len());
        if self.pong != Some(self.popped) || self.frames.is_empty() {
            self.pong = None;
        }
    }

    /// Drops everything (the socket is gone).
    pub fn clear(&mut self) {
        self.popped += self.frames.len() as u64;
        self.frames.clear();
        self.bytes = 0;
        self.pong = None;
        self.front_started = false;
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

/// A frame [`Outbound::try_queue`] (or [`Outbound::try_queue_pong`]) could not queue within
/// the budget while what is queued might still go to the kernel. The caller flushes the
/// connection's queue, then hands it back to [`Outbound::queue_after_flush`]: a burst queued
/// within one batch is sent before the connection is judged slow.
#[derive(Debug, PartialEq, Eq)]
pub struct NeedsFlush {
    /// The frame.
    pub frame: Bytes,
    /// Whether it is a pong (which replaces a waiting one).
    pong: bool,
}

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
    /// Queues a frame if it fits in `limit` bytes with what is waiting, each frame counted with
    /// [`FRAME_OVERHEAD`]. Over the limit, the frame comes back as [`NeedsFlush`] when a flush
    /// could make room (no writer task is already waiting on a full socket), else the answer is
    /// [`Queued::Overflow`].
    pub fn try_queue(&mut self, frame: Bytes, limit: usize) -> Result<Queued, NeedsFlush> {
        self.offer(frame, false, limit)
    }

    /// Queues a pong as [`Outbound::try_queue`] does a frame, except that a pong still waiting
    /// unsent is replaced instead (RFC 6455 5.5.3: only the most recent ping needs an answer),
    /// so a ping flood holds one queued pong however many pings arrive. Taking another's place
    /// is not judged against the budget: the queue keeps its length, and a pong is at most 127
    /// bytes.
    pub fn try_queue_pong(&mut self, frame: Bytes, limit: usize) -> Result<Queued, NeedsFlush> {
        self.offer(frame, true, limit)
    }

    /// Second try after [`NeedsFlush`] and a flush: queues the frame if it fits now, else the
    /// connection overflowed.
    pub fn queue_after_flush(&mut self, retry: NeedsFlush, limit: usize) -> Queued {
        let NeedsFlush { frame, pong } = retry;
        match self.offer(frame, pong, limit) {
            Ok(queued) => queued,
            Err(_) => Queued::Overflow,
        }
    }

    fn offer(&mut self, frame: Bytes, pong: bool, limit: usize) -> Result<Queued, NeedsFlush> {
        if self.closing.is_closing() {
            return Ok(Queued::Closing);
        }
        let frame = if pong {
            match self.queue.replace_pong(frame) {
                Ok(()) => return Ok(self.mark_dirty()),
                Err(frame) => frame,
            }
        } else {
            frame
        };
        if self.fits(&frame, limit) {
            if pong {
                self.queue.push_pong(frame);
            } else {
                self.queue.push(frame);
            }
            return Ok(self.mark_dirty());
        }
        if self.writer_active {
            return Ok(Queued::Overflow);
        }
        Err(NeedsFlush { frame, pong })
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
        self.queue.cost() + frame.len() + FRAME_OVERHEAD <= limit
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
    use crate::ws::codec::OpCode;

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

    /// Two frames' worth of overhead: budgets in these tests are written as bytes plus this.
    const O2: usize = 2 * FRAME_OVERHEAD;

    #[test]
    fn each_frame_is_charged_its_overhead() {
        let mut q = OutQueue::default();
        assert_eq!(q.cost(), 0);
        q.push(frame(10));
        q.push(frame(2));
        assert_eq!(q.cost(), 12 + 2 * FRAME_OVERHEAD);
        q.consume(11); // the first leaves, the second is partly sent
        assert_eq!(q.cost(), 1 + FRAME_OVERHEAD);
        // Sized from the entry types: a ring slot (and its doubling) plus allocation headers.
        assert!(FRAME_OVERHEAD >= 2 * size_of::<Bytes>() + 32);

        // Tiny frames fill the budget by their count, not their bytes: 2-byte pongs in a
        // 64 KiB budget (the smallest allowed) fit about 500 times, not 32,768 times.
        let mut o = Outbound::default();
        let mut n = 0;
        while let Ok(Queued::NewlyDirty | Queued::Added) = o.try_queue(frame(2), 65_536) {
            n += 1;
        }
        assert_eq!(n, 65_536 / (2 + FRAME_OVERHEAD));
        assert!(o.queue.cost() <= 65_536);
    }

    #[test]
    fn queueing_within_the_budget_marks_dirty_once() {
        let mut o = Outbound::default();
        assert_eq!(o.try_queue(frame(10), 100 + O2), Ok(Queued::NewlyDirty));
        assert!(o.dirty);
        assert_eq!(o.try_queue(frame(90), 100 + O2), Ok(Queued::Added));
        assert_eq!(o.queue.bytes(), 100);
        assert_eq!(o.queue.cost(), 100 + O2);
    }

    #[test]
    fn a_waiting_writer_means_no_dirty_listing() {
        let mut o = Outbound {
            writer_active: true,
            ..Outbound::default()
        };
        assert_eq!(o.try_queue(frame(10), 100 + O2), Ok(Queued::Added));
        assert!(!o.dirty);
    }

    #[test]
    fn over_budget_asks_for_a_flush_first_then_judges() {
        let limit = 100 + O2;
        let mut o = Outbound::default();
        o.try_queue(frame(80), limit).unwrap();
        let f = frame(30);
        let Err(back) = o.try_queue(f.clone(), limit) else {
            panic!("expected a flush request");
        };
        assert_eq!(back.frame, f, "the frame comes back untouched");
        assert_eq!(o.queue.bytes(), 80, "nothing queued yet");

        // The kernel took 60 bytes: now it fits.
        o.queue.consume(60);
        assert_eq!(o.queue_after_flush(back, limit), Queued::Added);
        assert_eq!(o.queue.bytes(), 50);

        // The kernel took nothing: overflow.
        let mut o = Outbound::default();
        o.try_queue(frame(80), limit).unwrap();
        let Err(back) = o.try_queue(frame(30), limit) else {
            panic!("expected a flush request");
        };
        assert_eq!(o.queue_after_flush(back, limit), Queued::Overflow);
        assert_eq!(o.queue.bytes(), 80);
    }

    #[test]
    fn over_budget_with_a_writer_waiting_overflows_at_once() {
        let mut o = Outbound::default();
        o.try_queue(frame(80), 100 + O2).unwrap();
        o.writer_active = true;
        assert_eq!(o.try_queue(frame(30), 100 + O2), Ok(Queued::Overflow));
    }

    #[test]
    fn a_frame_bigger_than_the_budget_never_fits() {
        let mut o = Outbound::default();
        let Err(back) = o.try_queue(frame(101), 100 + FRAME_OVERHEAD) else {
            panic!("expected a flush request");
        };
        assert_eq!(
            o.queue_after_flush(back, 100 + FRAME_OVERHEAD),
            Queued::Overflow
        );
        // With its overhead, exactly the budget fits.
        let mut o = Outbound::default();
        assert_eq!(
            o.try_queue(frame(100), 100 + FRAME_OVERHEAD),
            Ok(Queued::NewlyDirty)
        );
    }

    fn pong(tag: u8) -> Bytes {
        codec::encode(OpCode::Pong, &[tag])
    }

    fn queued(o: &Outbound) -> Vec<Vec<u8>> {
        o.queue.frames().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn a_waiting_pong_is_replaced_by_the_newest() {
        let limit = 1 << 20;
        let mut o = Outbound::default();
        o.try_queue(frame(5), limit).unwrap();
        assert_eq!(o.try_queue_pong(pong(1), limit), Ok(Queued::Added));
        o.try_queue(frame(3), limit).unwrap();
        for tag in 2..=50 {
            assert_eq!(o.try_queue_pong(pong(tag), limit), Ok(Queued::Added));
        }
        // One pong, in the place of the first, answering the latest ping.
        assert_eq!(
            queued(&o),
            [frame(5).to_vec(), pong(50).to_vec(), frame(3).to_vec()]
        );
        assert_eq!(o.queue.bytes(), 5 + pong(50).len() + 3);
        assert_eq!(o.queue.cost(), o.queue.bytes() + 3 * FRAME_OVERHEAD);

        // Once it is sent, the next pong is queued anew.
        o.queue.consume(5 + pong(50).len());
        assert!(!o.queue.has_pong());
        o.try_queue_pong(pong(51), limit).unwrap();
        assert_eq!(queued(&o), [frame(3).to_vec(), pong(51).to_vec()]);
        o.try_queue_pong(pong(52), limit).unwrap();
        assert_eq!(queued(&o), [frame(3).to_vec(), pong(52).to_vec()]);
    }

    #[test]
    fn a_partly_sent_pong_is_not_replaced() {
        let limit = 1 << 20;
        let mut o = Outbound::default();
        o.try_queue_pong(pong(1), limit).unwrap();
        o.queue.consume(1); // one byte of it is on the wire
        o.try_queue_pong(pong(2), limit).unwrap();
        o.try_queue_pong(pong(3), limit).unwrap();
        assert_eq!(queued(&o), [pong(1)[1..].to_vec(), pong(3).to_vec()]);
        // The rest of the first goes: the second is the one replaced now.
        o.queue.consume(pong(1).len() - 1);
        o.try_queue_pong(pong(4), limit).unwrap();
        assert_eq!(queued(&o), [pong(4).to_vec()]);
    }

    #[test]
    fn a_pong_dropped_with_the_backlog_is_forgotten() {
        let limit = 1 << 20;
        let mut o = Outbound::default();
        o.try_queue(frame(5), limit).unwrap();
        o.try_queue_pong(pong(1), limit).unwrap();
        o.queue.keep_front();
        assert!(!o.queue.has_pong());
        // A pong at the front survives keep_front and may still be replaced.
        let mut o = Outbound::default();
        o.try_queue_pong(pong(1), limit).unwrap();
        o.try_queue(frame(5), limit).unwrap();
        o.queue.keep_front();
        assert!(o.queue.has_pong());
        o.try_queue_pong(pong(2), limit).unwrap();
        assert_eq!(queued(&o), [pong(2).to_vec()]);
        o.queue.clear();
        assert!(!o.queue.has_pong());
        o.try_queue_pong(pong(3), limit).unwrap();
        o.try_queue_pong(pong(4), limit).unwrap();
        assert_eq!(queued(&o), [pong(4).to_vec()]);
    }

    #[test]
    fn a_pong_over_the_budget_asks_for_a_flush_and_keeps_its_kind() {
        let limit = 100 + O2;
        let mut o = Outbound::default();
        o.try_queue(frame(99), limit).unwrap();
        let Err(back) = o.try_queue_pong(pong(1), limit) else {
            panic!("expected a flush request");
        };
        o.queue.consume(99);
        assert_eq!(o.queue_after_flush(back, limit), Queued::Added);
        assert!(o.queue.has_pong());
        o.try_queue_pong(pong(2), limit).unwrap();
        assert_eq!(queued(&o), [pong(2).to_vec()]);
    }

    #[test]
    fn a_closing_connection_drops_frames() {
        let mut o = Outbound::default();
        assert!(o.start_close(1000, "", Notice::CloseFrameOnly, Backlog::Keep, 5));
        let before = o.queue.bytes();
        assert_eq!(o.try_queue(frame(1), 1 << 20), Ok(Queued::Closing));
        assert_eq!(
            o.queue_after_flush(
                NeedsFlush {
                    frame: frame(1),
                    pong: false
                },
                1 << 20
            ),
            Queued::Closing
        );
        assert_eq!(o.queue.bytes(), before);
    }

    #[test]
    fn closing_queues_the_notice_and_close_frame_once() {
        let mut o = Outbound::default();
        o.try_queue(frame(10), 1 << 20).unwrap();
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
        o.try_queue(frame(10), 1 << 20).unwrap();
        o.try_queue(frame(20), 1 << 20).unwrap();
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
        o.try_queue(frame(10), 1 << 20).unwrap();
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
        o.try_queue(frame(10), 1 << 20).unwrap();
        o.fail();
        assert!(o.queue.is_empty());
        assert_eq!(o.queue.bytes(), 0);
        assert_eq!(o.closing, Closing::Failed);
        assert!(
            o.closing.cut_due(0, 2_000),
            "cut at once, even at clock zero"
        );
        assert_eq!(o.try_queue(frame(1), 1 << 20), Ok(Queued::Closing));
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
