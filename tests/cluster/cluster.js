#!/usr/bin/env node
'use strict';
// Starts a ringpush cluster for the compatibility suites in cluster mode (RINGPUSH_CLUSTER=1):
// a fresh redis-server on a free loopback port, three ringpush nodes with the same generated
// config plus a [cluster] section (a prefix of their own, a short node_timeout), and the
// round-robin balancer (balancer.js) in front. The suites are handed the balancer's port as "the
// server". Start-up returns only once every node lists all the others as peers
// (`ringpush_cluster_peers N-1` on each node's own /metrics).
//
// Used two ways:
//   - as a module by tests/node/lib/harness.js: startCluster({ configText, ... });
//   - as a command by tests/python/conftest.py:
//       node cluster.js --config FILE [--nodes N] [--node-timeout S]
//     prints `cluster ready {"port":..,"nodes":[..],"redis":..}` once serving, copies each
//     node's stderr to its own stderr (lines prefixed `[node i]`), and on SIGTERM, SIGINT or the
//     end of its standard input stops everything and prints
//     `cluster stopped {"nodes":[{"code":..,"signal":..},..],"balancer":[..]}`.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const REPO = path.resolve(__dirname, '..', '..');
const DEFAULT_BIN = path.join(REPO, 'target', 'debug', 'ringpush');
const BALANCER = path.join(__dirname, 'balancer.js');
const REDIS = process.env.REDIS_SERVER || 'redis-server';
const LISTEN_RE = /^ringpush listening on ([0-9.]+):(\d+)$/;

// Children still running, killed if this process exits without stopping them.
const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try { child.kill('SIGKILL'); } catch (_) { /* gone */ }
  }
});

let clusterSeq = 0;

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** A port nothing listens on right now (the kernel's pick; released before use). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Spawns a child, keeping the tail of its stderr; `exited` resolves with {code, signal}. */
function launch(cmd, args, { env, stdin = 'ignore', onStderrLine } = {}) {
  const child = spawn(cmd, args, { stdio: [stdin, 'pipe', 'pipe'], env });
  running.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 200000) stderr = stderr.slice(-100000);
  });
  if (onStderrLine) readline.createInterface({ input: child.stderr }).on('line', onStderrLine);
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
    child.on('error', (err) => {
      running.delete(child);
      stderr += `\n(spawn failed: ${err.message})`;
      resolve({ code: null, signal: null, error: err.message });
    });
  });
  return { child, exited, stderr: () => stderr };
}

