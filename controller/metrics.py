"""Controller metrics: counters, gauges, latency samples; Prometheus text at /metrics.

The admin HTTP server (controller/admin.py) serves :meth:`Metrics.prometheus`.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

RATE_WINDOW_S = 10.0


def _labels(labels: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _fmt(name: str, labels: tuple) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels)
    return f"{name}{{{inner}}}"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe enough for one asyncio loop writing and an HTTP thread reading."""

    def __init__(self, samples: int = 20000):
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = {}
        self.gauges: dict[tuple[str, tuple], float] = {}
        self.samples: dict[tuple[str, tuple], deque] = {}
        self.sums: dict[tuple[str, tuple], tuple[int, float]] = {}
        self._n = samples
        self._rate_hist: dict[str, deque] = {}

    def count(self, name: str, n: float = 1, **labels) -> None:
        k = (name, _labels(labels))
        with self._lock:
            self.counters[k] = self.counters.get(k, 0) + n

    def gauge(self, name: str, value: float, **labels) -> None:
        with self._lock:
            self.gauges[(name, _labels(labels))] = value

    def observe(self, name: str, value: float, **labels) -> None:
        k = (name, _labels(labels))
        with self._lock:
            d = self.samples.get(k)
            if d is None:
                d = self.samples[k] = deque(maxlen=self._n)
            d.append(value)
            c, s = self.sums.get(k, (0, 0.0))
            self.sums[k] = (c + 1, s + value)

    # ------------------------------------------------------------- queries
    def total(self, name: str, **match) -> float:
        want = set(_labels(match))
        with self._lock:
            return sum(v for (n, lb), v in self.counters.items() if n == name and want <= set(lb))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        with self._lock:
            for (n, lb), v in self.counters.items():
                if n == name:
                    key = dict(lb).get(label, "")
                    out[key] = out.get(key, 0) + v
        return out

    def quantiles(self, name: str, qs=(0.5, 0.99)) -> dict[str, float | None]:
        with self._lock:
            vals = [v for (n, _), d in self.samples.items() if n == name for v in d]
        if not vals:
            return {f"p{int(q * 100)}": None for q in qs}
        arr = np.asarray(vals)
        return {f"p{int(q * 100)}": float(np.quantile(arr, q)) for q in qs}

    def rate(self, name: str) -> float:
        """Events per second of counter ``name`` over the last ~10 s (sampled at each call)."""
        now, tot = time.monotonic(), self.total(name)
        with self._lock:
            h = self._rate_hist.setdefault(name, deque())
            h.append((now, tot))
            while len(h) > 2 and now - h[0][0] > RATE_WINDOW_S:
                h.popleft()
            t0, v0 = h[0]
        return (tot - v0) / (now - t0) if now - t0 > 1e-3 else 0.0

    # ------------------------------------------------------------- exposition
    def prometheus(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = sorted(self.counters.items())
            gauges = sorted(self.gauges.items())
            samples = {k: list(d) for k, d in self.samples.items()}
            sums = dict(self.sums)
        seen: set[str] = set()
        for items, suffix, kind in ((counters, "_total", "counter"), (gauges, "", "gauge")):
            for (name, lb), v in items:
                full = f"mfs_{name}{suffix}"
                if full not in seen:
                    lines.append(f"# TYPE {full} {kind}")
                    seen.add(full)
                lines.append(f"{_fmt(full, lb)} {v:g}")
        for (name, lb) in sorted(samples):
            full = f"mfs_{name}"
            if full not in seen:
                lines.append(f"# TYPE {full} summary")
                seen.add(full)
            arr = np.asarray(samples[(name, lb)])
            for q in (0.5, 0.99):
                val = float(np.quantile(arr, q)) if arr.size else float("nan")
                lines.append(f"{_fmt(full, lb + (('quantile', str(q)),))} {val:g}")
            c, s = sums[(name, lb)]
            lines.append(f"{_fmt(full + '_sum', lb)} {s:g}")
            lines.append(f"{_fmt(full + '_count', lb)} {c}")
        return "\n".join(lines) + "\n"
