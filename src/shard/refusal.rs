//! Why a client's message was refused. Handlers return a [`Refusal`]; it becomes a
//! `pusher:error` frame in one place ([`Refusal::frame`]), and the connection stays open.
//!
//! Codes follow the real service: `null` for protocol misuse and failed subscriptions (clients
//! such as pysher treat 4000-4099 as fatal and would drop the whole connection over one bad
//! channel), 4009 for sign-in, 4301 for message and client-event limits, 4302 for a watchlist cut
//! short.

use std::fmt;

use bytes::Bytes;

use crate::protocol::channel::NameError;
use crate::protocol::limits::{MAX_SUBSCRIPTIONS, MAX_WATCHLIST};
use crate::protocol::message::{MemberError, MessageError};
use crate::protocol::{codes, encode};

/// One kind of refused client message, with what its `pusher:error` says.
#[derive(Debug)]
pub enum Refusal {
    /// The connection's message token bucket is empty (4301).
    TooManyMessages,
    /// The envelope, or the data of `pusher:subscribe`, could not be read (null).
    BadMessage(MessageError),
    /// A `pusher:` or `pusher_internal:` event the server does not take from clients (null).
    UnsupportedEvent(String),
    /// An event that is neither a known `pusher:` event nor a `client-` event (null).
    NotClientEvent,

    /// The subscription's channel name is invalid (null).
    BadChannelName {
        /// The name as sent.
        channel: String,
        /// What is wrong with it.
        error: NameError,
    },
    /// The connection already joined (or is joining) this channel (null).
    AlreadySubscribed(String),
    /// The connection is at [`MAX_SUBSCRIPTIONS`] (null).
    TooManySubscriptions,
    /// A `#server-to-user-` channel of a user this connection is not signed in as (null).
    NotThatUser,
    /// A private, encrypted or presence subscription whose `auth` does not sign
    /// `socket_id:channel[:channel_data]` (null).
    BadChannelSignature {
        /// The string the signature should cover.
        to_sign: String,
        /// The `auth` the client sent.
        got: String,
    },
    /// Presence `channel_data` that is signed but not a valid member (null).
    BadChannelData(MemberError),
    /// A presence subscription without `channel_data` from a connection that is not signed in
    /// (null).
    NoChannelData,

    /// `pusher:unsubscribe` data without a channel (null).
    BadUnsubscribe,

    /// `pusher:signin` data could not be read (4009).
    BadSignin(MessageError),
    /// The sign-in's `auth` does not sign `socket_id::user::user_data` (4009).
    BadUserSignature {
        /// The string the signature should cover.
        to_sign: String,
        /// The `auth` the client sent.
        got: String,
    },
    /// Signed `user_data` that is not a valid user (4009).
    BadUserData(MemberError),
    /// A second sign-in as someone else on the same connection (4009).
    SignedInAsOther,
    /// The watchlist is longer than [`MAX_WATCHLIST`]; only the first ids are watched (4302).
    /// The sign-in itself succeeded: this follows `pusher:signin_success`.
    WatchlistTruncated,

    /// Client events are off for the app (null).
    ClientEventsDisabled,
    /// A client event without a channel (null).
    NoChannel,
    /// A client event on a channel the connection has not (yet) joined (null).
    NotSubscribed(String),
    /// A client event on a channel type that does not allow them, such as a public channel
    /// (null).
    ClientEventsForbidden,
    /// Over the app's client events per second (4301).
    ClientEventRateLimit,
    /// A client event whose name or data is over the limits (4301).
    ClientEventTooLarge,

    /// The presence channel's home shard refused the join, for instance over
    /// `max_presence_members`; carries its message (null).
    PresenceJoinRefused(String),
}

