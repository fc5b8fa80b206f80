#!/usr/bin/env python3
"""Side-by-side load comparison of ringpush and Sockudo with the bundled bench-harness.

Every scenario starts each server fresh, runs the harness against it with
--server-pid (so RSS and CPU come from /proc), and alternates the servers
(ringpush, Sockudo, ringpush, ...) so that slow drifts in machine load hit both.
The results a reader uses (comparison.md, params.json, state.json and the fan-out
step plots) go to perf/results/<timestamp>/, and perf/results/latest points at the
newest run. The raw per-run output (harness JSON, summaries and plots, server logs,
runs.jsonl) goes to a temporary directory that is deleted at the end, unless
--raw-dir names one to keep or a run failed (then its path is printed).

Every harness report is checked on load against perf/report_schema.py (the keys
this script reads); the goal thresholds come from perf/goals.toml.

Usage:
    perf/compare.py [--set quick|full] [--only SCENARIO,...] [--out DIR] [--raw-dir DIR]
    perf/compare.py --report-only DIR   # rewrite DIR/comparison.md and plots from DIR/state.json
    perf/compare.py --self-test         # checks of the report schema and the goals file

Environment:
    RINGPUSH_BIN   ringpush binary        (default <repo>/target/release/ringpush)
    SOCKUDO_BIN    Sockudo binary         (default /work/peers/sockudo/bin/sockudo)
    BENCH_HARNESS  bench-harness binary   (default: cargo build --release -p bench-harness
                                           into $CARGO_TARGET_DIR or <repo>/target)
    WORKERS        worker threads for both servers (default 2)

Loopback only. Every loop is bounded: the fan-out search has a step cap, every
harness run has a wall-clock limit, and every server start/stop has a deadline.
"""

import argparse
import datetime
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

import report_schema
from report_schema import SchemaError, value

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
APP = {"id": "app-id", "key": "app-key", "secret": "app-secret"}
SERVERS = ("ringpush", "sockudo")
DISPLAY = {"ringpush": "ringpush", "sockudo": "Sockudo"}
GOALS_FILE = os.path.join(HERE, "goals.toml")


# ---------------------------------------------------------------- goals

# The thresholds each goal in goals.toml must define (their values live only in that file).
GOAL_KEYS = {
    "idle_memory": ("max_kib_per_connection", "min_ratio"),
    "fanout_max": ("min_ratio",),
    "cpu_per_delivery": ("min_ratio",),
    "latency": ("max_p99_over_p50",),
    "connect": ("min_ratio",),
    "crosscore": ("max_w2_over_w1",),
    "scale": ("min_subscribed_fraction", "min_delivery_ratio"),
}
GOAL_LABEL_EXTRA = {"scale": ("n",)}  # label fields filled in from the scenario parameters


class GoalsError(Exception):
    pass


def load_goals(path=GOALS_FILE):
    """Reads and checks the goals file; GoalsError names the file and the key."""
    try:
        with open(path, "rb") as f:
            goals = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise GoalsError(f"{path}: cannot read the goals: {e}") from None
    for name, keys in GOAL_KEYS.items():
        g = goals.get(name)
        if not isinstance(g, dict):
            raise GoalsError(f"{path}: table [{name}] missing")
        for k in ("id", "label"):
            if not isinstance(g.get(k), str):
                raise GoalsError(f"{path}: key {name}.{k}: expected a string, got {g.get(k)!r}")
        for k in keys:
            v = g.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise GoalsError(f"{path}: key {name}.{k}: expected a number, got {v!r}")
        try:
            goal_label(g, **{k: 0 for k in GOAL_LABEL_EXTRA.get(name, ())})
        except (KeyError, IndexError, ValueError) as e:
            raise GoalsError(f"{path}: key {name}.label: unknown field {e} in {g['label']!r}") from None
    unknown = set(goals) - set(GOAL_KEYS)
    if unknown:
        raise GoalsError(f"{path}: unknown goal table(s) {sorted(unknown)} (known: {', '.join(GOAL_KEYS)})")
    return goals


def goal_label(g, **extra):
    """'1. Idle memory <= 2 KiB/conn ...': the goal's id and label with its fields filled in."""
    def num(v):
        return f"{v:g}" if isinstance(v, float) else str(v)
    fields = {k: num(v) for k, v in g.items() if k not in ("id", "label")}
    fields.update({k: num(v) for k, v in extra.items()})
    return f"{g['id']}. " + g["label"].format(**fields)


# ---------------------------------------------------------------- scenario sets

def scenario_set(name):
    """Parameters of the named set. `quick` checks the pipeline in ~3 minutes,
    `full` produces the numbers for the goals in well under 25 minutes."""
    if name == "quick":
        return {
            "idle": {"n": 2000, "k": 10, "rate": 2000, "hold": 2},
            "connect": {"n": 2000, "rate": 20000, "reps": 1, "procs": 1},
            "fanout": {"n": 500, "k": 1, "start_rate": 100, "factor": 2.0, "max_steps": 4,
                       "duration": 3, "drain": 3, "procs": 1, "refine": False},
            "fanout_wide": None,
            "latency": {"duration": 5, "reps": 1},
            "crosscore": {"reps": 1, "duration": 3},
            "client_events": {"n": 100, "k": 10, "rate": 200, "duration": 3},
            "presence": {"k": 5, "observers": 2, "churners": 20, "rate": 20, "duration": 3},
            "scale": None,
        }
    return {
        # 16,000 (2 harness processes x 8,000): the slope between N/2 and N is noisy at small N,
        # because per-shard tables grow in steps (slopes of 330-2,100 B/conn seen at n=2,000).
        "idle": {"n": 16000, "k": 10, "rate": 2000, "hold": 5, "procs": 2,
                 "sources": "127.0.0.1,127.0.0.2"},
        "connect": {"n": 8000, "rate": 40000, "reps": 3, "procs": 2},
        # Primary fan-out: 500 subscribers on one channel (each publish reaches 500
        # sockets; per-socket message rate is high, so per-socket write coalescing counts).
        "fanout": {"n": 500, "k": 1, "start_rate": 64, "factor": 1.25, "max_steps": 12,
                   "duration": 5, "drain": 4, "procs": 2, "refine": True},
        # Wide fan-out: 2000 subscribers over 2 channels (1000 sockets per publish,
        # ~4x lower message rate per socket at the same deliveries/s).
        "fanout_wide": {"n": 2000, "k": 2, "start_rate": 32, "factor": 1.3, "max_steps": 9,
                        "duration": 5, "drain": 4, "procs": 2, "refine": False},
        "latency": {"duration": 8, "reps": 3},
        "crosscore": {"reps": 3, "duration": 5},
        "client_events": {"n": 200, "k": 20, "rate": 1000, "duration": 5},
        "presence": {"k": 5, "observers": 2, "churners": 50, "rate": 50, "duration": 5},
        "scale": {"n": 18000, "procs": 2, "sources": "127.0.0.1,127.0.0.2",
                  "connect_rate": 3000, "rate": 2, "duration": 5},
    }


# ---------------------------------------------------------------- helpers

