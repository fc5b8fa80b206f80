//! Client-to-server messages: the JSON envelope and the `data` payloads of `pusher:*` events.

use std::borrow::Cow;

use serde::Deserialize;
use sonic_rs::{JsonValueTrait, LazyValue};

use super::json;

/// Why a client message could not be understood; answered with `pusher:error`, connection kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not JSON, or not an object with a string `event`.
    #[error("Invalid message format: {0}")]
    Malformed(String),
    /// The event's `data` is missing a field or has the wrong type.
    #[error("Invalid data for {event}: {detail}")]
    BadData {
        /// The event whose data was wrong.
        event: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// A message from a client, borrowing from the received text.
#[derive(Debug)]
pub struct ClientMessage<'a> {
    /// The event name.
    pub event: Cow<'a, str>,
    /// The channel, for channel events.
    pub channel: Option<Cow<'a, str>>,
    /// The raw JSON text of `data`, forwarded unchanged for client events.
    pub data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<LazyValue<'a>>,
}

/// Parses the envelope of a client message.
pub fn parse(text: &str) -> Result<ClientMessage<'_>, MessageError> {
    if !is_object(text) {
        return Err(MessageError::Malformed("expected a JSON object".into()));
    }
    let env: Envelope<'_> =
        json::from_str(text).map_err(|e| MessageError::Malformed(e.to_string()))?;
    Ok(ClientMessage {
        event: env.event,
        channel: env.channel,
        data: env.data.map(|d| d.as_raw_cow()),
    })
}

/// Serde would also read a struct from a JSON array; the protocol only has objects.
fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// `data` as an object's JSON text: pusher-js sends an object, other clients a JSON-encoded
/// string holding one. Both are accepted.
fn object_text<'a>(raw: &'a str, event: &'static str) -> Result<Cow<'a, str>, MessageError> {
    let t = raw.trim_start();
    if t.starts_with('"') {
        let inner: String = json::from_str(t).map_err(|e| MessageError::BadData {
            event,
            detail: e.to_string(),
        })?;
        Ok(Cow::Owned(inner))
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// A string field that may also have been sent as a JSON value; returns the exact text to sign.
fn string_or_raw(v: &LazyValue<'_>) -> String {
    if v.is_str() {
        v.as_str().map(str::to_owned).unwrap_or_default()
    } else {
        v.as_raw_str().to_owned()
    }
}

/// `pusher:subscribe` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The channel to join.
    pub channel: String,
    /// `<key>:<signature>` for private and presence channels.
    pub auth: Option<String>,
    /// The exact signed `channel_data` string, for presence channels.
    pub channel_data: Option<String>,
}

#[derive(Deserialize)]
struct SubscribeRaw<'a> {
    #[serde(borrow)]
    channel: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    auth: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    channel_data: Option<LazyValue<'a>>,
}

const SUBSCRIBE: &str = "pusher:subscribe";

/// Reads `pusher:subscribe` / `pusher:unsubscribe` data.
pub fn subscribe(data: Option<&str>) -> Result<Subscribe, MessageError> {
    let bad = |detail: &str| MessageError::BadData {
        event: SUBSCRIBE,
        detail: detail.to_string(),
    };
    let raw = data.ok_or_else(|| bad("missing data"))?;
    let text = object_text(raw, SUBSCRIBE)?;
    if !is_object(&text) {
        return Err(bad("data must be an object"));
    }
    let s: SubscribeRaw<'_> = json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let channel = s
        .channel
        .as_ref()
        .and_then(|c| c.as_str().map(str::to_owned))
        .ok_or_else(|| bad("channel must be a string"))?;
    let auth = match &s.auth {
        Some(a) if a.is_str() => a.as_str().map(str::to_owned),
        Some(a) if a.is_null() => None,
        Some(_) => return Err(bad("auth must be a string")),
        None => None,
    };
    let channel_data = match &s.channel_data {
        Some(d) if d.is_null() => None,
        Some(d) => Some(string_or_raw(d)),
        None => None,
    };
    Ok(Subscribe {
        channel,
        auth,
        channel_data,
    })
}

