//! Pusher error and close codes (pusher-protocol.md section 11), one place for all of them.

/// Unknown app key.
pub const APP_NOT_FOUND: u16 = 4001;
/// App disabled.
pub const APP_DISABLED: u16 = 4003;
/// App over its connection quota.
pub const OVER_QUOTA: u16 = 4004;
/// Upgrade on a path other than `/app/{key}`.
pub const PATH_NOT_FOUND: u16 = 4005;
/// Unsupported protocol version.
pub const BAD_PROTOCOL: u16 = 4007;
/// Connection unauthorized (bad auth, terminated by the app, sign-in timeout).
pub const UNAUTHORIZED: u16 = 4009;
/// Over capacity: the client should back off and reconnect. Also used for slow consumers.
pub const OVER_CAPACITY: u16 = 4100;
/// Reconnect immediately (server shutting down).
pub const RECONNECT: u16 = 4200;
/// No pong after a server ping.
pub const PONG_TIMEOUT: u16 = 4201;
/// Client event rejected (rate limit or size).
pub const CLIENT_EVENT_REJECTED: u16 = 4301;
/// Watchlist longer than allowed; the first entries were kept.
pub const WATCHLIST_LIMIT: u16 = 4302;
