//! ringpush: a Pusher-protocol-compatible WebSocket server, thread-per-core on io_uring.
//!
//! See ARCHITECTURE.md for the map; `shard` is where connections live, `bus` is how shards talk.

mod auth;
mod bus;
mod channels;
mod cluster;
pub mod config;
mod http;
mod ids;
mod metrics;
mod protocol;
pub mod shard;
pub mod supervisor;
mod webhooks;
mod ws;
