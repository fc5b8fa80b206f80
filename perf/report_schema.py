"""What perf/compare.py reads from a bench-harness JSON report, declared in one place.

The harness writes one report per run (`RunReport` in bench-harness/src/report.rs, serialised
by serde_json). compare.py reads only the keys declared below, checks every report against
this declaration when it loads one (`load_report`), and checks the copies it keeps in
state.json when it rewrites a recorded comparison (`check_record`). A key that is missing or
has the wrong type stops compare.py with a message naming the file and the key.

Some values are legitimately absent, and each such case is declared here with its reason:

- `Nullable(T, why)`: the harness writes JSON null (a Rust `Option` that is `None`);
- `When(T, why, condition)`: the harness leaves the key out unless `condition(report)` holds
  (e.g. no latency histogram when nothing was delivered); when it holds, the key is required;
- a run without a report at all: the server did not start or the harness wrote no JSON. Its
  record has `ok` false and `error` saying why (compare.py's own record, not the harness's).

`value(record, path)` is the only way compare.py reads a report value. It returns None in
exactly those three cases, and raises when asked for a key that is not declared here.

The record compare.py keeps per run (in state.json) holds a few report sections under other
names; `RECORD_FIELDS` maps them, in one place as well.
"""

import json


class SchemaError(Exception):
    """A report (or a state.json record made from one) does not match the declaration."""


# ---------------------------------------------------------------- type declarations

class Leaf:
    def __init__(self, name, ok):
        self.name, self.ok = name, ok

    def check(self, v, path, errs, doc):
        if not self.ok(v):
            errs.append((path, f"expected {self.name}, got {describe(v)}"))


