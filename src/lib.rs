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

/// What the fuzz targets (`fuzz/`) drive, re-exported from the private modules: the WebSocket
/// codec and reassembly, the HTTP request parser and API, client-message parsing, API signing
/// and the cluster wire codec. Not an API: nothing outside `fuzz/` should use it.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::auth::{api_string, md5_hex, sign, verify_api_request, ApiAuthError};
    pub use crate::channels::home::ChannelFacts;
    pub use crate::cluster::wire::{
        decode as wire_decode, encode as wire_encode, Change, Entry, Message, WireError,
        MAX_ENTRIES, MAX_MESSAGE,
    };
    pub use crate::http::api::handle as handle_api;
    pub use crate::http::request::MAX_HEAD;
    pub use crate::http::request::{parse as parse_request, percent_decode, Parsed, Request};
    pub use crate::http::response::Response;
    pub use crate::http::service::{CachedEvent, Health, Service};
    pub use crate::ids::{AppIdx, NodeId};
    pub use crate::protocol::channel::is_name_byte;
    pub use crate::protocol::json::{check_depth, JsonError, MAX_DEPTH};
    pub use crate::protocol::limits::{MAX_BATCH, MAX_CHANNELS_PER_TRIGGER};
    pub use crate::protocol::message::{
        parse as parse_message, presence_member, signin, subscribe, user_data, ClientMessage,
        Member, MemberError, MessageError, Signin, Subscribe, UserData,
    };
    pub use crate::shard::frames::{step as frame_step, FrameStep};
    pub use crate::ws::codec::{
        close, encode as encode_frame, parse_header, unmask, FrameError, Header, OpCode,
    };
}
