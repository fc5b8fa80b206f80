//! Signatures: channel and user auth from clients, and HTTP API request signing. Pure functions:
//! no IO, and the clock is passed in.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Seconds an API request's `auth_timestamp` may differ from the server clock.
pub const TIMESTAMP_WINDOW_SECS: i64 = 600;

/// Lower-case hex HMAC-SHA256 of `msg` with `secret`.
pub fn sign(secret: &str, msg: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key size");
    mac.update(msg);
    hex::encode(mac.finalize().into_bytes())
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Checks a client `auth` value of the form `<key>:<hex hmac of to_sign>`.
pub fn check_client_auth(key: &str, secret: &str, to_sign: &str, auth: &str) -> bool {
    let Some((given_key, given_sig)) = auth.split_once(':') else {
        return false;
    };
    let expected = sign(secret, to_sign.as_bytes());
    // The key comparison is not secret, but keeping both in one expression avoids a branch on it.
    constant_time_eq(given_key.as_bytes(), key.as_bytes())
        & constant_time_eq(given_sig.as_bytes(), expected.as_bytes())
}

/// The string signed for a private or presence subscription.
pub fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(d) => format!("{socket_id}:{channel}:{d}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string signed for a user sign-in.
pub fn user_string(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Lower-case hex MD5 of a body.
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Why an API request was refused; every variant maps to HTTP 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiAuthError {
    /// A required auth parameter is absent.
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    /// `auth_key` is not this app's key.
    #[error("unknown auth_key")]
    WrongKey,
    /// `auth_version` is not 1.0.
    #[error("auth_version must be 1.0")]
    Version,
    /// `auth_timestamp` is not an integer.
    #[error("auth_timestamp is not a number")]
    BadTimestamp,
    /// The timestamp is outside the accepted window.
    #[error("Timestamp expired: given timestamp {given} not within 600s of server time {now}")]
    Expired {
        /// The request's timestamp.
        given: i64,
        /// The server's clock.
        now: i64,
    },
    /// `body_md5` does not match the body.
    #[error("body_md5 does not match the request body")]
    BodyMd5,
    /// A non-empty body came without `body_md5`.
    #[error("missing query parameter body_md5 for a request with a body")]
    MissingBodyMd5,
    /// The HMAC does not match.
    #[error("Invalid signature: you should have sent HmacSHA256Hex({to_sign:?}, your_secret)")]
    Signature {
        /// The string the server signed, so a client author can see what differs.
        to_sign: String,
    },
}

/// Verifies a signed API request. `query` holds the percent-decoded parameters in any order.
pub fn verify_api_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
    now_unix: i64,
) -> Result<(), ApiAuthError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let given_key = get("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    let signature = get("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    let ts = get("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let version = get("auth_version").ok_or(ApiAuthError::Missing("auth_version"))?;
    if given_key != key {
        return Err(ApiAuthError::WrongKey);
    }
    if version != "1.0" {
        return Err(ApiAuthError::Version);
    }
    let given: i64 = ts.parse().map_err(|_| ApiAuthError::BadTimestamp)?;
    if now_unix.abs_diff(given) > TIMESTAMP_WINDOW_SECS as u64 {
        return Err(ApiAuthError::Expired {
            given,
            now: now_unix,
        });
    }
    match get("body_md5") {
        // Accepted on GET too: pusher-http-python sends the MD5 of the empty body there.
        Some(md5) if !constant_time_eq(md5.as_bytes(), md5_hex(body).as_bytes()) => {
            return Err(ApiAuthError::BodyMd5);
        }
        Some(_) => {}
        None if !body.is_empty() => return Err(ApiAuthError::MissingBodyMd5),
        None => {}
    }
    let to_sign = api_string(method, path, query);
    let expected = sign(secret, to_sign.as_bytes());
    if constant_time_eq(signature.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiAuthError::Signature { to_sign })
    }
}

/// Builds `METHOD\npath\nk=v&...` with keys lower-cased and sorted, `auth_signature` left out and
/// values unescaped.
pub fn api_string(method: &str, path: &str, query: &[(String, String)]) -> String {
    let mut params: Vec<(String, &str)> = query
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    params.sort();
    let joined: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        joined.join("&")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn documented_channel_and_user_vectors() {
        let cases = [
            (
                channel_string("1234.1234", "private-foobar", None),
                "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
            ),
            (
                channel_string(
                    "1234.1234",
                    "presence-foobar",
                    Some(r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#),
                ),
                "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
            ),
            (
                user_string("1234.1234", r#"{"id":"12345"}"#),
                "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
            ),
        ];
        for (to_sign, hex) in cases {
            assert_eq!(sign(SECRET, to_sign.as_bytes()), hex, "{to_sign}");
            assert!(check_client_auth(
                KEY,
                SECRET,
                &to_sign,
                &format!("{KEY}:{hex}")
            ));
            assert!(!check_client_auth(
                "other",
                SECRET,
                &to_sign,
                &format!("{KEY}:{hex}")
            ));
            assert!(!check_client_auth(KEY, SECRET, &to_sign, hex));
        }
    }

    fn doc_query() -> Vec<(String, String)> {
        [
            ("auth_version", "1.0"),
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            (
                "auth_signature",
                "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    const DOC_BODY: &[u8] =
        br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    #[test]
    fn documented_api_vector() {
        assert_eq!(md5_hex(DOC_BODY), "ec365a775a4cd0599faeb73354201b6f");
        assert_eq!(
            api_string("POST", "/apps/3/events", &doc_query()),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        let q = doc_query();
        let ok = verify_api_request(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &q,
            DOC_BODY,
            1353088179 + 599,
        );
        assert_eq!(ok, Ok(()));
        let late = verify_api_request(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &q,
            DOC_BODY,
            1353088179 + 601,
        );
        assert!(matches!(late, Err(ApiAuthError::Expired { .. })));
        let tampered =
            verify_api_request(KEY, SECRET, "POST", "/apps/3/events", &q, b"{}", 1353088179);
        assert_eq!(tampered, Err(ApiAuthError::BodyMd5));
        let wrong_path = verify_api_request(
            KEY,
            SECRET,
            "POST",
            "/apps/4/events",
            &q,
            DOC_BODY,
            1353088179,
        );
        assert!(matches!(wrong_path, Err(ApiAuthError::Signature { .. })));
    }

    #[test]
    fn get_with_empty_body_md5_is_accepted() {
        let mut q: Vec<(String, String)> = vec![
            ("auth_key".into(), KEY.into()),
            ("auth_timestamp".into(), "1000".into()),
            ("auth_version".into(), "1.0".into()),
            ("body_md5".into(), "d41d8cd98f00b204e9800998ecf8427e".into()),
            ("info".into(), "user_count,subscription_count".into()),
        ];
        let sig = sign(SECRET, api_string("GET", "/apps/3/channels", &q).as_bytes());
        q.push(("auth_signature".into(), sig));
        assert_eq!(
            verify_api_request(KEY, SECRET, "GET", "/apps/3/channels", &q, b"", 1000),
            Ok(())
        );
    }

    #[test]
    fn extreme_timestamps_are_expired_not_overflowed() {
        for ts in [i64::MIN, i64::MAX] {
            let q: Vec<(String, String)> = vec![
                ("auth_key".into(), KEY.into()),
                ("auth_timestamp".into(), ts.to_string()),
                ("auth_version".into(), "1.0".into()),
                ("auth_signature".into(), "00".into()),
            ];
            for now in [0, 1_700_000_000, -5] {
                let r = verify_api_request(KEY, SECRET, "GET", "/apps/3/channels", &q, b"", now);
                assert!(
                    matches!(r, Err(ApiAuthError::Expired { .. })),
                    "{ts} at {now}: {r:?}"
                );
            }
        }
    }
}
