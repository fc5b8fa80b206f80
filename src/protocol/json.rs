//! The one door through which JSON from outside is parsed: a non-recursive nesting-depth check
//! runs before sonic-rs sees the text.
//!
//! sonic-rs skips lazily parsed values (`LazyValue`, unknown fields) with code that recurses
//! once per nesting level, and so does deserialising into `Value`. A 38 KB message of nested
//! brackets was enough to overflow a shard's stack, and a stack overflow aborts the whole
//! process. Every parse of a client message, of its double-encoded `data`, of `channel_data`,
//! `user_data` and of HTTP API bodies therefore goes through [`from_str`] / [`from_slice`],
//! which refuse anything nested deeper than [`MAX_DEPTH`] before any recursive code runs.
//! A unit test below fails if another module calls sonic-rs's parsers directly.

use serde::Deserialize;

/// Deepest nesting of arrays and objects accepted in any JSON received from outside.
///
/// Real Pusher payloads nest a handful of levels (an event's `data` object, a member's
/// `user_info`); 64 is far above that and far below what a 2 MiB shard stack survives.
pub const MAX_DEPTH: usize = 64;

/// Why received JSON was not parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Arrays and objects nest deeper than [`MAX_DEPTH`] (outside strings).
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Not valid JSON, or not of the expected shape; the parser's message, shortened.
    #[error("{0}")]
    Invalid(String),
}

/// Parses `text` into `T` after checking its nesting depth.
pub fn from_str<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, JsonError> {
    check_depth(text.as_bytes(), MAX_DEPTH)?;
    sonic_rs::from_str(text).map_err(|e| JsonError::Invalid(shorten(&e.to_string())))
}

/// Parses `bytes` into `T` after checking its nesting depth and that it is UTF-8.
///
/// JSON is UTF-8 (RFC 8259), and sonic-rs must not see anything else: it copies a lazily
/// parsed value's text out of the bytes without checking it and panics on invalid UTF-8 there
/// (`{"data":{"\xeb":1}}`), which would take the process down.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, JsonError> {
    check_depth(bytes, MAX_DEPTH)?;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| JsonError::Invalid(shorten(&format!("not UTF-8: {e}"))))?;
    sonic_rs::from_str(text).map_err(|e| JsonError::Invalid(shorten(&e.to_string())))
}

/// Parser messages quote the input around the error; keep error frames and bodies small.
fn shorten(s: &str) -> String {
    s.chars().take(120).collect()
}

