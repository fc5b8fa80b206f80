'use strict';
// Test harness for the ringpush compatibility suite: starts the real server binary
// with a generated TOML config and offers small promise helpers around pusher-js.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

// faye-websocket (bundled into pusher-js for Node) arms a 30 s close timer even when close()
// is called on a socket that is already closed, which pusher-js does after a refusal
// (close codes 4000-4099). The timer holds the test process open for 30 s after the last test;
// unref it so the process can exit (it changes nothing while sockets are still open).
const realSetTimeout = global.setTimeout;
global.setTimeout = function setTimeoutUnrefLongCloseTimers(fn, ms, ...args) {
  const t = realSetTimeout(fn, ms, ...args);
  if (ms === 30000 && t && typeof t.unref === 'function') t.unref();
  return t;
};

const PusherJS = require('pusher-js');
const PusherSDK = require('pusher');

const DEFAULT_BIN = path.resolve(__dirname, '..', '..', '..', 'target', 'debug', 'ringpush');
const BIN = process.env.RINGPUSH_BIN || DEFAULT_BIN;
const WORKERS = 2;
const DEFAULT_TIMEOUT = 5000;

// Cluster mode (RINGPUSH_CLUSTER=1): startServer() starts, instead of one server, a fresh Redis,
// three nodes with the same config plus [cluster], and a round-robin TCP balancer in front
// (tests/cluster/cluster.js); the handle's host and port are the balancer's. Every test then
// runs unchanged against the cluster, except those marked singleProcessOnly().
const CLUSTER = !['', '0', 'false', 'no'].includes(String(process.env.RINGPUSH_CLUSTER || '').toLowerCase());
const CLUSTER_NODES = 3;
const REPLICATION_TIMEOUT = 5000;

/**
 * it() options for a test that inherently needs one server process: skipped in cluster mode
 * with a reason that says why (`reason` names the single-process fact it depends on).
 */
function singleProcessOnly(reason) {
  return CLUSTER ? { skip: `single-process only: ${reason}` } : {};
}

// Encryption master key for private-encrypted channels: 32 bytes, base64.
const ENCRYPTION_MASTER_KEY_BASE64 = Buffer.from('ringpush-compat-master-key-32byt').toString('base64');

function defaultApps() {
  return [
    {
      id: 'app-1',
      key: 'key-1',
      secret: 'secret-1',
      client_events: true,
      subscription_count: true,
      watchlist_events: true,
    },
    {
      id: 'app-2',
      key: 'key-2',
      secret: 'secret-2',
      client_events: false,
    },
  ];
}

