//! WebSocket frames of a live connection: reading from the socket, reassembling messages,
//! answering control frames, and handing complete text messages to the Pusher layer.

use std::borrow::Cow;
use std::rc::Rc;

use super::outbound::Notice;
use super::sock::{self, Recv};
use super::state::{flush_dirty, State};
use super::{pusher, Shard};
use crate::ids::ConnKey;
use crate::metrics::ShardMetrics;
use crate::protocol::codes;
use crate::ws::codec::{self, close, Header, OpCode};

/// Reads everything available on a readable connection. Returns false at end-of-file.
pub fn on_readable(shard: &Rc<Shard>, key: ConnKey) -> bool {
    let alive = {
        let mut scratch = shard.scratch.borrow_mut();
        let mut st = shard.state.borrow_mut();
        let Some(fd) = st.conns.get(key).map(|c| c.fd) else {
            return false;
        };
        let mut alive = true;
        // A bounded number of reads per wake-up keeps one busy client from starving the shard.
        for _ in 0..16 {
            match sock::recv(fd, &mut scratch) {
                Recv::Data(n) => {
                    process(shard, &mut st, key, &mut scratch[..n]);
                    if n < scratch.len() {
                        break;
                    }
                }
                Recv::WouldBlock => break,
                Recv::Closed => {
                    alive = false;
                    break;
                }
            }
        }
        alive
    };
    flush_dirty(shard);
    alive
}

/// Parses and handles the frames in `data` (plus any partial frame kept from before).
pub fn process(shard: &Shard, st: &mut State, key: ConnKey, data: &mut [u8]) {
    let max = shard.shared.config.server.max_message_size;
    let now = shard.now_ms();
    let Some(conn) = st.conns.get_mut(key) else {
        return;
    };
    if conn.is_closing() {
        return; // waiting for the peer's close: input is discarded
    }
    conn.last_rx = now;
    conn.ping_sent = None;
    // A frame that arrives in many small reads is appended to `partial`, which keeps its
    // capacity between reads, so a slow trickle costs one copy per byte, not one per read.
    let from_partial = !conn.partial.is_empty();
    let mut owned = Vec::new();
    let buf: &mut [u8] = if from_partial {
        conn.partial.extend_from_slice(data);
        owned = std::mem::take(&mut conn.partial);
        &mut owned[..]
    } else {
        data
    };
    let mut pos = 0;
    loop {
        match codec::parse_header(&buf[pos..], max) {
            Ok(Some(h)) if buf.len() - pos >= h.frame_len() => {
                let payload = &mut buf[pos + h.header_len..pos + h.frame_len()];
                codec::unmask(payload, h.mask);
                pos += h.frame_len();
                if !on_frame(shard, st, key, h, payload) {
                    return;
                }
            }
            Ok(_) => break,
            Err(e) => {
                shard.close(st, key, e.code, e.reason, Notice::CloseFrameOnly);
                return;
            }
        }
    }
    if pos < buf.len() {
        let rest = if from_partial {
            owned.drain(..pos);
            owned
        } else {
            buf[pos..].to_vec()
        };
        if let Some(conn) = st.conns.get_mut(key) {
            conn.partial = rest;
        }
    }
}

/// Handles one frame; false when the connection is now closing.
fn on_frame(shard: &Shard, st: &mut State, key: ConnKey, h: Header, payload: &mut [u8]) -> bool {
    let max = shard.shared.config.server.max_message_size;
    // Control frames cost budget and their pongs are coalesced: see `control`.
    if matches!(h.opcode, OpCode::Ping | OpCode::Pong) {
        return control(shard, st, key, h.opcode, payload);
    }
    let Some(conn) = st.conns.get_mut(key) else {
        return false;
    };
    match step(&mut conn.fragments, &h, payload, max) {
        // Pings were answered above; `step` alone (as the fuzz target drives it) answers them.
        FrameStep::Pong(_) | FrameStep::Wait => true,
        FrameStep::Message(msg) => text(shard, st, key, &msg),
        FrameStep::Close(code, reason) => {
            shard.close(st, key, code, reason, Notice::CloseFrameOnly);
            false
        }
    }
}