INT = Leaf("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
NUM = Leaf("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
BOOL = Leaf("a boolean", lambda v: isinstance(v, bool))
STR = Leaf("a string", lambda v: isinstance(v, str))


class Nullable:
    """Present, but JSON null is a legitimate value (`why` says when the harness writes null)."""

    def __init__(self, inner, why):
        self.inner, self.why = inner, why

    def check(self, v, path, errs, doc):
        if v is not None:
            self.inner.check(v, path, errs, doc)


class ListOf:
    def __init__(self, inner):
        self.inner = inner

    def check(self, v, path, errs, doc):
        if not isinstance(v, list):
            errs.append((path, f"expected a list, got {describe(v)}"))
            return
        for i, x in enumerate(v):
            self.inner.check(x, f"{path}[{i}]", errs, doc)


class MapOf:
    """An object with any keys, every value of type `inner`."""

    def __init__(self, inner):
        self.inner = inner

    def check(self, v, path, errs, doc):
        if not isinstance(v, dict):
            errs.append((path, f"expected an object, got {describe(v)}"))
            return
        for k, x in v.items():
            self.inner.check(x, f"{path}.{k}", errs, doc)


class When:
    """A key the harness writes only when `condition(report)` holds; required then."""

    def __init__(self, inner, why, condition):
        self.inner, self.why, self.condition = inner, why, condition


class Obj:
    """An object whose declared keys must be present (keys not declared are ignored)."""

    def __init__(self, fields):
        self.fields = fields

    def check(self, v, path, errs, doc):
        if not isinstance(v, dict):
            errs.append((path, f"expected an object, got {describe(v)}"))
            return
        # Plain keys first: the conditions of When keys read them.
        for k, spec in self.fields.items():
            if isinstance(spec, When):
                continue
            p = f"{path}.{k}" if path else k
            if k not in v:
                errs.append((p, "missing"))
            else:
                spec.check(v[k], p, errs, doc)
        for k, spec in self.fields.items():
            if not isinstance(spec, When):
                continue
            p = f"{path}.{k}" if path else k
            if k in v:
                spec.inner.check(v[k], p, errs, doc)
                continue
            try:
                required = spec.condition(doc)
            except (KeyError, TypeError):
                continue  # what the condition reads is itself missing or mistyped: reported above
            if required:
                errs.append((p, f"missing (required when {spec.why})"))


def describe(v):
    if v is None:
        return "null"
    text = json.dumps(v)
    return f"{type(v).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


# ---------------------------------------------------------------- the declaration

# LatencySummary (bench-harness/src/metrics.rs), microseconds. compare.py reads these three.
LATENCY = Obj({"p50": INT, "p99": INT, "p999": INT})

NO_WINDOW = "fewer than two samples fell inside the measured window (e.g. a very short connect burst)"


def _metric(name):
    return lambda r: r["metrics"][name]


def _delivered(r):
    return r["metrics"]["delivered"] > 0


# Keys of every report, whatever the scenario.
COMMON = {
    "scenario": STR,
    "validity": Obj({
        "valid": BOOL,
        "clean": BOOL,
        "lost": INT,
        "errors": INT,
        "notes": ListOf(STR),
    }),
    "errors": MapOf(INT),  # errors by kind
    # `server` is an Option in the harness (None without --server-pid). compare.py always passes
    # --server-pid, so here it is required and not null.
    "server": Obj({
        "rss_peak_bytes": INT,
        "cpu_seconds_window": Nullable(NUM, NO_WINDOW),
        "cores_in_window": Nullable(NUM, NO_WINDOW),
    }),
    "harness": Obj({
        "machine_cores_busy_in_window": Nullable(NUM, NO_WINDOW),
    }),
}

# Per scenario (the report's `scenario`, which is also the harness subcommand): the headline
# numbers (`metrics`, all f64 in the harness, so JSON numbers) and latency summaries
# (`latency_us`) compare.py reads. The When conditions restate when the scenario code in
# bench-harness/src/scenarios/ inserts the key.
SCENARIOS = {
    "idle": {
        "metrics": {
            "connections_half": NUM,
            "connections_full": NUM,
            "server_bytes_per_connection_slope": When(
                NUM, "metrics.connections_full > metrics.connections_half",
                lambda r: r["metrics"]["connections_full"] > r["metrics"]["connections_half"]),
            "server_bytes_per_connection_total": When(
                NUM, "metrics.connections_full > 0", lambda r: _metric("connections_full")(r) > 0),
        },
        "latency_us": {},
    },
    "connect": {
        "metrics": {
            "connections_established": NUM,
            "connect_rate_achieved_per_s": NUM,
        },
        "latency_us": {
            "connect": When(LATENCY, "metrics.connections_established > 0",
                            lambda r: _metric("connections_established")(r) > 0),
        },
    },
    "fanout": {
        "metrics": {
            "delivered": NUM,
            "delivered_msgs_per_s": NUM,
            "delivery_ratio": NUM,
            "subscribers_ready": NUM,
            # Needs two CPU readings of --server-pid (always passed) and a delivery to divide by.
            "server_cpu_s_per_million_deliveries": When(NUM, "metrics.delivered > 0", _delivered),
        },
        "latency_us": {
            "latency": When(LATENCY, "metrics.delivered > 0", _delivered),
        },
    },
    "client-events": {
        "metrics": {
            "delivered": NUM,
        },
        "latency_us": {
            "latency": When(LATENCY, "metrics.delivered > 0", _delivered),
        },
    },
    "presence-churn": {
        "metrics": {
            "joins": NUM,
            "member_added_received": NUM,
        },
        "latency_us": {
            "join": When(LATENCY, "metrics.joins > 0", lambda r: _metric("joins")(r) > 0),
            "member_added_latency": When(LATENCY, "metrics.member_added_received > 0",
                                         lambda r: _metric("member_added_received")(r) > 0),
        },
    },
}

# compare.py's run record (one per harness run, in state.json) field -> report key it copies.
RECORD_FIELDS = {
    "valid": "validity.valid",
    "clean": "validity.clean",
    "lost": "validity.lost",
    "errors": "validity.errors",
    "notes": "validity.notes",
    "metrics": "metrics",
    "latency_us": "latency_us",
    "server_stats": "server",
    "harness": "harness",
    "error_kinds": "errors",
}


def schema_for(scenario):
    """The whole declaration for one scenario's report (KeyError for an unknown scenario)."""
    s = SCENARIOS[scenario]
    return Obj({**COMMON, "metrics": Obj(s["metrics"]), "latency_us": Obj(s["latency_us"])})


# ---------------------------------------------------------------- checks

def report_errors(doc):
    """Every mismatch of `doc` with the declaration, as (key path, problem) pairs."""
    if not isinstance(doc, dict):
        return [("", f"expected a JSON object, got {describe(doc)}")]
    scenario = doc.get("scenario")
    if "scenario" not in doc:
        return [("scenario", "missing")]
    if not isinstance(scenario, str):
        return [("scenario", f"expected a string, got {describe(scenario)}")]
    if scenario not in SCENARIOS:
        return [("scenario", f"{scenario!r} is not a scenario compare.py reads "
                             f"(known: {', '.join(SCENARIOS)})")]
    errs = []
    schema_for(scenario).check(doc, "", errs, doc)
    return errs


def validate(doc, source):
    """Raises SchemaError naming `source` and every bad key when `doc` does not match."""
    errs = report_errors(doc)
    if errs:
        raise SchemaError(f"{source}: harness report does not match perf/report_schema.py: "
                          + "; ".join(f"key {p}: {what}" for p, what in errs))
    return doc


def load_report(path, expect_scenario=None):
    """Reads and checks one harness report file."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise SchemaError(f"{path}: cannot read the harness report: {e}") from None
    validate(doc, path)
    if expect_scenario is not None and doc["scenario"] != expect_scenario:
        raise SchemaError(f"{path}: key scenario: {doc['scenario']!r}, but compare.py ran "
                          f"{expect_scenario!r}")
    return doc


def _get(doc, path):
    for k in path.split("."):
        doc = doc[k]
    return doc


def record_fields(doc):
    """The record fields compare.py copies from a checked report."""
    return {field: _get(doc, path) for field, path in RECORD_FIELDS.items()}


def scenario_of(rec):
    """The harness scenario of a run record: the first harness argument compare.py passed."""
    return rec["args"][0]


def report_view(rec):
    """Rebuilds the report-shaped part of a record (only for a run with a report)."""
    doc = {"scenario": scenario_of(rec)}
    for field, path in RECORD_FIELDS.items():
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        if field in rec:
            node[last] = rec[field]
    return doc


def record_path(report_path):
    """Where a report key lives in a run record (`server.rss_peak_bytes` ->
    `server_stats.rss_peak_bytes`)."""
    if report_path == "scenario":
        return "args[0]"
    best = None
    for field, path in RECORD_FIELDS.items():
        if report_path == path or report_path.startswith(path + "."):
            if best is None or len(path) > len(best[1]):
                best = (field, path)
    if best is None:
        return report_path
    return best[0] + report_path[len(best[1]):]


def _as_field(report_path):
    field = record_path(report_path)
    return "" if field == report_path else f" (record field {field})"


def check_record(rec, source):
    """Checks a run record from state.json: its own bookkeeping and, when the run produced a
    report, the report keys it holds. Raises SchemaError naming `source` and the key."""
    if not isinstance(rec, dict):
        raise SchemaError(f"{source}: expected a run record (object), got {describe(rec)}")
    errs = []
    for k, t in (("name", STR), ("server", STR), ("ok", BOOL)):
        if k not in rec:
            errs.append((k, "missing"))
        else:
            t.check(rec[k], k, errs, rec)
    args = rec.get("args")
    if not (isinstance(args, list) and args and isinstance(args[0], str)):
        errs.append(("args", f"expected a non-empty list starting with the scenario, got {describe(args)}"))
    if not errs and not rec["ok"] and not isinstance(rec.get("error"), str):
        errs.append(("error", f"a run without a report must say why; got {describe(rec.get('error'))}"))
    if errs:
        raise SchemaError(f"{source}: run record: " + "; ".join(f"key {p}: {w}" for p, w in errs))
    if not rec["ok"]:
        return rec  # no report: nothing of the harness's to check
    errs = report_errors(report_view(rec))
    if errs:
        raise SchemaError(f"{source} ({rec['name']}/{rec['server']}): harness report keys do not match "
                          "perf/report_schema.py: "
                          + "; ".join(f"key {p}{_as_field(p)}: {w}" for p, w in errs))
    return rec


# ---------------------------------------------------------------- reading

def spec_at(scenario, path):
    """The declaration of `path` in a `scenario` report; LookupError when it is not declared
    (compare.py reading an undeclared key is a bug in compare.py)."""
    node = schema_for(scenario)
    for k in path.split("."):
        if isinstance(node, (When, Nullable)):
            node = node.inner
        if not isinstance(node, Obj) or k not in node.fields:
            raise LookupError(f"compare.py reads {path} of a {scenario} report, which "
                              f"perf/report_schema.py does not declare")
        node = node.fields[k]
    return node


def declared(scenario, path):
    try:
        spec_at(scenario, path)
        return True
    except LookupError:
        return False


def value(rec, path):
    """The report value at `path` (e.g. "metrics.delivered_msgs_per_s",
    "latency_us.latency.p99") of run record `rec`. None only when
      - `rec` is None: there is no such run (e.g. no fan-out step was valid and clean),
      - the run has no report (`rec["ok"]` false; `rec["error"]` says why),
      - a When key is absent because its condition does not hold,
      - a Nullable value is null.
    Raises LookupError for an undeclared key, SchemaError for a required key that is missing."""
    if rec is None:
        return None
    scenario = scenario_of(rec)
    spec_at(scenario, path)
    if not rec.get("ok"):
        return None
    view = report_view(rec)
    node, schema, walked = view, schema_for(scenario), []
    for k in path.split("."):
        walked.append(k)
        if node is None:
            return None  # below a null (Nullable) value
        spec = schema.fields[k]
        if k not in node:
            if isinstance(spec, When) and not spec.condition(view):
                return None
            raise SchemaError(f"run {rec.get('name')}/{rec.get('server')}: key {'.'.join(walked)} "
                              "is missing although required (the record was not checked?)")
        node = node[k]
        schema = spec.inner if isinstance(spec, (When, Nullable)) else spec
    return node


# ---------------------------------------------------------------- self-test

def _sample_report():
    lat = {"count": 10, "min": 1, "mean": 2.0, "p50": 2, "p90": 3, "p99": 4, "p999": 5, "max": 6,
           "curve": [[0.0, 1]]}
    return {
        "label": "t", "scenario": "fanout", "params": {}, "target": "ws://x", "started_unix": 0,
        "metrics": {"delivered": 100.0, "delivered_msgs_per_s": 50.0, "delivery_ratio": 1.0,
                    "subscribers_ready": 10.0, "server_cpu_s_per_million_deliveries": 7.5},
        "counters": {}, "errors": {},
        "latency_us": {"latency": lat, "connect": lat},
        "timeline_per_s": {},
        "server": {"pid": 1, "rss_start_bytes": 1, "rss_end_bytes": 1, "rss_peak_bytes": 1,
                   "cpu_seconds_total": 1.0, "cpu_seconds_window": 0.5, "cores_in_window": 0.1},
        "harness": {"processes": 1, "threads_per_process": 1, "cpu_seconds_total": 1.0,
                    "wall_seconds": 1.0, "busiest_process_cores_in_window": 0.1,
                    "all_processes_cores_in_window": 0.1, "machine_cores_busy_in_window": 0.5,
                    "machine_cores": 2},
        "validity": {"rates": [], "expected": 100, "delivered": 100, "lost": 0, "errors": 0,
                     "harness_bottleneck": False, "valid": True, "clean": True, "notes": []},
    }


def self_test(tmpdir):
    """Checks that a good report passes and that bad ones are rejected with a message that
    names the file and the key. Returns the number of checks; raises AssertionError."""
    import copy
    import os

    checks = 0

    def write(doc, name):
        path = os.path.join(tmpdir, name)
        with open(path, "w") as f:
            json.dump(doc, f)
        return path

    def rejected(doc, name, *needles):
        nonlocal checks
        path = write(doc, name)
        try:
            load_report(path)
        except SchemaError as e:
            msg = str(e)
            for n in (path, *needles):
                assert n in msg, f"message {msg!r} does not name {n!r}"
            checks += 1
            return msg
        raise AssertionError(f"{name}: a bad report was accepted")

    good = _sample_report()
    load_report(write(good, "good.json"), "fanout")
    checks += 1

    bad = copy.deepcopy(good)
    del bad["metrics"]["delivered_msgs_per_s"]
    rejected(bad, "missing-metric.json", "key metrics.delivered_msgs_per_s: missing")

    bad = copy.deepcopy(good)
    del bad["validity"]["clean"]
    rejected(bad, "missing-validity.json", "key validity.clean: missing")

    bad = copy.deepcopy(good)
    bad["server"] = None  # compare.py always passes --server-pid: null is not legitimate
    rejected(bad, "null-server.json", "key server: expected an object, got null")

    bad = copy.deepcopy(good)
    bad["metrics"]["delivered_msgs_per_s"] = None  # serde_json writes NaN as null
    rejected(bad, "nan-metric.json", "key metrics.delivered_msgs_per_s: expected a number, got null")

    bad = copy.deepcopy(good)
    bad["validity"]["lost"] = "0"
    rejected(bad, "wrong-type.json", "key validity.lost: expected an integer")

    bad = copy.deepcopy(good)
    del bad["latency_us"]["latency"]["p99"]
    rejected(bad, "missing-p99.json", "key latency_us.latency.p99: missing")

    bad = copy.deepcopy(good)
    del bad["latency_us"]["latency"]  # something was delivered, so the histogram must be there
    rejected(bad, "missing-latency.json", "key latency_us.latency: missing (required when metrics.delivered > 0)")

    bad = copy.deepcopy(good)
    bad["scenario"] = "no-such-scenario"
    rejected(bad, "unknown-scenario.json", "key scenario")

    # Legitimately absent: nothing delivered -> no latency summary and no CPU per delivery.
    ok = copy.deepcopy(good)
    ok["metrics"]["delivered"] = 0.0
    del ok["metrics"]["server_cpu_s_per_million_deliveries"]
    del ok["latency_us"]["latency"]
    ok["server"]["cores_in_window"] = None
    load_report(write(ok, "nothing-delivered.json"))
    rec = {"name": "fanout-step01", "server": "sockudo", "args": ["fanout"], "ok": True,
           **record_fields(ok)}
    check_record(rec, "state.json: records[0]")
    assert value(rec, "latency_us.latency.p99") is None
    assert value(rec, "metrics.server_cpu_s_per_million_deliveries") is None
    assert value(rec, "server.cores_in_window") is None
    assert value(rec, "metrics.delivered_msgs_per_s") == 50.0
    checks += 1

    # A run without a report is explicit, and reads as None.
    failed = {"name": "idle", "server": "sockudo", "args": ["idle"], "ok": False,
              "error": "sockudo did not come up within 30 s"}
    check_record(failed, "state.json: records[1]")
    assert value(failed, "metrics.server_bytes_per_connection_slope") is None
    checks += 1

    # A state.json record that lost a key names the key and the record field.
    rec = {"name": "fanout-step01", "server": "ringpush", "args": ["fanout"], "ok": True,
           **record_fields(good)}
    del rec["server_stats"]["rss_peak_bytes"]
    try:
        check_record(rec, "DIR/state.json: records[7]")
        raise AssertionError("a bad record was accepted")
    except SchemaError as e:
        assert "DIR/state.json: records[7]" in str(e) and "key server.rss_peak_bytes" in str(e) \
            and "record field server_stats.rss_peak_bytes" in str(e), str(e)
    checks += 1

    # Reading a key the schema does not declare is a bug in compare.py.
    try:
        value(rec, "metrics.publish_rate_achieved_per_s")
        raise AssertionError("an undeclared key was read")
    except LookupError:
        checks += 1
    return checks
