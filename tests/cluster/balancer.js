#!/usr/bin/env node
'use strict';
// A round-robin TCP balancer for the cluster-mode compatibility runs: every accepted connection
// goes to the next backend in turn, so consecutive WebSocket connections and HTTP requests (on
// fresh TCP connections) land on different ringpush nodes.
//
//   node balancer.js [--delay-ms N] HOST:PORT HOST:PORT ...
//
// Listens on 127.0.0.1 on a free port and prints one line, `balancer listening on 127.0.0.1:PORT`,
// once it accepts. It bytes-pipes both ways and knows nothing of HTTP or WebSocket.
// Half-closes are passed on (a FIN from one side becomes a FIN to the other, and the other
// direction keeps flowing), because ringpush closes a WebSocket by half-closing its side and then
// waiting for the client's EOF; an error or reset on either side destroys both. A backend that
// refuses the connection is skipped for the next one (the client's bytes wait until a backend
// answers). No idle timeouts: a quiet WebSocket stays open as long as its two ends want.
//
// --delay-ms N (a diagnostic, not used by the suites by default) holds every chunk N ms in each
// direction, order kept and backpressure ignored: put in front of Redis (cluster.js does that when
// RINGPUSH_CLUSTER_BROKER_DELAY_MS is set) it makes replication between nodes slow, which shows
// which tests assume a change on one node is seen at once on the others.
//
// Exits on SIGTERM / SIGINT, or when its standard input closes (the parent that started it went
// away), printing to stderr how many connections each backend got.

const net = require('node:net');

function parseBackend(s) {
  const m = /^([0-9.]+|localhost|\[[0-9a-fA-F:]+\]):(\d+)$/.exec(s);
  if (!m) throw new Error(`backend must be HOST:PORT, got ${JSON.stringify(s)}`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

/**
 * Starts the balancer. Resolves with { port, counts, close() } once it listens.
 * backends: [{host, port}]; counts[i] is how many connections backend i took.
 */
function startBalancer(backends, { host = '127.0.0.1', port = 0, delayMs = 0 } = {}) {
  if (backends.length === 0) throw new Error('no backends');
  const counts = backends.map(() => 0);
  const live = new Set();
  let next = 0;

  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    live.add(client);
    client.setNoDelay(true);
    let upstream = null;
    const teardown = () => {
      client.destroy();
      if (upstream) upstream.destroy();
      live.delete(client);
    };
    // An orderly close needs nothing here: each socket closes by itself once both of its
    // directions have ended. Only an error (a reset, a refused write) tears both down.
    client.on('error', teardown);
    client.on('close', (hadError) => (hadError ? teardown() : live.delete(client)));

    const first = next;
    next = (next + 1) % backends.length;
    const attempt = (tried) => {
      const idx = (first + tried) % backends.length;
      const b = backends[idx];
      const up = net.connect({ host: b.host, port: b.port, allowHalfOpen: true });
      upstream = up;
      let connected = false;
      up.once('connect', () => {
        connected = true;
        counts[idx] += 1;
        up.setNoDelay(true);
        if (client.destroyed) {
          up.destroy();
          return;
        }
        // pipe() ends the destination when the source ends: that is the half-close hand-off.
        if (delayMs > 0) {
          delayedPipe(client, up, delayMs);
          delayedPipe(up, client, delayMs);
        } else {
          client.pipe(up);
          up.pipe(client);
        }
        client.resume();
      });
      up.on('error', () => {
        if (!connected && tried + 1 < backends.length && !client.destroyed) {
          up.destroy();
          attempt(tried + 1);
          return;
        }
        teardown();
      });
      up.on('close', (hadError) => {
        if (connected && hadError) teardown();
      });
    };
    attempt(0);
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve({
        port: server.address().port,
        counts,
        close() {
          for (const c of live) c.destroy();
          return new Promise((r) => server.close(() => r()));
        },
      });
    });
  });
}

/** Like src.pipe(dst), each chunk (and the end) `ms` later; timers of one duration fire in order. */
function delayedPipe(src, dst, ms) {
  src.on('data', (chunk) => setTimeout(() => { if (!dst.destroyed) dst.write(chunk); }, ms));
  src.on('end', () => setTimeout(() => { if (!dst.destroyed) dst.end(); }, ms));
}

module.exports = { startBalancer, parseBackend };

if (require.main === module) {
  const args = process.argv.slice(2);
  let delayMs = 0;
  if (args[0] === '--delay-ms') {
    delayMs = Number(args[1]);
    args.splice(0, 2);
  }
  const backends = args.map(parseBackend);
  startBalancer(backends, { delayMs }).then(
    (b) => {
      process.stdout.write(`balancer listening on 127.0.0.1:${b.port}\n`);
      let done = false;
      const quit = () => {
        if (done) return;
        done = true;
        const per = backends.map((x, i) => `${x.host}:${x.port}=${b.counts[i]}`).join(' ');
        process.stderr.write(`balancer: connections per backend: ${per}\n`);
        b.close().then(() => process.exit(0));
        setTimeout(() => process.exit(0), 2000).unref();
      };
      process.on('SIGTERM', quit);
      process.on('SIGINT', quit);
      process.stdin.on('end', quit);
      process.stdin.on('error', quit);
      process.stdin.resume();
    },
    (err) => {
      process.stderr.write(`balancer: ${err.message}\n`);
      process.exit(1);
    },
  );
}