def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def cpu_busy_cores(interval=1.0):
    """Cores busy on the whole machine over `interval` seconds (from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    total = max(t1 - t0, 1)
    return (os.cpu_count() or 1) * (1 - (i1 - i0) / total)


QUIET_CORES = 0.35   # machine load we tolerate before starting a run
QUIET_WAIT_S = 60    # longest wait for that, per run


def wait_quiet():
    """Waits (bounded) until other work on the shared machine leaves it idle.
    Returns (busy cores at the start of the run, seconds waited)."""
    t0 = time.time()
    busy = cpu_busy_cores()
    while busy > QUIET_CORES and time.time() - t0 < QUIET_WAIT_S:
        time.sleep(2)
        busy = cpu_busy_cores()
    return busy, time.time() - t0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def find_harness():
    h = os.environ.get("BENCH_HARNESS")
    if h:
        return h
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    log(f"building bench-harness (release) into {target}")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "bench-harness"],
                   cwd=REPO, check=True, timeout=1800)
    return os.path.join(target, "release", "bench-harness")


# ---------------------------------------------------------------- servers

class Server:
    """One fresh server process (ringpush or Sockudo) on a free loopback port."""

    def __init__(self, kind, logdir, tag, workers):
        self.kind, self.logdir, self.tag, self.workers = kind, logdir, tag, workers
        self.proc = None
        self.port = None

    def _env(self):
        env = dict(os.environ)
        # Same log level for both: per-connection info lines would cost CPU.
        env["RUST_LOG"] = "warn"
        for k in ("HOST", "PORT", "DEBUG", "DEBUG_MODE", "ENVIRONMENT"):
            env.pop(k, None)
        return env

    def start(self):
        os.makedirs(self.logdir, exist_ok=True)
        out = os.path.join(self.logdir, f"{self.tag}.{self.kind}.stdout")
        err = os.path.join(self.logdir, f"{self.tag}.{self.kind}.stderr")
        env = self._env()
        if self.kind == "ringpush":
            cfg = os.path.join(self.logdir, "ringpush.toml")
            with open(cfg, "w") as f:
                f.write(RINGPUSH_TOML.format(workers=self.workers, **APP))
            argv = [BIN["ringpush"], "--config", cfg]
        else:
            self.port = free_port()
            cfg = os.path.join(self.logdir, "sockudo.toml")
            with open(os.path.join(HERE, "sockudo.toml")) as f:
                text = f.read()
            text, n = re.subn(r"(?m)^port = \d+$", f"port = {self.port}", text, count=1)
            assert n == 1, "perf/sockudo.toml must have a top-level `port = N` line"
            with open(cfg, "w") as f:
                f.write(text)
            # Sockudo runs on #[tokio::main]: the worker count comes from here.
            env["TOKIO_WORKER_THREADS"] = str(self.workers)
            argv = [BIN["sockudo"], "--config", cfg]
        self.proc = subprocess.Popen(argv, stdout=open(out, "w"), stderr=open(err, "w"),
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.logdir)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early (status {self.proc.returncode}); see {err}")
            if self.kind == "ringpush":
                with open(out) as f:
                    m = re.search(r"listening on ([0-9.]+):(\d+)", f.read())
                if m:
                    self.port = int(m.group(2))
                    break
            elif self._up():
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"{self.kind} did not come up within 30 s; see {err}")
        time.sleep(0.5)  # let the RSS of a just-started process settle
        return self

    def _up(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/up", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def trim_logs(self, keep_lines=200):
        """Server logs can reach megabytes (Sockudo warns once per closed socket):
        keep the head and a count."""
        for ext in ("stdout", "stderr"):
            path = os.path.join(self.logdir, f"{self.tag}.{self.kind}.{ext}")
            try:
                with open(path, errors="replace") as f:
                    lines = f.readlines()
            except OSError:
                continue
            if len(lines) > keep_lines:
                with open(path, "w") as f:
                    f.writelines(lines[:keep_lines])
                    f.write(f"... [{len(lines) - keep_lines} more lines trimmed by compare.py]\n")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


RINGPUSH_TOML = """\
[server]
host = "127.0.0.1"
port = 0
workers = {workers}
shutdown_grace = 2

