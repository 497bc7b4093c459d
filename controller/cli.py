"""mfsctl: operate a running MFS controller (docs/mfsctl.md).

    mfsctl [--controller URL] [--json] status | switches | flows | queues
    mfsctl policy show | policy set key=value ... | policy what-if key=value ...
    mfsctl sim ...              (passes through to `python -m mfs.sim`)
    mfsctl tofino-config ...    (passes through to controller.tofino)

The controller URL defaults to $MFSCTL_CONTROLLER, else http://127.0.0.1:9100.
Values in key=value are YAML scalars (``K=4``, ``E=2.5``, ``hosts.h1.trusted=true``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

import yaml

DEFAULT_URL = "http://127.0.0.1:9100"


class CtlError(Exception):
    pass


# ---------------------------------------------------------------------- HTTP
def request(base: str, method: str, path: str, body: dict | None = None, timeout: float = 10.0):
    url = base.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", "")
        except Exception:  # noqa: BLE001
            msg = e.reason
        raise CtlError(f"controller refused {method} {path}: HTTP {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CtlError(f"cannot reach the controller at {base} ({reason}); is mfs-controller running? "
                       f"set --controller or $MFSCTL_CONTROLLER") from None


# ---------------------------------------------------------------------- output
def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ",".join(f"{k}={fmt(x)}" for k, x in v.items()) or "-"
    return str(v)


def table(rows: list[dict], cols: list[str], out=None) -> None:
    out = out or sys.stdout
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=out)
    if not rows:
        print("(none)", file=out)


def parse_assignments(items: list[str]) -> dict:
    out = {}
    for it in items:
        key, sep, raw = it.partition("=")
        if not sep or not key:
            raise CtlError(f"{it!r} is not key=value")
        try:
            val = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise CtlError(f"{key}: value {raw!r} is not a YAML scalar/list: {e}") from None
        if isinstance(val, str) and val:
            try:  # PyYAML reads 1e9 as a string (YAML 1.1); accept it as a number
                val = float(val) if any(c in val for c in "eE.") else val
            except ValueError:
                pass
        out[key] = val
    return out


# ---------------------------------------------------------------------- commands
def cmd_status(a) -> int:
    st = request(a.controller, "GET", "/api/status")
    if a.json:
        return _dump(st)
    for k, v in st.items():
        print(f"{k:24s} {fmt(v)}")
    return 0


def cmd_switches(a) -> int:
    rows = request(a.controller, "GET", "/api/switches")
    if a.json:
        return _dump(rows)
    table(rows, ["name", "address", "state", "primary", "election_id", "placement", "ports", "flow_entries",
                 "flow_table_size", "overflow", "resyncs", "pipeline_pushes", "rho", "last_error"])
    return 0


def cmd_flows(a) -> int:
    rows = request(a.controller, "GET", "/api/flows")
    if a.json:
        return _dump(rows)
    table(rows, ["flow_id", "host", "stage", "request_id", "level", "laxity_s", "mlu", "rli", "bytes_left",
                 "scavenger", "installed"])
    return 0


def cmd_queues(a) -> int:
    rows = request(a.controller, "GET", "/api/queues")
    if a.json:
        return _dump(rows)
    errs = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    if a.nonzero:
        rows = [r for r in rows if r["packets"] or r["depth"]]
    table(rows, ["switch", "port", "level", "packets", "bytes", "depth", "delay_us", "rho"])
    for e in errs:
        print(f"{e['switch']}: cannot read queues: {e['error']}", file=sys.stderr)
    return 1 if errs and not rows else 0


def cmd_policy(a) -> int:
    if a.action == "show":
        p = request(a.controller, "GET", "/api/policy")
        if a.json:
            return _dump(p)
        print(yaml.safe_dump(p, sort_keys=False).rstrip())
        return 0
    if not a.assignments:
        raise CtlError(f"policy {a.action} needs key=value arguments (e.g. K=4 scheduler=sjf)")
    ups = parse_assignments(a.assignments)
    if a.action == "set":
        p = request(a.controller, "PUT", "/api/policy", ups)
        if a.json:
            return _dump(p)
        print("applied:", ", ".join(f"{k}={v}" for k, v in ups.items()))
        print(yaml.safe_dump(p["policy"], sort_keys=False).rstrip())
        return 0
    return what_if(a, ups)


def what_if(a, ups: dict) -> int:
    """Simulate a small workload with the controller's current policy and with the proposal."""
    try:
        from dataclasses import replace

        from mfs.sim.engine import ClusterConfig
        from mfs.sim.runner import calibrate_slo, run_point
    except ImportError as e:
        raise CtlError(f"policy what-if needs the simulator (mfs.sim), which is not importable here: {e}") from None
    from mfs.policy import PolicyConfig

    current = request(a.controller, "GET", "/api/policy")["policy"]
    bad = [k for k in ups if k.startswith(("hosts.", "ports."))]
    if bad:
        raise CtlError(f"what-if simulates the policy only; {', '.join(bad)} are switch/host settings")
    proposed = {**current, **ups}
    PolicyConfig.from_dict(proposed, "what-if")  # validate before simulating: errors name the key

    def overrides(p: dict) -> tuple[str, dict]:
        p = dict(p)
        sched = p.pop("scheduler")
        p.pop("bandwidth_bps", None)  # the simulator sets B from its hardware model
        if p.get("ideal") is None:
            p.pop("ideal", None)
        return sched, p

    cl = ClusterConfig(servers=a.servers, warmup=a.warmup, measured=a.measured)
    cl = replace(cl, lowload_ratio=calibrate_slo(a.model, a.workload, cl, count=min(100, a.measured)))
    results = {}
    for label, pol in (("current", current), ("proposed", proposed)):
        sched, ov = overrides(pol)
        run = run_point(a.model, a.workload, sched, a.rate, cl, policy_overrides=ov)
        results[label] = {"scheduler": sched, **run.summary}
    if a.json:
        return _dump(results)
    keys = [k for k in results["current"] if k != "scheduler"]
    print(f"what-if: {a.model} / {a.workload}, {a.servers} servers, {a.rate} req/s per prefill GPU, "
          f"{a.measured} measured requests")
    rows = [{"metric": k, "current": results["current"][k], "proposed": results["proposed"][k]}
            for k in ["scheduler"] + keys]
    table(rows, ["metric", "current", "proposed"])
    return 0


