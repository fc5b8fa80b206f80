//! HTTP/1.1 on the shared port: request parsing, responses, and the Pusher HTTP API.

pub mod api;
pub mod request;
pub mod response;
pub mod service;
