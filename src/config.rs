//! Configuration: a TOML file, `RINGPUSH_*` environment overrides and command-line flags, validated
//! once at start-up with messages that name the offending key.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The whole configuration, as read from the file after overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// The applications this server serves; at least one.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Running as one node of a cluster (`[cluster]`); absent means a single node.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// How nodes share state (`[cluster]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `local` (one node, no broker) or `redis`.
    pub adapter: Adapter,
    /// The broker, `redis://` or `rediss://`, user and password in the URL.
    pub url: String,
    /// Namespaces the broker channel, so clusters can share one Redis.
    pub prefix: String,
    /// Seconds of silence after which a node's state is dropped.
    pub node_timeout: u64,
}

/// The cluster adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Adapter {
    /// A single node.
    Local,
    /// Nodes sharing a Redis server.
    Redis,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            adapter: Adapter::Local,
            url: "redis://127.0.0.1:6379".into(),
            prefix: "ringpush".into(),
            node_timeout: 10,
        }
    }
}

/// Process-wide settings (`[server]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on; 0 picks a free one (printed at start-up).
    pub port: u16,
    /// A separate plain listener for `/metrics`, `/up` and `/ready` (0: none; `/metrics` is
    /// then served on the main port, as are `/up` and `/ready` always).
    pub metrics_port: u16,
    /// Address of the metrics listener.
    pub metrics_host: String,
    /// Number of shards; 0 means one per core.
    pub workers: usize,
    /// Seconds of client silence before the server pings; also sent in `connection_established`.
    pub activity_timeout: u64,
    /// Seconds to wait for any frame after a server ping before closing with 4201.
    pub pong_timeout: u64,
    /// Seconds a new TCP connection may take to finish its HTTP request or upgrade; also the idle
    /// limit of a keep-alive HTTP connection and the longest a response write may wait for the
    /// client to read.
    pub handshake_timeout: u64,
    /// Seconds given to clients to go away on SIGTERM before the process exits.
    pub shutdown_grace: u64,
    /// Largest WebSocket message accepted from a client, in bytes (else close 1009).
    pub max_message_size: usize,
    /// Bytes queued towards one connection before it counts as a slow consumer (closed with
    /// 4100), each frame counted with what its queue entry holds besides its bytes.
    pub max_outbound_bytes: usize,
    /// Largest HTTP request body accepted, in bytes (else 413).
    pub max_request_body: usize,
    /// Bytes of request bodies one shard may be waiting for at once, each counted at its
    /// announced Content-Length from when its head is read until it was handled (a request
    /// that does not fit gets 503 and is closed).
    pub max_pending_body_bytes: usize,
    /// Longest channel name accepted, in characters.
    pub max_channel_name_length: usize,
    /// Messages waiting in one shard's bus inbox before publishes to it are dropped and counted.
    pub bus_capacity: usize,
    /// Messages per second one connection may send, sustained (token bucket); WebSocket pings
    /// and pongs count as messages.
    pub max_messages_per_second: u32,
    /// Messages one connection may send in a burst above the sustained rate.
    pub max_message_burst: u32,
    /// Webhook events waiting for the side-car (queued, delayed, batched or being retried)
    /// before new ones are dropped and counted.
    pub webhook_queue: usize,
    /// Webhook requests in flight at once.
    pub webhook_concurrency: usize,
    /// Seconds one webhook request may take before it counts as failed.
    pub webhook_timeout: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 6001,
            metrics_port: 0,
            metrics_host: "127.0.0.1".into(),
            workers: 0,
            activity_timeout: 120,
            pong_timeout: 30,
            handshake_timeout: 10,
            shutdown_grace: 5,
            max_message_size: 64 * 1024,
            max_outbound_bytes: 4 * 1024 * 1024,
            max_request_body: 1024 * 1024,
            max_pending_body_bytes: 32 * 1024 * 1024,
            max_channel_name_length: 200,
            bus_capacity: 1 << 20,
            max_messages_per_second: 100,
            max_message_burst: 1000,
            webhook_queue: 100_000,
            webhook_concurrency: 64,
            webhook_timeout: 10,
        }
    }
}

