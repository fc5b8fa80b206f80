'use strict';
// Issue-3 scope: user sign-in, server-to-user messages, terminate connections, watchlist.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let seq = 0;
const uid = (p) => `${p}-${process.pid}-${++seq}`;

describe('user authentication (pusher.signin) and user APIs', () => {
  let srv;
  before(async () => {
    srv = await h.startServer();
  });
  after(async () => {
    if (srv) {
      const res = await srv.stop();
      assert.deepEqual(res, { code: 0, signal: null }, 'server must exit 0 on SIGTERM');
    }
  });

  it('signin succeeds and pusher-js gets the user_data back', async () => {
    const id = uid('signin');
    const c = await srv.client({ user: { id, user_info: { name: 'Sig' } } });
    const user = await h.signin(c);
    assert.equal(user.user_data.id, id);
    assert.deepEqual(user.user_data.user_info, { name: 'Sig' });
    assert.equal(user.serverToUserChannel.name, `#server-to-user-${id}`);
    assert.equal(user.serverToUserChannel.subscribed, true);
    c.disconnect();
  });

  it('signin with a bad signature gets pusher:error 4009 and the connection stays', async () => {
    const app = srv.apps[0];
    const wrong = srv.sdk({ ...app, secret: 'nope' });
    const c = await srv.client({ user: { id: uid('bad') }, authSdk: wrong });
    const errP = h.nextConnectionError(c);
    c.signin();
    const err = await errP;
    assert.equal(err.code, 4009);
    // connection kept and still functional
    const ch = await h.subscribe(c, `after-bad-signin-${seq}`);
    assert.equal(ch.subscribed, true);
    assert.equal(c.connection.state, 'connected');
    c.disconnect();
  });

  it('sendToUser reaches every connection of that user (across shards) and nobody else', async () => {
    const id = uid('target');
    const otherId = uid('bystander');
    const [t1, t2] = await srv.clientsOnDistinctShards(2, { user: { id } });
    const o = await srv.client({ user: { id: otherId } });
    await h.signin(t1);
    await h.signin(t2);
    await h.signin(o);
    const otherSeen = h.record(o.user, 'notice');
    const g1 = h.once(t1.user, 'notice');
    const g2 = h.once(t2.user, 'notice');
    const sdk = srv.sdk();
    const res = await sdk.sendToUser(id, 'notice', { msg: 'for you' });
    assert.equal(res.status, 200);
    assert.deepEqual(await g1, { msg: 'for you' });
    assert.deepEqual(await g2, { msg: 'for you' });
    const marker = h.once(o.user, 'marker');
    await sdk.sendToUser(otherId, 'marker', {});
    await marker;
    assert.deepEqual(otherSeen, []);
    for (const c of [t1, t2, o]) c.disconnect();
  });

  it('subscribing to another user\'s #server-to-user channel is rejected', async () => {
    const me = uid('me');
    const c = await srv.client({ user: { id: me } });
    await h.signin(c);
    const errP = h.nextConnectionError(c);
    c.send_event('pusher:subscribe', { channel: `#server-to-user-${uid('someone-else')}`, auth: '' });
    const err = await errP;
    assert.equal(typeof err.message, 'string');
    assert.equal(c.connection.state, 'connected');
    c.disconnect();
  });

  it('terminateUserConnections closes all of that user\'s connections with 4009, others stay', async () => {
    const id = uid('doomed');
    const [d1, d2] = await srv.clientsOnDistinctShards(2, { user: { id } });
    const keep = await srv.client({ user: { id: uid('survivor') } });
    await h.signin(d1);
    await h.signin(d2);
    await h.signin(keep);
    const e1 = h.nextConnectionError(d1);
    const e2 = h.nextConnectionError(d2);
    const s1 = h.waitState(d1, 'disconnected');
    const s2 = h.waitState(d2, 'disconnected');
    const res = await srv.sdk().terminateUserConnections(id);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
    assert.equal((await e1).code, 4009);
    assert.equal((await e2).code, 4009);
    // close code 4009 is in the "do not reconnect" range: pusher-js ends disconnected
    await s1;
    await s2;
    assert.equal(keep.connection.state, 'connected');
    const ch = await h.subscribe(keep, `survivor-check-${seq}`);
    assert.equal(ch.subscribed, true);
    keep.disconnect();
  });

  it('terminateUserConnections does not touch unsigned presence members with that user_id', async () => {
    const id = uid('presence-only');
    const c = await srv.client({ presence: { user_id: id, user_info: {} } });
    await h.subscribe(c, `presence-term-${seq}`);
    const res = await srv.sdk().terminateUserConnections(id);
    assert.equal(res.status, 200);
    // a round trip after the terminate call proves the socket is still open
    const ch = await h.subscribe(c, `term-roundtrip-${seq}`);
    assert.equal(ch.subscribed, true);
    assert.equal(c.connection.state, 'connected');
    c.disconnect();
  });

  it('presence without channel_data uses the signed-in user (pusher-js flow)', async () => {
    const id = uid('signed-member');
    const room = `presence-signed-${process.pid}-${++seq}`;
    // the auth handler returns no presence data: pusher-js then relies on the sign-in
    const c = await srv.client({ user: { id, user_info: { name: 'Signed' } }, presence: () => undefined });
    await h.signin(c);
    const other = await srv.client({ presence: { user_id: uid('plain-member'), user_info: { name: 'Plain' } } });
    const ch = await h.subscribe(c, room);
    assert.equal(ch.members.me.id, id);
    assert.equal(ch.members.count, 1);
    assert.deepEqual(ch.members.get(id).info, { name: 'Signed' });
    // Cluster mode: a join reaches the other nodes' replicas a moment later (eventually
    // consistent by design); wait until every node lists the member. A no-op on one server.
    await srv.waitReplicated(h.expectUsers(room, [id]));
    const chO = await h.subscribe(other, room);
    assert.equal(chO.members.count, 2);
    assert.deepEqual(chO.members.get(id).info, { name: 'Signed' });
    c.disconnect();
    other.disconnect();
  });

  it('watchlist over 100 ids: signin succeeds plus pusher:error 4302', async () => {
    const ids = Array.from({ length: 101 }, (_, i) => `wl-${process.pid}-${i}`);
    const c = await srv.client({ user: { id: uid('big-watcher'), watchlist: ids } });
    const errP = h.once(c.connection, 'error', 5000, (e) => e && e.type === 'PusherError' && e.data.code === 4302);
    await h.signin(c);
    const err = await errP;
    assert.equal(err.data.code, 4302);
    assert.equal(c.connection.state, 'connected');
    c.disconnect();
  });

  it('watchlist: online / offline events for watched users', async () => {
    const watcherId = uid('watcher');
    const earlyId = uid('early');
    const lateId = uid('late');
    // early is online before the watcher signs in
    const early = await srv.client({ user: { id: earlyId } });
    await h.signin(early);

    const w = await srv.client({ user: { id: watcherId, watchlist: [earlyId, lateId] } });
    const onlineEvents = h.record(w.user.watchlist, 'online');
    const initialOnline = h.once(w.user.watchlist, 'online', undefined, (e) => e.user_ids.includes(earlyId));
    await h.signin(w);
    const first = await initialOnline;
    assert.equal(first.name, 'online');
    assert.ok(!first.user_ids.includes(lateId), 'late user is not online yet');

    // late user comes online on two tabs (different shards): one online event
    const lateOnline = h.once(w.user.watchlist, 'online', 15000, (e) => e.user_ids.includes(lateId));
    const [l1, l2] = await srv.clientsOnDistinctShards(2, { user: { id: lateId } });
    await h.signin(l1);
    await lateOnline;
    await h.signin(l2);
    if (h.CLUSTER) {
      // Cluster mode: l2's sign-in reaches the other nodes a moment later (eventually consistent
      // by design); were l1's sign-out to reach the watcher's node first, late would look
      // offline for a moment. Sign-ins cannot be queried over HTTP, so wait until every node
      // counts a subscription l2 makes after its sign-in (its node hands its changes to the
      // broker in the order they happen).
      const after = `after-signin-${process.pid}-${++seq}`;
      await h.subscribe(l2, after);
      await srv.waitReplicated(h.expectGet(`/channels/${after}`, { info: 'subscription_count' },
        { occupied: true, subscription_count: 1 }));
    }

    // offline only after the last connection of the user goes
    const lateOffline = h.once(w.user.watchlist, 'offline', undefined, (e) => e.user_ids.includes(lateId));
    l1.disconnect();
    // marker: early goes offline after l1 is gone; it must be reported before late's offline
    const offlineSeen = h.record(w.user.watchlist, 'offline');
    const earlyOffline = h.once(w.user.watchlist, 'offline', undefined, (e) => e.user_ids.includes(earlyId));
    early.disconnect();
    await earlyOffline;
    assert.ok(!offlineSeen.some((e) => e.user_ids.includes(lateId)), 'late still has a connection');
    l2.disconnect();
    await lateOffline;
    const onlineForLate = onlineEvents.filter((e) => e.user_ids.includes(lateId));
    assert.equal(onlineForLate.length, 1, 'second tab must not produce another online event');
    w.disconnect();
  });
});
