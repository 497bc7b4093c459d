"""Where a flow's entry lives: on every switch, or only on the edge switch where the flow enters.

``placement: auto`` (the default) is ``edge`` when every switch's P4Info has the fabric-port
DSCP trust of docs/p4-api.md revision 2, else ``all``.
``placement: all`` writes every flow's ``mfs_flow`` entry on every switch: each hop
classifies from the MFS header. ``placement: edge`` writes it only on the switch its sending
host hangs off (``hosts[].switch``): that switch classifies at the host-facing (edge) port and
marks DSCP; the switches after it trust DSCP on their fabric ports (docs/p4-api.md, port
modes), so one entry per flow is enough. A flow of a host whose switch is unknown is written
everywhere (it could enter anywhere).

Port roles: a configured port is ``edge`` when a host hangs off it (``hosts[].switch/port``)
and ``fabric`` otherwise, unless ``switches[].ports[N].mode`` says otherwise.

:class:`SwitchDesired` is one switch's view of the engine's desired state (the shared
``(stage, flow_id) -> level`` dict), filtered by placement; a supervisor reads only its view.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.config import ControllerConfig, HostConfig

FlowKey = tuple[int, int]  # (stage, flow_id)
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


class Placement:
    """Which switches hold the entries of a host's flows, and whose flow an id is."""

    def __init__(self, mode: str, hosts: "list[HostConfig]", switches: list[str], flow_id_bits: int = 20):
        if mode not in PLACEMENTS:
            raise ValueError(f"placement {mode!r} is not allowed (allowed: {', '.join(PLACEMENTS)})")
        self.mode = mode
        self.switches = list(switches)
        self.flow_id_bits = flow_id_bits
        self.hosts = {h.name: h for h in hosts}
        self._by_id = {h.host_id: h for h in hosts}

    @classmethod
    def from_config(cls, cfg: "ControllerConfig") -> "Placement":
        return cls(cfg.placement, cfg.hosts, [s.name for s in cfg.switches], cfg.limits.flow_id_bits)

    def owner(self, flow_id: int) -> "HostConfig | None":
        """The host whose flow-id range holds ``flow_id`` (host i owns [i·2^bits, (i+1)·2^bits))."""
        return self._by_id.get(flow_id >> self.flow_id_bits)

    def edge_switch(self, host: str | None) -> str | None:
        """The switch ``host`` hangs off (None: unknown)."""
        h = self.hosts.get(host) if host is not None else None
        return (h.switch or None) if h is not None else None

    def switches_of(self, host: str | None) -> frozenset[str] | None:
        """Switches that hold the entries of ``host``'s flows; None = every switch."""
        if self.mode == "all":
            return None
        sw = self.edge_switch(host)
        return frozenset((sw,)) if sw is not None else None


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