[[apps]]
id = "{id}"
key = "{key}"
secret = "{secret}"
client_events = true
client_event_rate = 1000
max_presence_members = 100
"""


# ---------------------------------------------------------------- harness runs

class Runner:
    """Runs the harness. `raw` receives the raw per-run output (runs/<run>/, logs/,
    runs.jsonl with every attempt as it finishes); only `records` (the last attempt of
    each run) and `superseded` (earlier attempts, disturbed and repeated) reach state.json."""

    def __init__(self, raw, harness, workers):
        self.raw, self.harness, self.workers = raw, harness, workers
        self.records = []
        self.superseded = []
        self.runlog = open(os.path.join(raw, "runs.jsonl"), "a")

    def run(self, name, kind, scenario_args, common_extra=(), workers=None,
            nominal=60, retry_disturbed=True):
        """Starts `kind` fresh, runs the harness once, stops the server. Reruns once
        when the harness says other processes disturbed the measurement."""
        workers = workers or self.workers
        attempt = 0
        while True:
            attempt += 1
            rec = self._run_once(name, kind, scenario_args, common_extra, workers, nominal, attempt)
            disturbed = others_cores(rec) > DISTURBED_CORES
            rec["disturbed"] = disturbed
            self.runlog.write(json.dumps(rec) + "\n")
            self.runlog.flush()
            if disturbed and retry_disturbed and attempt < 3:
                log(f"  {name}/{kind}: disturbed by other processes, running it again")
                self.superseded.append(rec)
                continue
            self.records.append(rec)
            return rec

    def _run_once(self, name, kind, scenario_args, common_extra, workers, nominal, attempt):
        tag = name if attempt == 1 else f"{name}.retry{attempt - 1}"
        rundir = os.path.join(self.raw, "runs", f"{tag}.{kind}")
        os.makedirs(rundir, exist_ok=True)
        json_out = os.path.join(rundir, "result.json")
        busy0, waited = wait_quiet()
        if waited > 3:
            log(f"  waited {waited:.0f} s for the machine to go quiet ({busy0:.2f} cores busy now)")
        load0 = loadavg()
        server = Server(kind, os.path.join(self.raw, "logs"), tag, workers)
        rec = {"name": name, "server": kind, "workers": workers, "attempt": attempt,
               "args": list(scenario_args), "loadavg_before": load0,
               "busy_cores_before": round(busy0, 2), "quiet_wait_s": round(waited, 1), "dir": os.path.relpath(rundir, self.raw)}
        try:
            server.start()
        except Exception as e:  # a server that cannot start is a result too
            rec.update(ok=False, error=str(e))
            log(f"  {name}/{kind}: {e}")
            return rec
        argv = [self.harness,
                "--ws-url", f"ws://127.0.0.1:{server.port}",
                "--http-url", f"http://127.0.0.1:{server.port}",
                "--app-id", APP["id"], "--key", APP["key"], "--secret", APP["secret"],
                "--server-pid", str(server.proc.pid), "--quiet",
                "--label", f"{kind} {tag}",
                "--json-out", json_out, "--plot-dir", rundir,
                *common_extra, *scenario_args]
        t0 = time.time()
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=nominal + 120)
            out, status = p.stdout, p.returncode
        except subprocess.TimeoutExpired as e:
            out, status = (e.stdout or "") if isinstance(e.stdout, str) else "", "timeout"
        finally:
            alive = server.alive()
            server.stop()
            server.trim_logs()
        with open(os.path.join(rundir, "summary.txt"), "w") as f:
            f.write(out)
        rec.update(status=status, seconds=round(time.time() - t0, 1), server_alive_at_end=alive)
        if os.path.exists(json_out):
            # A report that lacks a key this script reads stops the comparison (SchemaError).
            rep = report_schema.load_report(json_out, expect_scenario=scenario_args[0])
            rec.update(ok=True, **report_schema.record_fields(rep))
        else:
            rec.update(ok=False, error=f"harness exit {status}, no JSON; see {rundir}/summary.txt")
        if not alive:
            rec.setdefault("notes", []).append("server process was gone at the end of the run")
        log(f"  {name}/{kind}: " + brief(rec))
        return rec


DISTURBED_CORES = 0.5


def others_cores(rec):
    """Cores used by processes other than the server and the harness while the
    harness measured (from its validity notes), 0 when it did not say."""
    worst = 0.0
    for n in rec.get("notes", []):
        for mt in re.finditer(r"other processes(?: used)? ([0-9.]+) cores", n):
            worst = max(worst, float(mt.group(1)))
    return worst


def brief(rec):
    if not rec.get("ok"):
        return "FAILED: " + rec.get("error", "?")
    scenario = report_schema.scenario_of(rec)
    bits = [("VALID" if rec["valid"] else "invalid") + ("/clean" if rec["clean"] else "/LOSS-OR-ERRORS")]
    for k in ("delivered_msgs_per_s", "server_cpu_s_per_million_deliveries",
              "connect_rate_achieved_per_s", "server_bytes_per_connection_slope"):
        v = value(rec, f"metrics.{k}") if report_schema.declared(scenario, f"metrics.{k}") else None
        if v is not None:
            bits.append(f"{k}={v:.4g}")
    if report_schema.declared(scenario, "latency_us.latency"):
        p50, p99 = value(rec, "latency_us.latency.p50"), value(rec, "latency_us.latency.p99")
        if p50 is not None:
            bits.append(f"p50={p50}us p99={p99}us")
    if rec.get("lost"):
        bits.append(f"lost={rec['lost']}")
    if rec.get("errors"):
        bits.append(f"errors={rec['errors']}")
    return " ".join(bits)


# ---------------------------------------------------------------- scenarios

def sc_idle(r, p):
    args = ["idle", "-n", str(p["n"]), "-k", str(p["k"]), "--rate", str(p["rate"]),
            "--hold", str(p["hold"])]
    nominal = p["n"] / p["rate"] + 16 + p["hold"] + 30
    extra = []
    if p.get("procs"):
        extra += ["--procs", str(p["procs"])]
    if p.get("sources"):
        extra += ["--source-ips", p["sources"]]
    return {s: r.run("idle", s, args, extra, nominal=nominal) for s in SERVERS}


def sc_connect(r, p):
    args = ["connect", "-n", str(p["n"]), "--rate", str(p["rate"])]
    extra = ["--procs", str(p["procs"])]
    res = {s: [] for s in SERVERS}
    for i in range(p["reps"]):
        for s in SERVERS:
            res[s].append(r.run(f"connect{i + 1}", s, args, extra, nominal=30))
    return res


def fanout_args(p, rate, duration=None, n=None, k=None):
    return ["fanout", "-n", str(n or p["n"]), "-k", str(k or p["k"]), "--rate", f"{rate:g}",
            "--duration", str(duration or p["duration"]), "--drain", str(p["drain"]),
            "--connect-rate", "4000", "--publishers", str(p.get("publishers", 16))]


def good(rec):
    return rec.get("ok") and rec.get("valid") and rec.get("clean")


def sc_fanout_max(r, p, prefix="fanout"):
    """Steps the publish rate up for each server (alternating) until a run loses
    messages, has errors, or the harness marks it invalid; optionally one more step
    between the last good and the first bad rate."""
    extra = ["--procs", str(p["procs"])]
    steps = {s: [] for s in SERVERS}
    stopped = {s: False for s in SERVERS}
    rate = p["start_rate"]
    for i in range(p["max_steps"]):
        if all(stopped.values()):
            break
        for s in SERVERS:
            if stopped[s]:
                continue
            rec = r.run(f"{prefix}-step{i + 1:02d}", s, fanout_args(p, rate), extra,
                        nominal=p["duration"] + p["drain"] + 30)
            rec["step_rate"] = rate
            steps[s].append(rec)
            if not good(rec):
                stopped[s] = True
        rate = round(rate * p["factor"], 1)
    if p.get("refine"):
        for s in SERVERS:
            ok = [x["step_rate"] for x in steps[s] if good(x)]
            bad = [x["step_rate"] for x in steps[s] if not good(x)]
            if ok and bad:
                mid = round(math.sqrt(max(ok) * min(bad)), 1)
                rec = r.run(f"{prefix}-refine", s, fanout_args(p, mid), extra,
                            nominal=p["duration"] + p["drain"] + 30)
                rec["step_rate"] = mid
                steps[s].append(rec)
    return steps


def fanout_max_of(steps):
    ok = [x for x in steps if good(x)]
    if not ok:
        return None
    return max(ok, key=lambda x: value(x, "metrics.delivered_msgs_per_s"))


def sc_latency(r, p, fp, rate):
    extra = ["--procs", str(fp["procs"])]
    args = fanout_args(fp, rate, duration=p["duration"])
    res = {s: [] for s in SERVERS}
    for i in range(p["reps"]):
        for s in SERVERS:
            res[s].append(r.run(f"fanout-latency{i + 1}", s, args, extra,
                                nominal=p["duration"] + fp["drain"] + 30))
    return res


def median_of(recs, f):
    """Median of f(rec) over the valid+clean runs (all completed runs when none is)."""
    pool = [x for x in recs if good(x)] or [x for x in recs if x.get("ok")]
    vals = [v for v in (f(x) for x in pool) if v is not None]
    return statistics.median(vals) if vals else None


def sc_crosscore(r, p, fp, rate):
    extra = ["--procs", str(fp["procs"])]
    args = fanout_args(fp, rate, duration=p["duration"])
    res = {1: [], 2: []}
    for i in range(p["reps"]):
        for w in (1, 2):
            res[w].append(r.run(f"crosscore-w{w}-{i + 1}", "ringpush", args, extra, workers=w,
                                nominal=p["duration"] + fp["drain"] + 30))
    return res


def sc_client_events(r, p):
    args = ["client-events", "-n", str(p["n"]), "-k", str(p["k"]), "--rate", str(p["rate"]),
            "--duration", str(p["duration"]), "--drain", "4"]
    return {s: r.run("client-events", s, args, nominal=p["duration"] + 40) for s in SERVERS}


def sc_presence(r, p):
    args = ["presence-churn", "-k", str(p["k"]), "--observers", str(p["observers"]),
            "--churners", str(p["churners"]), "--rate", str(p["rate"]),
            "--duration", str(p["duration"]), "--drain", "4"]
    return {s: r.run("presence-churn", s, args, nominal=p["duration"] + 40) for s in SERVERS}


def sc_scale(r, p):
    extra = ["--procs", str(p["procs"]), "--source-ips", p["sources"], "--connect-timeout", "20"]
    args = ["fanout", "-n", str(p["n"]), "-k", "1", "--rate", str(p["rate"]),
            "--duration", str(p["duration"]), "--drain", "10",
            "--connect-rate", str(p["connect_rate"])]
    nominal = p["n"] / p["connect_rate"] + p["duration"] + 10 + 60
    return {s: r.run("scale", s, args, extra, nominal=nominal) for s in SERVERS}


# ---------------------------------------------------------------- plots

def svg_lines(path, title, xlabel, ylabel, series, logx=False):
    """Minimal SVG line plot: series = [(label, colour, [(x, y), ...], lines?), ...];
    a series with lines? False is drawn as hollow markers only."""
    W, H, L, R, T, B = 760, 420, 80, 190, 40, 55
    series = [(s + (True,))[:4] for s in series]
    pts = [pt for _, _, s, _ in series for pt in s if pt[1] is not None]
    if not pts:
        return
    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    xs = [fx(x) for x, _ in pts]
    ys = [y for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = 0.0, max(ys) * 1.1 or 1.0
    if x1 == x0:
        x1 = x0 + 1
    pad = 0.04 * (x1 - x0)
    x0, x1 = x0 - pad, x1 + pad

    def X(v):
        return L + (fx(v) - x0) / (x1 - x0) * (W - L - R)

    def Y(v):
        return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B)

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
         f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">{xlabel}</text>',
         f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" '
         f'transform="rotate(-90 16 {(T + H - B) / 2})">{ylabel}</text>']
    for i in range(6):
        v = y0 + (y1 - y0) * i / 5
        o.append(f'<line x1="{L}" y1="{Y(v):.1f}" x2="{W - R}" y2="{Y(v):.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>')
    xt = sorted({x for x, _ in pts})
    if len(xt) > 8:
        xt = xt[:: math.ceil(len(xt) / 8)]
    for v in xt:
        o.append(f'<text x="{X(v):.1f}" y="{H - B + 16}" text-anchor="middle">{fmt(v)}</text>')
    for j, (label, colour, s, lines) in enumerate(series):
        s = [(x, y) for x, y in s if y is not None]
        if s and lines:
            d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s)
            o.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in s:
            fill = colour if lines else "white"
            o.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="{3.5 if lines else 5}" '
                     f'fill="{fill}" stroke="{colour}" stroke-width="2"/>')
        ly = T + 10 + 20 * j
        if lines:
            o.append(f'<line x1="{W - R + 12}" y1="{ly}" x2="{W - R + 32}" y2="{ly}" '
                     f'stroke="{colour}" stroke-width="3"/>')
        else:
            o.append(f'<circle cx="{W - R + 22}" cy="{ly}" r="5" fill="white" stroke="{colour}" stroke-width="2"/>')
        o.append(f'<text x="{W - R + 38}" y="{ly + 4}">{label}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o))


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.3g}"


def fanout_plots(out, steps, recipients, prefix="fanout", what=""):
    colours = {"ringpush": "#1f77b4", "sockudo": "#d62728"}
    tput, cpu = [], []
    for s in SERVERS:
        pts = sorted(steps[s], key=lambda x: x["step_rate"])
        ok = [x for x in pts if good(x)]
        bad = [x for x in pts if x.get("ok") and not good(x)]
        lbl = DISPLAY[s]
        for key, dest in (("delivered_msgs_per_s", tput), ("server_cpu_s_per_million_deliveries", cpu)):
            dest.append((lbl, colours[s], [(x["step_rate"] * recipients, m(x, key)) for x in ok]))
            if bad:
                dest.append((lbl + " invalid/loss", colours[s],
                             [(x["step_rate"] * recipients, m(x, key)) for x in bad], False))
    svg_lines(os.path.join(out, f"{prefix}_throughput.svg"),
              f"Fan-out{what}: delivered msgs/s against requested",
              "requested deliveries/s (publish rate x subscribers per channel)",
              "delivered msgs/s", tput, logx=True)
    svg_lines(os.path.join(out, f"{prefix}_cpu_per_delivery.svg"),
              f"Fan-out{what}: server CPU per million deliveries",
              "requested deliveries/s", "server CPU s / 1M deliveries", cpu, logx=True)


# ---------------------------------------------------------------- report

# Report values are read only through report_schema.value: None there means "no such run",
# "the run has no report" or a value the schema declares legitimately absent; a key the
# schema does not declare raises.

def m(rec, key):
    """Headline number `key` of the run's report."""
    return value(rec, f"metrics.{key}")


