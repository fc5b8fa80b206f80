"""Fixtures for the ringpush Python compatibility suite.

Starts the real server binary (RINGPUSH_BIN, default <repo>/target/debug/ringpush) with a
generated TOML config on port 0, and offers helpers around the `pusher` server SDK and the
`pysher` websocket client.

Cluster mode (RINGPUSH_CLUSTER=1): instead of one server, each Server starts a cluster through
tests/cluster/cluster.js (Node): a fresh redis-server, three nodes with the same config plus a
[cluster] section, and a round-robin TCP balancer in front, whose port is the server's port.
Tests that inherently need one process are marked with single_process_only(reason).
"""
import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pusher
import pysher
import pytest
from pusher.requests import RequestsBackend

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.normpath(os.path.join(HERE, "..", "..", "target", "debug", "ringpush"))
BIN = os.environ.get("RINGPUSH_BIN", DEFAULT_BIN)
WORKERS = 2
TIMEOUT = 5.0
ENCRYPTION_MASTER_KEY_BASE64 = base64.b64encode(b"ringpush-python-master-key-32byt").decode()
LISTEN_RE = re.compile(r"^ringpush listening on ([0-9.]+):(\d+)$")

CLUSTER = os.environ.get("RINGPUSH_CLUSTER", "").lower() not in ("", "0", "false", "no")
CLUSTER_JS = os.path.normpath(os.path.join(HERE, "..", "cluster", "cluster.js"))
CLUSTER_NODES = 3
CLUSTER_READY_RE = re.compile(r"^cluster ready (\{.*\})$")
CLUSTER_STOPPED_RE = re.compile(r"^cluster stopped (\{.*\})$")
REPLICATION_TIMEOUT = 5.0


def single_process_only(reason):
    """Marks a test that inherently needs one server process: skipped in cluster mode, with a
    reason naming the single-process fact it depends on."""
    return pytest.mark.skipif(CLUSTER, reason="single-process only: " + reason)


class _ConnectionPerRequest(RequestsBackend):
    """The SDK's requests backend, but every API call on a connection of its own
    (`Connection: close`): in cluster mode the balancer then spreads consecutive calls over the
    nodes, where a kept-alive session would pin them all to one."""

    def __init__(self, client, **options):
        super().__init__(client, **options)
        self.session.headers["Connection"] = "close"

APPS = [
    {
        "id": "1001",
        "key": "py-key-1",
        "secret": "py-secret-1",
        "client_events": True,
        "subscription_count": True,
    },
    {
        "id": "1002",
        "key": "py-key-2",
        "secret": "py-secret-2",
    },
]

_counter = itertools.count(1)


def uniq(prefix):
    """A channel / user name unique within this test run."""
    return "%s%d-%d" % (prefix, os.getpid(), next(_counter))


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError("unsupported config value %r" % (v,))


def render_config(server, apps):
    lines = ["[server]"]
    lines += ["%s = %s" % (k, _toml_value(v)) for k, v in server.items()]
    for app in apps:
        lines += ["", "[[apps]]"]
        lines += ["%s = %s" % (k, _toml_value(v)) for k, v in app.items()]
    return "\n".join(lines) + "\n"


