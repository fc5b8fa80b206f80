//! Signing: HMAC-SHA256 and MD5 hex digests, and the Pusher HTTP API request signature with
//! knobs ([`SignOpts`]) for tests that need a wrong or unusual one.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use super::server::App;

/// Hex HMAC-SHA256.
pub fn hmac_hex(secret: &str, msg: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Hex MD5.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// Knobs for request signing in negative tests.
#[derive(Clone, Debug, Default)]
pub struct SignOpts {
    /// Added to the current Unix time.
    pub ts_offset: i64,
    /// Overrides body_md5 (sent even on GET; an empty string leaves it out).
    pub body_md5: Option<String>,
    /// Sends md5("") as body_md5 on requests with an empty body (pusher-http-python).
    pub md5_on_empty: bool,
    /// Flips one character of the signature.
    pub corrupt_signature: bool,
    /// Uses this auth_key instead of the app key.
    pub key: Option<String>,
    /// Leaves commas and slashes unescaped in the query string (pusher-http-node style).
    pub raw_query: bool,
}

/// Percent-encodes a query component; with `raw`, `,`, `/`, `:` and `@` stay as they are.
fn pct(s: &str, raw: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (raw && matches!(b, b',' | b'/' | b':' | b'@'));
        if keep {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// The request target (path and query) of an API request signed for `app`: auth_key,
/// auth_timestamp, auth_version, body_md5 (for a body) and auth_signature over
/// `METHOD\npath\nsorted query`, all adjusted by `opts`.
pub fn signed_target(
    app: &App,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &[u8],
    opts: &SignOpts,
) -> String {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + opts.ts_offset;
    let mut params: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    params.push((
        "auth_key".into(),
        opts.key.clone().unwrap_or_else(|| app.key.clone()),
    ));
    params.push(("auth_timestamp".into(), ts.to_string()));
    params.push(("auth_version".into(), "1.0".into()));
    if let Some(m) = &opts.body_md5 {
        if !m.is_empty() {
            params.push(("body_md5".into(), m.clone()));
        }
    } else if !body.is_empty() || opts.md5_on_empty {
        params.push(("body_md5".into(), md5_hex(body)));
    }
    params.sort();
    let qs = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let to_sign = format!("{}\n{}\n{}", method.to_ascii_uppercase(), path, qs);
    let mut sig = app.sign(&to_sign);
    if opts.corrupt_signature {
        let first = if sig.starts_with('0') { "1" } else { "0" };
        sig.replace_range(0..1, first);
    }
    params.push(("auth_signature".into(), sig));
    let enc = params
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k, opts.raw_query), pct(v, opts.raw_query)))
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{enc}")
}
