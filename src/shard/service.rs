//! The shards' side of the HTTP seam: [`Service`] for a shard. Publishes go out on the bus to
//! every shard; questions go to the shard that is home to the fact (or to every shard for lists
//! and counts) and are answered over a oneshot channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;

use super::{Shard, Shared};
use crate::bus::{BusMsg, Publication, Query};
use crate::channels::home::ChannelFacts;
use crate::cluster::Outbound;
use crate::config::{AppConfig, ServerConfig};
use crate::http::service::{CachedEvent, Health, Service};
use crate::ids::{home_of, AppIdx, ShardId};
use crate::metrics::{self, Series};

/// Wall-clock microseconds: cache events are ordered by when they were published, across
/// nodes (a request answered and the next one sent take far longer than a microsecond; clocks
/// of different hosts must agree to better than the gap between two such events).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Shard {
    async fn ask<T>(
        &self,
        to: ShardId,
        make: impl FnOnce(oneshot::Sender<T>) -> Query,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.shared.bus.send(to, BusMsg::Query(make(tx)));
        rx.await.ok()
    }

    fn all_shards(&self) -> impl Iterator<Item = ShardId> {
        (0..self.shared.shards()).map(|i| ShardId(i as u16))
    }
}

impl Health for Shard {
    fn shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Relaxed)
    }

    fn synced(&self) -> bool {
        let cluster = self.shared.cluster.as_ref();
        cluster.is_none_or(|c| c.stats.synced.load(Ordering::Relaxed))
    }

    fn metrics_text(&self) -> String {
        metrics_text(&self.shared)
    }
}

/// Health for the separate metrics listener, which runs on a thread of its own.
pub(crate) struct SharedHealth(pub Arc<Shared>);

impl Health for SharedHealth {
    fn shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Relaxed)
    }

    fn synced(&self) -> bool {
        let cluster = self.0.cluster.as_ref();
        cluster.is_none_or(|c| c.stats.synced.load(Ordering::Relaxed))
    }

    fn metrics_text(&self) -> String {
        metrics_text(&self.0)
    }
}

impl Service for Shard {
    fn server(&self) -> &ServerConfig {
        &self.shared.config.server
    }

    fn app(&self, app: AppIdx) -> &AppConfig {
        self.shared.app(app)
    }

    fn app_by_id(&self, id: &str) -> Option<AppIdx> {
        self.shared.by_id.get(id).copied()
    }

    fn app_by_key(&self, key: &str) -> Option<AppIdx> {
        self.shared.by_key.get(key).copied()
    }

    fn publish(
        &self,
        app: AppIdx,
        channel: &str,
        frame: Bytes,
        except: Option<Arc<str>>,
        cache_data: Option<Arc<str>>,
    ) -> bool {
        self.publish_everywhere(Publication {
            app,
            channel: channel.into(),
            frame,
            except,
            cache_stamp: if cache_data.is_some() { unix_us() } else { 0 },
            cache_data,
            essential: false,
        })
    }

    fn send_to_user(
        &self,
        app: AppIdx,
        user: &str,
        frame: Bytes,
        except: Option<Arc<str>>,
    ) -> bool {
        let user: Arc<str> = user.into();
        if let Some(c) = &self.shared.cluster {
            c.send(Outbound::ToUser {
                app,
                user: user.clone(),
                frame: frame.clone(),
                except: except.clone(),
            });
        }
        let dropped = self.shared.bus.broadcast(|| BusMsg::ToUser {
            app,
            user: user.clone(),
            frame: frame.clone(),
            except: except.clone(),
        });
        dropped == 0
    }

    fn terminate_user(&self, app: AppIdx, user: &str) {
        let user: Arc<str> = user.into();
        if let Some(c) = &self.shared.cluster {
            let user = user.clone();
            c.send(Outbound::Terminate { app, user });
        }
        self.shared.bus.broadcast(|| BusMsg::Terminate {
            app,
            user: user.clone(),
        });
    }

    async fn channel_facts(&self, app: AppIdx, channel: &str) -> ChannelFacts {
        let channel: Arc<str> = channel.into();
        let home = home_of(app, &channel, self.shared.shards());
        self.ask(home, |reply| Query::Channel {
            app,
            channel,
            reply,
        })
        .await
        .unwrap_or_default()
    }

