'use strict';
// Issue-2 scope: connection, public channels, HTTP publish API via the Node server SDK,
// cross-shard fan-out, request signing.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let seq = 0;
const uniq = (p) => `${p}${process.pid}-${++seq}-${Math.random().toString(36).slice(2, 8)}`;

describe('core protocol (pusher-js + pusher Node SDK)', () => {
  let srv;
  before(async () => {
    srv = await h.startServer();
  });
  after(async () => {
    if (srv) await srv.stop();
  });

  it('pusher-js connects and gets a well-formed socket_id', async () => {
    const c = await srv.client();
    assert.equal(c.connection.state, 'connected');
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
    assert.ok(c.connection.activityTimeout > 0, 'activity_timeout must be positive');
    const c2 = await srv.client();
    assert.notEqual(c2.connection.socket_id, c.connection.socket_id, 'socket_ids must be unique');
    c.disconnect();
    c2.disconnect();
  });

  it('public subscribe fires pusher:subscription_succeeded', async () => {
    const c = await srv.client();
    const name = uniq('public-');
    const ch = c.subscribe(name);
    await h.once(ch, 'pusher:subscription_succeeded');
    assert.equal(ch.subscribed, true);
    c.disconnect();
  });

  it('SDK trigger on a single channel reaches the subscriber with data intact', async () => {
    const c = await srv.client();
    const name = uniq('single-');
    const ch = await h.subscribe(c, name);
    const got = h.once(ch, 'order-created');
    const payload = { id: 42, text: 'héllo "quoted" \\ slash', nested: { list: [1, 2, 3] } };
    const res = await srv.sdk().trigger(name, 'order-created', payload);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
    assert.deepEqual(await got, payload);
    c.disconnect();
  });

  it('SDK trigger with a plain string payload is delivered as that string', async () => {
    const c = await srv.client();
    const name = uniq('string-');
    const ch = await h.subscribe(c, name);
    const got = h.once(ch, 'msg');
    await srv.sdk().trigger(name, 'msg', 'just text, not JSON');
    assert.equal(await got, 'just text, not JSON');
    c.disconnect();
  });

  it('SDK trigger on several channels reaches every channel', async () => {
    const names = [uniq('multi-a-'), uniq('multi-b-'), uniq('multi-c-')];
    const c = await srv.client();
    const chans = [];
    for (const n of names) chans.push(await h.subscribe(c, n));
    const waits = chans.map((ch) => h.once(ch, 'fanout'));
    const res = await srv.sdk().trigger(names, 'fanout', { n: 1 });
    assert.equal(res.status, 200);
    const datas = await Promise.all(waits);
    for (const d of datas) assert.deepEqual(d, { n: 1 });
    c.disconnect();
  });

  it('SDK trigger with info=subscription_count returns per-channel counts', async () => {
    const name = uniq('info-');
    const a = await srv.client();
    const b = await srv.client();
    await h.subscribe(a, name);
    await h.subscribe(b, name);
    // Cluster mode: subscriptions reach the other nodes' replicas a moment later (eventually
    // consistent by design); wait until every node agrees. A no-op on one server.
    await srv.waitReplicated(h.expectGet(`/channels/${name}`, { info: 'subscription_count' },
      { occupied: true, subscription_count: 2 }));
    const res = await srv.sdk().trigger(name, 'x', {}, { info: 'subscription_count' });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { channels: { [name]: { subscription_count: 2 } } });
    a.disconnect();
    b.disconnect();
  });

  it('SDK trigger with socket_id excludes that connection only', async () => {
    const name = uniq('exclude-');
    const [a, b] = await srv.clientsOnDistinctShards(2);
    const cha = await h.subscribe(a, name);
    const chb = await h.subscribe(b, name);
    const aSeen = h.record(cha, 'excluded');
    const bGot = h.once(chb, 'excluded');
    const aMarker = h.once(cha, 'marker');
    const sdk = srv.sdk();
    await sdk.trigger(name, 'excluded', { v: 1 }, { socket_id: a.connection.socket_id });
    assert.deepEqual(await bGot, { v: 1 });
    await sdk.trigger(name, 'marker', {});
    await aMarker;
    assert.deepEqual(aSeen, [], 'the excluded socket must not receive the event');
    a.disconnect();
    b.disconnect();
  });

  it('SDK triggerBatch delivers each event to its channel', async () => {
    const n1 = uniq('batch-1-');
    const n2 = uniq('batch-2-');
    const c = await srv.client();
    const c1 = await h.subscribe(c, n1);
    const c2 = await h.subscribe(c, n2);
    const w1 = h.once(c1, 'ev-one');
    const w2 = h.once(c2, 'ev-two');
    const res = await srv.sdk().triggerBatch([
      { channel: n1, name: 'ev-one', data: { k: 'one' } },
      { channel: n2, name: 'ev-two', data: { k: 'two' } },
    ]);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
    assert.deepEqual(await w1, { k: 'one' });
    assert.deepEqual(await w2, { k: 'two' });
    c.disconnect();
  });

  it('SDK triggerBatch with info returns an index-aligned batch array', async () => {
    const n1 = uniq('binfo-1-');
    const n2 = uniq('binfo-2-');
    const c = await srv.client();
    await h.subscribe(c, n1);
    // Cluster mode: subscriptions reach the other nodes' replicas a moment later (eventually
    // consistent by design); wait until every node agrees. A no-op on one server.
    await srv.waitReplicated(h.expectGet(`/channels/${n1}`, { info: 'subscription_count' },
      { occupied: true, subscription_count: 1 }));
    const res = await srv.sdk().triggerBatch([
      { channel: n1, name: 'a', data: '1', info: 'subscription_count' },
      { channel: n2, name: 'b', data: '2' },
    ]);
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.ok(Array.isArray(body.batch), `expected batch array, got ${JSON.stringify(body)}`);
    assert.equal(body.batch.length, 2);
    assert.deepEqual(body.batch[0], { subscription_count: 1 });
    assert.deepEqual(body.batch[1], {});
    c.disconnect();
  });

  it('SDK get /channels with filter_by_prefix lists only occupied matching channels', async () => {
    const prefix = uniq('pfx') + '-';
    const names = [`${prefix}a`, `${prefix}b`];
    const other = uniq('otherpfx-');
    const c = await srv.client();
    for (const n of names) await h.subscribe(c, n);
    await h.subscribe(c, other);
    // a channel that was occupied and then vacated must not be listed
    const gone = `${prefix}gone`;
    await h.subscribe(c, gone);
    c.unsubscribe(gone);
    // the unsubscribe has no reply: use another subscription round-trip to order after it
    await h.subscribe(c, uniq('sync-'));
    // Cluster mode: subscriptions reach the other nodes' replicas a moment later (eventually
    // consistent by design); wait until every node agrees. A no-op on one server.
    await srv.waitReplicated(h.expectGet('/channels', { filter_by_prefix: prefix },
      { channels: { [names[0]]: {}, [names[1]]: {} } }));
    const res = await srv.sdk().get({ path: '/channels', params: { filter_by_prefix: prefix } });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { channels: { [names[0]]: {}, [names[1]]: {} } });
    c.disconnect();
  });

  it('SDK get /channels/<c> with info=subscription_count reports occupancy', async () => {
    const name = uniq('count-');
    const [a, b] = await srv.clientsOnDistinctShards(2);
    await h.subscribe(a, name);
    await h.subscribe(b, name);
    // Cluster mode: subscriptions reach the other nodes' replicas a moment later (eventually
    // consistent by design); wait until every node agrees. A no-op on one server.
    await srv.waitReplicated(h.expectGet(`/channels/${name}`, { info: 'subscription_count' },
      { occupied: true, subscription_count: 2 }));
    const sdk = srv.sdk();
    let res = await sdk.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { occupied: true, subscription_count: 2 });
    res = await sdk.get({ path: `/channels/${name}` });
    assert.deepEqual(await res.json(), { occupied: true });
    res = await sdk.get({ path: `/channels/${uniq('empty-')}` });
    assert.deepEqual(await res.json(), { occupied: false });
    a.disconnect();
    b.disconnect();
  });

  it('a publish reaches subscribers on different shards', async () => {
    const name = uniq('shards-');
    const clients = await srv.clientsOnDistinctShards(2);
    const shards = new Set(clients.map((c) => h.shardOf(c.connection.socket_id, srv.workers)));
    assert.equal(shards.size, 2);
    // plus a few more clients wherever they land
    for (let i = 0; i < 3; i++) clients.push(await srv.client());
    const waits = [];
    for (const c of clients) {
      const ch = await h.subscribe(c, name);
      waits.push(h.once(ch, 'broadcast'));
    }
    await srv.sdk().trigger(name, 'broadcast', { all: true });
    const got = await Promise.all(waits);
    for (const d of got) assert.deepEqual(d, { all: true });
    // Cluster mode: subscriptions reach the other nodes' replicas a moment later (eventually
    // consistent by design); wait until every node agrees. A no-op on one server.
    await srv.waitReplicated(h.expectGet(`/channels/${name}`, { info: 'subscription_count' },
      { occupied: true, subscription_count: clients.length }));
    const res = await srv.sdk().get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
    assert.deepEqual(await res.json(), { occupied: true, subscription_count: clients.length });
    for (const c of clients) c.disconnect();
  });

  it('unsubscribe stops delivery', async () => {
    const name = uniq('unsub-');
    const a = await srv.client();
    const b = await srv.client();
    const cha = await h.subscribe(a, name);
    const chb = await h.subscribe(b, name);
    const aSeen = h.record(cha, 'after-unsub');
    a.unsubscribe(name);
    // make sure the unsubscribe frame was processed: a round trip on the same socket
    await h.subscribe(a, uniq('sync-'));
    const bGot = h.once(chb, 'after-unsub');
    await srv.sdk().trigger(name, 'after-unsub', {});
    await bGot;
    // a second event routed to a still-subscribed channel of `a` orders after the first
    const other = uniq('marker-');
    const cho = await h.subscribe(a, other);
    const marker = h.once(cho, 'marker');
    await srv.sdk().trigger(other, 'marker', {});
    await marker;
    assert.deepEqual(aSeen, []);
    a.disconnect();
    b.disconnect();
  });

  it('SDK get with user_count on non-presence channels is a 400', async () => {
    const c = await srv.client();
    const name = uniq('nouc-');
    await h.subscribe(c, name);
    const sdk = srv.sdk();
    await assert.rejects(sdk.get({ path: '/channels', params: { info: 'user_count' } }), (err) => err.status === 400);
    await assert.rejects(
      sdk.get({ path: `/channels/${name}`, params: { info: 'user_count' } }),
      (err) => err.status === 400,
    );
    c.disconnect();
  });

  it('SDK trigger: 10240 bytes of data accepted, 10241 bytes get 413', async () => {
    const sdk = srv.sdk();
    const name = uniq('size-');
    const c = await srv.client();
    const ch = await h.subscribe(c, name);
    const got = h.once(ch, 'big');
    const max = 'x'.repeat(10240); // a string is sent as-is by the SDK
    const res = await sdk.trigger(name, 'big', max);
    assert.equal(res.status, 200);
    assert.equal((await got).length, 10240);
    await assert.rejects(sdk.trigger(name, 'big', max + 'y'), (err) => err.status === 413);
    c.disconnect();
  });

  it('SDK requests signed with a wrong secret get 401', async () => {
    const app = srv.apps[0];
    const bad = srv.sdk({ ...app, secret: 'definitely-wrong' });
    await assert.rejects(bad.trigger('any-channel', 'x', {}), (err) => {
      assert.equal(err.status, 401, `expected 401, got ${err.status} ${err.body}`);
      return true;
    });
    await assert.rejects(bad.get({ path: '/channels' }), (err) => err.status === 401);
  });

  it('SDK requests with a key of another app get 401', async () => {
    const a0 = srv.apps[0];
    const a1 = srv.apps[1];
    const mixed = srv.sdk({ id: a0.id, key: a1.key, secret: a1.secret });
    await assert.rejects(mixed.trigger('any-channel', 'x', {}), (err) => err.status === 401);
  });

  it('SDK requests to an unknown app id get 404', async () => {
    const a0 = srv.apps[0];
    const ghost = srv.sdk({ id: 'no-such-app', key: a0.key, secret: a0.secret });
    await assert.rejects(ghost.trigger('any-channel', 'x', {}), (err) => err.status === 404);
  });

  it('apps are isolated: a trigger on app-2 does not reach app-1 subscribers', async () => {
    const name = uniq('iso-');
    const c1 = await srv.client({ app: 0 });
    const c2 = await srv.client({ app: 1 });
    const ch1 = await h.subscribe(c1, name);
    const ch2 = await h.subscribe(c2, name);
    const seen1 = h.record(ch1, 'iso');
    const got2 = h.once(ch2, 'iso');
    await srv.sdk(1).trigger(name, 'iso', { app: 2 });
    assert.deepEqual(await got2, { app: 2 });
    const marker = h.once(ch1, 'marker');
    await srv.sdk(0).trigger(name, 'marker', {});
    await marker;
    assert.deepEqual(seen1, []);
    c1.disconnect();
    c2.disconnect();
  });

  it('SIGTERM: connected clients get pusher:error 4200 and the server exits 0', async () => {
    const c = await srv.client();
    srv.clients.delete(c); // keep it connected through stop()
    // 4200 means "reconnect now": disconnect inside the handler so pusher-js does not retry
    const err = h.once(c.connection, 'error', 10000, (e) => {
      if (e && e.type === 'PusherError') {
        c.disconnect();
        return true;
      }
      return false;
    });
    const stopped = srv.stop();
    const data = (await err).data;
    assert.equal(data.code, 4200);
    const res = await stopped;
    srv = null;
    assert.deepEqual(res, { code: 0, signal: null });
  });
});
