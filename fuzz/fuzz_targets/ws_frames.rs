//! WebSocket frames from a client: `parse_header`, `unmask` and the reassembly step of
//! `shard::frames` (`frame_step`), driven by a copy of the read loop of `frames::process`.
//!
//! Input: byte 0 picks the message size limit, byte 1 seeds how the rest (the byte stream a
//! client sends) is cut into reads.
//!
//! Invariants:
//! - nothing panics;
//! - a parsed header is consistent with its bytes (length encoding, masking key, control-frame
//!   rules, the size limit), and every strict prefix of a header is "need more", never an error;
//! - `unmask` equals a byte-wise XOR and undoes itself;
//! - round trip: the codec's `encode` of a parsed frame's opcode and payload, masked as a client
//!   would, parses back to the same header and payload;
//! - reassembly: a delivered message is the concatenation of its text frame and continuations,
//!   never longer than the limit; pongs echo their ping; close codes are legal ones; nothing
//!   happens after a close;
//! - cutting the stream into different reads changes nothing that is delivered;
//! - the bytes kept between reads stay below one frame (header plus the limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpush::fuzzing::{
    close, encode_frame, frame_step, parse_header, unmask, FrameStep, Header, OpCode,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Pong(Vec<u8>),
    Message(Vec<u8>),
    Close(u16, &'static str),
}

/// One connection's reading side, as `shard::frames` keeps it.
#[derive(Default)]
struct Conn {
    partial: Vec<u8>,
    fragments: Option<Vec<u8>>,
    /// Payloads of the data frames of the message being assembled, as sent.
    sent_parts: Vec<Vec<u8>>,
    closed: bool,
    events: Vec<Event>,
}

const MAX_HEADER: usize = 14;

fn check_header(buf: &[u8], h: &Header, max: usize) {
    let len7 = buf[1] & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    assert_eq!(h.header_len, 2 + ext + 4, "header length");
    assert!(h.header_len <= MAX_HEADER);
    assert_eq!(h.fin, buf[0] & 0x80 != 0);
    assert_eq!(buf[0] & 0x70, 0, "reserved bits accepted");
    assert_ne!(buf[1] & 0x80, 0, "unmasked frame accepted");
    assert_eq!(&h.mask[..], &buf[2 + ext..2 + ext + 4]);
    let declared = match len7 {
        126 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
        127 => u64::from_be_bytes(buf[2..10].try_into().unwrap()),
        n => n as u64,
    };
    assert_eq!(declared, h.payload_len as u64);
    assert!(h.payload_len <= max, "over the limit");
    if matches!(h.opcode, OpCode::Close | OpCode::Ping | OpCode::Pong) {
        assert!(h.fin && h.payload_len <= 125, "bad control frame accepted");
    }
    // Every strict prefix of the header asks for more bytes.
    for k in 0..h.header_len {
        assert_eq!(parse_header(&buf[..k], max), Ok(None), "prefix {k}");
    }
}

