//! The configuration loader (`config::Config::load` past reading the file): TOML text, then
//! `RINGPUSH_*` environment overrides, then flags, deserialised into `Config` and validated.
//!
//! Input: TOML text, optionally followed by a NUL byte and environment overrides, one
//! `SECTION__KEY=value` a line (the target adds the `RINGPUSH_` prefix; the loader only reads
//! variables holding `__`). The last override line, if any, doubles as an `Origin` header.
//!
//! Invariants:
//! - nothing panics, however odd the text or the overrides, and memory stays bounded;
//! - what the loader accepts passes `validate` again, and holds what `validate` promises: at
//!   least one app, ids and keys unique and non-empty, keys without `:` or `/`, durations at
//!   most a year, an IP host, a body limit within its bound, positive rates;
//! - the overrides' order does not matter;
//! - an accepted app's `origin_allowed` answers any `Origin` header without panicking, and
//!   allows everything when the list is empty or holds `*`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpush::config::{Config, Overrides, MAX_REQUEST_BODY_LIMIT, MAX_SECONDS};

fn check(cfg: &Config, origin: &str) {
    cfg.validate().expect("an accepted config validates again");
    assert!(!cfg.apps.is_empty());
    let s = &cfg.server;
    for v in [
        s.activity_timeout,
        s.pong_timeout,
        s.handshake_timeout,
        s.shutdown_grace,
        s.webhook_timeout,
    ] {
        assert!(v <= MAX_SECONDS);
    }
    assert!(s.activity_timeout > 0 && s.pong_timeout > 0 && s.handshake_timeout > 0);
    assert!(s.max_request_body <= MAX_REQUEST_BODY_LIMIT);
    assert!(s.max_messages_per_second > 0 && s.max_message_burst > 0);
    assert!(s.host.parse::<std::net::IpAddr>().is_ok());
    assert!(cfg.shard_count() >= 1);
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for a in &cfg.apps {
        assert!(!a.id.is_empty() && !a.key.is_empty() && !a.secret.is_empty());
        assert!(!a.key.contains(':') && !a.key.contains('/'));
        assert!(ids.insert(&a.id) && keys.insert(&a.key), "duplicate app");
        assert!(a.client_event_rate > 0 && a.cache_ttl > 0);
        for v in [
            a.cache_ttl,
            a.authorized_connections_timeout,
            a.webhook_delay,
            a.webhook_retry_window,
            a.webhook_batch_ms / 1000,
        ] {
            assert!(v <= MAX_SECONDS);
        }
        let allowed = a.origin_allowed(Some(origin));
        if a.allowed_origins.is_empty() || a.allowed_origins.iter().any(|o| o == "*") {
            assert!(allowed);
        }
        assert!(a.origin_allowed(None));
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, env_part) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env_part = String::from_utf8_lossy(env_part);
    let env: Vec<(String, String)> = env_part
        .lines()
        .take(8)
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.contains("__") && !k.contains('\0'))
        .map(|(k, v)| (format!("RINGPUSH_{k}"), v.to_string()))
        .collect();
    let origin = env_part.lines().last().unwrap_or("https://app.example.com");
    // The loader's own first step on the file's text.
    let Ok(value) = toml::from_str::<toml::Value>(text) else {
        return;
    };
    let flags = Overrides::default();
    let first = Config::resolve(value.clone(), env.clone(), &flags);
    match &first {
        Ok(cfg) => check(cfg, origin),
        Err(e) => assert!(!format!("{e:#}").is_empty()),
    }
    let mut reversed = env.clone();
    reversed.reverse();
    let second = Config::resolve(value.clone(), reversed, &flags);
    assert_eq!(
        first.is_ok(),
        second.is_ok(),
        "the overrides' order mattered"
    );
    // The command-line flags replace what the file says.
    let flags = Overrides {
        host: Some("::1".into()),
        port: Some(0),
        workers: Some(2),
    };
    if let Ok(cfg) = Config::resolve(value, env, &flags) {
        assert_eq!(
            (
                cfg.server.host.as_str(),
                cfg.server.port,
                cfg.server.workers
            ),
            ("::1", 0, 2)
        );
        check(&cfg, origin);
    }
});
