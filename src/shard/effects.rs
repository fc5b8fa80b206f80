//! Carries out what the home state machine decided: publications, answers and notices over the
//! bus, webhook events to the side-car. The only place a home `Effect` turns into IO.

use crate::bus::{BusMsg, Publication};
use crate::channels::home::Effect;
use crate::cluster::nodes::leads;
use crate::cluster::Outbound;
use crate::ids::NodeId;

use super::Shard;

impl Shard {
    /// Applies effects in order. Answers and notices go through the bus even when they are for
    /// this shard, so they queue behind what this shard already has to do, as before.
    pub fn apply_effects(&self, nodes: &[NodeId], effects: &mut Vec<Effect>) {
        for effect in effects.drain(..) {
            match effect {
                Effect::Publish {
                    app,
                    channel,
                    frame,
                    except,
                } => {
                    self.publish(Publication {
                        app,
                        channel,
                        frame,
                        except,
                        cache_data: None,
                        cache_stamp: 0,
                        essential: true,
                    });
                }
                Effect::JoinAnswer {
                    to,
                    app,
                    channel,
                    member,
                    result,
                } => {
                    let answer = BusMsg::PresenceJoined {
                        conn: to,
                        app,
                        channel,
                        member,
                        result,
                    };
                    self.shared.bus.send(to.shard, answer);
                }
                Effect::Notice { to, frame } => {
                    let notice = BusMsg::WatchNotice { conn: to, frame };
                    self.shared.bus.send(to.shard, notice);
                }
                Effect::Hook { app, channel, kind } => {
                    // In a cluster every node's home sees every transition; one node, the
                    // channel's leader, reports them, so each webhook fires once.
                    let app_id = &self.shared.app(app).id;
                    if nodes.is_empty() || leads(self.shared.node, nodes, app, app_id, &channel) {
                        self.hook(app, &channel, kind);
                    }
                }
                // Only emitted when the home replicates, which it does only in a cluster.
                Effect::Replicate(delta) => {
                    if let Some(c) = &self.shared.cluster {
                        c.send(Outbound::Change(delta));
                    }
                }
            }
        }
    }
}
