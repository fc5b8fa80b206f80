//! ringpush: a Pusher-protocol-compatible WebSocket server, thread-per-core on io_uring.
//!
//! See ARCHITECTURE.md for the map; `shard` is where connections live, `bus` is how shards talk.

pub mod auth;
pub mod bus;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod protocol;
pub mod shard;
pub mod webhooks;
pub mod ws;
