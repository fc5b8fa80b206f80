//! Shared helpers for the ringpush integration tests. Each concern has its own module; they
//! are all re-exported here, so a test file needs only `mod common;` and `use common::*;`.
//!
//! - [`server`]: the config ([`Config`], [`App`]) and the server process ([`Server`]).
//! - [`client`]: the WebSocket client ([`Client`], [`Frame`], [`recv_event`], ...).
//! - [`barrier`]: barriers for "nothing else arrives" checks ([`publish_barrier`], ...).
//! - [`raw`]: raw TCP and hand-built WebSocket frames ([`Raw`], [`RawWs`], [`build_frame`]).
//! - [`http`]: the HTTP client and the signed API client ([`HttpConn`], [`HttpResponse`], [`Api`]).
//! - [`sign`]: digests and request signing ([`hmac_hex`], [`md5_hex`], [`SignOpts`]).
//! - [`redis`]: a Redis server of the test's own, for cluster tests ([`Redis`]).
//! - [`webhook`]: a webhook receiver ([`WebhookReceiver`], [`Hook`], [`Reply`]).
//! - [`util`]: the wait limit, unique names and polling ([`WAIT`], [`uniq`], [`poll_until`]).
// Each test binary uses only some of the helpers, and so only some of these re-exports.
#![allow(dead_code, unused_imports)]

mod barrier;
mod client;
mod http;
mod raw;
mod redis;
mod server;
mod sign;
mod util;
mod webhook;

pub use barrier::*;
pub use client::*;
pub use http::*;
pub use raw::*;
pub use redis::*;
pub use server::*;
pub use sign::*;
pub use util::*;
pub use webhook::*;