/// Fails when arrays and objects in `bytes` nest deeper than `max`, counting only brackets
/// outside strings. Iterative and linear, so it is safe on any input; it does not validate the
/// JSON (the parser does that afterwards), so unbalanced or invalid text only has to be bounded,
/// not correct.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), JsonError> {
    // Fast path: text with at most `max` opening brackets in total cannot nest deeper than
    // `max`, whatever the strings hold. This count vectorises; almost every message stops here.
    let opening = bytes.iter().filter(|&&b| b == b'[' || b == b'{').count();
    if opening <= max {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(JsonError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonic_rs::JsonValueTrait;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn depth_at_the_limit_passes_and_one_more_fails() {
        assert_eq!(check_depth(nested(64).as_bytes(), 64), Ok(()));
        assert_eq!(
            check_depth(nested(65).as_bytes(), 64),
            Err(JsonError::TooDeep)
        );
        let objects = format!("{}{}", r#"{"a":"#.repeat(65), "}".repeat(65));
        assert_eq!(check_depth(objects.as_bytes(), 64), Err(JsonError::TooDeep));
        let mixed = format!("{}{}", r#"[{"a":"#.repeat(33), "}]".repeat(33));
        assert_eq!(check_depth(mixed.as_bytes(), 64), Err(JsonError::TooDeep));
    }

    #[test]
    fn siblings_do_not_add_up() {
        // 1000 brackets in all, but never more than two open at once.
        let wide = format!("[{}[]]", "[],".repeat(999));
        assert_eq!(check_depth(wide.as_bytes(), 2), Ok(()));
        assert_eq!(check_depth(wide.as_bytes(), 1), Err(JsonError::TooDeep));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let s = format!(r#"{{"data":"{}"}}"#, "[{".repeat(500));
        assert_eq!(check_depth(s.as_bytes(), 1), Ok(()));
        // An escaped quote does not end the string...
        let esc = format!(r#"["\"{}"]"#, "[".repeat(100));
        assert_eq!(check_depth(esc.as_bytes(), 1), Ok(()));
        // ...but an escaped backslash before a quote does.
        let ended = format!(r#"["\\"{}"#, "[".repeat(100));
        assert_eq!(check_depth(ended.as_bytes(), 64), Err(JsonError::TooDeep));
        // A double-encoded payload is a plain string at this level: its own parse checks it.
        let double = format!(r#"{{"data":"{}{}"}}"#, "[".repeat(70), "]".repeat(70));
        assert_eq!(check_depth(double.as_bytes(), 64), Ok(()));
        let inner: String =
            from_str(&format!(r#""{}{}""#, "[".repeat(70), "]".repeat(70))).expect("a string");
        assert_eq!(from_str::<sonic_rs::Value>(&inner), Err(JsonError::TooDeep));
    }

    #[test]
    fn unbalanced_and_unclosed_input_is_bounded() {
        assert_eq!(
            check_depth("[".repeat(100_000).as_bytes(), 64),
            Err(JsonError::TooDeep)
        );
        // More closers than openers never underflows.
        assert_eq!(check_depth("]]]]}}}}[[".as_bytes(), 2), Ok(()));
        // An unterminated string hides what follows; the parser then rejects the text.
        let open = format!(r#"["{}"#, "[".repeat(1000));
        assert_eq!(check_depth(open.as_bytes(), 64), Ok(()));
        assert!(matches!(
            from_str::<sonic_rs::Value>(&open),
            Err(JsonError::Invalid(_))
        ));
    }

    #[test]
    fn deep_input_is_refused_before_the_parser_recurses() {
        // Without the check, each of these overflows the test thread's stack.
        let deep = format!(r#"{{"event":"pusher:ping","data":{}}}"#, nested(200_000));
        #[derive(Deserialize)]
        struct Env<'a> {
            #[serde(borrow)]
            #[allow(dead_code)]
            data: Option<sonic_rs::LazyValue<'a>>,
        }
        assert!(matches!(
            from_str::<Env<'_>>(&deep),
            Err(JsonError::TooDeep)
        ));
        assert!(matches!(
            from_slice::<sonic_rs::Value>(deep.as_bytes()),
            Err(JsonError::TooDeep)
        ));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_not_a_panic() {
        // sonic-rs reads a LazyValue's text from the bytes unchecked and panics on invalid
        // UTF-8 there (found by fuzz/api_request, through an HTTP API body).
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            #[allow(dead_code)]
            data: Option<sonic_rs::LazyValue<'a>>,
        }
        for bytes in [
            &b"{\"data\":{\"\xeb\":[1]}}"[..],
            b"{\"data\":\"\xff\"}",
            b"{\"data\":[\"\xe2\x82\"]}",
        ] {
            assert!(
                matches!(from_slice::<Body<'_>>(bytes), Err(JsonError::Invalid(_))),
                "{bytes:?}"
            );
        }
        assert!(from_slice::<Body<'_>>("{\"data\":{\"\u{e9}\":[1]}}".as_bytes()).is_ok());
    }

    #[test]
    fn the_limit_fits_a_shard_stack() {
        // Parsing at the limit recurses MAX_DEPTH times; it must fit the stack a shard thread
        // gets (8 MiB), even unoptimised.
        let worker = std::thread::Builder::new().stack_size(8 << 20).spawn(|| {
            let text = format!(
                r#"{{"event":"e","x":{},"data":{{}}}}"#,
                nested(MAX_DEPTH - 1)
            );
            #[derive(Deserialize)]
            struct Env<'a> {
                #[serde(borrow)]
                #[allow(dead_code)]
                data: Option<sonic_rs::LazyValue<'a>>,
            }
            assert!(from_str::<Env<'_>>(&text).is_ok());
            let v: sonic_rs::Value = from_str(&nested(MAX_DEPTH)).expect("at the limit");
            assert!(v.is_array());
        });
        worker
            .expect("spawn")
            .join()
            .expect("no overflow at the limit");
    }

    #[test]
    fn random_bytes_match_a_reference_count() {
        // The reference: the same rules written as plainly as possible, on random text made of
        // the characters that matter.
        fn reference(b: &[u8]) -> usize {
            let (mut depth, mut most, mut i, mut in_str) = (0usize, 0usize, 0, false);
            while i < b.len() {
                match (in_str, b[i]) {
                    (true, b'\\') => i += 1,
                    (true, b'"') | (false, b'"') => in_str = !in_str,
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
        let alphabet = b"[]{}\"\\a,:";
        let mut rng = fastrand::Rng::with_seed(8);
        for _ in 0..20_000 {
            let n = rng.usize(0..80);
            let text: Vec<u8> = (0..n)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let most = reference(&text);
            for max in [0, 1, 3, 8] {
                assert_eq!(
                    check_depth(&text, max).is_ok(),
                    most <= max,
                    "{:?} max {max}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }

    #[test]
    fn only_this_module_calls_the_json_parser() {
        // Every JSON parse of outside input must pass the depth check: no other file may call
        // sonic-rs's deserialisers directly.
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut stack = vec![std::path::PathBuf::from(src)];
        let mut offenders = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("protocol/json.rs")
                {
                    let text = std::fs::read_to_string(&path).expect("readable source");
                    for needle in [
                        "sonic_rs::from_",
                        "sonic_rs::serde::from_",
                        "sonic_rs::get",
                        "sonic_rs::to_array_iter",
                        "sonic_rs::to_object_iter",
                    ] {
                        if text.contains(needle) {
                            offenders.push(format!("{}: {needle}", path.display()));
                        }
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "direct JSON parses: {offenders:?}");
    }
}