def lat(rec, pct, key="latency"):
    """Latency percentile `pct` of summary `key`, in ms."""
    v = value(rec, f"latency_us.{key}.{pct}")
    return v / 1000.0 if v is not None else None


def srv(rec, key):
    """Server process figure `key` of the run's report."""
    return value(rec, f"server.{key}")


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def status_word(rec):
    if not rec or not rec.get("ok"):
        return "failed"
    s = "valid" if rec["valid"] else "invalid"
    s += ", clean" if rec["clean"] else f", lost {rec['lost']} errors {rec['errors']}"
    if rec.get("disturbed"):
        s += ", disturbed"
    return s


def present(vals, pick):
    """pick(...) of the values that are there, None when none is (no sentinel defaults)."""
    vals = [v for v in vals if v is not None]
    return pick(vals) if vals else None


def write_report(out, setname, started, res, params, host_notes, records, superseded=()):
    G = load_goals()
    rows, goals = [], []

    def row(what, rp, sk, better, note=""):
        rt = None
        if rp is not None and sk is not None:
            rt = ratio(sk, rp) if better == "lower" else ratio(rp, sk)
        rows.append((what, rp, sk, rt, note))

    idle = res.get("idle")
    if idle:
        rp = m(idle["ringpush"], "server_bytes_per_connection_slope")
        sk = m(idle["sockudo"], "server_bytes_per_connection_slope")
        row("Idle RSS per subscribed connection, slope (bytes)", rp, sk, "lower",
            f"n={params['idle']['n']}, k={params['idle']['k']}")
        row("Idle RSS per connection incl. baseline (bytes)",
            m(idle["ringpush"], "server_bytes_per_connection_total"),
            m(idle["sockudo"], "server_bytes_per_connection_total"), "lower")
        g = G["idle_memory"]
        r_ = ratio(sk, rp)
        met = (rp is not None and r_ is not None and rp <= g["max_kib_per_connection"] * 1024
               and r_ >= g["min_ratio"])
        goals.append((goal_label(g), met,
                      f"ringpush {fmt(rp)} B, Sockudo {fmt(sk)} B, ratio {fmt(ratio(sk, rp))}x"))
    conn = res.get("connect")
    if conn:
        best = {s: present((m(x, "connect_rate_achieved_per_s") for x in conn[s]), max) for s in SERVERS}
        p99 = {s: present((lat(x, "p99", "connect") for x in conn[s]), min) for s in SERVERS}
        row("Connect rate, best run (conn/s)", best["ringpush"], best["sockudo"], "higher",
            f"n={params['connect']['n']} requested {params['connect']['rate']}/s; runs: " +
            "; ".join(f"{DISPLAY[s]} " + ", ".join(fmt(m(x, 'connect_rate_achieved_per_s')) for x in conn[s])
                      for s in SERVERS))
        row("Connect latency p99 (ms)", p99["ringpush"], p99["sockudo"], "lower")
        r_ = ratio(best["ringpush"], best["sockudo"])
        g = G["connect"]
        goals.append((goal_label(g), r_ is not None and r_ >= g["min_ratio"],
                      f"ringpush {fmt(best['ringpush'])}/s, Sockudo {fmt(best['sockudo'])}/s, ratio {fmt(r_)}x"))
    def fanout_rows(fo, label):
        mx = {s: fanout_max_of(fo[s]) for s in SERVERS}
        rp, sk = m(mx["ringpush"], "delivered_msgs_per_s"), m(mx["sockudo"], "delivered_msgs_per_s")
        why = {}
        for s in SERVERS:
            bad = [x for x in fo[s] if not good(x)]
            if bad:
                b = min(bad, key=lambda x: x["step_rate"])
                why[s] = (f"stopped at {fmt(b['step_rate'])} pub/s: " +
                          ("; ".join(b.get("notes", [])[:2]) or b.get("error", "")))
            else:
                why[s] = "step cap reached without failure"
        row(f"Fan-out{label} max delivered msgs/s with no loss", rp, sk, "higher",
            f"publish rate {fmt(mx['ringpush'] and mx['ringpush']['step_rate'])} vs "
            f"{fmt(mx['sockudo'] and mx['sockudo']['step_rate'])}/s")
        crp = m(mx["ringpush"], "server_cpu_s_per_million_deliveries")
        csk = m(mx["sockudo"], "server_cpu_s_per_million_deliveries")
        row(f"Fan-out{label} server CPU s per 1M deliveries (at each max)", crp, csk, "lower")
        # CPU per delivery at the same rate: the highest step both ran cleanly.
        common = sorted({x["step_rate"] for x in fo["ringpush"] if good(x)} &
                        {x["step_rate"] for x in fo["sockudo"] if good(x)})
        same = None
        if common:
            rate = common[-1]
            a = next(x for x in fo["ringpush"] if x["step_rate"] == rate and good(x))
            b = next(x for x in fo["sockudo"] if x["step_rate"] == rate and good(x))
            same = (rate, m(a, "server_cpu_s_per_million_deliveries"),
                    m(b, "server_cpu_s_per_million_deliveries"))
            row(f"Fan-out{label} server CPU s per 1M deliveries at the same rate ({fmt(rate)} pub/s)",
                same[1], same[2], "lower")
        r1 = ratio(rp, sk)
        cpu_ratio = ratio(same[2], same[1]) if same else ratio(csk, crp)
        return (r1, cpu_ratio,
                f"ringpush {fmt(rp)}/s, Sockudo {fmt(sk)}/s, ratio {fmt(r1)}x. "
                f"ringpush {why['ringpush']}. Sockudo {why['sockudo']}",
                (f"at {fmt(same[0])} pub/s: ringpush {fmt(same[1])} s/1M, Sockudo {fmt(same[2])} s/1M, "
                 f"ratio {fmt(cpu_ratio)}x" if same else f"ratio {fmt(cpu_ratio)}x"))

    if res.get("fanout"):
        pf = params["fanout"]
        r1, cr, d1, d2 = fanout_rows(res["fanout"], f" ({pf['n']} subs / {pf['k']} ch)")
        if res.get("fanout_wide"):
            pw = params["fanout_wide"]
            w1, wc, e1, e2 = fanout_rows(res["fanout_wide"], f" wide ({pw['n']} subs / {pw['k']} ch)")
            d1 += f" || wide config: {e1}"
            d2 += f" || wide config: {e2}"
        g, h = G["fanout_max"], G["cpu_per_delivery"]
        goals.append((goal_label(g), r1 is not None and r1 >= g["min_ratio"], d1))
        goals.append((goal_label(h), cr is not None and cr >= h["min_ratio"], d2))
    la = res.get("latency")
    if la:
        rate, runs = la["rate"], la["runs"]
        med = {(s, pct): median_of(runs[s], lambda x, pct=pct: lat(x, pct))
               for s in SERVERS for pct in ("p50", "p99", "p999")}
        each = {s: ", ".join(fmt(lat(x, "p99")) for x in runs[s]) for s in SERVERS}
        for pct, name in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
            row(f"Fan-out latency {name} at {fmt(rate)} pub/s (ms, median of runs)",
                med[("ringpush", pct)], med[("sockudo", pct)], "lower",
                "; ".join(f"{DISPLAY[s]}: {status_counts(runs[s])}" for s in SERVERS)
                if pct == "p50" else
                (f"p99 of each run: ringpush {each['ringpush']}; Sockudo {each['sockudo']}" if pct == "p99" else ""))
        p50, p99 = med[("ringpush", "p50")], med[("ringpush", "p99")]
        s99 = med[("sockudo", "p99")]
        n_good = sum(1 for x in runs["ringpush"] if good(x))
        g = G["latency"]
        met = (p99 is not None and p50 and p99 <= g["max_p99_over_p50"] * p50 and n_good > 0 and
               (s99 is None or p99 < s99))
        goals.append((goal_label(g), met,
                      f"at {fmt(rate)} pub/s, medians of {len(runs['ringpush'])} runs each: ringpush "
                      f"p50 {fmt(p50)} ms p99 {fmt(p99)} ms (p99/p50 {fmt(ratio(p99, p50))}); "
                      f"Sockudo p50 {fmt(med[('sockudo', 'p50')])} ms p99 {fmt(s99)} ms" +
                      ("; Sockudo has no latency result (no report or nothing delivered), so only "
                       "ringpush's p99/p50 was judged" if s99 is None else "")))
    cc = res.get("crosscore")
    if cc:
        v = {w: [c for c in (m(x, "server_cpu_s_per_million_deliveries") for x in cc["runs"][w] if good(x))
                 if c is not None]
             for w in (1, 2)}
        med = {w: statistics.median(v[w]) if v[w] else None for w in (1, 2)}
        r_ = ratio(med[2], med[1])
        rows.append((f"ringpush CPU s/1M deliveries, workers=1 vs 2 at {fmt(cc['rate'])} pub/s",
                     med[1], med[2], r_, "w2/w1 (median of runs: " +
                     ", ".join(fmt(x) for x in v[1]) + " | " + ", ".join(fmt(x) for x in v[2]) + ")"))
        g = G["crosscore"]
        goals.append((goal_label(g), r_ is not None and r_ <= g["max_w2_over_w1"],
                      f"workers=1 {fmt(med[1])} s/1M, workers=2 {fmt(med[2])} s/1M, ratio {fmt(r_)}"))
    ce = res.get("client_events")
    if ce:
        row("client-events latency p99 (ms)", lat(ce["ringpush"], "p99"), lat(ce["sockudo"], "p99"), "lower",
            f"{params['client_events']['rate']} ev/s; {status_word(ce['ringpush'])} | {status_word(ce['sockudo'])}")
        row("client-events server CPU (s)", srv_cpu(ce["ringpush"]), srv_cpu(ce["sockudo"]), "lower")
    pr = res.get("presence")
    if pr:
        row("presence-churn join latency p99 (ms)", lat(pr["ringpush"], "p99", "join"),
            lat(pr["sockudo"], "p99", "join"), "lower",
            f"{status_word(pr['ringpush'])} | {status_word(pr['sockudo'])}")
        row("presence-churn member_added p99 (ms)", lat(pr["ringpush"], "p99", "member_added_latency"),
            lat(pr["sockudo"], "p99", "member_added_latency"), "lower")
    sc = res.get("scale")
    if sc:
        n = params["scale"]["n"]
        rp_ready, sk_ready = m(sc["ringpush"], "subscribers_ready"), m(sc["sockudo"], "subscribers_ready")
        row(f"Scale: subscribers ready of {n}", rp_ready, sk_ready, "higher")
        row("Scale: broadcast delivery ratio", m(sc["ringpush"], "delivery_ratio"),
            m(sc["sockudo"], "delivery_ratio"), "higher",
            f"{status_word(sc['ringpush'])} | {status_word(sc['sockudo'])}")
        peak = {s: srv(sc[s], "rss_peak_bytes") for s in SERVERS}
        row(f"Scale: server peak RSS with {n} connections (MiB)",
            peak["ringpush"] and peak["ringpush"] / 2**20, peak["sockudo"] and peak["sockudo"] / 2**20, "lower")
        slope = m(idle["ringpush"], "server_bytes_per_connection_slope") if idle else None
        rp = sc["ringpush"]
        g = G["scale"]
        dr = m(rp, "delivery_ratio")
        met = bool(rp.get("ok") and rp.get("clean") and rp_ready is not None and dr is not None
                   and rp_ready >= g["min_subscribed_fraction"] * n and dr >= g["min_delivery_ratio"])
        if slope is not None:
            user = slope * 1e6
            kern = 4096 * 1e6
            base = (peak["ringpush"] or 0) - slope * n
            detail = (f"{fmt(rp_ready)} of {n} subscribed, delivery ratio {fmt(m(rp, 'delivery_ratio'))}, "
                      f"{status_word(rp)}. 1M connections: server memory {user / 2**30:.2f} GiB "
                      f"(slope {fmt(slope)} B x 1M) + kernel ~{kern / 2**30:.2f} GiB (4 KB/socket) "
                      f"+ baseline ~{max(base, 0) / 2**20:.0f} MiB = ~{(user + kern + max(base, 0)) / 2**30:.1f} GiB; "
                      f"LimitNOFILE >= 1,050,000 (fs.nr_open/fs.file-max raised to match), "
                      f"and 1M ephemeral ports only matter for the clients (>= 36 source IPs at ~28k each)")
        else:
            detail = f"{fmt(rp_ready)} of {n} subscribed, {status_word(rp)}"
        goals.append((goal_label(g, n=n), met, detail))

    lines = [f"# ringpush vs Sockudo — {setname} set, {started}", "",
             *host_notes, "",
             "Ratio column: how many times better ringpush is (Sockudo/ringpush for lower-is-better "
             "rows, ringpush/Sockudo for higher-is-better rows); for the workers row it is w2/w1.", "",
             "| metric | ringpush | Sockudo | ratio | notes |", "| --- | ---: | ---: | ---: | --- |"]
    for what, a, b, rt, note in rows:
        lines.append(f"| {what} | {fmt(a)} | {fmt(b)} | {fmt(rt) + 'x' if rt is not None else '-'} | {note} |")
    lines += ["", "## Goals", "", "| goal | verdict | figures |", "| --- | --- | --- |"]
    for g, met, detail in sorted(goals, key=lambda g: g[0]):
        lines.append(f"| {g} | {'met' if met else 'MISSED'} | {detail} |")
    for key in ("fanout", "fanout_wide"):
        fo = res.get(key)
        if not fo:
            continue
        lines += ["", f"## Fan-out steps: {key} ({params[key]['n']} subscribers over "
                      f"{params[key]['k']} channel(s))", "",
                  "| server | pub/s | requested deliveries/s | delivered msgs/s | server CPU s/1M | "
                  "p50 ms | p99 ms | server cores | machine cores busy | verdict |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        rec_per = params[key]["n"] / params[key]["k"]
        for s in SERVERS:
            for x in sorted(fo[s], key=lambda x: x["step_rate"]):
                lines.append(
                    f"| {DISPLAY[s]} | {fmt(x['step_rate'])} | {fmt(x['step_rate'] * rec_per)} | "
                    f"{fmt(m(x, 'delivered_msgs_per_s'))} | {fmt(m(x, 'server_cpu_s_per_million_deliveries'))} | "
                    f"{fmt(lat(x, 'p50'))} | {fmt(lat(x, 'p99'))} | {fmt(srv(x, 'cores_in_window'))} | "
                    f"{fmt(value(x, 'harness.machine_cores_busy_in_window'))} | {status_word(x)} |")
    lines += ["", "## All runs", "",
              "Busy before: machine cores busy (1 s sample) when the run started, after waiting up to "
              f"{QUIET_WAIT_S} s for it to drop below {QUIET_CORES}. A run is repeated (at most twice) when "
              f"the harness reports other processes using more than {DISTURBED_CORES} cores while it measured.", "",
              "| run | server | workers | load avg | busy before | verdict | notes |",
              "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    # Each run's last attempt, preceded by its earlier (disturbed, repeated) attempts if any.
    earlier = list(superseded)
    for rec in records:
        key = (rec["name"], rec["server"], rec["workers"])
        before = [x for x in earlier if (x["name"], x["server"], x["workers"]) == key]
        earlier = [x for x in earlier if x not in before]
        for x in before + [rec]:
            notes = "; ".join(x.get("notes", []))[:300] or x.get("error", "")
            name = x["name"] if x.get("attempt", 1) == 1 and x is rec else f"{x['name']} (attempt {x['attempt']})"
            lines.append(f"| {name} | {DISPLAY[x['server']]} | {x['workers']} | "
                         f"{x['loadavg_before']:.2f} | {x.get('busy_cores_before', float('nan')):.2f} | "
                         f"{status_word(x)} | {notes.replace('|', '/')} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write(text)
    return text


def status_counts(recs):
    """'3/3 valid+clean' or e.g. '0/3 valid (machine saturated in 3), 3/3 clean'."""
    n = len(recs)
    v = sum(1 for x in recs if x.get("ok") and x.get("valid"))
    c = sum(1 for x in recs if x.get("ok") and x.get("clean"))
    if v == n and c == n:
        return f"{n}/{n} valid+clean"
    sat = sum(1 for x in recs if any("saturated" in s for s in x.get("notes", [])))
    return f"{v}/{n} valid" + (f" (machine saturated in {sat})" if sat else "") + f", {c}/{n} clean"


def srv_cpu(rec):
    return srv(rec, "cpu_seconds_window")


# ---------------------------------------------------------------- main

BIN = {}
RUNNER = None


def state_records(node, where):
    """(place, record) for every run record inside state.json's `res` section."""
    if isinstance(node, dict):
        if "args" in node and "ok" in node:
            yield where, node
            return
        for k, v in node.items():
            yield from state_records(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from state_records(v, f"{where}[{i}]")


def self_test():
    """Checks the report schema (perf/report_schema.py), the goals file and the --report-only
    path on made-up data: a report or state.json record with a missing or mistyped key must be
    rejected with a message naming the file and the key. Exits non-zero on a failure."""
    import copy
    checks = 0
    with tempfile.TemporaryDirectory(prefix="compare-self-test-") as tmp:
        checks += report_schema.self_test(tmp)

        # The real goals file loads; one that lacks a threshold is rejected, naming the key.
        goals = load_goals()
        checks += 1
        broken = os.path.join(tmp, "goals.toml")
        with open(GOALS_FILE) as f:
            text = f.read()
        with open(broken, "w") as f:
            f.write(re.sub(r"(?m)^max_w2_over_w1 = .*$", "", text))
        try:
            load_goals(broken)
            raise AssertionError("a goals file without crosscore.max_w2_over_w1 was accepted")
        except GoalsError as e:
            assert broken in str(e) and "crosscore.max_w2_over_w1" in str(e), str(e)
        checks += 1
        assert goal_label(goals["idle_memory"]).startswith("1. "), goal_label(goals["idle_memory"])

        # --report-only end to end: a good state.json gives a comparison.md, a record that lost
        # a key stops it with a non-zero exit and a message naming state.json and the key.
        rep = report_schema._sample_report()
        idle = copy.deepcopy(rep)
        idle["scenario"] = "idle"
        idle["metrics"] = {"connections_half": 8000.0, "connections_full": 16000.0,
                           "server_bytes_per_connection_slope": 1300.0,
                           "server_bytes_per_connection_total": 1400.0}
        idle["latency_us"] = {}
        recs = {s: {"name": "idle", "server": s, "workers": 2, "attempt": 1, "args": ["idle", "-n", "16000"],
                    "loadavg_before": 0.1, "busy_cores_before": 0.0, "dir": f"runs/idle.{s}",
                    "ok": True, "disturbed": False, **report_schema.record_fields(idle)}
                for s in SERVERS}
        recs["sockudo"]["metrics"] = dict(recs["sockudo"]["metrics"], server_bytes_per_connection_slope=150000.0)
        state = {"set": "quick", "started": "2000-01-01 00:00", "params": {"idle": {"n": 16000, "k": 10}},
                 "host_notes": ["- self-test"], "res": {"idle": recs}, "records": list(recs.values())}

        def run_report_only(st, name):
            d = os.path.join(tmp, name)
            os.makedirs(d)
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump(st, f)
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--report-only", d],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
            return d, p

        d, p = run_report_only(state, "good")
        assert p.returncode == 0, p.stderr
        with open(os.path.join(d, "comparison.md")) as f:
            md = f.read()
        assert "| 1. Idle memory <= 2 KiB/conn and >= 8x less than Sockudo | met |" in md, md
        checks += 1

        bad = copy.deepcopy(state)
        del bad["records"][1]["metrics"]["server_bytes_per_connection_slope"]
        d, p = run_report_only(bad, "missing-key")
        assert p.returncode != 0, "a state.json record without its idle slope was accepted"
        for needle in (os.path.join(d, "state.json"), "records[1]",
                       "key metrics.server_bytes_per_connection_slope",
                       "required when metrics.connections_full > metrics.connections_half"):
            assert needle in p.stderr, f"{needle!r} not in {p.stderr!r}"
        assert not os.path.exists(os.path.join(d, "comparison.md")), "comparison.md written anyway"
        checks += 1

        ok = copy.deepcopy(state)
        ok["res"]["idle"]["sockudo"] = ok["records"][1] = {
            "name": "idle", "server": "sockudo", "workers": 2, "attempt": 1, "args": ["idle"],
            "loadavg_before": 0.1, "busy_cores_before": 0.0, "ok": False,
            "error": "sockudo did not come up within 30 s"}
        d, p = run_report_only(ok, "sockudo-failed")
        assert p.returncode == 0, p.stderr
        with open(os.path.join(d, "comparison.md")) as f:
            md = f.read()
        assert "| 1. Idle memory <= 2 KiB/conn and >= 8x less than Sockudo | MISSED |" in md, md
        assert "| idle | Sockudo | 2 | 0.10 | 0.00 | failed | sockudo did not come up within 30 s |" in md, md
        checks += 1
    print(f"compare.py self-test: {checks} checks passed")


def report_only(d):
    """Rewrites d/comparison.md and the fan-out plots from d/state.json, after checking
    every run record in it against perf/report_schema.py."""
    path = os.path.join(d, "state.json")
    try:
        with open(path) as f:
            st = json.load(f)
    except (OSError, ValueError) as e:
        raise SchemaError(f"{path}: cannot read: {e}") from None
    for k in ("set", "started", "params", "host_notes", "res", "records"):
        if k not in st:
            raise SchemaError(f"{path}: key {k}: missing")
    # `superseded` (disturbed attempts that were repeated) is written since the raw output
    # moved out of the results directory; older state.json files have none recorded here
    # (their runs.jsonl held every attempt).
    superseded = st.get("superseded", [])
    for i, rec in enumerate(st["records"]):
        report_schema.check_record(rec, f"{path}: records[{i}]")
    for i, rec in enumerate(superseded):
        report_schema.check_record(rec, f"{path}: superseded[{i}]")
    for where, rec in state_records(st["res"], "res"):
        report_schema.check_record(rec, f"{path}: {where}")
    res = st["res"]
    for key in ("crosscore",):
        if key in res:  # JSON turned the worker-count keys into strings
            res[key]["runs"] = {int(k): v for k, v in res[key]["runs"].items()}
    for key in ("fanout", "fanout_wide"):
        if key in res:
            p = st["params"][key]
            fanout_plots(d, res[key], p["n"] / p["k"], key,
                         f"{' wide' if key == 'fanout_wide' else ''} ({p['n']} subs, {p['k']} ch)")
    print(write_report(d, st["set"], st["started"], res, st["params"], st["host_notes"],
                       st["records"], superseded))
ORDER = ["idle", "connect", "fanout", "fanout_wide", "latency", "crosscore", "client_events", "presence", "scale"]


def main():
    global RUNNER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=["quick", "full"], default="full")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(ORDER))
    ap.add_argument("--out", default=None, help="results directory (default perf/results/<timestamp>)")
    ap.add_argument("--no-latest", action="store_true", help="do not point perf/results/latest here")
    ap.add_argument("--raw-dir", metavar="DIR",
                    help="keep the raw per-run output (harness JSON, summaries and plots, server logs, "
                         "runs.jsonl) in DIR; default: a temporary directory, deleted at the end "
                         "unless a run failed")
    ap.add_argument("--report-only", metavar="DIR",
                    help="rewrite DIR/comparison.md (and plots) from DIR/state.json without running anything")
    ap.add_argument("--self-test", action="store_true",
                    help="check perf/report_schema.py and perf/goals.toml (no servers needed) and exit")
    a = ap.parse_args()
    if a.self_test:
        self_test()
        return
    if a.report_only:
        report_only(a.report_only)
        return
    load_goals()  # a broken goals file stops us before the runs, not after

    BIN["ringpush"] = os.environ.get("RINGPUSH_BIN", os.path.join(REPO, "target/release/ringpush"))
    BIN["sockudo"] = os.environ.get("SOCKUDO_BIN", "/work/peers/sockudo/bin/sockudo")
    for k, v in BIN.items():
        if not os.access(v, os.X_OK):
            sys.exit(f"compare: {k} binary {v} not found or not executable")
    harness = find_harness()
    workers = int(os.environ.get("WORKERS", "2"))
    nofile = raise_nofile()
    params = scenario_set(a.set)
    only = [s for s in a.only.split(",") if s] or ORDER
    unknown = set(only) - set(ORDER)
    if unknown:
        sys.exit(f"compare: unknown scenarios {sorted(unknown)}")
    if nofile < 20000 and params.get("scale"):
        log(f"open-file limit {nofile}: scale scenario needs ~18k per process; it may fail")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(HERE, "results", stamp)
    os.makedirs(out, exist_ok=True)
    if a.raw_dir:
        raw = a.raw_dir
        os.makedirs(raw, exist_ok=True)
    else:
        raw = tempfile.mkdtemp(prefix=f"ringpush-compare-{stamp}-")
    RUNNER = Runner(raw, harness, workers)
    t0 = time.time()
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    log(f"results in {out}; raw per-run output in {raw}; set {a.set}; workers {workers}; "
        f"nofile {nofile}; load {loadavg():.2f}")
    host_notes = [
        f"- Machine: {os.cpu_count()} cores, `uname -r` {os.uname().release}, open-file limit {nofile}; "
        f"load average at start {loadavg():.2f}.",
        f"- Both servers: {workers} worker threads (ringpush `workers = {workers}`; Sockudo "
        f"`TOKIO_WORKER_THREADS={workers}` for its tokio multi-thread runtime, plus its own helper threads), "
        "RUST_LOG=warn, same app id/key/secret, fresh process per run, loopback, alternating order.",
        "- Sockudo config: perf/sockudo.toml (rate limiter off, metrics off, memory/local drivers, "
        "no per-app limits). ringpush config: written by compare.py (client_event_rate raised to 1000).",
    ]

    res = {}
    fp = params["fanout"]
    finished = False
    try:
        for sc in only:
            if sc == "idle":
                log("scenario idle"); res["idle"] = sc_idle(RUNNER, params["idle"])
            elif sc == "connect":
                log("scenario connect"); res["connect"] = sc_connect(RUNNER, params["connect"])
            elif sc == "fanout":
                log("scenario fanout (max search)")
                res["fanout"] = sc_fanout_max(RUNNER, fp)
                fanout_plots(out, res["fanout"], fp["n"] / fp["k"], "fanout",
                             f" ({fp['n']} subs, {fp['k']} ch)")
            elif sc == "fanout_wide" and params.get("fanout_wide"):
                fw = params["fanout_wide"]
                log("scenario fanout_wide (max search)")
                res["fanout_wide"] = sc_fanout_max(RUNNER, fw, "fanout-wide")
                fanout_plots(out, res["fanout_wide"], fw["n"] / fw["k"], "fanout_wide",
                             f" wide ({fw['n']} subs, {fw['k']} ch)")
            elif sc in ("latency", "crosscore"):
                best = fanout_max_of(res["fanout"]["ringpush"]) if "fanout" in res else None
                base = best["step_rate"] if best else fp["start_rate"] * 2
                if sc == "latency":
                    rate = round(base / 2, 1)
                    log(f"scenario latency at {rate} pub/s (half of ringpush's max)")
                    res["latency"] = {"rate": rate,
                                      "runs": sc_latency(RUNNER, params["latency"], fp, rate)}
                else:
                    rate = round(base / 4, 1)
                    log(f"scenario crosscore at {rate} pub/s")
                    res["crosscore"] = {"rate": rate,
                                        "runs": sc_crosscore(RUNNER, params["crosscore"], fp, rate)}
            elif sc == "client_events":
                log("scenario client-events"); res["client_events"] = sc_client_events(RUNNER, params["client_events"])
            elif sc == "presence":
                log("scenario presence-churn"); res["presence"] = sc_presence(RUNNER, params["presence"])
            elif sc == "scale" and params.get("scale"):
                log("scenario scale"); res["scale"] = sc_scale(RUNNER, params["scale"])
        finished = True
    finally:
        host_notes.append(f"- Wall time of the whole comparison: {(time.time() - t0) / 60:.1f} min; "
                          f"load average at the end {loadavg():.2f}.")
        with open(os.path.join(out, "params.json"), "w") as f:
            json.dump({"set": a.set, "params": params, "workers": workers, "bins": BIN,
                       "harness": harness}, f, indent=2)
        with open(os.path.join(out, "state.json"), "w") as f:
            json.dump({"set": a.set, "started": started, "params": params, "host_notes": host_notes,
                       "res": res, "records": RUNNER.records, "superseded": RUNNER.superseded}, f)
        RUNNER.runlog.close()
        failed = [x for x in RUNNER.records + RUNNER.superseded if not x.get("ok")]
        if a.raw_dir:
            log(f"raw per-run output kept in {raw}")
        elif failed or not finished:
            log(f"raw per-run output kept in {raw} ("
                + (f"{len(failed)} run(s) without a report" if failed else "the comparison stopped early")
                + "); delete it when done")
        else:
            shutil.rmtree(raw, ignore_errors=True)
        text = write_report(out, a.set, started, res, params, host_notes, RUNNER.records, RUNNER.superseded)
        if not a.no_latest and not a.out:
            latest = os.path.join(HERE, "results", "latest")
            if os.path.islink(latest) or os.path.isfile(latest):
                os.remove(latest)
            elif os.path.isdir(latest):
                shutil.rmtree(latest)
            os.symlink(os.path.basename(out), latest)
        print(text)
        log(f"done in {(time.time() - t0) / 60:.1f} min; {out}/comparison.md")


if __name__ == "__main__":
    try:
        main()
    except (SchemaError, GoalsError) as e:
        print(f"compare: {e}", file=sys.stderr)
        sys.exit(2)
