//! The messages nodes exchange through the broker, and their binary encoding.
//!
//! One frame per broker message: a kind byte, the sending node's id, then fields, each string
//! or byte field length-prefixed (u32, big-endian). Decoding checks every length against what is
//! left and against [`MAX_MESSAGE`], and every string for UTF-8, so a corrupt or hostile
//! message is refused whole and never allocates more than it carries.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use crate::ids::NodeId;

/// Largest broker message accepted (a frame plus its envelope, or a snapshot piece).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Most entries in one snapshot piece.
pub const MAX_ENTRIES: usize = 1 << 20;

/// A change to a node's contribution to the cluster's facts, as replicated to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One more non-presence subscription.
    Subscribed {
        /// The channel.
        channel: String,
    },
    /// One fewer non-presence subscription.
    Unsubscribed {
        /// The channel.
        channel: String,
    },
    /// One more presence connection of a member.
    Joined {
        /// The channel name.
        channel: String,
        /// The member's hash key.
        key: String,
        /// The id's raw JSON.
        raw_id: String,
        /// Raw JSON of `user_info`.
        info: Option<String>,
    },
    /// One fewer presence connection of a member.
    Left {
        /// The channel name.
        channel: String,
        /// The member's hash key.
        key: String,
    },
    /// One more signed-in connection of a user.
    SignedIn {
        /// The user id.
        user: String,
    },
    /// One fewer signed-in connection of a user.
    SignedOut {
        /// The user id.
        user: String,
    },
}

/// One entry of a node's state: a channel's subscription count or a member's connections, or a
/// user's signed-in connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Non-presence subscriptions to a channel.
    Subs {
        /// App id.
        app: String,
        /// The channel name.
        channel: String,
        /// How many.
        count: u32,
    },
    /// A member's presence connections in a channel.
    Member {
        /// App id.
        app: String,
        /// The channel name.
        channel: String,
        /// Hash key.
        key: String,
        /// Raw JSON id.
        raw_id: String,
        /// Raw JSON `user_info`.
        info: Option<String>,
        /// How many connections.
        conns: u32,
    },
    /// A user's signed-in connections.
    User {
        /// App id.
        app: String,
        /// The user id.
        user: String,
        /// How many connections.
        conns: u32,
    },
}

/// Everything that crosses the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// "I am alive", with this node's open connections per app (for cluster-wide limits).
    Heartbeat {
        /// Connections per app id.
        connections: Vec<(String, u32)>,
    },
    /// A clean shutdown: drop my contribution now.
    Leaving,
    /// A node started or reconnected: everyone please send your state.
    Hello,
    /// An event for a channel's subscribers on every node.
    Publish {
        /// App id.
        app: String,
        /// The channel name.
        channel: String,
        /// The encoded WebSocket frame.
        frame: Bytes,
        /// Socket id to skip.
        except: Option<String>,
        /// Raw `data` for cache channels.
        cache_data: Option<String>,
        /// When a cache event was published (Unix µs).
        cache_stamp: u64,
    },
    /// A frame for every connection signed in as a user.
    ToUser {
        /// App id.
        app: String,
        /// The user id.
        user: String,
        /// The encoded frame.
        frame: Bytes,
        /// Socket id to skip.
        except: Option<String>,
    },
    /// Close every connection of a user.
    Terminate {
        /// App id.
        app: String,
        /// The user id.
        user: String,
    },
    /// One change to the sender's contribution.
    Change {
        /// App id.
        app: String,
        /// What changed.
        change: Change,
    },
    /// Part `piece` of `pieces` of the sender's whole state: replaces what receivers hold for
    /// it in the keys this piece covers (those whose `home_of` over `pieces` is `piece`).
    Snapshot {
        /// Which piece.
        piece: u16,
        /// How many pieces.
        pieces: u16,
        /// The entries.
        entries: Vec<Entry>,
    },
}

/// Why a broker message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Ended before a field was complete.
    #[error("truncated message")]
    Truncated,
    /// Bigger than [`MAX_MESSAGE`], or a field longer than what is left.
    #[error("message or field too long")]
    TooLong,
    /// An unknown kind or tag byte.
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    /// A string that is not UTF-8.
    #[error("invalid UTF-8")]
    Utf8,
    /// Bytes left over after the last field.
    #[error("trailing bytes")]
    Trailing,
}

const HEARTBEAT: u8 = 1;
const LEAVING: u8 = 2;
const HELLO: u8 = 3;
const PUBLISH: u8 = 4;
const TO_USER: u8 = 5;
const TERMINATE: u8 = 6;
const CHANGE: u8 = 7;
const SNAPSHOT: u8 = 8;