/// The client side of the codec: the server's encoding, masked.
fn masked(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let server = encode_frame(opcode, payload);
    let body_at = server.len() - payload.len();
    let mut v = server[..body_at].to_vec();
    v[1] |= 0x80;
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

fn round_trip(h: &Header, payload: &[u8], max: usize) {
    let frame = masked(h.opcode, payload, h.mask);
    let back = parse_header(&frame, max)
        .expect("own frame")
        .expect("complete");
    let ext = if payload.len() < 126 {
        0
    } else if payload.len() <= u16::MAX as usize {
        2
    } else {
        8
    };
    assert_eq!(
        back,
        Header {
            fin: true,
            header_len: 2 + ext + 4,
            ..*h
        }
    );
    assert_eq!(back.frame_len(), frame.len());
    let mut body = frame[back.header_len..].to_vec();
    unmask(&mut body, back.mask);
    assert_eq!(body, payload);
}

fn check_unmask(masked_payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut fast = masked_payload.to_vec();
    unmask(&mut fast, mask);
    let plain: Vec<u8> = masked_payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    assert_eq!(fast, plain, "unmask differs from a byte-wise XOR");
    let mut again = fast.clone();
    unmask(&mut again, mask);
    assert_eq!(again, masked_payload, "unmask is not an involution");
    fast
}

fn legal_close(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl Conn {
    /// `frames::process` without the shard: parse what is complete, keep the rest.
    fn feed(&mut self, data: &mut [u8], max: usize) {
        if self.closed {
            return;
        }
        let from_partial = !self.partial.is_empty();
        let mut owned: Vec<u8>;
        let buf: &mut [u8] = if from_partial {
            self.partial.extend_from_slice(data);
            owned = std::mem::take(&mut self.partial);
            &mut owned[..]
        } else {
            data
        };
        let mut pos = 0;
        loop {
            match parse_header(&buf[pos..], max) {
                Ok(Some(h)) if buf.len() - pos >= h.frame_len() => {
                    check_header(&buf[pos..], &h, max);
                    let payload = &mut buf[pos + h.header_len..pos + h.frame_len()];
                    let plain = check_unmask(payload, h.mask);
                    unmask(payload, h.mask);
                    assert_eq!(&payload[..], &plain[..]);
                    round_trip(&h, payload, max);
                    pos += h.frame_len();
                    if !self.on_frame(&h, payload, max) {
                        return;
                    }
                }
                Ok(Some(h)) => {
                    check_header(&buf[pos..], &h, max);
                    break;
                }
                Ok(None) => {
                    assert!(
                        buf.len() - pos < MAX_HEADER,
                        "a whole header was not parsed"
                    );
                    break;
                }
                Err(e) => {
                    assert!([close::PROTOCOL, close::TOO_BIG].contains(&e.code), "{e:?}");
                    self.close(e.code, e.reason);
                    return;
                }
            }
        }
        if pos < buf.len() {
            self.partial = buf[pos..].to_vec();
            assert!(
                self.partial.len() < MAX_HEADER + max,
                "kept {} bytes between reads",
                self.partial.len()
            );
        }
    }

    fn close(&mut self, code: u16, reason: &'static str) {
        assert!(!self.closed);
        assert!(legal_close(code), "close code {code}");
        self.closed = true;
        self.events.push(Event::Close(code, reason));
    }

    fn on_frame(&mut self, h: &Header, payload: &[u8], max: usize) -> bool {
        let was_assembling = self.fragments.is_some();
        if matches!(h.opcode, OpCode::Text | OpCode::Continuation) {
            if h.opcode == OpCode::Text {
                self.sent_parts.clear();
            }
            self.sent_parts.push(payload.to_vec());
        }
        let step = frame_step(&mut self.fragments, h, payload, max);
        if let Some(f) = &self.fragments {
            assert!(f.len() <= max, "assembling {} bytes", f.len());
        }
        match step {
            FrameStep::Pong(p) => {
                assert_eq!(h.opcode, OpCode::Ping);
                assert_eq!(p, payload);
                assert_eq!(self.fragments.is_some(), was_assembling);
                self.events.push(Event::Pong(p.to_vec()));
                true
            }
            FrameStep::Wait => {
                match h.opcode {
                    OpCode::Pong => assert_eq!(self.fragments.is_some(), was_assembling),
                    OpCode::Text | OpCode::Continuation => assert!(!h.fin),
                    other => panic!("{other:?} frame ignored"),
                }
                true
            }
            FrameStep::Message(m) => {
                assert!(h.fin);
                assert!(m.len() <= max);
                assert!(self.fragments.is_none());
                assert_eq!(&m[..], &self.sent_parts.concat()[..], "reassembly");
                // The shard's `text` then refuses what is not UTF-8.
                if std::str::from_utf8(&m).is_err() {
                    self.close(close::INVALID_DATA, "text frame is not UTF-8");
                    return false;
                }
                self.events.push(Event::Message(m.into_owned()));
                true
            }
            FrameStep::Close(code, reason) => {
                match h.opcode {
                    OpCode::Binary => assert_eq!(code, close::UNSUPPORTED),
                    OpCode::Text => assert!(was_assembling),
                    OpCode::Continuation => assert!(
                        !was_assembling || code == close::TOO_BIG,
                        "continuation refused with {code}"
                    ),
                    OpCode::Close => {}
                    other => panic!("{other:?} closed the connection"),
                }
                self.close(code, reason);
                false
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = [16, 125, 1024, 65536][data[0] as usize % 4];
    let mut seed = data[1] as u32 | 0x100;
    let stream = &data[2..];

    let mut whole = Conn::default();
    whole.feed(&mut stream.to_vec(), max);

    let mut cut = Conn::default();
    let mut rest = stream;
    while !rest.is_empty() {
        // A small xorshift: reads of 1 to 64 bytes.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed as usize % 64 + 1).min(rest.len());
        cut.feed(&mut rest[..n].to_vec(), max);
        rest = &rest[n..];
    }
    assert_eq!(
        whole.events, cut.events,
        "the reads' boundaries changed the outcome"
    );
});
