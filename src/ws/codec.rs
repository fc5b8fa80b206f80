//! Frame codec. Client frames are parsed in place (unmasked inside the caller's buffer); server
//! frames are unmasked, so one encoded frame can be shared by every receiver.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes we act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Binary data (not used by the Pusher protocol).
    Binary,
    /// Close handshake.
    Close,
    /// Ping control frame.
    Ping,
    /// Pong control frame.
    Pong,
}

impl OpCode {
    fn from_u8(b: u8) -> Option<OpCode> {
        Some(match b {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Close codes from RFC 6455 section 7.4.1 that the server sends.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Protocol error (unmasked frame, bad opcode, reserved bits).
    pub const PROTOCOL: u16 = 1002;
    /// A data type we do not accept (binary frames).
    pub const UNSUPPORTED: u16 = 1003;
    /// Text that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
}

/// A protocol violation; the connection is closed with `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct FrameError {
    /// The close code to send.
    pub code: u16,
    /// The close reason to send.
    pub reason: &'static str,
}

const fn err(code: u16, reason: &'static str) -> FrameError {
    FrameError { code, reason }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Final fragment of a message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// Bytes of header, including the masking key.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
    /// The client's masking key.
    pub mask: [u8; 4],
}

impl Header {
    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses a client frame header from the start of `buf`. `Ok(None)` means more bytes are needed.
/// `max_payload` bounds a single frame; the caller bounds the assembled message.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(err(close::PROTOCOL, "reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(err(close::PROTOCOL, "unknown opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(err(close::PROTOCOL, "client frames must be masked"));
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(a), 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() && (len > 125 || !fin) {
        return Err(err(close::PROTOCOL, "bad control frame"));
    }
    if len > max_payload as u64 {
        return Err(err(close::TOO_BIG, "message too big"));
    }
    if buf.len() < pos + 4 {
        return Ok(None);
    }
    let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
    pos += 4;
    Ok(Some(Header {
        fin,
        opcode,
        header_len: pos,
        payload_len: len as usize,
        mask,
    }))
}

/// Removes the client's mask from a payload, in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Encodes an unmasked server frame.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let code = match opcode {
        OpCode::Continuation => 0,
        OpCode::Text => 1,
        OpCode::Binary => 2,
        OpCode::Close => 8,
        OpCode::Ping => 9,
        OpCode::Pong => 10,
    };
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut out, code, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// Encodes a text frame.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OpCode::Text, payload)
}

