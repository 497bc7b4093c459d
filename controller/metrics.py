"""Controller metrics: counters, gauges, latency samples; Prometheus text at /metrics.

The admin HTTP server (controller/admin.py) serves :meth:`Metrics.prometheus`, which is
prometheus_client's exposition of this registry (a custom collector: the controller keeps its
own counters so it can query them — ``total``, ``by_label``, ``quantiles``, ``rate``).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

RATE_WINDOW_S = 10.0


def _labels(labels: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


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
    def collect(self):
        """prometheus_client collector protocol: counters as ``mfs_<name>_total``, gauges as
        ``mfs_<name>``, latency samples as summaries ``mfs_<name>{quantile="0.5"|"0.99"}`` with
        ``_sum`` and ``_count`` (quantiles over the last ``samples`` observations)."""
        with self._lock:
            counters = sorted(self.counters.items())
            gauges = sorted(self.gauges.items())
            samples = {k: list(d) for k, d in sorted(self.samples.items())}
            sums = dict(self.sums)
        families: dict[str, Metric] = {}

        def family(name: str, kind: str) -> Metric:
            m = families.get(name)
            if m is None:
                m = families[name] = Metric(name, f"MFS controller {name[4:]}", kind)
            return m
        for (name, lb), v in counters:
            family(f"mfs_{name}", "counter").add_sample(f"mfs_{name}_total", dict(lb), v)
        for (name, lb), v in gauges:
            family(f"mfs_{name}", "gauge").add_sample(f"mfs_{name}", dict(lb), v)
        for (name, lb), vals in samples.items():
            m = family(f"mfs_{name}", "summary")
            arr = np.asarray(vals)
            for q in (0.5, 0.99):
                val = float(np.quantile(arr, q)) if arr.size else float("nan")
                m.add_sample(m.name, {**dict(lb), "quantile": str(q)}, val)
            c, sm = sums[(name, lb)]
            m.add_sample(f"{m.name}_sum", dict(lb), sm)
            m.add_sample(f"{m.name}_count", dict(lb), c)
        yield from families.values()

    def prometheus(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every metric, by prometheus_client."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry).decode()
