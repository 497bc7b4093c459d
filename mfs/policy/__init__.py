"""The one scheduling library: MFS/RMLQ and the baselines (docs/policy.md).

    from mfs.policy import PolicyConfig, make_policy
    pol = make_policy("mfs", PolicyConfig(K=8))
"""

from __future__ import annotations

from mfs.policy.api import Changes, FlowInfo, FlowState, Policy, RequestInfo
from mfs.policy.base import BasePolicy, UnknownFlow, link_name
from mfs.policy.baselines import (EdfPolicy, FairPolicy, FifoPolicy, KarunaPolicy, LlfPolicy, PiasPolicy,
                                  SjfPolicy)
from mfs.policy.config import SCHEDULERS, Layout, PolicyConfig, default_layout
from mfs.policy.rmlq import MfsPolicy

POLICIES: dict[str, type[BasePolicy]] = {
    "mfs": MfsPolicy,
    "fair": FairPolicy,
    "fifo": FifoPolicy,
    "sjf": SjfPolicy,
    "edf": EdfPolicy,
    "karuna": KarunaPolicy,
    "pias": PiasPolicy,
    "llf": LlfPolicy,
}
assert tuple(POLICIES) == SCHEDULERS


def make_policy(name: str | None = None, config: PolicyConfig | None = None) -> Policy:
    """Build a policy by name (default: ``config.scheduler``). The config is validated
    again for that scheduler, so e.g. ``ideal: true`` with ``fair`` is refused."""
    if name is not None and name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} (allowed: {', '.join(POLICIES)})")
    if config is None:
        config = PolicyConfig(scheduler=name or "mfs")
    name = name or config.scheduler
    if name != config.scheduler:
        config = PolicyConfig(**{**_fields(config), "scheduler": name})
    return POLICIES[name](config)


def make_switch_policy(config: PolicyConfig) -> Policy:
    """The policy a switch can enforce (bounded levels): where the scheduler has both an ideal
    and a K-level variant and the config does not choose, the K-level one (e.g. fifo is one
    FIFO queue on a switch). Raises ValueError for an ideal-only scheduler (llf) or ``ideal: true``."""
    pol = _bounded(config)
    if pol is None:
        raise ValueError(f"policy {config.scheduler!r} is ideal (unlimited levels): the simulator can run it, "
                         f"a switch cannot (allowed: {', '.join(switch_schedulers())})")
    return pol


def _bounded(config: PolicyConfig) -> Policy | None:
    pol = make_policy(config=config)
    if pol.num_levels is None and config.ideal is None:
        try:
            pol = make_policy(config=PolicyConfig(**{**_fields(config), "ideal": False}))
        except ValueError:  # the scheduler has no K-level variant
            return None
    return pol if pol.num_levels is not None else None


def switch_schedulers() -> list[str]:
    """Schedulers a switch can enforce (``make_switch_policy`` accepts them by name)."""
    return [n for n in POLICIES if _bounded(PolicyConfig(scheduler=n)) is not None]


def _fields(config: PolicyConfig) -> dict:
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config)}


__all__ = ["POLICIES", "make_policy", "make_switch_policy", "switch_schedulers", "PolicyConfig", "Layout", "default_layout", "Policy", "FlowInfo",
           "RequestInfo", "FlowState", "Changes", "BasePolicy", "UnknownFlow", "link_name", "MfsPolicy", "FairPolicy",
           "FifoPolicy", "SjfPolicy", "EdfPolicy", "KarunaPolicy", "PiasPolicy", "LlfPolicy"]
