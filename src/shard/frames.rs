//! WebSocket frames of a live connection: reading from the socket, reassembling messages,
//! answering control frames, and handing complete text messages to the Pusher layer.

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
    let Some(conn) = st.conns.get_mut(key) else {
        return false;
    };
    match h.opcode {
        OpCode::Ping | OpCode::Pong => control(shard, st, key, h.opcode, payload),
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
            shard.close(st, key, code, "", Notice::CloseFrameOnly);
            false
        }
        OpCode::Binary => {
            shard.close(
                st,
                key,
                close::UNSUPPORTED,
                "binary frames are not supported",
                Notice::CloseFrameOnly,
            );
            false
        }
        OpCode::Text if conn.fragments.is_some() => {
            shard.close(
                st,
                key,
                close::PROTOCOL,
                "expected a continuation frame",
                Notice::CloseFrameOnly,
            );
            false
        }
        OpCode::Text if !h.fin => {
            conn.fragments = Some(payload.to_vec());
            true
        }
        OpCode::Text => text(shard, st, key, payload),
        OpCode::Continuation => {
            let Some(mut msg) = conn.fragments.take() else {
                shard.close(
                    st,
                    key,
                    close::PROTOCOL,
                    "continuation without a message",
                    Notice::CloseFrameOnly,
                );
                return false;
            };
            if msg.len() + payload.len() > max {
                let reason = "message too big";
                shard.close(st, key, close::TOO_BIG, reason, Notice::CloseFrameOnly);
                return false;
            }
            msg.extend_from_slice(payload);
            if h.fin {
                text(shard, st, key, &msg)
            } else {
                conn.fragments = Some(msg);
                true
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