/// What one frame asks of its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameStep<'a> {
    /// Answer a ping with a pong carrying this payload.
    Pong(&'a [u8]),
    /// Nothing to do: a pong, or a fragment kept until its message is complete.
    Wait,
    /// A complete text message (not yet checked for UTF-8).
    Message(Cow<'a, [u8]>),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// The RFC 6455 rules for one unmasked frame, without the connection: control frames, binary
/// frames, and the reassembly of fragmented text messages in `fragments` (the message being
/// assembled, if any), whose assembled length never exceeds `max`.
pub fn step<'a>(
    fragments: &mut Option<Vec<u8>>,
    h: &Header,
    payload: &'a [u8],
    max: usize,
) -> FrameStep<'a> {
    match h.opcode {
        OpCode::Ping => FrameStep::Pong(payload),
        OpCode::Pong => FrameStep::Wait,
        OpCode::Close => {
            // RFC 6455 5.5.1 / 7.4: no body, or a valid code and a UTF-8 reason.
            let code = match payload {
                [] => close::NORMAL,
                [_] => close::PROTOCOL,
                [_, _, reason @ ..] if std::str::from_utf8(reason).is_err() => close::INVALID_DATA,
                [a, b, ..] => match u16::from_be_bytes([*a, *b]) {
                    c @ (1000..=1003 | 1007..=1014 | 3000..=4999) => c,
                    _ => close::PROTOCOL,
                },
            };
            FrameStep::Close(code, "")
        }
        OpCode::Binary => FrameStep::Close(close::UNSUPPORTED, "binary frames are not supported"),
        OpCode::Text if fragments.is_some() => {
            FrameStep::Close(close::PROTOCOL, "expected a continuation frame")
        }
        OpCode::Text if !h.fin => {
            *fragments = Some(payload.to_vec());
            FrameStep::Wait
        }
        OpCode::Text => FrameStep::Message(Cow::Borrowed(payload)),
        OpCode::Continuation => {
            let Some(mut msg) = fragments.take() else {
                return FrameStep::Close(close::PROTOCOL, "continuation without a message");
            };
            if msg.len() + payload.len() > max {
                return FrameStep::Close(close::TOO_BIG, "message too big");
            }
            msg.extend_from_slice(payload);
            if h.fin {
                FrameStep::Message(Cow::Owned(msg))
            } else {
                *fragments = Some(msg);
                FrameStep::Wait
            }
        }
    }
}

/// A ping or a pong. Control frames draw from the connection's message budget (the token
/// bucket of `max_messages_per_second` and `max_message_burst`) like text messages, so a flood
/// of them costs a bounded amount of work and output. A ping within the budget is answered; its
/// pong replaces one still waiting unsent, so a client that pings and never reads holds one
/// queued pong. A control frame over the budget gets no answer (a `pusher:error` for each, as
/// a refused text message gets, would be the very output a flood wants); a connection that
/// keeps sending them, more refused in one second than `max_messages_per_second`, is closed with
/// `pusher:error` and close code 4301. Returns false when the connection is now closing.
fn control(shard: &Shard, st: &mut State, key: ConnKey, opcode: OpCode, payload: &[u8]) -> bool {
    let cfg = &shard.shared.config.server;
    let (rate, burst) = (cfg.max_messages_per_second, cfg.max_message_burst);
    let now = shard.now_ms();
    let Some(conn) = st.conns.get_mut(key) else {
        return false;
    };
    if conn.tokens.take(now, rate, burst) {
        if opcode == OpCode::Ping {
            shard.send_pong(st, key, codec::encode(OpCode::Pong, payload));
        }
        return true;
    }
    if conn.control_refused.admit(now, rate) {
        return true; // over the budget: dropped unanswered
    }
    let reason = "Too many control frames: slow down";
    let code = codes::CLIENT_EVENT_REJECTED;
    shard.close(st, key, code, reason, Notice::WithPusherError);
    false
}

