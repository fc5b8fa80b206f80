'use strict';
// Webhooks from ringpush, validated with the official `pusher` Node SDK: signature, key and
// exact Content-Type (pusher.webhook(...).isValid()), and the events' shapes via getEvents().

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');

const { startServer, subscribe, withTimeout } = require('../lib/harness');

function receiver() {
  const requests = [];
  const waiters = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      res.writeHead(200);
      res.end();
      const r = { headers: req.headers, rawBody: body };
      requests.push(r);
      for (const w of waiters.splice(0)) w();
    });
  });
  return new Promise((resolve) => {
    srv.listen(0, '127.0.0.1', () => {
      const url = `http://127.0.0.1:${srv.address().port}/hook`;
      resolve({
        url,
        requests,
        close: () => new Promise((r) => srv.close(r)),
        /** Resolves with the first request holding an event matching `pred`. */
        async waitFor(pred, what, ms = 10000) {
          const find = () => requests.find((r) => JSON.parse(r.rawBody).events.some(pred));
          return withTimeout((async () => {
            for (;;) {
              const hit = find();
              if (hit) return hit;
              await new Promise((r) => waiters.push(r));
            }
          })(), ms, what);
        },
      });
    });
  });
}

test('webhooks validate with the Node SDK and carry Pusher event shapes', async (t) => {
  const hook = await receiver();
  const app = {
    id: 'hook-app', key: 'hook-key', secret: 'hook-secret', client_events: true,
    webhook_delay: 1, webhooks: [{ url: hook.url }],
  };
  const server = await startServer({ apps: [app] });
  t.after(async () => { await server.stop(); await hook.close(); });
  const sdk = server.sdk(app);
  const channel = `presence-hooks-${Date.now()}`;

  const a = await server.client({ app, presence: { user_id: 'alice', user_info: { n: 1 } } });
  const b = await server.client({ app, presence: { user_id: 'bob' } });
  await subscribe(a, channel);
  const chB = await subscribe(b, channel);

  const occupied = await hook.waitFor((e) => e.name === 'channel_occupied' && e.channel === channel, 'channel_occupied');
  const wh = sdk.webhook(occupied);
  assert.equal(wh.isValid(), true, 'signature, key and content type accepted by the SDK');
  assert.ok(Math.abs(wh.getTime().getTime() - Date.now()) < 10000, 'time_ms is current');
  assert.deepEqual(wh.getEvents().filter((e) => e.channel === channel)[0], { name: 'channel_occupied', channel });

  const added = await hook.waitFor((e) => e.name === 'member_added' && e.user_id === 'bob', 'member_added bob');
  assert.equal(sdk.webhook(added).isValid(), true);

  chB.trigger('client-wave', { hi: true });
  const ce = await hook.waitFor((e) => e.name === 'client_event' && e.channel === channel, 'client_event');
  const event = sdk.webhook(ce).getEvents().find((e) => e.name === 'client_event');
  assert.equal(event.event, 'client-wave');
  assert.deepEqual(event.data, { hi: true });
  assert.equal(event.socket_id, b.connection.socket_id);
  assert.equal(event.user_id, 'bob');

  // A different secret must not validate the same request.
  const forged = server.sdk({ ...app, secret: 'not-the-secret' }).webhook(occupied);
  assert.equal(forged.isValid(), false);

  b.disconnect();
  const removed = await hook.waitFor((e) => e.name === 'member_removed' && e.user_id === 'bob', 'member_removed bob');
  assert.equal(sdk.webhook(removed).isValid(), true);
  a.disconnect();
  const vacated = await hook.waitFor((e) => e.name === 'channel_vacated' && e.channel === channel, 'channel_vacated');
  assert.equal(sdk.webhook(vacated).isValid(), true);
  assert.equal(hook.requests.every((r) => r.headers['content-type'] === 'application/json'), true);

  // Each event reaches the receiver once (in a cluster, one node sends a channel's webhooks):
  // give a duplicate a moment to show up, then count.
  await new Promise((r) => setTimeout(r, 500));
  const counts = new Map();
  for (const r of hook.requests) {
    for (const e of JSON.parse(r.rawBody).events) {
      if (e.channel !== channel) continue;
      const k = [e.name, e.user_id, e.event].filter(Boolean).join(' ');
      counts.set(k, (counts.get(k) || 0) + 1);
    }
  }
  assert.deepEqual([...counts.entries()].filter(([, n]) => n !== 1), [], `webhook events by count: ${JSON.stringify([...counts])}`);
  assert.deepEqual([...counts.keys()].sort(), [
    'channel_occupied', 'channel_vacated', 'client_event bob client-wave',
    'member_added alice', 'member_added bob', 'member_removed alice', 'member_removed bob',
  ]);
});
