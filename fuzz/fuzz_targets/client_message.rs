//! Client messages at every nesting level: the envelope (`protocol::message::parse`), the data of
//! `pusher:subscribe` and `pusher:signin`, presence `channel_data` and sign-in `user_data`, and
//! the depth check (`protocol::json::check_depth`) in front of all of them.
//!
//! Input: the text of a WebSocket message (invalid UTF-8 is replaced, as the shard refuses it
//! before parsing anyway). Each level is parsed from what the level above produced, and every
//! parser also gets the raw text itself.
//!
//! Invariants:
//! - nothing panics and the stack never overflows, however deep the nesting;
//! - `check_depth` agrees with a plain reference that tracks the deepest nesting outside
//!   strings; text nested deeper than `MAX_DEPTH` is refused by every parser;
//! - a parsed envelope's `data` is raw JSON text taken from the message;
//! - members: non-empty key within the id limit, `user_info` within its limit, the raw id is the
//!   key (a number) or the key as a JSON string; sign-in ids use only user-id characters and a
//!   watchlist has no repeats.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use ringpush::fuzzing::{
    check_depth, is_name_byte, parse_message, presence_member, signin, subscribe, user_data,
    JsonError, Member, MemberError, MAX_DEPTH,
};

/// The deepest nesting of `[`/`{` outside strings, counted as plainly as possible.
fn reference_depth(b: &[u8]) -> usize {
    let (mut depth, mut most, mut in_str, mut i) = (0usize, 0usize, false, 0);
    while i < b.len() {
        match (in_str, b[i]) {
            (true, b'\\') => i += 1,
            (_, b'"') => in_str = !in_str,
            (false, b'[' | b'{') => {
                depth += 1;
                most = most.max(depth);
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    most
}

fn too_deep(text: &str) -> bool {
    let deep = reference_depth(text.as_bytes()) > MAX_DEPTH;
    assert_eq!(
        check_depth(text.as_bytes(), MAX_DEPTH) == Err(JsonError::TooDeep),
        deep
    );
    deep
}

fn check_member(m: &Member, max_id: usize, max_info: usize) {
    assert!(!m.key.is_empty());
    assert!(m.key.chars().count() <= max_id);
    if let Some(info) = &m.info {
        assert!(info.len() <= max_info);
    }
    if m.raw_id.starts_with('"') {
        let unquoted: String = serde_json::from_str(&m.raw_id).expect("a JSON string id");
        assert_eq!(unquoted, m.key);
    } else {
        assert_eq!(m.raw_id, m.key, "a number id is its own key");
        let digits = m.key.strip_prefix('-').unwrap_or(&m.key);
        assert!(digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()));
    }
}

fn member_level(text: &str) {
    let deep = too_deep(text);
    for (max_id, max_info) in [(128, 1024), (3, 8)] {
        match presence_member(text, max_id, max_info) {
            Ok(m) => {
                assert!(!deep, "deep channel_data accepted");
                check_member(&m, max_id, max_info);
            }
            Err(MemberError::TooDeep(_)) => assert!(deep),
            Err(_) => {}
        }
        match user_data(text, max_id, max_info) {
            Ok(u) => {
                assert!(!deep, "deep user_data accepted");
                check_member(&u.member, max_id, max_info);
                assert!(u.member.raw_id.starts_with('"'), "sign-in id not a string");
                assert!(u.member.key.bytes().all(is_name_byte));
                let unique: HashSet<&String> = u.watchlist.iter().collect();
                assert_eq!(unique.len(), u.watchlist.len(), "repeated watchlist ids");
            }
            Err(MemberError::TooDeep(_)) => assert!(deep),
            Err(_) => {}
        }
    }
}

fn data_level(data: Option<&str>) {
    if let Some(d) = data {
        too_deep(d);
    }
    if let Ok(s) = subscribe(data) {
        assert!(!data.is_some_and(too_deep), "deep subscribe data accepted");
        if let Some(cd) = &s.channel_data {
            member_level(cd);
        }
    }
    if let Ok(s) = signin(data) {
        assert!(!data.is_some_and(too_deep), "deep signin data accepted");
        member_level(&s.user_data);
    }
}

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let deep = too_deep(&text);
    for max in [0, 1, 2, 7] {
        assert_eq!(
            check_depth(text.as_bytes(), max).is_ok(),
            reference_depth(text.as_bytes()) <= max
        );
    }
    if let Ok(m) = parse_message(&text) {
        assert!(!deep, "deep envelope accepted");
        if let Some(std::borrow::Cow::Borrowed(d)) = &m.data {
            // Raw data is the field's JSON text, taken from the message as it is.
            assert!(text.contains(d), "data {d:?} is not from the message");
        }
        data_level(m.data.as_deref());
    }
    // Every parser also sees the raw text, as a client can put anything anywhere.
    data_level(Some(&text));
    member_level(&text);
});