/// `pusher:signin` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signin {
    /// `<key>:<signature>` over `socket_id::user::user_data`.
    pub auth: String,
    /// The exact signed user data string.
    pub user_data: String,
}

#[derive(Deserialize)]
struct SigninRaw<'a> {
    #[serde(borrow, default)]
    auth: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    user_data: Option<LazyValue<'a>>,
}

const SIGNIN: &str = "pusher:signin";

/// Reads `pusher:signin` data.
pub fn signin(data: Option<&str>) -> Result<Signin, MessageError> {
    let bad = |detail: &str| MessageError::BadData {
        event: SIGNIN,
        detail: detail.to_string(),
    };
    let raw = data.ok_or_else(|| bad("missing data"))?;
    let text = object_text(raw, SIGNIN)?;
    if !is_object(&text) {
        return Err(bad("data must be an object"));
    }
    let s: SigninRaw<'_> = json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let auth = s
        .auth
        .as_ref()
        .and_then(|a| a.as_str().map(str::to_owned))
        .ok_or_else(|| bad("auth must be a string"))?;
    let user_data = s
        .user_data
        .as_ref()
        .map(string_or_raw)
        .ok_or_else(|| bad("user_data must be a string"))?;
    Ok(Signin { auth, user_data })
}

/// A presence member as signed by the app: the id keeps its JSON type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The id as a string, for hash keys and comparisons.
    pub key: String,
    /// The id's JSON text (`"42"` or `42`), echoed back as sent.
    pub raw_id: String,
    /// The raw JSON text of `user_info`, if any.
    pub info: Option<String>,
}

/// Why `channel_data` or `user_data` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// Not a JSON object.
    #[error("must be a JSON object")]
    NotObject,
    /// A presence id that is missing, empty, not a string or number, or a number that is not
    /// an [`exact_integer`].
    #[error("{0} must be a non-empty string or an integer of at most 15 digits")]
    BadId(&'static str),
    /// A sign-in id that is missing, empty or not a string.
    #[error("{0} must be a non-empty string")]
    BadStringId(&'static str),
    /// A sign-in watchlist that is not an array.
    #[error("watchlist must be an array of user ids")]
    BadWatchlist,
    /// The id is longer than allowed.
    #[error("user id is longer than {0} characters")]
    IdTooLong(usize),
    /// `user_info` is bigger than allowed.
    #[error("user_info is bigger than {0} bytes")]
    InfoTooBig(usize),
    /// A sign-in id with characters a `#server-to-user-` channel name cannot hold.
    #[error("user id may only contain A-Z, a-z, 0-9 and _ - = @ , . ;")]
    BadIdChars,
    /// Nested deeper than [`json::MAX_DEPTH`].
    #[error("{0}")]
    TooDeep(json::JsonError),
}

impl From<json::JsonError> for MemberError {
    fn from(e: json::JsonError) -> Self {
        match e {
            json::JsonError::TooDeep => MemberError::TooDeep(e),
            json::JsonError::Invalid(_) => MemberError::NotObject,
        }
    }
}

#[derive(Deserialize)]
struct MemberRaw<'a> {
    #[serde(borrow, default)]
    user_id: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    id: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    user_info: Option<LazyValue<'a>>,
    #[serde(borrow, default)]
    watchlist: Option<LazyValue<'a>>,
}

/// Reads presence `channel_data` (`{"user_id":..,"user_info":..}`).
pub fn presence_member(
    channel_data: &str,
    max_id: usize,
    max_info: usize,
) -> Result<Member, MemberError> {
    if !is_object(channel_data) {
        return Err(MemberError::NotObject);
    }
    let m: MemberRaw<'_> = json::from_str(channel_data).map_err(MemberError::from)?;
    member_from(
        m.user_id.as_ref(),
        m.user_info.as_ref(),
        "user_id",
        max_id,
        max_info,
    )
}

