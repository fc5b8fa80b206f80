'use strict';
// Connection-level behaviour seen through pusher-js: refusals (4001/4003/4004),
// activity_timeout negotiation and pings, authorized-connections timeout.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const APPS = [
  { id: 'lim-open', key: 'lim-open-key', secret: 'lim-open-secret' },
  { id: 'lim-one', key: 'lim-one-key', secret: 'lim-one-secret', max_connections: 1 },
  { id: 'lim-off', key: 'lim-off-key', secret: 'lim-off-secret', enabled: false },
  { id: 'lim-auth', key: 'lim-auth-key', secret: 'lim-auth-secret', authorized_connections_timeout: 3 },
  {
    id: 'lim-presence',
    key: 'lim-presence-key',
    secret: 'lim-presence-secret',
    max_presence_members: 2,
    max_presence_user_info: 64,
  },
];

// Either side may ping first (both wait 1 s of silence): count heartbeat frames either way.
const isHeartbeat = (m) => m.event === 'pusher:pong' || m.event === 'pusher:ping';

// Outlives the 3 s authorized-connections timeout (the server sweeps every 0.5 s), then checks
// that the connection was neither refused nor closed meanwhile.
async function outliveAuthTimeout(c) {
  const errors = h.record(c.connection, 'error');
  const socketId = c.connection.socket_id;
  await new Promise((r) => setTimeout(r, 4000));
  assert.equal(c.connection.state, 'connected');
  assert.equal(c.connection.socket_id, socketId, 'no reconnect happened');
  assert.deepEqual(errors, [], 'no error on the connection');
}

/** A pusher-js client that is expected to be refused: resolves with the pusher:error data. */
async function refused(srv, key) {
  const pusher = new h.PusherJS(key, {
    wsHost: '127.0.0.1',
    wsPort: srv.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
  });
  srv.clients.add(pusher);
  // A pusher:error during the handshake is turned by pusher-js into a close action and
  // reported as {type:'WebSocketError', error:{type:'PusherError', data:{code, message}}}.
  const ev = await h.once(pusher.connection, 'error', 5000, (e) =>
    e && ((e.type === 'WebSocketError' && e.error && e.error.type === 'PusherError') || e.type === 'PusherError'));
  const err = ev.type === 'PusherError' ? ev.data : ev.error.data;
  // 4000-4099 means "do not reconnect": pusher-js must not come back connected
  await h.waitState(pusher, 'disconnected').catch(() => {});
  const state = pusher.connection.state;
  pusher.disconnect();
  return { err, state };
}

describe('connection limits and liveness (pusher-js)', () => {
  let srv;
  before(async () => {
    srv = await h.startServer({ apps: APPS, server: { activity_timeout: 1, pong_timeout: 2 } });
  });
  after(async () => {
    if (srv) {
      const res = await srv.stop();
      assert.deepEqual(res, { code: 0, signal: null }, 'server must exit 0 on SIGTERM');
    }
  });

  it('unknown app key is refused with 4001', async () => {
    const { err, state } = await refused(srv, 'no-such-key');
    assert.equal(err.code, 4001);
    assert.notEqual(state, 'connected');
  });

  it('disabled app is refused with 4003', async () => {
    const { err, state } = await refused(srv, 'lim-off-key');
    assert.equal(err.code, 4003);
    assert.notEqual(state, 'connected');
  });

  it('app over max_connections is refused with 4004; the first connection stays', async () => {
    const first = await srv.client({ app: 1 });
    // Cluster mode: nodes learn each other's connection counts from heartbeats (about once a
    // second, eventually consistent by design); wait until every node counts the first
    // connection, so the refusal does not depend on that delay. A no-op on one server.
    await srv.waitReplicated(h.expectGet('/connections', {}, { connections: 1 }), 1);
    const { err, state } = await refused(srv, 'lim-one-key');
    assert.equal(err.code, 4004);
    assert.notEqual(state, 'connected');
    assert.equal(first.connection.state, 'connected');
    first.disconnect();
  });

  it('presence: a member over max_presence_members is refused, existing members unaffected', async () => {
    const room = `presence-full-${process.pid}`;
    const a = await srv.client({ app: 4, presence: { user_id: 'full-a', user_info: {} } });
    const b = await srv.client({ app: 4, presence: { user_id: 'full-b', user_info: {} } });
    const c = await srv.client({ app: 4, presence: { user_id: 'full-c', user_info: {} } });
    const chA = await h.subscribe(a, room);
    await h.subscribe(b, room);
    // a second tab of an existing member does not add a member: allowed
    const b2 = await srv.client({ app: 4, presence: { user_id: 'full-b', user_info: {} } });
    await h.subscribe(b2, room);
    // Cluster mode: the joins reach the other nodes' replicas a moment later (eventually
    // consistent by design); wait until every node lists both members, so that the node C
    // lands on knows the channel is full. A no-op on one server.
    await srv.waitReplicated(h.expectUsers(room, ['full-a', 'full-b']), 4);
    const addedToA = h.record(chA, 'pusher:member_added');
    const errP = h.nextConnectionError(c);
    const chC = c.subscribe(room);
    const err = await errP;
    assert.equal(typeof err.message, 'string');
    assert.equal(chC.subscribed, false);
    assert.equal(c.connection.state, 'connected');
    const res = await srv.sdk(4).get({ path: `/channels/${room}/users` });
    assert.deepEqual((await res.json()).users.map((u) => String(u.id)).sort(), ['full-a', 'full-b']);
    assert.deepEqual(addedToA, []);
    for (const x of [a, b, b2, c]) x.disconnect();
  });

  it('presence: user_info over max_presence_user_info is refused', async () => {
    const room = `presence-biginfo-${process.pid}`;
    const c = await srv.client({ app: 4, presence: { user_id: 'big', user_info: { blob: 'z'.repeat(200) } } });
    const errP = h.nextConnectionError(c);
    const ch = c.subscribe(room);
    await errP;
    assert.equal(ch.subscribed, false);
    assert.equal(c.connection.state, 'connected');
    c.disconnect();
  });

  it('activity_timeout from the server is adopted and pusher-js pings are answered', async () => {
    const c = await srv.client({ app: 0 });
    assert.equal(c.connection.activityTimeout, 1000, 'pusher-js uses min(120 s, server value) in ms');
    const socketId = c.connection.socket_id;
    // pusher-js sends pusher:ping after 1 s of silence and needs an answer within its pong
    // timeout; the server also pings a silent client after 1 s. Either way the link must hold.
    await h.once(c.connection, 'message', 4000, isHeartbeat);
    await h.once(c.connection, 'message', 4000, isHeartbeat);
    assert.equal(c.connection.state, 'connected');
    assert.equal(c.connection.socket_id, socketId, 'no reconnect happened');
    c.disconnect();
  });

  it('authorized_connections_timeout closes a connection that never signs in (4009)', async () => {
    const idle = await srv.client({ app: 3 });
    const err = await h.nextConnectionError(idle, 10000);
    assert.equal(err.code, 4009);
    await h.waitState(idle, 'disconnected');
    idle.disconnect();
  });

  it('authorized_connections_timeout spares a signed-in connection', async () => {
    const c = await srv.client({ app: 3, user: { id: 'lim-user' } });
    await h.signin(c);
    await outliveAuthTimeout(c);
    c.disconnect();
  });

  it('authorized_connections_timeout spares a connection with a private subscription', async () => {
    const c = await srv.client({ app: 3 });
    await h.subscribe(c, 'private-lim-authz');
    await outliveAuthTimeout(c);
    c.disconnect();
  });
});
