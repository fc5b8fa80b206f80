//! Event names with one spelling each.

/// Webhook event names, in the order of `webhooks::HookKind`'s variants; `event_types` filters
/// in the configuration are checked against them.
pub const WEBHOOK_EVENTS: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];
