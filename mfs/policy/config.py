"""PolicyConfig: every knob of the policy library, validated (see docs/policy.md).

One validation path: the dataclass checks itself in ``__post_init__`` and raises
:class:`mfs.configutil.ConfigError` naming the key and the allowed values;
:meth:`PolicyConfig.from_section` only reads typed values from YAML and re-raises
those errors with the file and key path of the section.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from mfs.configutil import ConfigError, Section
from mfs.levels import NUM_QUEUES

SCHEDULERS = ("mfs", "fair", "fifo", "sjf", "edf", "karuna", "pias", "llf")
MLU_MAPPINGS = ("u_top", "q1_top")
ON_INFEASIBLE = ("scavenger", "urgent", "keep")
MLU_BYTES = ("request", "message")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each class of flow goes in the K levels of MFS (0 = highest)."""

    urgent_p2d: int  # reserved top: Stage-3 flows whose MLU reached the top threshold
    stage2: int  # collectives (RLI 0, GPU blocked)
    stage1: tuple[int, ...]  # Stage-1 levels indexed by capped RLI (RLI 0 first)
    p2d: tuple[int, ...]  # deferred Stage-3 levels, most urgent first
    scavenger: int  # pruned / infeasible

    @property
    def p2d_tiers(self) -> tuple[int, ...]:
        """All Stage-3 levels from most to least urgent (the MLU tiers)."""
        return (self.urgent_p2d, *self.p2d)

    def to_dict(self) -> dict:
        return {"urgent_p2d": self.urgent_p2d, "stage2": self.stage2, "stage1": list(self.stage1),
                "p2d": list(self.p2d), "scavenger": self.scavenger}


# Default layouts per K (documented as tables in docs/policy.md). Early stages sit above
# deferred P2D; the top is reserved for urgent P2D; the scavenger is the bottom level
# (shared with the loosest P2D tier when K is too small to give it its own).
_DEFAULT_LAYOUTS = {
    8: Layout(0, 1, (2, 3, 4), (5, 6), 7),
    7: Layout(0, 1, (2, 3, 4), (5,), 6),
    6: Layout(0, 1, (2, 3), (4,), 5),
    5: Layout(0, 1, (2,), (3,), 4),
    4: Layout(0, 1, (2,), (3,), 3),
    3: Layout(0, 1, (1,), (2,), 2),
    2: Layout(0, 0, (0,), (1,), 1),
}


def default_layout(k: int) -> Layout:
    return _DEFAULT_LAYOUTS[k]


def geometric(base: float, ratio: float, n: int) -> list[float]:
    """``[base, base*ratio, ..., base*ratio**(n-1)]``."""
    return [base * ratio**i for i in range(n)]