/// Encodes a close frame with a code and a reason (cut to fit the 125-byte control limit).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut r = reason.as_bytes();
    if r.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        r = &r[..end];
    }
    let mut p = Vec::with_capacity(2 + r.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(r);
    encode(OpCode::Close, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn parses_and_unmasks() {
        for len in [0usize, 5, 125, 126, 300, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut f = if len <= u16::MAX as usize {
                masked(1, true, &payload)
            } else {
                let mut v = vec![0x81, 0x80 | 127];
                v.extend_from_slice(&(len as u64).to_be_bytes());
                v.extend_from_slice(&[9, 8, 7, 6]);
                v.extend(
                    payload
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ [9, 8, 7, 6][i % 4]),
                );
                v
            };
            let h = parse_header(&f, 1 << 20).unwrap().unwrap();
            assert_eq!(h.payload_len, len);
            assert_eq!(h.frame_len(), f.len());
            let body = &mut f[h.header_len..];
            unmask(body, h.mask);
            assert_eq!(body, &payload[..]);
            // Every strict prefix is incomplete, never an error.
            for cut in [0, 1, h.header_len - 1] {
                assert_eq!(parse_header(&f[..cut], 1 << 20), Ok(None));
            }
        }
    }

    #[test]
    fn rejects_violations() {
        let mut unmasked = masked(1, true, b"hi");
        unmasked[1] &= 0x7f;
        assert_eq!(
            parse_header(&unmasked, 100).unwrap_err().code,
            close::PROTOCOL
        );
        let big = masked(1, true, &[0u8; 200]);
        assert_eq!(parse_header(&big, 100).unwrap_err().code, close::TOO_BIG);
        let frag_ping = masked(9, false, b"x");
        assert_eq!(
            parse_header(&frag_ping, 100).unwrap_err().code,
            close::PROTOCOL
        );
        let rsv = {
            let mut f = masked(1, true, b"x");
            f[0] |= 0x40;
            f
        };
        assert_eq!(parse_header(&rsv, 100).unwrap_err().code, close::PROTOCOL);
        assert_eq!(
            parse_header(&masked(3, true, b""), 100).unwrap_err().code,
            close::PROTOCOL
        );
    }

    #[test]
    fn encodes_server_frames() {
        assert_eq!(&text(b"abc")[..], &[0x81, 3, b'a', b'b', b'c']);
        let long = text(&[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        let c = close_frame(4200, "bye");
        assert_eq!(&c[..], &[0x88, 5, 0x10, 0x68, b'b', b'y', b'e']);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if let Ok(Some(h)) = parse_header(&buf, 1 << 16) {
                assert!(h.header_len <= 14 && h.payload_len <= 1 << 16);
                if buf.len() >= h.frame_len() {
                    unmask(&mut buf[h.header_len..h.frame_len()], h.mask);
                }
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn opcode() -> impl Strategy<Value = OpCode> {
            prop_oneof![
                Just(OpCode::Continuation),
                Just(OpCode::Text),
                Just(OpCode::Binary),
                Just(OpCode::Close),
                Just(OpCode::Ping),
                Just(OpCode::Pong),
            ]
        }

        /// Payload lengths around every boundary of the length encoding (125/126, 65535/65536),
        /// filled from a seed so long payloads stay cheap to generate.
        fn payload() -> impl Strategy<Value = Vec<u8>> {
            let len = prop_oneof![0usize..130, 65_530usize..65_540, 130usize..70_000];
            (len, any::<u8>()).prop_map(|(n, seed)| {
                (0..n)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                    .collect()
            })
        }

        /// What a client sends for a server frame: mask bit set, key after the length, payload
        /// masked.
        fn as_client(server: &[u8], payload_len: usize, mask: [u8; 4]) -> Vec<u8> {
            let at = server.len() - payload_len;
            let mut v = server[..at].to_vec();
            v[1] |= 0x80;
            v.extend_from_slice(&mask);
            v.extend(
                server[at..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4]),
            );
            v
        }

        proptest! {
            #[test]
            fn encode_then_parse_gives_the_frame_back(
                op in opcode(),
                mut body in payload(),
                mask in any::<[u8; 4]>(),
                after in proptest::collection::vec(any::<u8>(), 0..16),
            ) {
                if op.is_control() {
                    body.truncate(125);
                }
                let server = encode(op, &body);
                let mut frame = as_client(&server, body.len(), mask);
                let ext = match body.len() {
                    0..=125 => 0,
                    126..=65_535 => 2,
                    _ => 8,
                };
                let want = Header {
                    fin: true,
                    opcode: op,
                    header_len: 2 + ext + 4,
                    payload_len: body.len(),
                    mask,
                };
                for cut in 0..want.header_len {
                    prop_assert_eq!(parse_header(&frame[..cut], 1 << 20), Ok(None));
                }
                let frame_len = frame.len();
                frame.extend_from_slice(&after);
                let h = parse_header(&frame, 1 << 20).unwrap().unwrap();
                prop_assert_eq!(h, want);
                prop_assert_eq!(h.frame_len(), frame_len);
                unmask(&mut frame[h.header_len..h.frame_len()], h.mask);
                prop_assert_eq!(&frame[h.header_len..h.frame_len()], &body[..]);
                prop_assert_eq!(&frame[frame_len..], &after[..]);
                // A limit below the payload refuses it once the length is known.
                if !body.is_empty() {
                    let e = parse_header(&frame, body.len() - 1).unwrap_err();
                    prop_assert_eq!(e.code, close::TOO_BIG);
                }
            }

            #[test]
            fn unmask_is_a_bytewise_xor_and_undoes_itself(
                data in proptest::collection::vec(any::<u8>(), 0..64),
                mask in any::<[u8; 4]>(),
            ) {
                let mut fast = data.clone();
                unmask(&mut fast, mask);
                let plain: Vec<u8> = data
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4])
                    .collect();
                prop_assert_eq!(&fast, &plain);
                unmask(&mut fast, mask);
                prop_assert_eq!(fast, data);
            }

            #[test]
            fn close_frames_fit_the_control_limit(code in any::<u16>(), reason in "\\PC{0,130}") {
                let server = close_frame(code, &reason);
                let len = server.len() - 2;
                let frame = as_client(&server, len, [9, 8, 7, 6]);
                let h = parse_header(&frame, 125).unwrap().unwrap();
                prop_assert_eq!(h.opcode, OpCode::Close);
                prop_assert!(h.payload_len <= 125);
                let mut body = frame[h.header_len..].to_vec();
                unmask(&mut body, h.mask);
                prop_assert_eq!(u16::from_be_bytes([body[0], body[1]]), code);
                let sent = std::str::from_utf8(&body[2..]).unwrap();
                prop_assert!(reason.starts_with(sent));
                prop_assert!(sent.len() == reason.len() || sent.len() > 119);
            }
        }
    }
}