    async fn channel_list(&self, app: AppIdx, prefix: &str) -> Vec<(Arc<str>, ChannelFacts)> {
        let mut all = Vec::new();
        for shard in self.all_shards() {
            let prefix = prefix.to_string();
            let list = self.ask(shard, |reply| Query::List { app, prefix, reply });
            all.extend(list.await.unwrap_or_default());
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    async fn presence_users(&self, app: AppIdx, channel: &str) -> Vec<String> {
        let channel: Arc<str> = channel.into();
        let home = home_of(app, &channel, self.shared.shards());
        self.ask(home, |reply| Query::Users {
            app,
            channel,
            reply,
        })
        .await
        .unwrap_or_default()
    }

    async fn connection_count(&self, app: AppIdx) -> usize {
        let mut total = 0;
        for shard in self.all_shards() {
            let n = self.ask(shard, |reply| Query::Connections { app, reply });
            total += n.await.unwrap_or(0);
        }
        // Other nodes' connections as of their last heartbeats (at most a second old).
        let remote = self.shared.cluster.as_ref();
        total + remote.map_or(0, |c| c.remote_connections(app) as usize)
    }

    fn cached_event(&self, app: AppIdx, channel: &str) -> Option<CachedEvent> {
        let now = self.now_ms();
        let st = self.state.borrow();
        let e = st.cache[app.0 as usize].get(channel)?;
        (e.expires > now).then(|| CachedEvent {
            data: e.data.clone(),
            ttl_secs: (e.expires - now) / 1000,
        })
    }
}

fn all_shards(shared: &Shared) -> impl Iterator<Item = ShardId> {
    (0..shared.shards()).map(|i| ShardId(i as u16))
}

/// The Prometheus exposition of every metric of this process.
pub(crate) fn metrics_text(shared: &Shared) -> String {
    let bus = &shared.bus;
    let dropped: u64 = all_shards(shared).map(|s| bus.dropped(s)).sum();
    let backlog: usize = all_shards(shared).map(|s| bus.backlog(s)).sum();
    let mut extra = vec![
        Series::counter(
            "ringpush_bus_dropped_total",
            "Publications dropped because a shard inbox was full",
            dropped,
        ),
        Series::gauge(
            "ringpush_bus_backlog",
            "Messages waiting in shard inboxes",
            backlog as u64,
        ),
        Series::gauge("ringpush_shards", "Number of shards", bus.shards() as u64),
        Series::gauge(
            "ringpush_io_uring",
            "1 when shards run on io_uring, 0 on the epoll fallback",
            shared.uring as u64,
        ),
    ];
    if let Some(w) = &shared.webhooks {
        let s = &w.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        extra.extend([
            Series::counter(
                "ringpush_webhooks_sent_total",
                "Webhook requests answered with 2xx",
                load(&s.sent),
            ),
            Series::counter(
                "ringpush_webhooks_retried_total",
                "Webhook attempts that failed and were retried",
                load(&s.retried),
            ),
            Series::counter(
                "ringpush_webhooks_failed_total",
                "Webhook requests given up after the retry window",
                load(&s.failed),
            ),
            Series::counter(
                "ringpush_webhooks_dropped_total",
                "Webhook events dropped (queue full or shutdown)",
                load(&s.dropped),
            ),
        ]);
    }
    if let Some(c) = &shared.cluster {
        let s = &c.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        extra.extend([
            Series::counter(
                "ringpush_cluster_sent_total",
                "Messages published to the cluster broker",
                load(&s.sent),
            ),
            Series::counter(
                "ringpush_cluster_received_total",
                "Messages received from other nodes",
                load(&s.received),
            ),
            Series::counter(
                "ringpush_cluster_dropped_total",
                "Messages for other nodes dropped (queue full or broker unreachable)",
                load(&s.dropped),
            ),
            Series::counter(
                "ringpush_cluster_malformed_total",
                "Broker messages that did not decode",
                load(&s.malformed),
            ),
            Series::counter(
                "ringpush_cluster_outages_total",
                "Times the broker connection was lost or could not be made",
                load(&s.outages),
            ),
            Series::counter(
                "ringpush_cluster_resyncs_total",
                "Node state snapshots applied",
                load(&s.resyncs),
            ),
            Series::counter(
                "ringpush_cluster_nodes_dropped_total",
                "Nodes whose state was dropped (silent past node_timeout, or left)",
                load(&s.nodes_dropped),
            ),
            Series::gauge(
                "ringpush_cluster_connected",
                "1 while the broker is reachable",
                s.connected.load(Ordering::Relaxed) as u64,
            ),
            Series::gauge("ringpush_cluster_peers", "Other live nodes", load(&s.peers)),
        ]);
    }
    metrics::render(&shared.metrics, &extra)
}
