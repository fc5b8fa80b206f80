//! The shards' side of the cluster: [`Local`] for this process, so the cluster side-car can
//! hand other nodes' messages to the right shards over the bus.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::Shared;
use crate::bus::{BusMsg, Publication};
use crate::channels::home::{Delta, Origin, SnapEntry};
use crate::cluster::Local;
use crate::ids::{home_of, AppIdx, NodeId};

/// [`Local`] over the shared state, which is created after the side-car (the side-car's handle
/// is part of it); until it is set, messages have nowhere to go and are ignored.
pub struct Shards(pub Arc<OnceLock<Arc<Shared>>>);

impl Shards {
    fn shared(&self) -> Option<&Arc<Shared>> {
        self.0.get()
    }

    fn broadcast(&self, make: impl Fn() -> BusMsg) {
        if let Some(s) = self.shared() {
            s.bus.broadcast(make);
        }
    }
}

/// The channel or user a delta is about (what its home is hashed from).
fn key_of(delta: &Delta) -> (AppIdx, &str) {
    match delta {
        Delta::Subscribed { app, channel }
        | Delta::Unsubscribed { app, channel }
        | Delta::Join { app, channel, .. }
        | Delta::RemoteJoin { app, channel, .. }
        | Delta::Leave { app, channel, .. } => (*app, channel),
        Delta::SignedIn { app, user } | Delta::SignedOut { app, user } => (*app, user),
        Delta::Watch { app, users, .. } => (*app, users.first().map_or("", |u| &**u)),
    }
}

impl Local for Shards {
    fn app_index(&self, id: &str) -> Option<AppIdx> {
        self.shared()?.by_id.get(id).copied()
    }

    fn app_id(&self, app: AppIdx) -> &str {
        self.shared()
            .and_then(|s| s.config.apps.get(app.0 as usize))
            .map_or("", |a| a.id.as_str())
    }

    fn publish(
        &self,
        app: AppIdx,
        channel: Arc<str>,
        frame: Bytes,
        except: Option<Arc<str>>,
        cache_data: Option<Arc<str>>,
        cache_stamp: u64,
    ) {
        let p = Arc::new(Publication {
            app,
            channel,
            frame,
            except,
            cache_data,
            cache_stamp,
            essential: false,
        });
        self.broadcast(|| BusMsg::Publish(p.clone()));
    }

    fn to_user(&self, app: AppIdx, user: Arc<str>, frame: Bytes, except: Option<Arc<str>>) {
        self.broadcast(|| BusMsg::ToUser {
            app,
            user: user.clone(),
            frame: frame.clone(),
            except: except.clone(),
        });
    }

    fn terminate(&self, app: AppIdx, user: Arc<str>) {
        self.broadcast(|| BusMsg::Terminate {
            app,
            user: user.clone(),
        });
    }

    fn remote_change(&self, from: NodeId, delta: Delta) {
        let Some(s) = self.shared() else { return };
        let (app, name) = key_of(&delta);
        let home = home_of(app, name, s.shards());
        let from = Origin::Node(from);
        s.bus.send(home, BusMsg::Home { from, delta });
    }

    fn drop_node(&self, node: NodeId) {
        self.broadcast(|| BusMsg::DropOrigin(Origin::Node(node)));
    }

    fn replace_node(&self, node: NodeId, piece: u16, pieces: u16, entries: Arc<Vec<SnapEntry>>) {
        self.broadcast(|| BusMsg::ReplaceOrigin {
            origin: Origin::Node(node),
            piece,
            pieces,
            entries: entries.clone(),
        });
    }

    fn request_snapshot(&self) {
        self.broadcast(|| BusMsg::SnapshotRequest);
    }

    fn nodes_changed(&self, live: Arc<Vec<NodeId>>) {
        self.broadcast(|| BusMsg::Nodes(live.clone()));
    }

    fn connections(&self) -> Vec<(AppIdx, u32)> {
        let Some(s) = self.shared() else {
            return Vec::new();
        };
        s.app_connections
            .iter()
            .enumerate()
            .map(|(i, n)| (AppIdx(i as u16), n.load(Ordering::Relaxed) as u32))
            .collect()
    }
}
