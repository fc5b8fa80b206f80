//! The Pusher protocol without IO: channel names, client messages, server frames, error codes.

pub mod channel;
pub mod codes;
pub mod encode;
pub mod events;
pub mod json;
pub mod limits;
pub mod message;