// ---------------------------------------------------------------- TOML writer

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v); // TOML basic strings accept JSON escapes we produce
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error(`bad number in config: ${v}`);
    return String(v);
  }
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  if (v && typeof v === 'object') {
    return `{ ${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)} = ${tomlValue(x)}`).join(', ')} }`;
  }
  throw new Error(`unsupported config value: ${v}`);
}

function renderConfig({ server, apps }) {
  const lines = ['[server]'];
  for (const [k, v] of Object.entries(server)) lines.push(`${k} = ${tomlValue(v)}`);
  for (const app of apps) {
    lines.push('', '[[apps]]');
    for (const [k, v] of Object.entries(app)) lines.push(`${k} = ${tomlValue(v)}`);
  }
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------- server process

/**
 * Start the server. Resolves once the "listening on" line was printed.
 * opts.server: extra [server] keys; opts.apps: app tables (default: defaultApps()).
 */
async function startServer(opts = {}) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`ringpush binary not found at ${BIN} (set RINGPUSH_BIN)`);
  }
  const server = {
    host: '127.0.0.1',
    port: 0,
    workers: WORKERS,
    shutdown_grace: 2,
    ...(opts.server || {}),
  };
  const apps = opts.apps || defaultApps();
  if (CLUSTER) return startClusterHandle(server, apps);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ringpush-node-'));
  const configPath = path.join(dir, 'ringpush.toml');
  fs.writeFileSync(configPath, renderConfig({ server, apps }));

  const child = spawn(BIN, ['--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: process.env,
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 200000) stderr = stderr.slice(-100000);
  });
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });

  const port = await new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: child.stdout });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not print "listening on" within 15s; stderr:\n${stderr.slice(-4000)}`));
    }, 15000);
    rl.on('line', (line) => {
      const m = /^ringpush listening on ([0-9.]+):(\d+)$/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[2]));
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (code ${code}, signal ${signal}); stderr:\n${stderr.slice(-4000)}`));
    });
  });

  return clientApi({
    port,
    host: '127.0.0.1',
    apps,
    configPath,
    workers: server.workers,
    process: child,
    clients: new Set(),
    stderr: () => stderr,
    /** SIGTERM the server; resolves with {code, signal}. Disconnects tracked clients first. */
    async stop() {
      disconnectAll(this);
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
      const res = await exited;
      clearTimeout(timer);
      fs.rmSync(dir, { recursive: true, force: true });
      return res;
    },
    /** On one server every query sees every change at once: nothing to wait for. */
    async waitReplicated() {},
    /** On one server the test's own ordering (markers) suffices: nothing to wait for. */
    async waitUntil() {},
  });
}

function disconnectAll(handle) {
  for (const c of handle.clients) {
    try { c.disconnect(); } catch (_) { /* ignore */ }
  }
  handle.clients.clear();
}

/** The cluster-mode handle: same shape, host and port of the balancer. */
async function startClusterHandle(server, apps) {
  const { startCluster, combinedExit } = require('../../cluster/cluster');
  const cluster = await startCluster({
    configText: renderConfig({ server, apps }),
    bin: BIN,
    nodes: CLUSTER_NODES,
  });
  return clientApi({
    port: cluster.port,
    host: '127.0.0.1',
    apps,
    configPath: cluster.configPath,
    workers: server.workers,
    process: null,
    cluster,
    clients: new Set(),
    stderr: cluster.stderr,
    /**
     * SIGTERMs every node (then the balancer and Redis); resolves with {code: 0, signal: null}
     * when every node exited 0, else with the first other node's {code, signal}.
     */
    async stop() {
      disconnectAll(this);
      const res = await cluster.stop();
      if (process.env.RINGPUSH_CLUSTER_VERBOSE) process.stderr.write(`cluster connections per node: ${res.balancer}\n`);
      return combinedExit(res.nodes);
    },
    /**
     * Replication between nodes is asynchronous (milliseconds through Redis), so a fact changed
     * through one node is seen by the others a moment later. Waits until `check(sdk)` passes on
     * every node, each asked directly (not through the balancer), for at most 5 s; rethrows the
     * last failure. `check` gets a server SDK bound to that node and asserts (only an
     * AssertionError is retried; an HTTP error fails at once). Use it only where the cluster is
     * eventually consistent by design, with a comment saying so.
     */
    async waitReplicated(check, app = 0) {
      const deadline = Date.now() + REPLICATION_TIMEOUT;
      for (const node of cluster.nodes) {
        const sdk = this.sdk(app, { port: String(node.port) });
        for (;;) {
          try {
            await check(sdk);
            break;
          } catch (err) {
            if (!(err instanceof assert.AssertionError)) throw err;
            if (Date.now() > deadline) {
              err.message = `not replicated to node on port ${node.port} within ${REPLICATION_TIMEOUT} ms: ${err.message}`;
              throw err;
            }
            await new Promise((r) => setTimeout(r, 20));
          }
        }
      }
    },
    waitUntil: clusterWaitUntil,
  });
}

/**
 * Cluster mode only (a no-op on one server): polls `pred()` every 20 ms until it is true, for at
 * most 5 s, else fails naming `what`. For what is eventually true in a cluster by design, e.g.
 * an event relayed from another node that a marker from a third node may overtake.
 */
async function clusterWaitUntil(pred, what) {
  const deadline = Date.now() + REPLICATION_TIMEOUT;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timeout after ${REPLICATION_TIMEOUT}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Adds the client-side helpers (SDK, pusher-js clients) to a server or cluster handle. */
function clientApi(handle) {
  const { apps, port } = handle;
  Object.assign(handle, {
    /** Node server SDK bound to this server and the given app (index or object). */
    sdk(app = 0, extra = {}) {
      const a = typeof app === 'number' ? apps[app] : app;
      return new PusherSDK({
        appId: a.id,
        key: a.key,
        secret: a.secret,
        host: '127.0.0.1',
        port: String(port),
        useTLS: false,
        encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
        // In a cluster every API call opens a connection of its own, so the balancer spreads
        // consecutive calls over the nodes (a kept-alive connection would pin them to one).
        ...(CLUSTER ? { agent: new http.Agent({ keepAlive: false }) } : {}),
        ...extra,
      });
    },
    /**
     * A connected pusher-js client. opts.user = {id, user_info, watchlist} enables sign-in,
     * opts.presence = {user_id, user_info} (or a function of channel name) sets presence data,
     * opts.authSdk overrides the SDK used to sign channel auth (e.g. wrong secret).
     */
    async client(opts = {}) {
      const app = typeof opts.app === 'number' ? apps[opts.app] : (opts.app || apps[0]);
      const authSdk = opts.authSdk || handle.sdk(app);
      const presenceFor = (channelName) =>
        typeof opts.presence === 'function' ? opts.presence(channelName) : opts.presence;
      const pusher = new PusherJS(app.key, {
        wsHost: '127.0.0.1',
        wsPort: port,
        forceTLS: false,
        enabledTransports: ['ws'],
        disableStats: true,
        cluster: 'mt1',
        channelAuthorization: {
          customHandler: (params, callback) => {
            try {
              const { socketId, channelName } = params;
              const data = channelName.startsWith('presence-') ? presenceFor(channelName) : undefined;
              callback(null, authSdk.authorizeChannel(socketId, channelName, data));
            } catch (err) {
              callback(err, null);
            }
          },
        },
        userAuthentication: {
          customHandler: (params, callback) => {
            try {
              if (!opts.user) throw new Error('no user configured for this client');
              callback(null, authSdk.authenticateUser(params.socketId, opts.user));
            } catch (err) {
              callback(err, null);
            }
          },
        },
      });
      handle.clients.add(pusher);
      await waitConnected(pusher);
      return pusher;
    },
    /** Open clients until they cover `shards` distinct shard indexes; returns them in shard order. */
    async clientsOnDistinctShards(shards = 2, opts = {}, maxTries = 40) {
      const byShard = new Map();
      const spare = [];
      for (let i = 0; i < maxTries && byShard.size < shards; i++) {
        const c = await handle.client(opts);
        const s = shardOf(c.connection.socket_id, handle.workers);
        if (byShard.has(s)) spare.push(c);
        else byShard.set(s, c);
      }
      for (const c of spare) {
        c.disconnect();
        handle.clients.delete(c);
      }
      if (byShard.size < shards) {
        throw new Error(`could not spread ${shards} clients over distinct shards (got ${[...byShard.keys()]})`);
      }
      return [...byShard.entries()].sort((a, b) => a[0] - b[0]).map(([, c]) => c);
    },
  });
  return handle;
}

// ---------------------------------------------------------------- helpers

function shardOf(socketId, workers) {
  const m = /^(\d+)\.(\d+)$/.exec(socketId);
  if (!m) throw new Error(`bad socket_id ${socketId}`);
  return Number(BigInt(m[2]) % BigInt(workers));
}

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms}ms waiting for ${what}`)), ms);
    // never keep the process alive just for a guard timer (open sockets do that while needed)
    timer.unref();
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