@dataclass
class PolicyConfig:
    scheduler: str = "mfs"
    K: int = 8  # levels used (2..8); fair/fifo use 1, llf none (ideal)
    ideal: bool | None = None  # unlimited float levels (simulator only); None = the policy's default
    bandwidth_bps: float = 100e9  # B: link bandwidth in bits/s
    rho_cap: float = 0.9  # measured link load rho is clamped to [0, rho_cap]
    # --- MFS / RMLQ ---------------------------------------------------
    E: float = 4.0  # geometric ratio of the MLU thresholds
    U: float = 0.5  # MLU scale of the thresholds
    mlu_mapping: str = "u_top"  # u_top: top tier iff MLU >= U; q1_top: top iff MLU >= U/E (Q_1)
    mlu_thresholds: list[float] | None = None  # explicit thresholds (overrides E/U), decreasing
    mlu_bytes: str = "request"  # MLU on the request's remaining P2D bytes ("request") or the message's ("message")
    infeasible_mlu: float = 1.0  # MLU above this (or a past deadline) = infeasible
    on_infeasible: str = "scavenger"  # what an infeasible Stage-3 flow gets
    recheck_interval_s: float = 0.005  # MFS tick: min interval between Stage-3 re-checks
    layout: Layout | None = None  # None = default_layout(K)
    red: bool = True  # RED ranking of batches (within-level order hint)
    pruning: bool = True  # Algorithm 1 feasibility check + pruning into the scavenger level
    prune_budget: int = 16  # max requests newly pruned per Algorithm-1 run
    # --- baselines ----------------------------------------------------
    threshold_base_bytes: float = 65536.0  # default size thresholds: base * ratio**i
    threshold_ratio: float = 4.0
    sjf_thresholds: list[float] | None = None  # K-1 increasing sizes (bytes)
    karuna_thresholds: list[float] | None = None  # K-2 increasing sizes for the non-deadline levels
    pias_thresholds: list[float] | None = None  # K-1 increasing bytes-sent demotion points
    edf_thresholds_s: list[float] | None = None  # K-2 increasing time-to-deadline cut-offs (s)
    edf_threshold_base_s: float = 0.005
    source: str = field(default="PolicyConfig", compare=False, repr=False)

    def __post_init__(self):
        def err(key: str, msg: str) -> ConfigError:
            return ConfigError(self.source, key, msg)

        if self.scheduler not in SCHEDULERS:
            raise err("scheduler", f"{self.scheduler!r} is not allowed (allowed: {', '.join(SCHEDULERS)})")
        if isinstance(self.K, bool) or not isinstance(self.K, int) or not 2 <= self.K <= NUM_QUEUES:
            raise err("K", f"{self.K!r} is out of range (allowed: 2..{NUM_QUEUES})")
        if self.ideal is not None and not isinstance(self.ideal, bool):
            raise err("ideal", f"{self.ideal!r} is not allowed (allowed: true, false, null)")
        if self.ideal is True and self.scheduler not in ("sjf", "edf", "fifo", "llf"):
            raise err("ideal", f"true is not supported by {self.scheduler!r} (allowed for: sjf, edf, fifo, llf)")
        if self.ideal is False and self.scheduler == "llf":
            raise err("ideal", "llf is an oracle with unlimited levels (allowed: true, null)")
        _positive(err, "bandwidth_bps", self.bandwidth_bps)
        _in_range(err, "rho_cap", self.rho_cap, 0.0, 0.99)
        _in_range(err, "E", self.E, 1.0, math.inf, lo_open=True)
        _in_range(err, "U", self.U, 0.0, 1e6, lo_open=True)
        if self.mlu_mapping not in MLU_MAPPINGS:
            raise err("mlu_mapping", f"{self.mlu_mapping!r} is not allowed (allowed: {', '.join(MLU_MAPPINGS)})")
        if self.mlu_bytes not in MLU_BYTES:
            raise err("mlu_bytes", f"{self.mlu_bytes!r} is not allowed (allowed: {', '.join(MLU_BYTES)})")
        _in_range(err, "infeasible_mlu", self.infeasible_mlu, 0.0, 1e6, lo_open=True)
        if self.on_infeasible not in ON_INFEASIBLE:
            raise err("on_infeasible", f"{self.on_infeasible!r} is not allowed (allowed: {', '.join(ON_INFEASIBLE)})")
        _in_range(err, "recheck_interval_s", self.recheck_interval_s, 0.0, 3600.0)
        if isinstance(self.prune_budget, bool) or not isinstance(self.prune_budget, int) or self.prune_budget < 0:
            raise err("prune_budget", f"{self.prune_budget!r} is out of range (allowed: >=0)")
        _positive(err, "threshold_base_bytes", self.threshold_base_bytes)
        _in_range(err, "threshold_ratio", self.threshold_ratio, 1.0, math.inf, lo_open=True)
        _positive(err, "edf_threshold_base_s", self.edf_threshold_base_s)
        derived = self.derived_defaults()
        if self.layout is None:
            self.layout = derived["layout"]
        elif isinstance(self.layout, dict):
            self.layout = _layout_from_dict(err, self.layout, self.K)
        else:
            _check_layout(err, self.layout, self.K)
        n_tiers = len(self.layout.p2d_tiers)
        if self.mlu_thresholds is not None:
            self.mlu_thresholds = _thresholds(err, "mlu_thresholds", self.mlu_thresholds, n_tiers - 1, decreasing=True)
        for key in ("sjf_thresholds", "karuna_thresholds", "pias_thresholds", "edf_thresholds_s"):
            value = getattr(self, key)
            n = len(derived[key])
            setattr(self, key, derived[key] if value is None else _thresholds(err, key, value, n))

    # --- MLU thresholds -------------------------------------------------
    def mlu_cutoffs(self) -> list[float]:
        """Decreasing MLU cut-offs t_1 > t_2 > ...: a Stage-3 flow is in tier j-1 if
        MLU >= t_j (first such j), else in the last tier (see docs/policy.md)."""
        if self.mlu_thresholds is not None:
            return list(self.mlu_thresholds)
        n = len(self.layout.p2d_tiers) - 1
        first = 0 if self.mlu_mapping == "u_top" else 1  # u_top: U, U/E, ...; q1_top: U/E, U/E^2, ...
        return [self.U * self.E ** -(first + j) for j in range(n)]

    # --- YAML -------------------------------------------------------------
    @classmethod
    def from_section(cls, section: Section) -> "PolicyConfig":
        """Read a ``policy:`` mapping. Unknown keys and bad values raise ConfigError."""
        s = section
        kw: dict = {"source": s.source}
        d = cls()  # defaults
        num = lambda name: s.number(name, getattr(d, name))  # noqa: E731
        kw["scheduler"] = s.string("scheduler", d.scheduler)
        kw["K"] = s.integer("K", d.K)
        ideal = s.get("ideal", None)
        if ideal is not None and not isinstance(ideal, bool):
            raise s.error("ideal", f"{ideal!r} is not allowed (allowed: true, false, null)")
        kw["ideal"] = ideal
        for name in ("bandwidth_bps", "rho_cap", "E", "U", "infeasible_mlu", "recheck_interval_s",
                     "threshold_base_bytes", "threshold_ratio", "edf_threshold_base_s"):
            kw[name] = num(name)
        kw["mlu_mapping"] = s.string("mlu_mapping", d.mlu_mapping)
        kw["mlu_bytes"] = s.string("mlu_bytes", d.mlu_bytes)
        kw["on_infeasible"] = s.string("on_infeasible", d.on_infeasible)
        kw["red"] = s.boolean("red", d.red)
        kw["pruning"] = s.boolean("pruning", d.pruning)
        kw["prune_budget"] = s.integer("prune_budget", d.prune_budget)
        for name in ("mlu_thresholds", "sjf_thresholds", "karuna_thresholds", "pias_thresholds", "edf_thresholds_s"):
            v = s.get(name, None)
            kw[name] = None if v is None else s.sequence(name)
        lay = s.get("layout", None)
        if lay is not None:
            sub = s.section("layout")
            kw["layout"] = {k: sub.get(k) for k in ("urgent_p2d", "stage2", "stage1", "p2d", "scavenger")}
            sub.done()
        s.done()
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(s.source, s.key(e.key), e.message) from None

    @classmethod
    def from_dict(cls, data: dict | None, source: str = "<policy>") -> "PolicyConfig":
        return cls.from_section(Section(data, source))

    def derived_defaults(self) -> dict:
        """The values a key gets when left null: from K and the base/ratio knobs."""
        geo = lambda n: geometric(self.threshold_base_bytes, self.threshold_ratio, n)  # noqa: E731
        return {"layout": default_layout(self.K), "sjf_thresholds": geo(self.K - 1),
                "karuna_thresholds": geo(self.K - 2), "pias_thresholds": geo(self.K - 1),
                "edf_thresholds_s": geometric(self.edf_threshold_base_s, self.threshold_ratio, self.K - 2)}

    def to_dict(self) -> dict:
        """Plain YAML-able values. Keys still at their derived default are null, so that
        ``from_dict({**cfg.to_dict(), "K": 4})`` re-derives them for the new K."""
        out = {}
        derived = self.derived_defaults()
        for f in fields(self):
            if f.name == "source":
                continue
            v = getattr(self, f.name)
            if f.name in derived and v == derived[f.name]:
                v = None
            out[f.name] = v.to_dict() if isinstance(v, Layout) else (list(v) if isinstance(v, (list, tuple)) else v)
        return out