fn text(shard: &Shard, st: &mut State, key: ConnKey, payload: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(payload) else {
        shard.close(
            st,
            key,
            close::INVALID_DATA,
            "text frame is not UTF-8",
            Notice::CloseFrameOnly,
        );
        return false;
    };
    ShardMetrics::add(&shard.metrics().messages_in, 1);
    pusher::on_message(shard, st, key, text);
    st.conns.get(key).is_some_and(|c| !c.is_closing())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(opcode: OpCode, fin: bool, payload: &[u8]) -> Header {
        Header {
            fin,
            opcode,
            header_len: 6,
            payload_len: payload.len(),
            mask: [0; 4],
        }
    }

    fn run<'a>(frag: &mut Option<Vec<u8>>, op: OpCode, fin: bool, p: &'a [u8]) -> FrameStep<'a> {
        step(frag, &header(op, fin, p), p, 10)
    }

    #[test]
    fn fragments_are_joined_and_control_frames_pass_between() {
        let mut frag = None;
        assert_eq!(run(&mut frag, OpCode::Text, false, b"ab"), FrameStep::Wait);
        assert_eq!(
            run(&mut frag, OpCode::Ping, true, b"p"),
            FrameStep::Pong(b"p")
        );
        assert_eq!(run(&mut frag, OpCode::Pong, true, b""), FrameStep::Wait);
        assert_eq!(
            run(&mut frag, OpCode::Continuation, false, b"cd"),
            FrameStep::Wait
        );
        assert_eq!(
            run(&mut frag, OpCode::Continuation, true, b"e"),
            FrameStep::Message(Cow::Owned(b"abcde".to_vec()))
        );
        assert_eq!(frag, None);
        assert_eq!(
            run(&mut frag, OpCode::Text, true, b"x"),
            FrameStep::Message(Cow::Borrowed(b"x"))
        );
    }

    #[test]
    fn misuse_is_refused_with_its_code() {
        let code = |steps: &[(OpCode, bool, &[u8])]| {
            let mut frag = None;
            for &(op, fin, p) in steps {
                if let FrameStep::Close(c, _) = step(&mut frag, &header(op, fin, p), p, 10) {
                    return Some(c);
                }
            }
            None
        };
        let c = OpCode::Continuation;
        assert_eq!(code(&[(c, true, b"x")]), Some(close::PROTOCOL));
        let t = OpCode::Text;
        assert_eq!(
            code(&[(t, false, b"x"), (t, true, b"y")]),
            Some(close::PROTOCOL)
        );
        assert_eq!(
            code(&[(t, false, b"123456"), (c, true, b"78901")]),
            Some(close::TOO_BIG)
        );
        assert_eq!(
            code(&[(OpCode::Binary, true, b"")]),
            Some(close::UNSUPPORTED)
        );
        let close_with = |p: &[u8]| code(&[(OpCode::Close, true, p)]);
        assert_eq!(close_with(b""), Some(close::NORMAL));
        assert_eq!(close_with(b"\x03"), Some(close::PROTOCOL));
        assert_eq!(close_with(b"\x0f\xa0bye"), Some(4000));
        assert_eq!(close_with(b"\x03\xed"), Some(close::PROTOCOL)); // 1005 is never sent
        assert_eq!(close_with(b"\x03\xe8\xff"), Some(close::INVALID_DATA));
    }

    proptest! {
        /// However a message is cut into a text frame and continuations, with pings between
        /// them, the message comes back whole, once, at its last fragment.
        #[test]
        fn any_fragmentation_gives_the_message_back(
            msg in proptest::collection::vec(any::<u8>(), 0..200),
            mut cuts in proptest::collection::vec(0usize..200, 0..8),
            pings in proptest::collection::vec(any::<bool>(), 8),
        ) {
            cuts.retain(|&c| c <= msg.len());
            cuts.sort_unstable();
            let mut bounds = vec![0];
            bounds.extend(cuts);
            bounds.push(msg.len());
            let parts: Vec<&[u8]> = bounds.windows(2).map(|w| &msg[w[0]..w[1]]).collect();
            let mut frag = None;
            let mut got = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
                let fin = i + 1 == parts.len();
                let h = header(op, fin, part);
                match step(&mut frag, &h, part, msg.len()) {
                    FrameStep::Message(m) => got.push(m.into_owned()),
                    FrameStep::Wait => prop_assert!(!fin),
                    other => prop_assert!(false, "{:?}", other),
                }
                if pings[i % pings.len()] {
                    let p = header(OpCode::Ping, true, b"p");
                    prop_assert_eq!(step(&mut frag, &p, b"p", msg.len()), FrameStep::Pong(b"p"));
                }
            }
            prop_assert_eq!(got, vec![msg.clone()]);
            prop_assert_eq!(frag, None);
        }
    }
}