fn member_from(
    id: Option<&LazyValue<'_>>,
    info: Option<&LazyValue<'_>>,
    field: &'static str,
    max_id: usize,
    max_info: usize,
) -> Result<Member, MemberError> {
    let id = id.ok_or(MemberError::BadId(field))?;
    let key = if id.is_str() {
        id.as_str().map(str::to_owned).unwrap_or_default()
    } else if id.is_number() && exact_integer(id.as_raw_str()) {
        id.as_raw_str().to_owned()
    } else {
        return Err(MemberError::BadId(field));
    };
    if key.is_empty() {
        return Err(MemberError::BadId(field));
    }
    if key.chars().count() > max_id {
        return Err(MemberError::IdTooLong(max_id));
    }
    let info = match info {
        Some(i) if !i.is_null() => {
            let t = i.as_raw_str();
            if t.len() > max_info {
                return Err(MemberError::InfoTooBig(max_info));
            }
            Some(t.to_owned())
        }
        _ => None,
    };
    Ok(Member {
        key,
        raw_id: id.as_raw_str().to_owned(),
        info,
    })
}

/// Whether a JSON number's text is an integer that a JavaScript client reads and writes back
/// as the same text: `0`, or an optional `-` and at most 15 digits without a leading zero (so
/// below 2^53, exact in a double). Fractions, exponents (`1e400` reads as Infinity), `-0` and
/// longer numbers are refused, since the id is also the string key of the member hash.
fn exact_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits == "0" {
        return text == "0";
    }
    (1..=15).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Signed-in user data: the member (`id`, `user_info`) and the watchlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    /// The user as a presence-style member.
    pub member: Member,
    /// User ids whose online state the client wants.
    pub watchlist: Vec<String>,
}

