//! RFC 6455: the upgrade handshake and the frame codec. No IO here; the shard feeds bytes in.

pub mod codec;
pub mod handshake;