struct Writer(BytesMut);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.0.put_u32(b.len() as u32);
        self.0.put_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.put_u8(1);
                self.str(s);
            }
            None => self.0.put_u8(0),
        }
    }
}

/// Encodes `msg` from `node`.
pub fn encode(node: NodeId, msg: &Message) -> Bytes {
    let mut w = Writer(BytesMut::with_capacity(64));
    let kind = match msg {
        Message::Heartbeat { .. } => HEARTBEAT,
        Message::Leaving => LEAVING,
        Message::Hello => HELLO,
        Message::Publish { .. } => PUBLISH,
        Message::ToUser { .. } => TO_USER,
        Message::Terminate { .. } => TERMINATE,
        Message::Change { .. } => CHANGE,
        Message::Snapshot { .. } => SNAPSHOT,
    };
    w.0.put_u8(kind);
    w.0.put_u64(node.0);
    match msg {
        Message::Heartbeat { connections } => {
            w.0.put_u32(connections.len() as u32);
            for (app, n) in connections {
                w.str(app);
                w.0.put_u32(*n);
            }
        }
        Message::Leaving | Message::Hello => {}
        Message::Publish {
            app,
            channel,
            frame,
            except,
            cache_data,
            cache_stamp,
        } => {
            w.str(app);
            w.str(channel);
            w.bytes(frame);
            w.opt(except.as_deref());
            w.opt(cache_data.as_deref());
            w.0.put_u64(*cache_stamp);
        }
        Message::ToUser {
            app,
            user,
            frame,
            except,
        } => {
            w.str(app);
            w.str(user);
            w.bytes(frame);
            w.opt(except.as_deref());
        }
        Message::Terminate { app, user } => {
            w.str(app);
            w.str(user);
        }
        Message::Change { app, change } => {
            w.str(app);
            encode_change(&mut w, change);
        }
        Message::Snapshot {
            piece,
            pieces,
            entries,
        } => {
            w.0.put_u16(*piece);
            w.0.put_u16(*pieces);
            w.0.put_u32(entries.len() as u32);
            for e in entries {
                encode_entry(&mut w, e);
            }
        }
    }
    w.0.freeze()
}

fn encode_change(w: &mut Writer, c: &Change) {
    match c {
        Change::Subscribed { channel } => {
            w.0.put_u8(1);
            w.str(channel);
        }
        Change::Unsubscribed { channel } => {
            w.0.put_u8(2);
            w.str(channel);
        }
        Change::Joined {
            channel,
            key,
            raw_id,
            info,
        } => {
            w.0.put_u8(3);
            w.str(channel);
            w.str(key);
            w.str(raw_id);
            w.opt(info.as_deref());
        }
        Change::Left { channel, key } => {
            w.0.put_u8(4);
            w.str(channel);
            w.str(key);
        }
        Change::SignedIn { user } => {
            w.0.put_u8(5);
            w.str(user);
        }
        Change::SignedOut { user } => {
            w.0.put_u8(6);
            w.str(user);
        }
    }
}

fn encode_entry(w: &mut Writer, e: &Entry) {
    match e {
        Entry::Subs {
            app,
            channel,
            count,
        } => {
            w.0.put_u8(1);
            w.str(app);
            w.str(channel);
            w.0.put_u32(*count);
        }
        Entry::Member {
            app,
            channel,
            key,
            raw_id,
            info,
            conns,
        } => {
            w.0.put_u8(2);
            w.str(app);
            w.str(channel);
            w.str(key);
            w.str(raw_id);
            w.opt(info.as_deref());
            w.0.put_u32(*conns);
        }
        Entry::User { app, user, conns } => {
            w.0.put_u8(3);
            w.str(app);
            w.str(user);
            w.0.put_u32(*conns);
        }
    }
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.buf.remaining() < n {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let n = self.u32()? as usize;
        if n > self.buf.remaining() {
            return Err(WireError::TooLong);
        }
        Ok(self.buf.split_to(n))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Utf8)
    }
    fn opt(&mut self) -> Result<Option<String>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            k => Err(WireError::UnknownKind(k)),
        }
    }
    /// A count of items that each take at least `min` bytes: bounded by what is left.
    fn count(&mut self, min: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > MAX_ENTRIES || n.saturating_mul(min) > self.buf.remaining() {
            return Err(WireError::TooLong);
        }
        Ok(n)
    }
}