function waitConnected(pusher, ms = DEFAULT_TIMEOUT) {
  if (pusher.connection.state === 'connected') return Promise.resolve();
  return withTimeout(
    new Promise((resolve, reject) => {
      const onChange = ({ current }) => {
        if (current === 'connected') {
          pusher.connection.unbind('state_change', onChange);
          resolve();
        } else if (current === 'failed' || current === 'unavailable') {
          pusher.connection.unbind('state_change', onChange);
          reject(new Error(`connection went to ${current}`));
        }
      };
      pusher.connection.bind('state_change', onChange);
    }),
    ms,
    'pusher-js connection',
  );
}

/**
 * Resolve with the data of the first `event` emitted on a pusher-js channel / connection /
 * user / watchlist that passes `filter(data, metadata)`.
 */
function once(emitter, event, ms = DEFAULT_TIMEOUT, filter = () => true) {
  return onceMeta(emitter, event, ms, filter).then((x) => x.data);
}

/** Like once() but resolves with {data, metadata} (metadata.user_id on presence client events). */
function onceMeta(emitter, event, ms = DEFAULT_TIMEOUT, filter = () => true) {
  let handler;
  const p = new Promise((resolve) => {
    handler = (data, metadata) => {
      if (!filter(data, metadata)) return;
      emitter.unbind(event, handler);
      resolve({ data, metadata });
    };
    emitter.bind(event, handler);
  });
  return withTimeout(p, ms, `event ${event}`).catch((e) => {
    emitter.unbind(event, handler);
    throw e;
  });
}

