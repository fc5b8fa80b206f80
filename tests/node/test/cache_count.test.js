'use strict';
// Issue-3 scope: cache channels and subscription_count events.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let seq = 0;
const uniq = (p) => `${p}${process.pid}-${++seq}-${Math.random().toString(36).slice(2, 8)}`;

describe('cache channels and subscription_count', () => {
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

  it('subscribing to an empty cache channel gives pusher:cache_miss', async () => {
    const c = await srv.client();
    const name = uniq('cache-empty-');
    const ch = c.subscribe(name);
    const ok = h.once(ch, 'pusher:subscription_succeeded');
    const miss = h.once(ch, 'pusher:cache_miss');
    await ok;
    await miss;
    c.disconnect();
  });

  it('a late subscriber to a cache channel gets the last triggered event', async () => {
    const name = uniq('cache-prices-');
    const sdk = srv.sdk();
    await sdk.trigger(name, 'price', { v: 1 });
    await sdk.trigger(name, 'price', { v: 2 });
    // Cluster mode: every node keeps the last event of a cache channel; an event triggered on
    // one node reaches the others through the broker a moment later (eventually consistent by
    // design). Wait until every node holds { v: 2 }. A no-op on one server.
    await srv.waitReplicated(h.expectGet(`/channels/${name}`, { info: 'cache' }, { v: 2 },
      (body) => body.cache && JSON.parse(body.cache.data)));
    const res = await sdk.get({ path: `/channels/${name}`, params: { info: 'cache' } });
    assert.equal(res.status, 200);
    const info = await res.json();
    assert.equal(info.occupied, false);
    assert.ok(info.cache, `expected cache info, got ${JSON.stringify(info)}`);
    assert.deepEqual(JSON.parse(info.cache.data), { v: 2 });
    assert.ok(info.cache.ttl > 0 && info.cache.ttl <= 1800, `ttl ${info.cache.ttl}`);

    const c = await srv.client();
    const ch = c.subscribe(name);
    const misses = h.record(ch, 'pusher:cache_miss');
    const prices = h.record(ch, 'price');
    const got = h.once(ch, 'price');
    await h.once(ch, 'pusher:subscription_succeeded');
    assert.deepEqual(await got, { v: 2 });
    assert.deepEqual(prices, [{ v: 2 }], 'only the last event is cached');
    assert.deepEqual(misses, []);
    c.disconnect();
  });

  it('private-cache channel delivers the cached event after auth', async () => {
    const name = uniq('private-cache-stock-');
    await srv.sdk().trigger(name, 'level', { q: 7 });
    const c = await srv.client();
    const ch = c.subscribe(name);
    const got = h.once(ch, 'level');
    await h.once(ch, 'pusher:subscription_succeeded');
    assert.deepEqual(await got, { q: 7 });
    c.disconnect();
  });

  it('pusher:subscription_count follows subscribes and unsubscribes across shards', async () => {
    const name = uniq('counted-');
    const [a, b] = await srv.clientsOnDistinctShards(2);
    const chA = a.subscribe(name);
    const first = h.once(chA, 'pusher:subscription_count', undefined, (d) => d.subscription_count === 1);
    await h.once(chA, 'pusher:subscription_succeeded');
    await first;
    assert.equal(chA.subscriptionCount, 1);

    const two = h.once(chA, 'pusher:subscription_count', undefined, (d) => d.subscription_count === 2);
    const chB = b.subscribe(name);
    const bTwo = h.once(chB, 'pusher:subscription_count', undefined, (d) => d.subscription_count === 2);
    await two;
    await bTwo;

    const back = h.once(chA, 'pusher:subscription_count', undefined, (d) => d.subscription_count === 1);
    b.unsubscribe(name);
    await back;
    assert.equal(chA.subscriptionCount, 1);
    a.disconnect();
    b.disconnect();
  });

  it('no subscription_count events for an app that has them disabled', async () => {
    const name = uniq('uncounted-');
    const a = await srv.client({ app: 1 });
    const b = await srv.client({ app: 1 });
    const chA = a.subscribe(name);
    const counts = h.record(chA, 'pusher:subscription_count');
    await h.once(chA, 'pusher:subscription_succeeded');
    await h.subscribe(b, name);
    const marker = h.once(chA, 'marker');
    await srv.sdk(1).trigger(name, 'marker', {});
    await marker;
    assert.deepEqual(counts, []);
    a.disconnect();
    b.disconnect();
  });
});