/// Decodes one broker message: the sender and what it says.
pub fn decode(buf: Bytes) -> Result<(NodeId, Message), WireError> {
    if buf.len() > MAX_MESSAGE {
        return Err(WireError::TooLong);
    }
    let mut r = Reader { buf };
    let kind = r.u8()?;
    let node = NodeId(r.u64()?);
    let msg = match kind {
        HEARTBEAT => {
            let n = r.count(8)?;
            let mut connections = Vec::with_capacity(n);
            for _ in 0..n {
                connections.push((r.str()?, r.u32()?));
            }
            Message::Heartbeat { connections }
        }
        LEAVING => Message::Leaving,
        HELLO => Message::Hello,
        PUBLISH => Message::Publish {
            app: r.str()?,
            channel: r.str()?,
            frame: r.bytes()?,
            except: r.opt()?,
            cache_data: r.opt()?,
            cache_stamp: r.u64()?,
        },
        TO_USER => Message::ToUser {
            app: r.str()?,
            user: r.str()?,
            frame: r.bytes()?,
            except: r.opt()?,
        },
        TERMINATE => Message::Terminate {
            app: r.str()?,
            user: r.str()?,
        },
        CHANGE => Message::Change {
            app: r.str()?,
            change: decode_change(&mut r)?,
        },
        SNAPSHOT => {
            let piece = r.u16()?;
            let pieces = r.u16()?;
            let n = r.count(9)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(decode_entry(&mut r)?);
            }
            Message::Snapshot {
                piece,
                pieces,
                entries,
            }
        }
        k => return Err(WireError::UnknownKind(k)),
    };
    if r.buf.has_remaining() {
        return Err(WireError::Trailing);
    }
    Ok((node, msg))
}

fn decode_change(r: &mut Reader) -> Result<Change, WireError> {
    Ok(match r.u8()? {
        1 => Change::Subscribed { channel: r.str()? },
        2 => Change::Unsubscribed { channel: r.str()? },
        3 => Change::Joined {
            channel: r.str()?,
            key: r.str()?,
            raw_id: r.str()?,
            info: r.opt()?,
        },
        4 => Change::Left {
            channel: r.str()?,
            key: r.str()?,
        },
        5 => Change::SignedIn { user: r.str()? },
        6 => Change::SignedOut { user: r.str()? },
        k => return Err(WireError::UnknownKind(k)),
    })
}