/** Collects the data of every emission of `event` into an array. */
function record(emitter, event) {
  const seen = [];
  emitter.bind(event, (data) => seen.push(data));
  return seen;
}

/** Subscribe and wait for pusher:subscription_succeeded (rejects on subscription_error). */
async function subscribe(pusher, name, ms = DEFAULT_TIMEOUT) {
  const channel = pusher.subscribe(name);
  if (channel.subscribed) return channel;
  let ok, bad;
  const p = new Promise((resolve, reject) => {
    ok = (data) => resolve(data);
    bad = (err) => reject(new Error(`subscription_error on ${name}: ${JSON.stringify(err)}`));
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', bad);
  });
  try {
    await withTimeout(p, ms, `subscription_succeeded on ${name}`);
  } finally {
    channel.unbind('pusher:subscription_succeeded', ok);
    channel.unbind('pusher:subscription_error', bad);
  }
  return channel;
}

/**
 * A check for srv.waitReplicated(): GET `path` (with `params`) answers exactly `expected`.
 * `normalize` may map the JSON body first (e.g. to sort a user list).
 */
function expectGet(path, params, expected, normalize = (x) => x) {
  return async (sdk) => {
    const res = await sdk.get({ path, params });
    assert.deepEqual(normalize(await res.json()), expected, `GET ${path} ${JSON.stringify(params)}`);
  };
}

/** A check for srv.waitReplicated(): the presence channel lists exactly these user ids. */
function expectUsers(channel, ids) {
  return expectGet(`/channels/${channel}/users`, {}, [...ids].map(String).sort(),
    (body) => body.users.map((u) => String(u.id)).sort());
}

/** Resolve with the first pusher:error data the connection reports. */
function nextConnectionError(pusher, ms = DEFAULT_TIMEOUT) {
  return once(pusher.connection, 'error', ms, (e) => e && e.type === 'PusherError').then((e) => e.data);
}

/** Resolve when the connection reaches `state`. */
function waitState(pusher, state, ms = DEFAULT_TIMEOUT) {
  if (pusher.connection.state === state) return Promise.resolve();
  return once(pusher.connection, 'state_change', ms, (s) => s.current === state);
}

/** Resolves after pusher-js finished sign-in and its #server-to-user channel is subscribed. */
async function signin(pusher, ms = DEFAULT_TIMEOUT) {
  const success = once(pusher.connection, 'message', ms, (m) => m.event === 'pusher:signin_success');
  // 4302 (watchlist over the limit) accompanies a successful sign-in: not a failure
  const failure = once(pusher.connection, 'error', ms, (e) => e && e.type === 'PusherError' && e.data.code !== 4302)
    .then((e) => {
      throw new Error(`signin failed: ${JSON.stringify(e.data)}`);
    });
  failure.catch(() => {});
  pusher.signin();
  await Promise.race([success, failure]);
  await withTimeout(pusher.user.signinDonePromise, ms, 'signin promise');
  const ch = pusher.user.serverToUserChannel;
  if (!ch) throw new Error('pusher-js dropped the sign-in (user_data rejected)');
  if (!ch.subscribed) await once(ch, 'pusher:subscription_succeeded', ms);
  return pusher.user;
}

module.exports = {
  BIN,
  WORKERS,
  CLUSTER,
  singleProcessOnly,
  expectGet,
  expectUsers,
  ENCRYPTION_MASTER_KEY_BASE64,
  defaultApps,
  renderConfig,
  startServer,
  shardOf,
  withTimeout,
  waitConnected,
  waitState,
  once,
  onceMeta,
  record,
  subscribe,
  nextConnectionError,
  signin,
  PusherJS,
  PusherSDK,
};