class Server:
    def __init__(self, server_opts=None, apps=None):
        self.apps = apps or APPS
        self.server_opts = {
            "host": "127.0.0.1",
            "port": 0,
            "workers": WORKERS,
            "shutdown_grace": 2,
        }
        self.server_opts.update(server_opts or {})
        self.workers = self.server_opts["workers"]
        self.tmp = tempfile.TemporaryDirectory(prefix="ringpush-py-")
        self.config_path = os.path.join(self.tmp.name, "ringpush.toml")
        with open(self.config_path, "w") as f:
            f.write(render_config(self.server_opts, self.apps))
        self.stderr_path = os.path.join(self.tmp.name, "stderr.log")
        self.clients = []
        self.proc = None
        self.port = None

    def start(self):
        if not os.path.exists(BIN):
            raise RuntimeError("ringpush binary not found at %s (set RINGPUSH_BIN)" % BIN)
        if CLUSTER:
            return self._start_cluster()
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [BIN, "--config", self.config_path],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        found = {}

        def reader():
            for line in self.proc.stdout:
                m = LISTEN_RE.match(line.strip())
                if m and "port" not in found:
                    found["port"] = int(m.group(2))
                    ready.set()
            ready.set()

        ready = threading.Event()
        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(15) or "port" not in found:
            self.proc.kill()
            raise RuntimeError("server did not print 'listening on'; stderr:\n" + self.stderr_tail())
        self.port = found["port"]
        return self

    def _start_cluster(self):
        """Starts the cluster launcher; its node stderr (prefixed) goes to our stderr log."""
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            ["node", CLUSTER_JS, "--config", self.config_path, "--nodes", str(CLUSTER_NODES)],
            stdin=subprocess.PIPE,  # the launcher stops the cluster when this closes
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        found = {}
        ready = threading.Event()
        self._stopped = threading.Event()

        def reader():
            for line in self.proc.stdout:
                m = CLUSTER_READY_RE.match(line.strip())
                if m and "ready" not in found:
                    found["ready"] = json.loads(m.group(1))
                    ready.set()
                m = CLUSTER_STOPPED_RE.match(line.strip())
                if m:
                    found["stopped"] = json.loads(m.group(1))
                    self._stopped.set()
            ready.set()
            self._stopped.set()

        threading.Thread(target=reader, daemon=True).start()
        self._found = found
        if not ready.wait(60) or "ready" not in found:
            self.proc.kill()
            raise RuntimeError("cluster did not start; stderr:\n" + self.stderr_tail())
        self.port = found["ready"]["port"]
        self.node_ports = found["ready"]["nodes"]
        return self

    def stderr_tail(self, n=4000):
        try:
            with open(self.stderr_path) as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self):
        """SIGTERM the server and return its exit code."""
        for c in self.clients:
            try:
                c.connection.disconnect_called = True
                c.connection.needs_reconnect = False
                if c.connection.socket:
                    c.connection.socket.close()
            except Exception:
                pass
        self.clients = []
        if CLUSTER:
            return self._stop_cluster()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        rc = self.proc.returncode
        self.tmp.cleanup()
        return rc

    def _stop_cluster(self):
        """SIGTERMs every node (through the launcher); 0 when every node exited 0, else the
        first other node's exit code (or "signal NAME"), so `rc == 0` checks stay as they are."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stopped.wait(5)
        self._stderr.close()
        self.tmp.cleanup()
        stopped = self._found.get("stopped")
        if stopped is not None and os.environ.get("RINGPUSH_CLUSTER_VERBOSE"):
            print("cluster connections per node: %s" % stopped.get("balancer"), file=sys.stderr)
        if stopped is None:
            return "cluster launcher exited %r without reporting the nodes" % self.proc.returncode
        for node in stopped["nodes"]:
            if node["code"] != 0 or node["signal"] is not None:
                return node["code"] if node["signal"] is None else "signal %s" % node["signal"]
        return 0

    def wait_replicated(self, check, index=0):
        """Replication between nodes is asynchronous (milliseconds through Redis): a fact
        changed through one node reaches the others a moment later. In cluster mode, waits until
        check(sdk) passes (does not raise AssertionError) on every node, each asked directly,
        for at most 5 s. On one server there is nothing to wait for and it does nothing."""
        if not CLUSTER:
            return
        deadline = time.monotonic() + REPLICATION_TIMEOUT
        for port in self.node_ports:
            sdk = self.sdk(index, port=port)
            while True:
                try:
                    check(sdk)
                    break
                except AssertionError as e:
                    if time.monotonic() > deadline:
                        raise AssertionError("not replicated to node on port %d within %.0f s: %s"
                                             % (port, REPLICATION_TIMEOUT, e))
                    time.sleep(0.02)

    # ------------------------------------------------------------ clients

    def app(self, index=0):
        return self.apps[index]

    def sdk(self, index=0, port=None, **override):
        app = dict(self.apps[index])
        app.update(override)
        extra = {"backend": _ConnectionPerRequest} if CLUSTER else {}
        return pusher.Pusher(
            app_id=app["id"],
            key=app["key"],
            secret=app["secret"],
            ssl=False,
            host="127.0.0.1",
            port=port or self.port,
            encryption_master_key_base64=ENCRYPTION_MASTER_KEY_BASE64,
            **extra
        )

    def pysher(self, index=0, user_data=None):
        """A connected pysher client (socket_id known)."""
        app = self.apps[index]
        client = pysher.Pusher(
            app["key"],
            secure=False,
            custom_host="127.0.0.1",
            port=self.port,
            secret=app["secret"],
            user_data=user_data,
            reconnect_interval=1,
        )
        inbox = attach_inbox(client)
        client.connect()
        self.clients.append(client)
        inbox.wait_event(None, "pusher:connection_established")
        assert re.match(r"^\d+\.\d+$", client.connection.socket_id), client.connection.socket_id
        return client

    def pysher_on_distinct_shards(self, n=2, index=0, user_data=None, max_tries=40):
        by_shard = {}
        for _ in range(max_tries):
            c = self.pysher(index, user_data)
            shard = shard_of(c.connection.socket_id, self.workers)
            if shard in by_shard:
                disconnect(c)
            else:
                by_shard[shard] = c
            if len(by_shard) >= n:
                break
        assert len(by_shard) >= n, "could not place clients on %d shards" % n
        return [by_shard[k] for k in sorted(by_shard)]


def shard_of(socket_id, workers):
    return int(socket_id.split(".")[1]) % workers


def disconnect(client):
    conn = client.connection
    conn.disconnect_called = True
    conn.needs_reconnect = False
    if conn.socket:
        conn.socket.close()


class Inbox:
    """Thread-safe record of every frame a pysher client received: (channel, event, data).

    Connection-level frames (no channel) are recorded with channel None.
    """

    def __init__(self):
        self.cond = threading.Condition()
        self.items = []

    def add(self, channel, event, data):
        with self.cond:
            self.items.append((channel, event, data))
            self.cond.notify_all()

    def wait_for(self, pred, timeout=TIMEOUT, what="event"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for item in self.items:
                    if pred(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timeout waiting for %s; seen %r" % (what, self.items))
                self.cond.wait(left)

    def wait_event(self, channel, event, timeout=TIMEOUT):
        item = self.wait_for(lambda it: it[0] == channel and it[1] == event, timeout,
                             "%s on %s" % (event, channel))
        return item[2]

    def events(self, channel, event):
        with self.cond:
            return [d for (c, e, d) in self.items if c == channel and e == event]


def attach_inbox(client):
    """Record every frame the pysher client gets, before pysher dispatches it."""
    inbox = Inbox()
    conn = client.connection
    forward = conn.event_handler

    def on_channel_event(event, data, channel):
        inbox.add(channel, event, data)
        forward(event, data, channel)

    conn.event_handler = on_channel_event
    for name in ("pusher:error", "pusher:signin_success", "pusher:pong",
                 "pusher:connection_established", "pusher_internal:watchlist_events"):
        conn.bind(name, lambda data, _n=name: inbox.add(None, _n, data))
    client.inbox = inbox
    return inbox


def subscribe(client, channel_name, auth=None, timeout=TIMEOUT):
    """Subscribe with pysher and wait for pusher_internal:subscription_succeeded."""
    ch = client.subscribe(channel_name, auth=auth)
    client.inbox.wait_event(channel_name, "pusher_internal:subscription_succeeded", timeout)
    return ch


def parse(data):
    """Channel event data arrives as the JSON string the SDK sent; decode it."""
    return json.loads(data) if isinstance(data, str) else data


def wait_until(pred, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timeout waiting for " + what)
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server():
    srv = Server().start()
    yield srv
    rc = srv.stop()
    assert rc == 0, "server exit code %r on SIGTERM" % rc


@pytest.fixture(scope="module")
def fast_server():
    """A server with 1 s activity_timeout and 2 s pong_timeout (liveness tests)."""
    srv = Server(server_opts={"activity_timeout": 1, "pong_timeout": 2}).start()
    yield srv
    rc = srv.stop()
    assert rc == 0, "server exit code %r on SIGTERM" % rc


def pytest_report_header(config):
    if CLUSTER:
        return "ringpush: cluster mode (%d nodes and Redis behind a round-robin balancer), %s" % (
            CLUSTER_NODES, BIN)
    return "ringpush: single server, %s" % BIN
