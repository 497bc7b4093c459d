"""Where a flow's entry lives: on every switch, or only on the edge switch where the flow enters.

``placement: auto`` (the default) is ``edge`` when every switch's P4Info has the fabric-port
DSCP trust of docs/p4-api.md revision 2, else ``all``.
``placement: all`` writes every flow's ``mfs_flow`` entry on every switch: each hop
classifies from the MFS header. ``placement: edge`` writes it only on the switch its sending
host hangs off (``hosts[].switch``): that switch classifies at the host-facing (edge) port and
marks DSCP; the switches after it trust DSCP on their fabric ports (docs/p4-api.md, port
modes), so one entry per flow is enough. A flow of a host whose switch is unknown is written
everywhere (it could enter anywhere).

Source binding (docs/p4-api.md revision 2): a switch whose ``mfs_flow`` key has
``ingress_port`` (exact, like ``src_addr``: no wildcard) matches an entry only on the owning
host's own port. So, whatever the mode, such a switch holds a flow's entry only if it is the
owner's edge switch and the owner's port is known (``hosts[].switch``/``.port``): a copy
anywhere else could never match the owner's packets — only another host's packets arriving
there on a port of the same number, spoofing the owner's address. ``placement: all`` then
means "every switch without source binding, plus the owner's edge switch" (config load warns,
naming the source-bound switches); a host without ``switch``/``port`` gets no entry on them.

Port roles: a configured port is ``edge`` when a host hangs off it (``hosts[].switch/port``)
and ``fabric`` otherwise, unless ``switches[].ports[N].mode`` says otherwise.

:class:`SwitchDesired` is one switch's view of the engine's desired state (the shared
``(stage, flow_id) -> level`` dict), filtered by placement; a supervisor reads only its view.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.config import ControllerConfig, HostConfig

FlowKey = tuple[int, int]  # (stage, flow_id)
FLOW_TABLE = "MfsIngress.mfs_flow"
PLACEMENTS = ("all", "edge")
PLACEMENT_CHOICES = ("auto", *PLACEMENTS)  # config; auto = edge where every switch trusts DSCP on fabric ports
TRUST_TABLE = "MfsIngress.dscp_trust"  # docs/p4-api.md revision 2: fabric ports classify by DSCP


def resolve_placement(choice: str, schemas) -> str:
    """``auto`` -> ``edge`` when every switch's P4Info has the fabric-port DSCP trust of revision
    2 (a flow classified at its edge switch keeps its level on the switches after it), else
    ``all``; ``all``/``edge`` as given."""
    if choice != "auto":
        return choice
    return "edge" if all(TRUST_TABLE in s.tables for s in schemas) else "all"
PORT_MODES = ("edge", "fabric")


def source_bound(schema) -> bool:
    """Does this P4Info's flow table bind entries to their source port (revision 2)?"""
    t = schema.tables.get(FLOW_TABLE)
    return t is not None and "ingress_port" in t.fields


class Placement:
    """Which switches hold the entries of a host's flows, and whose flow an id is."""

    def __init__(self, mode: str, hosts: "list[HostConfig]", switches: list[str], flow_id_bits: int = 20,
                 source_bound: "Iterable[str]" = ()):
        if mode not in PLACEMENTS:
            raise ValueError(f"placement {mode!r} is not allowed (allowed: {', '.join(PLACEMENTS)})")
        self.mode = mode
        self.switches = list(switches)
        self.flow_id_bits = flow_id_bits
        self.hosts = {h.name: h for h in hosts}
        self._by_id = {h.host_id: h for h in hosts}
        self.source_bound = frozenset(source_bound)  # switches whose flow key has ingress_port
        self._of: dict[str | None, frozenset[str] | None] = {}  # switches_of, per configured host

    @classmethod
    def from_config(cls, cfg: "ControllerConfig") -> "Placement":
        bound = cfg.source_bound
        if bound is None:  # a config not made by config.parse: read the P4Infos
            from mfs.p4info import P4Schema
            bound = frozenset(s.name for s in cfg.switches if source_bound(P4Schema.load(s.p4info)))
        return cls(cfg.placement, cfg.hosts, [s.name for s in cfg.switches], cfg.limits.flow_id_bits, bound)

    def owner(self, flow_id: int) -> "HostConfig | None":
        """The host whose flow-id range holds ``flow_id`` (host i owns [i·2^bits, (i+1)·2^bits))."""
        return self._by_id.get(flow_id >> self.flow_id_bits)

    def edge_switch(self, host: str | None) -> str | None:
        """The switch ``host`` hangs off (None: unknown)."""
        h = self.hosts.get(host) if host is not None else None
        return (h.switch or None) if h is not None else None

    def switches_of(self, host: str | None) -> frozenset[str] | None:
        """Switches that hold the entries of ``host``'s flows; None = every switch. The mode's
        switches (``all``: every one; ``edge``: the host's edge switch, every one if unknown),
        less the source-bound switches where the entry cannot match (all but the host's edge
        switch, and that one too if the host's port is unknown)."""
        try:
            return self._of[host]
        except KeyError:
            pass
        h = self.hosts.get(host) if host is not None else None
        edge = (h.switch or None) if h is not None else None
        base = (edge,) if self.mode == "edge" and edge is not None else self.switches
        out = frozenset(s for s in base
                        if s not in self.source_bound or (s == edge and h is not None and h.port is not None))
        res = None if len(out) == len(self.switches) else out
        if h is not None or host is None:
            self._of[host] = res  # hosts are fixed: computed once
        return res


def port_roles(cfg: "ControllerConfig", switch: str) -> dict[int, str]:
    """port -> "edge" | "fabric" for every configured port of ``switch``."""
    sw = cfg.switch(switch)
    host_ports = {h.port for h in cfg.hosts if h.switch == switch and h.port is not None}
    out = {}
    for port in sorted(set(sw.ports) | host_ports):
        pc = sw.ports.get(port)
        mode = getattr(pc, "mode", None) if pc is not None else None
        out[port] = mode or ("edge" if port in host_ports else "fabric")
    return out


class SwitchDesired(Mapping):
    """The desired flow entries of one switch: the keys of ``desired`` placed on it.

    ``where`` maps a key to the switches that hold it; a key absent from ``where`` is on
    every switch. Lookups are O(1); iteration walks the whole desired state (resync only).
    """

    __slots__ = ("desired", "where", "name")

    def __init__(self, desired: dict[FlowKey, int], where: dict[FlowKey, frozenset[str]], name: str):
        self.desired, self.where, self.name = desired, where, name

    def _here(self, key) -> bool:
        w = self.where.get(key)
        return w is None or self.name in w

    def __getitem__(self, key) -> int:
        if not self._here(key):
            raise KeyError(key)
        return self.desired[key]

    def get(self, key, default=None):
        if not self._here(key):
            return default
        return self.desired.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self.desired and self._here(key)

    def __iter__(self) -> Iterator[FlowKey]:
        where = self.where
        return (k for k in self.desired if (w := where.get(k)) is None or self.name in w)

    def __len__(self) -> int:
        return sum(1 for _ in self)
