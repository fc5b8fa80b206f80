//! Protocol limits that are not configuration: one constant each, used by the checks and quoted
//! by the error messages that enforce them.

/// Longest event name, from clients and from the HTTP API.
pub const MAX_EVENT_NAME: usize = 200;
/// Most channels in one HTTP trigger.
pub const MAX_CHANNELS_PER_TRIGGER: usize = 100;
/// Most events in one `batch_events` request.
pub const MAX_BATCH: usize = 10;
/// Most channels one connection may join.
pub const MAX_SUBSCRIPTIONS: usize = 1000;
/// Most watchlist entries kept per signed-in connection (more gives 4302).
pub const MAX_WATCHLIST: usize = 100;