/// One application (`[[apps]]`): credentials, switches and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// The app id used in HTTP API paths.
    pub id: String,
    /// The public key clients connect with.
    pub key: String,
    /// The secret that signs auth and API requests. Never logged.
    pub secret: String,
    /// A disabled app refuses connections (4003) and API calls (403).
    pub enabled: bool,
    /// Connections allowed at once across all shards; 0 = unlimited (else 4004).
    pub max_connections: usize,
    /// Whether `client-` events are relayed.
    pub client_events: bool,
    /// Client events per connection per second (else `pusher:error` 4301).
    pub client_event_rate: u32,
    /// Members allowed in one presence channel.
    pub max_presence_members: usize,
    /// Bytes allowed in a presence member's `user_info` JSON.
    pub max_presence_user_info: usize,
    /// Longest user id accepted, in characters.
    pub max_user_id_length: usize,
    /// Largest event `data`, in bytes (HTTP 413; client events 4301).
    pub max_event_data: usize,
    /// Whether `pusher_internal:subscription_count` events are sent.
    pub subscription_count: bool,
    /// Whether watchlist online/offline events are sent.
    pub watchlist_events: bool,
    /// Seconds a cache channel keeps its last event.
    pub cache_ttl: u64,
    /// Seconds a connection may stay without signing in or joining a private channel; 0 = off.
    pub authorized_connections_timeout: u64,
    /// Whether webhook events are collected into batches.
    pub batch_webhooks: bool,
    /// Seconds `channel_vacated` / `member_removed` wait, cancelled by a quick return.
    pub webhook_delay: u64,
    /// Seconds a failing webhook is retried (exponential backoff with jitter) before it is
    /// dropped and counted.
    pub webhook_retry_window: u64,
    /// Milliseconds events are collected into one request when `batch_webhooks` is on.
    pub webhook_batch_ms: u64,
    /// Browser origins allowed to connect (`https://app.example.com`, `*.example.com`); empty
    /// allows any. Others are refused with 4009 after the upgrade.
    pub allowed_origins: Vec<String>,
    /// Webhook targets.
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            enabled: true,
            max_connections: 0,
            client_events: true,
            client_event_rate: 10,
            max_presence_members: 100,
            max_presence_user_info: 1024,
            max_user_id_length: 128,
            max_event_data: 10 * 1024,
            subscription_count: false,
            watchlist_events: false,
            cache_ttl: 1800,
            authorized_connections_timeout: 0,
            batch_webhooks: false,
            webhook_delay: 3,
            webhook_retry_window: 300,
            webhook_batch_ms: 250,
            allowed_origins: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

/// One webhook target (`[[apps.webhooks]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` URL the events are POSTed to.
    pub url: String,
    /// Event names to send; empty means all.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Only events of channels matching this filter.
    #[serde(default)]
    pub filter: WebhookFilter,
    /// Extra headers sent with each request.
    #[serde(default)]
    pub headers: HashMap<String, String>,
}

/// Channel-name filter of a webhook.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFilter {
    /// The channel name must start with this.
    #[serde(default)]
    pub prefix: String,
    /// The channel name must end with this.
    #[serde(default)]
    pub suffix: String,
}

/// Command-line overrides applied after the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--host`
    pub host: Option<String>,
    /// `--port`
    pub port: Option<u16>,
    /// `--workers`
    pub workers: Option<usize>,
}

impl AppConfig {
    /// Whether a connection with this `Origin` header may connect. Entries match the whole
    /// origin (`https://app.example.com`), or its host with `*.` for subdomains
    /// (`*.example.com`); `*` allows any. No entries allow any, as does an absent header
    /// (non-browser clients send none).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.allowed_origins.is_empty() {
            return true;
        }
        let host = origin.split_once("://").map_or(origin, |(_, h)| h);
        let host = host.split(':').next().unwrap_or(host);
        self.allowed_origins.iter().any(|a| {
            a == "*"
                || a.eq_ignore_ascii_case(origin)
                || a.eq_ignore_ascii_case(host)
                || a.strip_prefix("*.").is_some_and(|suffix| {
                    // Compared as bytes: the header is client input and may hold multi-byte
                    // characters, where a str slice at a byte offset would panic.
                    let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
                    host.len() > suffix.len() + 1
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                        && host[host.len() - suffix.len() - 1] == b'.'
                })
        })
    }
}

