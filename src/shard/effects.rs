//! Carries out what the home state machine decided: publications, answers and notices over the
//! bus, webhook events to the side-car. The only place a home `Effect` turns into IO.

use crate::bus::{BusMsg, Publication};
use crate::channels::home::Effect;

use super::Shard;

impl Shard {
    /// Applies effects in order. Answers and notices go through the bus even when they are for
    /// this shard, so they queue behind what this shard already has to do, as before.
    pub fn apply_effects(&self, effects: &mut Vec<Effect>) {
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
                Effect::Hook { app, channel, kind } => self.hook(app, &channel, kind),
            }
        }
    }
}