impl Refusal {
    /// The `code` of the `pusher:error`; `None` is sent as `null`.
    pub fn code(&self) -> Option<u16> {
        use Refusal::*;
        match self {
            TooManyMessages | ClientEventRateLimit | ClientEventTooLarge => {
                Some(codes::CLIENT_EVENT_REJECTED)
            }
            BadSignin(_) | BadUserSignature { .. } | BadUserData(_) | SignedInAsOther => {
                Some(codes::UNAUTHORIZED)
            }
            WatchlistTruncated => Some(codes::WATCHLIST_LIMIT),
            BadMessage(_)
            | UnsupportedEvent(_)
            | NotClientEvent
            | BadChannelName { .. }
            | AlreadySubscribed(_)
            | TooManySubscriptions
            | NotThatUser
            | BadChannelSignature { .. }
            | BadChannelData(_)
            | NoChannelData
            | BadUnsubscribe
            | ClientEventsDisabled
            | NoChannel
            | NotSubscribed(_)
            | ClientEventsForbidden
            | PresenceJoinRefused(_) => None,
        }
    }

    /// The `pusher:error` frame that answers this refusal: the only place a refusal becomes
    /// bytes.
    pub fn frame(&self) -> Bytes {
        encode::error(self.code(), &self.to_string())
    }
}

