"""Resumable sweeps: one small JSON file per (model, workload, scheduler, rate, seed) point in a
results directory; points already there are skipped. Runs on a local process pool (default) or on
a Ray cluster (``ray=ADDRESS`` or ``"auto"``; ``pip install '.[ray]'``), with progress lines.

    python -m mfs.sim sweep --models dbrx --workloads conversation --loads 0.5,0.7 --seeds 1,2,3 --out /work/simruns/x

Every point first needs its (model, workload, seed, cluster) SLO calibration (the low-load TTFT
ratio, :func:`mfs.sim.runner.calibrate_slo`); calibrations are jobs too and are stored in the same
directory (``calib_*.json``), so a resumed sweep does not repeat them.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mfs.sim.engine import ClusterConfig
from mfs.sim.results import _json_safe

POINT_SCHEMA = "mfs-sweep-point/1"
BOUND = "no-network bound"  # scheduler label of the compute-only bound (fair sharing, links 1e6x faster)


@dataclass(frozen=True)
class Point:
    model: str
    workload: str
    scheduler: str  # a policy name, or BOUND
    rate: float  # requests/s per prefill GPU
    seed: int = 1
    servers: int = 256
    warmup: int = 512
    measured: int = 1024
    max_batch_tokens: int = 8192
    fairness: str = "per_connection"

    @property
    def key(self) -> str:
        s = "bound" if self.scheduler == BOUND else self.scheduler
        return (f"{self.model}_{self.workload}_{s}_r{self.rate:.6g}_s{self.seed}_n{self.servers}"
                f"_{self.warmup}+{self.measured}_b{self.max_batch_tokens}_{self.fairness}")

    def calib_key(self) -> str:
        return (f"calib_{self.model}_{self.workload}_s{self.seed}_n{self.servers}_b{self.max_batch_tokens}"
                f"_{self.fairness}")

    def cluster(self, lowload_ratio: float = 1.0) -> ClusterConfig:
        return ClusterConfig(servers=self.servers, warmup=self.warmup, measured=self.measured,
                             max_batch_tokens=self.max_batch_tokens, fairness=self.fairness,
                             lowload_ratio=lowload_ratio, ideal_network=self.scheduler == BOUND)


def _calibrate(p: Point) -> dict:
    from mfs.sim.runner import calibrate_slo
    t0 = time.process_time()
    ratio = calibrate_slo(p.model, p.workload, p.cluster(), seed=p.seed)
    return {"kind": "calib", "key": p.calib_key(), "lowload_ratio": ratio, "cpu_s": time.process_time() - t0}


def _run(p: Point, ratio: float) -> dict:
    from mfs.sim.runner import run_point
    t0 = time.process_time()
    sched = "fair" if p.scheduler == BOUND else p.scheduler
    run = run_point(p.model, p.workload, sched, p.rate, p.cluster(ratio), seed=p.seed)
    return {"kind": "point", "schema": POINT_SCHEMA, "key": p.key, "point": asdict(p), "summary": run.summary,
            "nic_load": run.meta.get("nic_load", {}), "lowload_ratio": ratio,
            "flows": run.meta["flows"], "cpu_s": round(time.process_time() - t0, 2)}


def run_job(job: tuple) -> dict:
    """One job (the unit a worker runs): ("calib", Point) or ("point", Point, lowload_ratio)."""
    if job[0] == "calib":
        return _calibrate(job[1])
    return _run(job[1], job[2])


# ---- storage ------------------------------------------------------------------------
def _write(outdir: Path, res: dict) -> Path:
    p = outdir / f"{res['key']}.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(res), indent=1))
    os.replace(tmp, p)  # atomic: an interrupted sweep never leaves a half-written point
    return p


def load_points(src: str | Path) -> list[dict]:
    """Every finished point of a results directory (``*.json`` but calibrations), or the rows of a
    summary CSV written by :func:`write_points_csv`. Errors name the file."""
    src = Path(src)
    if src.is_file() and src.suffix == ".csv":
        return _read_points_csv(src)
    if not src.is_dir():
        raise FileNotFoundError(f"results directory {src} not found")
    out = []
    for f in sorted(src.glob("*.json")):
        if f.name.startswith("calib_"):
            continue
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{f}: cannot read point: {e}") from None
        if not isinstance(d, dict) or d.get("schema") != POINT_SCHEMA:
            raise ValueError(f"{f}: not a {POINT_SCHEMA} file")
        out.append(d)
    return out


_PFIELDS = [f.name for f in fields(Point)]
_SFIELDS = ["requests", "attainment", "ttft_mean", "ttft_p50", "ttft_p99", "stage2_cct_mean", "stage1_stall_mean",
            "earliness_mean", "earliness_nonneg_mean"]
_NFIELDS = ["stage1_tx_mean", "stage1_tx_max", "stage2_tx_mean", "stage2_tx_max", "stage3_tx_mean", "stage3_tx_max",
            "prefill_tx_mean", "prefill_tx_p99", "prefill_tx_max", "decode_rx_mean", "decode_rx_max", "compute_util"]


def write_points_csv(points: list[dict], path: str | Path) -> Path:
    """One row per point (point fields, summary, measured per-NIC loads): the compact, committable form."""
    import csv
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_PFIELDS + _SFIELDS + ["nic_" + k for k in _NFIELDS] + ["lowload_ratio", "cpu_s"])
        for d in sorted(points, key=lambda d: d["key"]):
            pt, s, n = d["point"], d["summary"], d.get("nic_load", {})
            w.writerow([pt[k] for k in _PFIELDS] + [_fmt(s.get(k)) for k in _SFIELDS]
                       + [_fmt(n.get(k)) for k in _NFIELDS] + [_fmt(d.get("lowload_ratio")), d.get("cpu_s", "")])
    return p


def _fmt(x):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.6g}" if isinstance(x, float) else x


def _read_points_csv(path: Path) -> list[dict]:
    import csv
    out = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), 2):
            try:
                pt = Point(model=row["model"], workload=row["workload"], scheduler=row["scheduler"],
                           rate=float(row["rate"]), seed=int(row["seed"]), servers=int(row["servers"]),
                           warmup=int(row["warmup"]), measured=int(row["measured"]),
                           max_batch_tokens=int(row["max_batch_tokens"]), fairness=row["fairness"])
                num = lambda v: float(v) if v not in ("", None) else math.nan  # noqa: E731
                out.append({"key": pt.key, "point": asdict(pt), "summary": {k: num(row[k]) for k in _SFIELDS},
                            "nic_load": {k: num(row["nic_" + k]) for k in _NFIELDS},
                            "lowload_ratio": num(row["lowload_ratio"])})
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"{path}:{i}: bad row ({type(e).__name__}: {e})") from None
    return out


# ---- executors ------------------------------------------------------------------------
def _local(jobs: list[tuple], workers: int) -> Iterator[dict]:
    if workers <= 1:
        for j in jobs:
            yield run_job(j)
        return
    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap_unordered(run_job, jobs)


def _ray(jobs: list[tuple], address: str, workers: int | None) -> Iterator[dict]:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs the ray package: pip install 'mfs-switch[ray]' (or '.[ray]')") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, **({"num_cpus": workers} if address == "local" and workers else {}))
    remote = ray.remote(num_cpus=1)(run_job)
    pending = [remote.remote(j) for j in jobs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def executor(ray_address: str | None, workers: int | None) -> Callable[[list[tuple]], Iterable[dict]]:
    """``ray_address``: None = local process pool of ``workers`` (default: all cores); an address,
    "auto" (a running cluster) or "local" (start a local Ray instance)."""
    if ray_address:
        return lambda jobs: _ray(jobs, ray_address, workers)
    w = workers or os.cpu_count() or 1
    return lambda jobs: _local(jobs, w)


# ---- the sweep ----------------------------------------------------------------------------
def sweep(points: list[Point], outdir: str | Path, run: Callable[[list[tuple]], Iterable[dict]] | None = None,
          log=sys.stderr) -> list[dict]:
    """Run every point not already in ``outdir`` (in the given order); return all of ``points``'
    results (finished before or now)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    run = run or executor(None, None)
    done = {p.key for p in points if (out / f"{p.key}.json").is_file()}
    todo = [p for p in points if p.key not in done]
    calib = {}
    for p in points:
        f = out / f"{p.calib_key()}.json"
        if f.is_file():
            calib[p.calib_key()] = json.loads(f.read_text())["lowload_ratio"]
    t0 = time.time()
    print(f"sweep: {len(points)} points, {len(done)} already in {out}, {len(todo)} to run", file=log, flush=True)
    need = {}
    for p in todo:
        if p.calib_key() not in calib:
            need.setdefault(p.calib_key(), p)
    if need:
        for i, res in enumerate(run([("calib", p) for p in need.values()]), 1):
            _write(out, res)
            calib[res["key"]] = res["lowload_ratio"]
            print(f"sweep: calibration {i}/{len(need)} {res['key']}: low-load/ideal {res['lowload_ratio']:.3f} "
                  f"({res['cpu_s']:.0f} s CPU)", file=log, flush=True)
    jobs = [("point", p, calib[p.calib_key()]) for p in todo]
    for i, res in enumerate(run(jobs), 1):
        _write(out, res)
        el = time.time() - t0
        eta = el / i * (len(jobs) - i)
        s = res["summary"]
        print(f"sweep: [{i}/{len(jobs)}] {el / 60:5.1f} min, ~{eta / 60:.0f} min left: {res['key']}: attainment "
              f"{s['attainment']:.3f}, Stage-2 CCT {s['stage2_cct_mean'] * 1e3:.2f} ms ({res['cpu_s']:.0f} s CPU)",
              file=log, flush=True)
    keys = {p.key for p in points}
    return [d for d in load_points(out) if d["key"] in keys]


def grid(models: list[str], workloads: list[str], schedulers: list[str], seeds: list[int],
         rates: Callable[[str, str], list[float]], base: Point, bound: bool = True, order: str = "breadth") -> list[Point]:
    """The points of a sweep. ``order="breadth"`` (default): seed by seed, and within a seed every
    case's rates, so an interrupted sweep has a complete table for some seeds rather than all seeds
    of a few cases."""
    cases = [(m, w) for m in models for w in workloads]
    out = []
    for seed in seeds:
        for m, w in cases:
            for r in rates(m, w):
                for s in schedulers + ([BOUND] if bound else []):
                    out.append(replace(base, model=m, workload=w, scheduler=s, rate=round(r, 6), seed=seed))
    if order == "depth":
        out.sort(key=lambda p: (p.model, p.workload, p.seed))
    return out