def _in_range(err, key, v, lo, hi, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise err(key, f"{v!r} is not a number")
    if v < lo or (lo_open and v == lo) or v > hi:
        lo_s = f">{lo}" if lo_open else f">={lo}"
        hi_s = "" if hi == math.inf else f" and <={hi}"
        raise err(key, f"{v} is out of range (allowed: {lo_s}{hi_s})")


def _positive(err, key, v):
    _in_range(err, key, v, 0.0, math.inf, lo_open=True)


def _thresholds(err, key, values, n, decreasing=False):
    if not isinstance(values, (list, tuple)):
        raise err(key, f"expected a list of {n} numbers, got {type(values).__name__}")
    if len(values) != n:
        raise err(key, f"has {len(values)} entries, needs exactly {n} (one per boundary between levels)")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
            raise err(f"{key}[{i}]", f"{v!r} is not a positive finite number")
        out.append(float(v))
    pairs = list(zip(out, out[1:]))
    if any((a <= b) if decreasing else (a >= b) for a, b in pairs):
        raise err(key, f"{out} must be strictly {'decreasing' if decreasing else 'increasing'}")
    return out


def _layout_from_dict(err, d, k):
    missing = [n for n in ("urgent_p2d", "stage2", "stage1", "p2d", "scavenger") if n not in d]
    if missing:
        raise err(f"layout.{missing[0]}", "is required")
    extra = sorted(set(d) - {"urgent_p2d", "stage2", "stage1", "p2d", "scavenger"})
    if extra:
        raise err(f"layout.{extra[0]}", "unknown key (known: urgent_p2d, stage2, stage1, p2d, scavenger)")
    for n in ("stage1", "p2d"):
        if not isinstance(d[n], (list, tuple)) or not d[n]:
            raise err(f"layout.{n}", f"{d[n]!r} must be a non-empty list of levels")
    lay = Layout(d["urgent_p2d"], d["stage2"], tuple(d["stage1"]), tuple(d["p2d"]), d["scavenger"])
    _check_layout(err, lay, k)
    return lay


def _check_layout(err, lay: Layout, k: int):
    def lvl(key, v):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < k:
            raise err(f"layout.{key}", f"{v!r} is not a level (allowed: 0..{k - 1})")

    lvl("urgent_p2d", lay.urgent_p2d)
    lvl("stage2", lay.stage2)
    lvl("scavenger", lay.scavenger)
    for name in ("stage1", "p2d"):
        seq = getattr(lay, name)
        if not seq:
            raise err(f"layout.{name}", "must list at least one level")
        for i, v in enumerate(seq):
            lvl(f"{name}[{i}]", v)
        if any(a >= b for a, b in zip(seq, seq[1:])):
            raise err(f"layout.{name}", f"{list(seq)} must be strictly increasing (most urgent first)")
    if lay.urgent_p2d > lay.p2d[0]:
        raise err("layout.urgent_p2d", f"{lay.urgent_p2d} must not be below the deferred P2D levels {list(lay.p2d)}")
    lowest = max(lay.urgent_p2d, lay.stage2, *lay.stage1, *lay.p2d)
    if lay.scavenger < lowest:
        raise err("layout.scavenger", f"{lay.scavenger} must be the lowest level (>= {lowest})")
