//! The seam between HTTP and the shards: everything the HTTP API needs from the server, as one
//! trait. `http/` names no bus message, shard state or home-shard rule; `shard::service`
//! implements this trait, and the cluster can later answer the same calls for a whole cluster.

use std::sync::Arc;

use bytes::Bytes;

use crate::channels::home::ChannelFacts;
use crate::config::{AppConfig, ServerConfig};
use crate::ids::AppIdx;

/// A cache channel's last event, for `info=cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEvent {
    /// The event's raw `data` JSON.
    pub data: Arc<str>,
    /// Whole seconds left before it expires.
    pub ttl_secs: u64,
}

/// Health and metrics: what the main port and the separate metrics listener both answer.
pub trait Health {
    /// Whether a graceful shutdown has started (readiness answers 503).
    fn shutting_down(&self) -> bool;
    /// Whether this node holds the cluster's state: always on a single node; in a cluster once
    /// the first exchange of state with the other nodes is complete (and from then on, through
    /// broker outages too, since the node serves its own clients meanwhile).
    fn synced(&self) -> bool;
    /// The Prometheus exposition of every metric.
    fn metrics_text(&self) -> String;
}

// The futures run on one shard's thread: no Send bound wanted.
#[allow(async_fn_in_trait)]
/// What the HTTP API asks of the server. Queries are async because facts live on other shards
/// (and, in a cluster, other nodes); publishes never wait.
pub trait Service: Health {
    /// The `[server]` settings.
    fn server(&self) -> &ServerConfig;
    /// An app's settings.
    fn app(&self, app: AppIdx) -> &AppConfig;
    /// The app with this id (the HTTP API path).
    fn app_by_id(&self, id: &str) -> Option<AppIdx>;
    /// The app with this key (`auth_key`).
    fn app_by_key(&self, key: &str) -> Option<AppIdx>;
    /// Sends an encoded frame to a channel's subscribers everywhere, except `except`; a cache
    /// channel keeps `cache_data` for late subscribers. False when some shard was too busy to
    /// take it.
    fn publish(
        &self,
        app: AppIdx,
        channel: &str,
        frame: Bytes,
        except: Option<Arc<str>>,
        cache_data: Option<Arc<str>>,
    ) -> bool;
    /// Sends an encoded frame to every connection signed in as `user`, except `except`.
    fn send_to_user(&self, app: AppIdx, user: &str, frame: Bytes, except: Option<Arc<str>>)
        -> bool;
    /// Closes every connection signed in as `user` (4009).
    fn terminate_user(&self, app: AppIdx, user: &str);
    /// Subscription and user counts of one channel.
    async fn channel_facts(&self, app: AppIdx, channel: &str) -> ChannelFacts;
    /// Occupied channels whose names start with `prefix`, sorted by name.
    async fn channel_list(&self, app: AppIdx, prefix: &str) -> Vec<(Arc<str>, ChannelFacts)>;
    /// Raw JSON ids of a presence channel's members, in join order.
    async fn presence_users(&self, app: AppIdx, channel: &str) -> Vec<String>;
    /// Open WebSocket connections of an app.
    async fn connection_count(&self, app: AppIdx) -> usize;
    /// A cache channel's last event, if it has not expired.
    fn cached_event(&self, app: AppIdx, channel: &str) -> Option<CachedEvent>;
}
