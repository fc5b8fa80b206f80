'use strict';
// Issue-3 scope: Laravel Echo (pusher broadcaster) on top of pusher-js.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

// laravel-echo 2.x is an ES module package (its "common" build is not loadable through
// require() on Node 20), so load it with import().
let Echo;

let seq = 0;
const uniq = (p) => `${p}${process.pid}.${++seq}`;

function echoFor(pusher) {
  return new Echo({ broadcaster: 'pusher', client: pusher, withoutInterceptors: true });
}

function subscribed(echoChannel, ms = 5000) {
  return h.withTimeout(new Promise((resolve) => echoChannel.subscribed(resolve)), ms, 'Echo subscribed()');
}

describe('Laravel Echo', () => {
  let srv;
  before(async () => {
    Echo = (await import('laravel-echo')).default;
    srv = await h.startServer();
  });
  after(async () => {
    if (srv) {
      const res = await srv.stop();
      assert.deepEqual(res, { code: 0, signal: null }, 'server must exit 0 on SIGTERM');
    }
  });

  it('Echo.private(...).listen(".OrderShipped") and namespaced App\\Events\\OrderShipped', async () => {
    const pusher = await srv.client();
    const echo = echoFor(pusher);
    const room = uniq('orders.');
    const ch = echo.private(room);
    const raw = h.withTimeout(new Promise((r) => ch.listen('.OrderShipped', r)), 5000, '.OrderShipped');
    const namespaced = h.withTimeout(new Promise((r) => ch.listen('OrderShipped', r)), 5000, 'App\\Events\\OrderShipped');
    await subscribed(ch);
    const sdk = srv.sdk();
    await sdk.trigger(`private-${room}`, 'OrderShipped', { order: { id: 1 } });
    assert.deepEqual(await raw, { order: { id: 1 } });
    // Laravel broadcasts with the class name as event name, backslashes included
    await sdk.trigger(`private-${room}`, 'App\\Events\\OrderShipped', { order: { id: 2 } });
    assert.deepEqual(await namespaced, { order: { id: 2 } });
    echo.disconnect();
  });

  it('Echo.join(...).here / joining / leaving on a presence channel', async () => {
    const room = uniq('chat.');
    const alice = await srv.client({ presence: { user_id: 'echo-alice', user_info: { name: 'Alice' } } });
    const bob = await srv.client({ presence: { user_id: 'echo-bob', user_info: { name: 'Bob' } } });
    const echoA = echoFor(alice);
    const echoB = echoFor(bob);

    const chA = echoA.join(room);
    const hereA = h.withTimeout(new Promise((r) => chA.here(r)), 5000, 'here (alice)');
    const joined = h.withTimeout(new Promise((r) => chA.joining(r)), 15000, 'joining');
    const left = h.withTimeout(new Promise((r) => chA.leaving(r)), 15000, 'leaving');
    assert.deepEqual(await hereA, [{ name: 'Alice' }]);
    // Cluster mode: Alice's join reaches the other nodes' replicas a moment later (eventually
    // consistent by design); wait until every node lists her. A no-op on one server.
    await srv.waitReplicated(h.expectUsers(`presence-${room}`, ['echo-alice']));

    const chB = echoB.join(room);
    const hereB = h.withTimeout(new Promise((r) => chB.here(r)), 5000, 'here (bob)');
    const seen = await hereB;
    assert.deepEqual(seen.map((m) => m.name).sort(), ['Alice', 'Bob']);
    assert.deepEqual(await joined, { name: 'Bob' });

    echoB.leave(room);
    assert.deepEqual(await left, { name: 'Bob' });
    echoA.disconnect();
    echoB.disconnect();
  });

  it('Echo whisper / listenForWhisper on a private channel', async () => {
    const room = uniq('typing.');
    const a = echoFor(await srv.client());
    const b = echoFor(await srv.client());
    const chA = a.private(room);
    const chB = b.private(room);
    // Bind both before waiting: Echo's subscribed() only hears a subscription_succeeded that
    // arrives after it is bound, and B's may land while A's is awaited.
    await Promise.all([subscribed(chA), subscribed(chB)]);
    const got = h.withTimeout(new Promise((r) => chB.listenForWhisper('typing', r)), 5000, 'whisper');
    chA.whisper('typing', { name: 'A', typing: true });
    assert.deepEqual(await got, { name: 'A', typing: true });
    a.disconnect();
    b.disconnect();
  });

  it('Echo.encryptedPrivate(...) decrypts an SDK-encrypted broadcast', async () => {
    const echo = echoFor(await srv.client());
    const room = uniq('vault.');
    const ch = echo.encryptedPrivate(room);
    const got = h.withTimeout(new Promise((r) => ch.listen('.Sealed', r)), 5000, '.Sealed');
    await subscribed(ch);
    await srv.sdk().trigger(`private-encrypted-${room}`, 'Sealed', { code: 'xyz' });
    assert.deepEqual(await got, { code: 'xyz' });
    echo.disconnect();
  });

  it('Echo public channel listen with a custom namespace', async () => {
    const pusher = await srv.client();
    const echo = new Echo({ broadcaster: 'pusher', client: pusher, namespace: 'Domain.Events', withoutInterceptors: true });
    const name = uniq('news.');
    const ch = echo.channel(name);
    const got = h.withTimeout(new Promise((r) => ch.listen('Published', r)), 5000, 'Domain\\Events\\Published');
    await subscribed(ch);
    await srv.sdk().trigger(name, 'Domain\\Events\\Published', { title: 't' });
    assert.deepEqual(await got, { title: 't' });
    echo.disconnect();
  });
});