/// The `message` of the `pusher:error`, worded like the real service where it has one.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Refusal::*;
        match self {
            TooManyMessages => f.write_str("Too many messages: slow down"),
            BadMessage(e) | BadSignin(e) => write!(f, "{e}"),
            UnsupportedEvent(event) => write!(f, "Unsupported event {event}"),
            NotClientEvent => f.write_str("Client events must be prefixed with client-"),
            BadChannelName { channel, error } => write!(f, "{error}: {channel}"),
            AlreadySubscribed(channel) => write!(f, "Existing subscription to channel {channel}"),
            TooManySubscriptions => {
                write!(f, "Too many subscriptions (limit {MAX_SUBSCRIPTIONS})")
            }
            NotThatUser => f.write_str(
                "Subscription to #server-to-user channels requires signing in as that user",
            ),
            BadChannelSignature { to_sign, got } | BadUserSignature { to_sign, got } => write!(
                f,
                "Invalid signature: Expected HMAC SHA256 hex digest of {to_sign}, but got {got}"
            ),
            BadChannelData(e) => write!(f, "Invalid channel_data: {e}"),
            NoChannelData => f.write_str("Presence subscriptions require channel_data"),
            BadUnsubscribe => f.write_str("Invalid data for pusher:unsubscribe"),
            BadUserData(e) => write!(f, "Invalid user_data: {e}"),
            SignedInAsOther => f.write_str("Connection is already signed in as a different user"),
            WatchlistTruncated => write!(
                f,
                "Watchlist limit exceeded: only the first {MAX_WATCHLIST} user ids are watched"
            ),
            ClientEventsDisabled => {
                f.write_str("To send client events, you must enable this feature for the app")
            }
            NoChannel => f.write_str("Client events need a channel"),
            NotSubscribed(channel) => write!(
                f,
                "Cannot broadcast client event (connection not subscribed to channel {channel})"
            ),
            ClientEventsForbidden => {
                f.write_str("Client events are only allowed on private and presence channels")
            }
            ClientEventRateLimit => f.write_str("Client event rejected due to rate limit"),
            ClientEventTooLarge => {
                f.write_str("Client event rejected: event name or data too large")
            }
            PresenceJoinRefused(message) => f.write_str(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind with the code and message clients have always seen for it.
    #[test]
    fn codes_and_messages_are_the_ones_clients_know() {
        let bad_data = MessageError::BadData {
            event: "pusher:subscribe",
            detail: "missing data".into(),
        };
        let cases: Vec<(Refusal, Option<u16>, String)> = vec![
            (
                Refusal::TooManyMessages,
                Some(4301),
                "Too many messages: slow down".into(),
            ),
            (
                Refusal::BadMessage(MessageError::Malformed("expected a JSON object".into())),
                None,
                "Invalid message format: expected a JSON object".into(),
            ),
            (
                Refusal::BadMessage(bad_data),
                None,
                "Invalid data for pusher:subscribe: missing data".into(),
            ),
            (
                Refusal::UnsupportedEvent("pusher:nope".into()),
                None,
                "Unsupported event pusher:nope".into(),
            ),
            (
                Refusal::NotClientEvent,
                None,
                "Client events must be prefixed with client-".into(),
            ),
            (
                Refusal::BadChannelName {
                    channel: "a b".into(),
                    error: NameError::BadChar,
                },
                None,
                format!("{}: a b", NameError::BadChar),
            ),
            (
                Refusal::AlreadySubscribed("private-x".into()),
                None,
                "Existing subscription to channel private-x".into(),
            ),
            (
                Refusal::TooManySubscriptions,
                None,
                format!("Too many subscriptions (limit {MAX_SUBSCRIPTIONS})"),
            ),
            (
                Refusal::NotThatUser,
                None,
                "Subscription to #server-to-user channels requires signing in as that user".into(),
            ),
            (
                Refusal::BadChannelSignature {
                    to_sign: "1.2:private-x".into(),
                    got: "key:abc".into(),
                },
                None,
                "Invalid signature: Expected HMAC SHA256 hex digest of 1.2:private-x, but got \
                 key:abc"
                    .into(),
            ),
            (
                Refusal::BadChannelData(MemberError::NotObject),
                None,
                "Invalid channel_data: must be a JSON object".into(),
            ),
            (
                Refusal::NoChannelData,
                None,
                "Presence subscriptions require channel_data".into(),
            ),
            (
                Refusal::BadUnsubscribe,
                None,
                "Invalid data for pusher:unsubscribe".into(),
            ),
            (
                Refusal::BadSignin(MessageError::BadData {
                    event: "pusher:signin",
                    detail: "auth must be a string".into(),
                }),
                Some(4009),
                "Invalid data for pusher:signin: auth must be a string".into(),
            ),
            (
                Refusal::BadUserSignature {
                    to_sign: "1.2::user::{}".into(),
                    got: "".into(),
                },
                Some(4009),
                "Invalid signature: Expected HMAC SHA256 hex digest of 1.2::user::{}, but got "
                    .into(),
            ),
            (
                Refusal::BadUserData(MemberError::BadIdChars),
                Some(4009),
                format!("Invalid user_data: {}", MemberError::BadIdChars),
            ),
            (
                Refusal::SignedInAsOther,
                Some(4009),
                "Connection is already signed in as a different user".into(),
            ),
            (
                Refusal::WatchlistTruncated,
                Some(4302),
                format!(
                    "Watchlist limit exceeded: only the first {MAX_WATCHLIST} user ids are watched"
                ),
            ),
            (
                Refusal::ClientEventsDisabled,
                None,
                "To send client events, you must enable this feature for the app".into(),
            ),
            (
                Refusal::NoChannel,
                None,
                "Client events need a channel".into(),
            ),
            (
                Refusal::NotSubscribed("private-x".into()),
                None,
                "Cannot broadcast client event (connection not subscribed to channel private-x)"
                    .into(),
            ),
            (
                Refusal::ClientEventsForbidden,
                None,
                "Client events are only allowed on private and presence channels".into(),
            ),
            (
                Refusal::ClientEventRateLimit,
                Some(4301),
                "Client event rejected due to rate limit".into(),
            ),
            (
                Refusal::ClientEventTooLarge,
                Some(4301),
                "Client event rejected: event name or data too large".into(),
            ),
            (
                Refusal::PresenceJoinRefused("Presence channel is full".into()),
                None,
                "Presence channel is full".into(),
            ),
        ];
        for (refusal, code, message) in cases {
            assert_eq!(refusal.code(), code, "{refusal:?}");
            assert_eq!(refusal.to_string(), message, "{refusal:?}");
            assert_eq!(
                refusal.frame(),
                encode::error(code, &message),
                "{refusal:?}"
            );
        }
    }
}