fn decode_entry(r: &mut Reader) -> Result<Entry, WireError> {
    Ok(match r.u8()? {
        1 => Entry::Subs {
            app: r.str()?,
            channel: r.str()?,
            count: r.u32()?,
        },
        2 => Entry::Member {
            app: r.str()?,
            channel: r.str()?,
            key: r.str()?,
            raw_id: r.str()?,
            info: r.opt()?,
            conns: r.u32()?,
        },
        3 => Entry::User {
            app: r.str()?,
            user: r.str()?,
            conns: r.u32()?,
        },
        k => return Err(WireError::UnknownKind(k)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Heartbeat {
                connections: vec![("app".into(), 3), ("b".into(), 0)],
            },
            Message::Leaving,
            Message::Hello,
            Message::Publish {
                app: "app".into(),
                channel: "presence-é".into(),
                frame: Bytes::from_static(b"\x81\x02{}"),
                except: Some("1.2".into()),
                cache_data: None,
                cache_stamp: 17,
            },
            Message::ToUser {
                app: "app".into(),
                user: "u".into(),
                frame: Bytes::from_static(b"x"),
                except: None,
            },
            Message::Terminate {
                app: "app".into(),
                user: "u".into(),
            },
            Message::Change {
                app: "app".into(),
                change: Change::Joined {
                    channel: "presence-a".into(),
                    key: "7".into(),
                    raw_id: "7".into(),
                    info: Some("{}".into()),
                },
            },
            Message::Change {
                app: "app".into(),
                change: Change::SignedOut { user: "u".into() },
            },
            Message::Snapshot {
                piece: 1,
                pieces: 2,
                entries: vec![
                    Entry::Subs {
                        app: "a".into(),
                        channel: "c".into(),
                        count: 4,
                    },
                    Entry::Member {
                        app: "a".into(),
                        channel: "presence-c".into(),
                        key: "u".into(),
                        raw_id: "\"u\"".into(),
                        info: None,
                        conns: 2,
                    },
                    Entry::User {
                        app: "a".into(),
                        user: "u".into(),
                        conns: 1,
                    },
                ],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let wire = encode(NodeId(0xabc), &m);
            assert_eq!(decode(wire), Ok((NodeId(0xabc), m)));
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_refused_without_panic() {
        for m in samples() {
            let wire = encode(NodeId(1), &m);
            for cut in 0..wire.len() {
                assert!(decode(wire.slice(..cut)).is_err(), "{m:?} cut at {cut}");
            }
            let mut longer = wire.to_vec();
            longer.push(0);
            assert_eq!(decode(longer.into()), Err(WireError::Trailing));
            let mut rng = fastrand::Rng::with_seed(wire.len() as u64);
            for _ in 0..200 {
                let mut bad = wire.to_vec();
                let i = rng.usize(..bad.len());
                bad[i] = rng.u8(..);
                let _ = decode(bad.into());
            }
        }
    }

    #[test]
    fn announced_lengths_are_checked_before_allocating() {
        // A heartbeat announcing four billion apps in a 17-byte message.
        let mut b = BytesMut::new();
        b.put_u8(HEARTBEAT);
        b.put_u64(1);
        b.put_u32(u32::MAX);
        assert_eq!(decode(b.freeze()), Err(WireError::TooLong));
        let mut b = BytesMut::new();
        b.put_u8(TERMINATE);
        b.put_u64(1);
        b.put_u32(1 << 30);
        assert_eq!(decode(b.freeze()), Err(WireError::TooLong));
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            "\\PC{0,12}"
        }

        fn frame() -> impl Strategy<Value = Bytes> {
            vec(any::<u8>(), 0..40).prop_map(Bytes::from)
        }

        fn change() -> impl Strategy<Value = Change> {
            prop_oneof![
                text().prop_map(|channel| Change::Subscribed { channel }),
                text().prop_map(|channel| Change::Unsubscribed { channel }),
                (text(), text(), text(), proptest::option::of(text())).prop_map(
                    |(channel, key, raw_id, info)| Change::Joined {
                        channel,
                        key,
                        raw_id,
                        info
                    }
                ),
                (text(), text()).prop_map(|(channel, key)| Change::Left { channel, key }),
                text().prop_map(|user| Change::SignedIn { user }),
                text().prop_map(|user| Change::SignedOut { user }),
            ]
        }

        fn entry() -> impl Strategy<Value = Entry> {
            prop_oneof![
                (text(), text(), any::<u32>()).prop_map(|(app, channel, count)| Entry::Subs {
                    app,
                    channel,
                    count
                }),
                (
                    text(),
                    text(),
                    text(),
                    text(),
                    proptest::option::of(text()),
                    any::<u32>()
                )
                    .prop_map(|(app, channel, key, raw_id, info, conns)| {
                        Entry::Member {
                            app,
                            channel,
                            key,
                            raw_id,
                            info,
                            conns,
                        }
                    }),
                (text(), text(), any::<u32>()).prop_map(|(app, user, conns)| Entry::User {
                    app,
                    user,
                    conns
                }),
            ]
        }

        fn message() -> impl Strategy<Value = Message> {
            prop_oneof![
                vec((text(), any::<u32>()), 0..6)
                    .prop_map(|connections| Message::Heartbeat { connections }),
                Just(Message::Leaving),
                Just(Message::Hello),
                (
                    text(),
                    text(),
                    frame(),
                    proptest::option::of(text()),
                    proptest::option::of(text()),
                    any::<u64>()
                )
                    .prop_map(
                        |(app, channel, frame, except, cache_data, cache_stamp)| {
                            Message::Publish {
                                app,
                                channel,
                                frame,
                                except,
                                cache_data,
                                cache_stamp,
                            }
                        }
                    ),
                (text(), text(), frame(), proptest::option::of(text())).prop_map(
                    |(app, user, frame, except)| Message::ToUser {
                        app,
                        user,
                        frame,
                        except
                    }
                ),
                (text(), text()).prop_map(|(app, user)| Message::Terminate { app, user }),
                (text(), change()).prop_map(|(app, change)| Message::Change { app, change }),
                (any::<u16>(), any::<u16>(), vec(entry(), 0..6)).prop_map(
                    |(piece, pieces, entries)| Message::Snapshot {
                        piece,
                        pieces,
                        entries
                    }
                ),
            ]
        }

        proptest! {
            #[test]
            fn encode_then_decode_is_the_identity(node in any::<u64>(), m in message()) {
                let wire = encode(NodeId(node), &m);
                prop_assert_eq!(decode(wire.clone()), Ok((NodeId(node), m.clone())));
                // Canonical: what decodes encodes to the same bytes.
                prop_assert_eq!(encode(NodeId(node), &m), wire.clone());
                // Every strict prefix, and one byte more, is refused.
                for cut in 0..wire.len() {
                    prop_assert!(decode(wire.slice(..cut)).is_err());
                }
                let mut longer = wire.to_vec();
                longer.push(0);
                prop_assert_eq!(decode(longer.into()), Err(WireError::Trailing));
            }

            #[test]
            fn corrupt_messages_never_panic(
                m in message(),
                flips in vec((any::<usize>(), any::<u8>()), 1..4),
            ) {
                let mut bad = encode(NodeId(7), &m).to_vec();
                for (i, b) in flips {
                    let i = i % bad.len();
                    bad[i] = b;
                }
                if let Ok((node, back)) = decode(bad.clone().into()) {
                    prop_assert_eq!(&encode(node, &back)[..], &bad[..]);
                }
            }
        }
    }
}
