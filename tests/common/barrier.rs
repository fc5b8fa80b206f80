//! Barriers for "nothing else arrives" checks. Rather than listening for a while, a test
//! makes the server send a frame that must arrive on the same connection after any forbidden
//! frame it would have sent, and asserts that nothing came before that barrier frame. Which
//! barrier is sound depends on where the forbidden frame would come from:
//!
//! - this connection's own shard, handling an earlier message of this connection: the ping
//!   barrier ([`Client::assert_alive`], [`Client::ping_sync`]). A connection's messages are
//!   handled in order and the pong is queued behind whatever the earlier ones queued.
//! - a message already in some shard's inbox (an HTTP publish that was answered, a client
//!   event whose sender has had its pong since): [`publish_barrier`]. The publish is answered
//!   only after it is in every shard's inbox, each inbox is first in, first out, and the
//!   marker is put in after.
//! - the channel's home shard, handling deltas or joins already sent to it (subscription
//!   counts, presence member events): [`home_barrier`]. A channel query to the home shard is
//!   answered only after it handled those, publications included, and the marker is
//!   published after the answer.
//!
//! Events after the barrier are not checked; tests that need that repeat the barrier later.

use super::client::{channel_event, Client};
use super::http::Api;
use super::util::uniq;

/// Event name of the markers the barriers publish.
pub const BARRIER_EVENT: &str = "test-barrier";

/// Publishes a marker event (unique data) on `channel` through the HTTP API and asserts that
/// it is the next event on every one of `clients`, which must all be subscribed to `channel`.
pub async fn publish_barrier(api: &Api, channel: &str, clients: &mut [&mut Client]) {
    let data = uniq("barrier-");
    api.trigger(channel, BARRIER_EVENT, &data).await;
    let marker = channel_event(channel, BARRIER_EVENT, &data);
    for c in clients.iter_mut() {
        let ev = c.recv().await;
        assert_eq!(
            ev, marker,
            "socket {}: nothing may arrive before the barrier on {channel}",
            c.socket_id
        );
    }
}

/// Waits until `channel`'s home shard has handled everything already sent to it (a channel
/// query it answers in order), then runs [`publish_barrier`]. Make sure first that whatever
/// could make the home shard publish the forbidden frame has been sent to it (for a
/// connection's subscribe or unsubscribe: that connection's pong or a later reply to it).
pub async fn home_barrier(api: &Api, channel: &str, clients: &mut [&mut Client]) {
    api.channel_info(channel, "").await;
    publish_barrier(api, channel, clients).await;
}