/// Reads sign-in `user_data` (`{"id":"..","user_info":..,"watchlist":[..]}`); `id` must be a
/// non-empty string of the documented user-id characters (the client subscribes to
/// `#server-to-user-{id}`, whose name must be valid).
pub fn user_data(text: &str, max_id: usize, max_info: usize) -> Result<UserData, MemberError> {
    if !is_object(text) {
        return Err(MemberError::NotObject);
    }
    let m: MemberRaw<'_> = json::from_str(text).map_err(MemberError::from)?;
    let id_str = m.id.as_ref().and_then(|v| v.as_str());
    if id_str.is_none_or(str::is_empty) {
        return Err(MemberError::BadStringId("id"));
    }
    let member = member_from(m.id.as_ref(), m.user_info.as_ref(), "id", max_id, max_info)?;
    if !member.key.bytes().all(super::channel::is_name_byte) {
        return Err(MemberError::BadIdChars);
    }
    let mut watchlist = Vec::new();
    if let Some(w) = &m.watchlist {
        let ids: Vec<sonic_rs::Value> =
            json::from_str(w.as_raw_str()).map_err(|_| MemberError::BadWatchlist)?;
        // Each id once, in the order given: a repeated id would double every notice.
        let mut seen = std::collections::HashSet::new();
        for v in ids {
            let id = if let Some(s) = v.as_str() {
                s.to_owned()
            } else if v.is_number() {
                v.to_string()
            } else {
                continue;
            };
            if seen.insert(id.clone()) {
                watchlist.push(id);
            }
        }
    }
    Ok(UserData { member, watchlist })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keeps_raw_data() {
        let m = parse(r#"{"event":"client-x","channel":"private-a","data":{"a":[1, 2]}}"#).unwrap();
        assert_eq!(m.event, "client-x");
        assert_eq!(m.channel.as_deref(), Some("private-a"));
        assert_eq!(m.data.as_deref(), Some(r#"{"a":[1, 2]}"#));
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"channel":"x"}"#).is_err());
        assert!(parse(r#"["event"]"#).is_err());
    }

    #[test]
    fn subscribe_data_object_or_string() {
        let obj = subscribe(Some(
            r#"{"channel":"presence-a","auth":"k:s","channel_data":"{\"user_id\":1}"}"#,
        ))
        .unwrap();
        assert_eq!(obj.channel, "presence-a");
        assert_eq!(obj.auth.as_deref(), Some("k:s"));
        assert_eq!(obj.channel_data.as_deref(), Some(r#"{"user_id":1}"#));
        let s = subscribe(Some(r#""{\"channel\":\"a\"}""#)).unwrap();
        assert_eq!(s.channel, "a");
        assert!(subscribe(Some(r#"{"channel":5}"#)).is_err());
        assert!(subscribe(None).is_err());
    }

    #[test]
    fn members_keep_id_type() {
        let m = presence_member(r#"{"user_id":10,"user_info":{"name":"A"}}"#, 128, 1024).unwrap();
        assert_eq!((m.key.as_str(), m.raw_id.as_str()), ("10", "10"));
        assert_eq!(m.info.as_deref(), Some(r#"{"name":"A"}"#));
        let s = presence_member(r#"{"user_id":"u1"}"#, 128, 1024).unwrap();
        assert_eq!(
            (s.key.as_str(), s.raw_id.as_str(), s.info),
            ("u1", "\"u1\"", None)
        );
        assert_eq!(
            presence_member(r#"{"user_id":true}"#, 128, 1024),
            Err(MemberError::BadId("user_id"))
        );
        for id in ["0", "-7", "42", "123456789012345", "-123456789012345"] {
            let m = presence_member(&format!(r#"{{"user_id":{id}}}"#), 128, 1024).unwrap();
            assert_eq!((m.key.as_str(), m.raw_id.as_str()), (id, id));
        }
        for id in [
            "1e400",
            "-1e400",
            "1E5",
            "1e0",
            "1.5",
            "10.0",
            "-0",
            "-0.0",
            "1234567890123456",
            "9007199254740993",
        ] {
            assert_eq!(
                presence_member(&format!(r#"{{"user_id":{id}}}"#), 128, 1024),
                Err(MemberError::BadId("user_id")),
                "{id}"
            );
        }
        assert_eq!(
            MemberError::BadId("user_id").to_string(),
            "user_id must be a non-empty string or an integer of at most 15 digits"
        );
        assert_eq!(
            presence_member("[]", 128, 1024),
            Err(MemberError::NotObject)
        );
        assert_eq!(
            presence_member(r#"{"user_id":"1","user_info":"xxxxxxxxxx"}"#, 128, 5),
            Err(MemberError::InfoTooBig(5))
        );
        assert_eq!(
            presence_member(r#"{"user_id":"abc"}"#, 2, 5),
            Err(MemberError::IdTooLong(2))
        );
    }

    #[test]
    fn user_data_needs_string_id() {
        let u = user_data(r#"{"id":"7","watchlist":["1",2,"1",2,"3"]}"#, 128, 1024).unwrap();
        assert_eq!(u.member.key, "7");
        assert_eq!(u.watchlist, vec!["1", "2", "3"]);
        for text in [r#"{"id":7}"#, r#"{"id":""}"#, r#"{"id":null}"#, "{}"] {
            let e = user_data(text, 128, 1024).err();
            assert_eq!(e, Some(MemberError::BadStringId("id")), "{text}");
            assert_eq!(e.unwrap().to_string(), "id must be a non-empty string");
        }
        assert_eq!(
            user_data(r#"{"id":"7","watchlist":{}}"#, 128, 1024).err(),
            Some(MemberError::BadWatchlist)
        );
        assert_eq!(
            user_data(r#"{"id":"a+b@x.com"}"#, 128, 1024).err(),
            Some(MemberError::BadIdChars)
        );
        assert!(user_data(r#"{"id":"a_b-c=d@e,f.g;h"}"#, 128, 1024).is_ok());
        assert!(user_data(r#"{"id":""}"#, 128, 1024).is_err());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(11);
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "event",
            "data",
            "channel",
            "null",
            "1",
            "-",
            "\\",
            "\\u00",
            "pusher:subscribe",
            "user_id",
            "id",
            "watchlist",
            "true",
            " ",
        ];
        for _ in 0..20_000 {
            let n = rng.usize(0..12);
            let text: String = (0..n).map(|_| pieces[rng.usize(..pieces.len())]).collect();
            let _ = parse(&text);
            let _ = subscribe(Some(&text));
            let _ = signin(Some(&text));
            let _ = presence_member(&text, 8, 16);
            let _ = user_data(&text, 8, 16);
        }
    }
}