def passthrough(module: str, func: str, argv: list[str], what: str) -> int:
    try:
        mod = __import__(module, fromlist=[func])
    except ImportError as e:
        raise CtlError(f"{what} is not available here ({module} does not import: {e})") from None
    return getattr(mod, func)(argv) or 0


def _dump(obj) -> int:
    json.dump(obj, sys.stdout, indent=2, default=str)
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mfsctl", description="Operate a running MFS controller (docs/mfsctl.md)")
    ap.add_argument("--controller", default=os.environ.get("MFSCTL_CONTROLLER", DEFAULT_URL),
                    help="admin URL of the controller (default $MFSCTL_CONTROLLER or %(default)s)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="controller summary: switches, hosts, flows, promotion rate, latencies")
    sub.add_parser("switches", help="per-switch connection, arbitration and table state")
    sub.add_parser("flows", help="live flows: level, laxity, MLU, RLI, bytes left, installed level per switch")
    q = sub.add_parser("queues", help="per-port per-level counters, queue depth and delay, read from the switches")
    q.add_argument("--nonzero", action="store_true", help="only rows with traffic or a queue")
    p = sub.add_parser("policy", help="show, change or simulate the scheduling policy")
    p.add_argument("action", choices=["show", "set", "what-if"])
    p.add_argument("assignments", nargs="*", metavar="key=value")
    p.add_argument("--model", default="mixtral-8x22b", help="what-if: simulated model")
    p.add_argument("--workload", default="conversation", help="what-if: workload (mfs.sim)")
    p.add_argument("--rate", type=float, default=1.0, help="what-if: requests/s per prefill GPU")
    p.add_argument("--servers", type=int, default=16, help="what-if: servers of 8 GPUs")
    p.add_argument("--warmup", type=int, default=32)
    p.add_argument("--measured", type=int, default=128)
    sub.add_parser("sim", help="the flow-level simulator (python -m mfs.sim ...)", add_help=False)
    sub.add_parser("tofino-config", help="render the Tofino TM/queue config (controller.tofino)", add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = build_parser()
    # pass-through commands take the rest of the command line verbatim
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--controller":
            i += 2
            continue
        if tok.startswith("-"):
            i += 1
            continue
        if tok in ("sim", "tofino-config"):
            try:
                if tok == "sim":
                    return passthrough("mfs.sim.cli", "main", argv[i + 1:], "the simulator")
                return passthrough("controller.tofino", "main", argv[i + 1:], "tofino-config")
            except CtlError as e:
                print(f"mfsctl: {e}", file=sys.stderr)
                return 2
        break
    a = ap.parse_args(argv)
    handlers = {"status": cmd_status, "switches": cmd_switches, "flows": cmd_flows, "queues": cmd_queues,
                "policy": cmd_policy}
    try:
        return handlers[a.cmd](a)
    except CtlError as e:
        print(f"mfsctl: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # PolicyConfig validation (what-if)
        print(f"mfsctl: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