/** Resolves with the first stdout line matching `re` (its match), rejects on exit or timeout. */
function waitLine(proc, re, ms, what) {
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.child.stdout });
    const timer = setTimeout(() => {
      rl.close();
      reject(new Error(`${what}: no ${re} within ${ms} ms; stderr:\n${proc.stderr().slice(-4000)}`));
    }, ms);
    rl.on('line', (line) => {
      const m = re.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        rl.close();
        // keep draining stdout so the child never blocks on a full pipe
        proc.child.stdout.resume();
        resolve(m);
      }
    });
    proc.exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited early (code ${code}, signal ${signal}); stderr:\n${proc.stderr().slice(-4000)}`));
    });
  });
}

/** SIGTERM (then SIGKILL after `graceMs`) and wait for the exit. */
async function terminate(proc, graceMs = 15000) {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return proc.exited;
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), graceMs);
  const res = await proc.exited;
  clearTimeout(timer);
  return res;
}

/** Answers +PONG to PING: the redis-server on `port` is up. */
function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let got = '';
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      got += d;
      if (got.includes('\r\n')) done(got.startsWith('+PONG'));
    });
  });
}

/** A fresh, empty, non-persistent redis-server of this cluster's own on a free port. */
async function startRedis(dir) {
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const proc = launch(REDIS, [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--protected-mode', 'no', '--dir', dir, '--loglevel', 'warning',
    ]);
    const deadline = Date.now() + 10000;
    let exited = false;
    proc.exited.then(() => { exited = true; });
    while (!exited && Date.now() < deadline) {
      if (await redisPing(port)) {
        proc.child.stdout.resume();
        return { port, proc };
      }
      await sleep(20);
    }
    // lost the port to someone else (redis exits: "Address already in use"), or too slow
    proc.child.kill('SIGKILL');
    await proc.exited;
    lastErr = new Error(`redis-server on ${port} did not start; stderr:\n${proc.stderr().slice(-2000)}`);
  }
  throw lastErr;
}

/** GET `path` on 127.0.0.1:`port` on a connection of its own; resolves with the body. */
function httpGet(port, urlPath, ms = 2000) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: ms }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** The `ringpush_cluster_peers` gauge of the node on `port` (-1 when unreadable). */
async function peersOf(port) {
  try {
    const { body } = await httpGet(port, '/metrics');
    const m = /^ringpush_cluster_peers (\d+)$/m.exec(body);
    return m ? Number(m[1]) : -1;
  } catch (_) {
    return -1;
  }
}

/**
 * Starts redis, `nodes` ringpush nodes sharing it and the balancer. Resolves with a handle:
 * { port (the balancer's), host, nodes: [{port, process, stderr()}], redisPort, prefix,
 *   stderr() (every node's, prefixed), stop() -> {nodes: [{code, signal}], balancer: counts} }.
 */
async function startCluster({
  configText,
  bin = process.env.RINGPUSH_BIN || DEFAULT_BIN,
  nodes = 3,
  nodeTimeout = 2,
  env = process.env,
  onNodeStderrLine,
} = {}) {
  if (/^\s*\[cluster\]/m.test(configText)) throw new Error('config already has a [cluster] section');
  if (!fs.existsSync(bin)) throw new Error(`ringpush binary not found at ${bin} (set RINGPUSH_BIN)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ringpush-cluster-'));
  const prefix = `compat-${process.pid}-${++clusterSeq}-${Math.random().toString(36).slice(2, 8)}`;
  const started = [];
  let redis = null;
  const cleanup = async () => {
    await Promise.all(started.map((p) => terminate(p, 3000)));
    if (redis) await terminate(redis.proc, 3000);
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    redis = await startRedis(dir);
    let brokerPort = redis.port;
    const delay = Number(process.env.RINGPUSH_CLUSTER_BROKER_DELAY_MS || 0);
    if (delay > 0) {
      // diagnostic: slow replication down (see balancer.js --delay-ms)
      const slow = launch(process.execPath, [BALANCER, '--delay-ms', String(delay), `127.0.0.1:${redis.port}`], {
        stdin: 'pipe',
      });
      started.push(slow);
      brokerPort = Number((await waitLine(slow, /^balancer listening on 127\.0\.0\.1:(\d+)$/, 10000, 'broker delay'))[1]);
    }
    const configPath = path.join(dir, 'ringpush.toml');
    fs.writeFileSync(configPath, `${configText.replace(/\n*$/, '\n')}
[cluster]
adapter = "redis"
url = "redis://127.0.0.1:${brokerPort}"
prefix = "${prefix}"
node_timeout = ${nodeTimeout}
`);
    const procs = [];
    for (let i = 0; i < nodes; i++) {
      const p = launch(bin, ['--config', configPath], {
        env,
        onStderrLine: onNodeStderrLine && ((line) => onNodeStderrLine(i, line)),
      });
      started.push(p);
      procs.push(p);
    }
    const ports = [];
    for (let i = 0; i < nodes; i++) {
      const m = await waitLine(procs[i], LISTEN_RE, 15000, `cluster node ${i}`);
      ports.push(Number(m[2]));
    }
    // Every node must see all the others before a test runs.
    const deadline = Date.now() + 15000;
    for (let i = 0; i < nodes; i++) {
      let peers = await peersOf(ports[i]);
      while (peers !== nodes - 1) {
        if (Date.now() > deadline) {
          throw new Error(`node ${i} (port ${ports[i]}) sees ${peers} peers, want ${nodes - 1}; stderr:\n`
            + procs[i].stderr().slice(-4000));
        }
        await sleep(50);
        peers = await peersOf(ports[i]);
      }
    }
    const balancer = launch(process.execPath, [BALANCER, ...ports.map((p) => `127.0.0.1:${p}`)], {
      stdin: 'pipe',
    });
    started.push(balancer);
    const bm = await waitLine(balancer, /^balancer listening on 127\.0\.0\.1:(\d+)$/, 10000, 'balancer');
    const port = Number(bm[1]);

    const handle = {
      host: '127.0.0.1',
      port,
      redisPort: redis.port,
      prefix,
      configPath,
      nodes: procs.map((p, i) => ({ port: ports[i], process: p.child, stderr: p.stderr })),
      stderr: () => procs.map((p, i) => p.stderr().replace(/^(?=.)/gm, `[node ${i}] `)).join(''),
      async stop() {
        // Nodes first, so their clients get the shutdown close through the balancer.
        const results = await Promise.all(procs.map((p) => terminate(p)));
        await Promise.all(started.filter((p) => !procs.includes(p)).map((p) => terminate(p, 3000)));
        const counts = /connections per backend: (.*)$/m.exec(balancer.stderr());
        await terminate(redis.proc, 3000);
        fs.rmSync(dir, { recursive: true, force: true });
        return { nodes: results, balancer: counts ? counts[1] : null };
      },
    };
    return handle;
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** One {code, signal} for the whole cluster: clean when every node exited 0, else the first other. */
function combinedExit(results) {
  return results.find((r) => r.code !== 0 || r.signal !== null) || { code: 0, signal: null };
}

module.exports = { startCluster, combinedExit };

if (require.main === module) {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const configFile = opt('--config');
  if (!configFile) {
    process.stderr.write('usage: cluster.js --config FILE [--nodes N] [--node-timeout S]\n');
    process.exit(2);
  }
  startCluster({
    configText: fs.readFileSync(configFile, 'utf8'),
    nodes: Number(opt('--nodes', '3')),
    nodeTimeout: Number(opt('--node-timeout', '2')),
    onNodeStderrLine: (i, line) => process.stderr.write(`[node ${i}] ${line}\n`),
  }).then(
    (c) => {
      const info = { port: c.port, nodes: c.nodes.map((n) => n.port), redis: c.redisPort, prefix: c.prefix };
      process.stdout.write(`cluster ready ${JSON.stringify(info)}\n`);
      let stopping = false;
      const stop = async () => {
        if (stopping) return;
        stopping = true;
        const res = await c.stop();
        process.stdout.write(`cluster stopped ${JSON.stringify(res)}\n`);
        process.exit(0);
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      process.stdin.on('end', stop);
      process.stdin.on('error', stop);
      process.stdin.resume();
    },
    (err) => {
      process.stderr.write(`cluster.js: ${err.stack || err.message}\n`);
      process.exit(1);
    },
  );
}