/// Prefix of environment variables that override configuration keys.
const ENV_PREFIX: &str = "RINGPUSH_";

impl Config {
    /// The development default: one app `app-id` / `app-key` / `app-secret` on 127.0.0.1:6001.
    pub fn development() -> Config {
        Config {
            server: ServerConfig::default(),
            apps: vec![AppConfig {
                id: "app-id".into(),
                key: "app-key".into(),
                secret: "app-secret".into(),
                ..AppConfig::default()
            }],
            cluster: ClusterConfig::default(),
        }
    }

    /// Loads the file (or the development default when `path` is None), applies environment
    /// overrides (`RINGPUSH_SERVER__PORT=7000`, `RINGPUSH_APPS__0__SECRET=...`) and flags, then
    /// validates.
    pub fn load(path: Option<&Path>, flags: &Overrides) -> Result<Config> {
        let value: toml::Value = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => development_value(),
        };
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        Config::resolve(value, env, flags)
    }

    /// The part of [`Config::load`] after the file is read: applies the environment overrides
    /// `env` (variables named `RINGPUSH_...__...`, in any order; others are ignored) and the
    /// flags to the parsed TOML, then validates.
    #[doc(hidden)]
    pub fn resolve(
        mut value: toml::Value,
        mut env: Vec<(String, String)>,
        flags: &Overrides,
    ) -> Result<Config> {
        env.sort();
        for (k, v) in env {
            let Some(path) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            apply_env(&mut value, path, &v).with_context(|| format!("environment variable {k}"))?;
        }
        let mut cfg: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("invalid configuration: {e}"))?;
        if let Some(h) = &flags.host {
            cfg.server.host = h.clone();
        }
        if let Some(p) = flags.port {
            cfg.server.port = p;
        }
        if let Some(w) = flags.workers {
            cfg.server.workers = w;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that the types alone do not constrain.
    pub fn validate(&self) -> Result<()> {
        let s = &self.server;
        if s.activity_timeout == 0 {
            bail!("server.activity_timeout must be greater than 0 (pusher-js refuses 0)");
        }
        if s.pong_timeout == 0 {
            bail!("server.pong_timeout must be greater than 0");
        }
        if s.handshake_timeout == 0 {
            bail!("server.handshake_timeout must be greater than 0");
        }
        if s.max_message_size < 1024 {
            bail!("server.max_message_size must be at least 1024 bytes");
        }
        if s.max_outbound_bytes < 64 * 1024 {
            bail!("server.max_outbound_bytes must be at least 65536 bytes");
        }
        if s.max_channel_name_length == 0 || s.max_channel_name_length > 1024 {
            bail!("server.max_channel_name_length must be between 1 and 1024");
        }
        if s.bus_capacity < 1024 {
            bail!("server.bus_capacity must be at least 1024");
        }
        if s.webhook_queue == 0 || s.webhook_concurrency == 0 || s.webhook_timeout == 0 {
            bail!("server.webhook_queue, webhook_concurrency and webhook_timeout must be greater than 0");
        }
        if s.metrics_host.parse::<std::net::IpAddr>().is_err() {
            bail!(
                "server.metrics_host must be an IP address, got {:?}",
                s.metrics_host
            );
        }
        if s.host.parse::<std::net::IpAddr>().is_err() {
            bail!("server.host must be an IP address, got {:?}", s.host);
        }
        if s.max_messages_per_second == 0 || s.max_message_burst == 0 {
            bail!("server.max_messages_per_second and max_message_burst must be greater than 0");
        }
        if s.workers > 1024 {
            bail!("server.workers must be at most 1024");
        }
        for (name, v) in [
            ("activity_timeout", s.activity_timeout),
            ("pong_timeout", s.pong_timeout),
            ("handshake_timeout", s.handshake_timeout),
            ("shutdown_grace", s.shutdown_grace),
            ("webhook_timeout", s.webhook_timeout),
        ] {
            check_seconds(&format!("server.{name}"), v)?;
        }
        if s.max_request_body > MAX_REQUEST_BODY_LIMIT {
            bail!("server.max_request_body must be at most {MAX_REQUEST_BODY_LIMIT} bytes");
        }
        if s.max_pending_body_bytes < s.max_request_body {
            bail!(
                "server.max_pending_body_bytes ({}) must be at least server.max_request_body ({}): \
                 else a body of the largest size could never be received",
                s.max_pending_body_bytes,
                s.max_request_body
            );
        }
        if s.max_pending_body_bytes > MAX_PENDING_BODY_LIMIT {
            bail!("server.max_pending_body_bytes must be at most {MAX_PENDING_BODY_LIMIT} bytes");
        }
        if self.apps.len() > u16::MAX as usize {
            bail!("at most {} [[apps]] entries are supported", u16::MAX);
        }
        let c = &self.cluster;
        if c.adapter == Adapter::Redis {
            if !(c.url.starts_with("redis://") || c.url.starts_with("rediss://")) {
                bail!(
                    "cluster.url must start with redis:// or rediss://, got {:?}",
                    c.url
                );
            }
            if c.prefix.is_empty()
                || !c
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                bail!("cluster.prefix must be non-empty and use only A-Z a-z 0-9 - _ . :");
            }
            if c.node_timeout < 2 || c.node_timeout > 3600 {
                bail!("cluster.node_timeout must be between 2 and 3600 seconds");
            }
        }
        if self.apps.is_empty() {
            bail!("at least one [[apps]] entry is required");
        }
        let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
        for (i, a) in self.apps.iter().enumerate() {
            for (name, v) in [("id", &a.id), ("key", &a.key), ("secret", &a.secret)] {
                if v.is_empty() {
                    bail!("apps[{i}].{name} must not be empty");
                }
            }
            if a.key.contains(':') || a.key.contains('/') {
                bail!("apps[{i}].key must not contain ':' or '/'");
            }
            if !ids.insert(a.id.as_str()) {
                bail!("apps[{i}].id {:?} is used twice", a.id);
            }
            if !keys.insert(a.key.as_str()) {
                bail!("apps[{i}].key {:?} is used twice", a.key);
            }
            if a.client_event_rate == 0 {
                bail!("apps[{i}].client_event_rate must be greater than 0");
            }
            if a.cache_ttl == 0 {
                bail!("apps[{i}].cache_ttl must be greater than 0");
            }
            for (name, v) in [
                ("cache_ttl", a.cache_ttl),
                (
                    "authorized_connections_timeout",
                    a.authorized_connections_timeout,
                ),
                ("webhook_delay", a.webhook_delay),
                ("webhook_retry_window", a.webhook_retry_window),
                ("webhook_batch_ms", a.webhook_batch_ms / 1000),
            ] {
                check_seconds(&format!("apps[{i}].{name}"), v)?;
            }
            for (j, w) in a.webhooks.iter().enumerate() {
                if !w.url.starts_with("http://") || w.url.parse::<hyper::Uri>().is_err() {
                    bail!("apps[{i}].webhooks[{j}].url must be a valid http:// URL");
                }
                for (k, v) in &w.headers {
                    if hyper::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                        || hyper::header::HeaderValue::from_str(v).is_err()
                    {
                        bail!("apps[{i}].webhooks[{j}].headers: {k:?} is not a valid HTTP header");
                    }
                }
                for t in &w.event_types {
                    if !crate::protocol::events::WEBHOOK_EVENTS.contains(&t.as_str()) {
                        bail!(
                            "apps[{i}].webhooks[{j}].event_types: unknown event {t:?} (known: {})",
                            crate::protocol::events::WEBHOOK_EVENTS.join(", ")
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The number of shards to run: `workers`, or the core count when it is 0.
    pub fn shard_count(&self) -> usize {
        if self.server.workers > 0 {
            self.server.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// Upper bound for any duration setting: a year. Far beyond any sensible value, and small
/// enough that adding it to a clock or turning it into milliseconds can never overflow.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// Upper bound for `max_request_body`: the HTTP API never needs more (events are 10 KB by
/// default, batches at most 10 of them).
pub const MAX_REQUEST_BODY_LIMIT: usize = 64 << 20;

/// Upper bound for `max_pending_body_bytes` (per shard): far above any sensible value, so that a
/// typo cannot quietly turn the budget off.
pub const MAX_PENDING_BODY_LIMIT: usize = 4 << 30;

fn check_seconds(name: &str, v: u64) -> Result<()> {
    if v > MAX_SECONDS {
        bail!("{name} must be at most {MAX_SECONDS} seconds (a year), got {v}");
    }
    Ok(())
}

fn development_value() -> toml::Value {
    let mut root = toml::Table::new();
    let mut app = toml::Table::new();
    app.insert("id".into(), "app-id".into());
    app.insert("key".into(), "app-key".into());
    app.insert("secret".into(), "app-secret".into());
    root.insert("apps".into(), toml::Value::Array(vec![app.into()]));
    root.into()
}

/// Bound on a list index in an environment override: no list in the configuration can hold
/// more (`[[apps]]` has the most, fewer than `u16::MAX`).
const MAX_ENV_INDEX: usize = u16::MAX as usize;

/// Applies one `SECTION__KEY[__...]` override to the TOML tree. Numbers index arrays; values are
/// read as TOML literals (numbers, booleans, arrays) and fall back to plain strings.
fn apply_env(root: &mut toml::Value, path: &str, raw: &str) -> Result<()> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if let Ok(idx) = part.parse::<usize>() {
            let arr = cur
                .as_array_mut()
                .with_context(|| format!("{part} indexes something that is not a list"))?;
            // Missing entries up to the index are added empty, so the index is bounded: a
            // typo such as APPS__10000000000__ID must be an error, not a list that fills memory.
            if idx >= MAX_ENV_INDEX {
                bail!(
                    "{part} is too large an index (lists hold fewer than {MAX_ENV_INDEX} entries)"
                );
            }
            while arr.len() <= idx {
                arr.push(toml::Value::Table(toml::Table::new()));
            }
            if last {
                arr[idx] = parsed;
                return Ok(());
            }
            cur = &mut arr[idx];
        } else {
            let table = cur
                .as_table_mut()
                .with_context(|| format!("{part} is under something that is not a table"))?;
            if last {
                table.insert(part.clone(), parsed);
                return Ok(());
            }
            let next_is_index = parts[i + 1].parse::<usize>().is_ok();
            cur = table.entry(part.clone()).or_insert_with(|| {
                if next_is_index {
                    toml::Value::Array(Vec::new())
                } else {
                    toml::Value::Table(toml::Table::new())
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_reach_nested_keys() {
        let mut v = development_value();
        apply_env(&mut v, "SERVER__PORT", "7000").unwrap();
        apply_env(&mut v, "APPS__0__SECRET", "s3cret").unwrap();
        apply_env(&mut v, "APPS__0__CLIENT_EVENTS", "false").unwrap();
        let cfg: Config = v.try_into().unwrap();
        assert_eq!(cfg.server.port, 7000);
        assert_eq!(cfg.apps[0].secret, "s3cret");
        assert!(!cfg.apps[0].client_events);
    }

    #[test]
    fn a_huge_env_index_is_an_error_not_an_allocation() {
        // Found by fuzz/config_load: the list grew to the index, one empty table at a time,
        // until memory ran out.
        let mut v = development_value();
        let e = apply_env(&mut v, "APPS__10000000000__ID", "x").unwrap_err();
        assert!(e.to_string().contains("too large an index"), "{e}");
        let e = apply_env(&mut v, "APPS__0__ALLOWED_ORIGINS__65535", "x").unwrap_err();
        assert!(e.to_string().contains("too large an index"), "{e}");
        // Indexes a real list can have still work, gaps filled with empty entries.
        apply_env(&mut v, "APPS__2__ID", "c").unwrap();
        let apps = v.get("apps").and_then(|a| a.as_array()).unwrap();
        assert_eq!(apps.len(), 3);
        let e = Config::resolve(
            development_value(),
            vec![("RINGPUSH_APPS__99999999999__KEY".into(), "k".into())],
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("RINGPUSH_APPS__99999999999__KEY"),
            "{e:#}"
        );
    }

    #[test]
    fn the_cluster_section_is_validated() {
        let mut v = development_value();
        apply_env(&mut v, "CLUSTER__ADAPTER", "redis").unwrap();
        apply_env(&mut v, "CLUSTER__URL", "redis://u:p@10.0.0.5:6380/2").unwrap();
        let cfg: Config = v.clone().try_into().unwrap();
        assert_eq!(cfg.cluster.adapter, Adapter::Redis);
        assert_eq!(cfg.cluster.url, "redis://u:p@10.0.0.5:6380/2");
        assert_eq!(
            (cfg.cluster.prefix.as_str(), cfg.cluster.node_timeout),
            ("ringpush", 10)
        );
        cfg.validate().unwrap();
        for (key, value, named) in [
            ("CLUSTER__URL", "http://x", "cluster.url"),
            ("CLUSTER__PREFIX", "a b", "cluster.prefix"),
            ("CLUSTER__PREFIX", "", "cluster.prefix"),
            ("CLUSTER__NODE_TIMEOUT", "1", "cluster.node_timeout"),
            ("CLUSTER__NODE_TIMEOUT", "100000", "cluster.node_timeout"),
        ] {
            let mut bad = v.clone();
            apply_env(&mut bad, key, value).unwrap();
            let cfg: Config = bad.try_into().unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
        let err = toml::from_str::<Config>(
            "[cluster]
adapter = \"nats\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("adapter"), "{err}");
        // No section: a single node.
        assert_eq!(Config::development().cluster.adapter, Adapter::Local);
    }

    #[test]
    fn the_pending_body_budget_is_validated() {
        let cfg = Config::development();
        assert_eq!(cfg.server.max_pending_body_bytes, 32 << 20);
        cfg.validate().unwrap();
        for (key, value, named) in [
            (
                "SERVER__MAX_PENDING_BODY_BYTES",
                "1048575",
                "server.max_pending_body_bytes",
            ),
            (
                "SERVER__MAX_PENDING_BODY_BYTES",
                "4294967297",
                "server.max_pending_body_bytes",
            ),
        ] {
            let mut v = development_value();
            apply_env(&mut v, key, value).unwrap();
            let cfg: Config = v.try_into().unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
        // Exactly one largest body fits; a smaller max_request_body allows a smaller budget.
        let mut v = development_value();
        apply_env(&mut v, "SERVER__MAX_PENDING_BODY_BYTES", "1048576").unwrap();
        let cfg: Config = v.try_into().unwrap();
        cfg.validate().unwrap();
        let mut v = development_value();
        apply_env(&mut v, "SERVER__MAX_REQUEST_BODY", "4096").unwrap();
        apply_env(&mut v, "SERVER__MAX_PENDING_BODY_BYTES", "4096").unwrap();
        let cfg: Config = v.try_into().unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<Config>("[server]\nprot = 1\n").unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn origins() {
        let mut app = Config::development().apps.remove(0);
        assert!(app.origin_allowed(Some("https://evil.test")));
        app.allowed_origins = vec!["https://app.example.com".into(), "*.example.org".into()];
        assert!(app.origin_allowed(Some("https://app.example.com")));
        assert!(!app.origin_allowed(Some("http://app.example.com.evil.test")));
        assert!(app.origin_allowed(Some("https://a.example.org:8443")));
        assert!(!app.origin_allowed(Some("https://example.org")));
        assert!(!app.origin_allowed(Some("https://badexample.org")));
        // Multi-byte characters where the suffix would start: refused, never a panic.
        assert!(!app.origin_allowed(Some("https://ééééééé")));
        assert!(!app.origin_allowed(Some("https://\u{1F600}\u{1F600}\u{1F600}.org")));
        assert!(app.origin_allowed(Some("https://é.example.org")));
        assert!(app.origin_allowed(None));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let mut cfg = Config::development();
        cfg.apps.push(cfg.apps[0].clone());
        cfg.apps[1].id = "other".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("apps[1].key"), "{err}");
    }
}
