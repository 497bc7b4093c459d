"""Controller configuration: one YAML file, validated with mfs.configutil.Section.

See docs/controller.md ("Configuration reference") and controller/examples/controller.yaml.
Every error names the file, the key path and what is allowed; unknown keys are errors.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfs import levels
from mfs.configutil import ConfigError, Section, load_yaml
from mfs.header import VALID_STAGES
from controller.placement import PLACEMENT_CHOICES, PORT_MODES, resolve_placement, source_bound
from mfs.p4info import DEFAULT_P4INFO, P4InfoError, P4Schema

log = logging.getLogger("mfs.controller")

DSCP_MODES = ("rewrite", "clear", "leave")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PortConfig:
    port: int
    rate_bps: float
    dscp_mode: str = "rewrite"
    trusted_dscp: dict[int, int] = field(default_factory=dict)  # dscp -> level (dscp_classify entries)
    mode: str | None = None  # "edge" | "fabric"; None = edge if a host hangs off it (controller/placement.py)


@dataclass
class StaticEntry:
    """A table entry by P4Info names (``switches[].entries``)."""

    table: str
    match: dict[str, Any] = field(default_factory=dict)
    action: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    default: bool = False


@dataclass
class SwitchConfig:
    name: str
    address: str
    device_id: int = 1
    election_id: int = 1
    role: str = ""
    p4info: Path = DEFAULT_P4INFO
    device_config: Path | None = None  # bmv2 JSON; missing file -> empty bytes
    ports: dict[int, PortConfig] = field(default_factory=dict)
    entries: list[StaticEntry] = field(default_factory=list)
    multicast_ports: list[int] | None = None  # flood group 1; None = every configured port

    def device_config_bytes(self) -> bytes:
        if self.device_config is None or not _exists(self.device_config):
            return b""
        return self.device_config.read_bytes()


@dataclass
class HostConfig:
    name: str
    address: str
    token: str
    host_id: int
    ceiling: int = levels.LOWEST_LEVEL  # best level a host proposal may reach
    switch: str = ""
    port: int | None = None
    trusted: bool = False


@dataclass
class StageDefault:
    stage: int
    level: int
    rli_low: int = 0
    rli_high: int = 0xFFFF
    priority: int = 1


@dataclass
class UnknownFlows:
    """What the controller does with ``mfs_miss_t`` digests (docs/controller.md, "Digests")."""

    install: bool = False  # install an entry at the stage default for a flow its owner did not report
    filter_clear_s: float = 10.0  # clear the whole miss_filter register this often (lost digests)


@dataclass
class Limits:
    reports_per_s: float = 5000.0  # token bucket refill per host (events/s)
    burst: float = 10000.0  # token bucket size (events)
    queue_batches: int = 64  # bounded per-host queue of accepted batches
    max_batch_events: int = 10000
    flow_id_bits: int = 20
    max_layers: int = 1024
    max_flow_bytes: int = 1 << 40
    deadline_past_s: float = 3600.0  # deadlines older than this are rejected
    deadline_future_s: float = 86400.0
    # per-host caps (one host must not take what the others need)
    max_flows_per_host: int = 2048  # live flows = flow-table entries (default table: 4,096)
    max_requests_per_host: int = 4096  # started, not ended
    max_unknown_requests: int = 1024  # requests with layer state but never started
    max_connections: int = 256  # host API connections, all hosts together
    # ... from one peer (source address; uid on a unix socket): default max_connections // 4, so
    # one peer holding all it may still leaves room for the others
    max_connections_per_peer: int = 64
    idle_timeout_s: float = 60.0  # a host API connection without RPCs for this long is closed
    handshake_timeout_s: float = 5.0  # a connection must complete its HTTP/2 preface within this


@dataclass
class ControllerConfig:
    source: str
    switches: list[SwitchConfig]
    hosts: list[HostConfig]
    policy: Any  # mfs.policy.PolicyConfig
    api_listen: str = "127.0.0.1:50100"
    admin_listen: str = "127.0.0.1:9100"
    gc_timeout_s: float = 30.0
    placement: str = "all"  # "all" | "edge" (config "auto" resolved): which switches hold a flow's entry
    # switches whose P4Info binds flow entries to the sender's port (controller/placement.py);
    # None: not known yet (a config not made by parse: Placement.from_config reads the P4Infos)
    source_bound: frozenset[str] | None = None
    flow_idle_timeout_s: float = 60.0  # idle timeout of a flow's edge entry (if the P4Info supports it); 0 = off
    counter_poll_s: float = 1.0
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 5.0
    write_timeout_s: float = 10.0
    stage_defaults: list[StageDefault] = field(default_factory=list)
    classify_default_level: int = levels.LOWEST_LEVEL
    level_dscp: dict[int, int] = field(default_factory=lambda: {lv: levels.default_dscp(lv)
                                                                 for lv in range(levels.NUM_QUEUES)})
    limits: Limits = field(default_factory=Limits)
    unknown_flows: UnknownFlows = field(default_factory=UnknownFlows)

    def switch(self, name: str) -> SwitchConfig:
        for s in self.switches:
            if s.name == name:
                return s
        raise KeyError(name)

    def host(self, name: str) -> HostConfig | None:
        return next((h for h in self.hosts if h.name == name), None)


# ---------------------------------------------------------------- parsing
def _address(sec: Section, name: str, default: Any = ..., unix: bool = False) -> str:
    v = sec.string(name) if default is ... else sec.string(name, default)
    if unix and v.startswith("unix:"):
        path = v[len("unix:"):]
        if not path.startswith("/") or len(path) > 100:
            raise sec.error(name, f"{v!r}: a unix socket needs an absolute path of at most 100 characters "
                                  "(e.g. unix:/run/mfs/controller.sock)")
        return v
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        alt = " or unix:/absolute/path" if unix else ""
        raise sec.error(name, f"{v!r} is not host:port{alt} (e.g. 127.0.0.1:9559; port 0 = pick a free one)")
    return v


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # e.g. ENAMETOOLONG: such a file cannot exist
        return False


def _path(source: str, v: str) -> Path:
    p = Path(v)
    if not p.is_absolute():
        base = Path(source).resolve().parent if _exists(Path(source)) else ROOT
        cand = base / p
        p = cand if _exists(cand) or not _exists(ROOT / p) else ROOT / p
    return p


def _int_key(sec: Section, k: Any, what: str, lo: int, hi: int) -> int:
    try:
        n = int(k)
    except (TypeError, ValueError):
        raise sec.error(str(k), f"{what} {k!r} is not an integer") from None
    if not lo <= n <= hi:
        raise sec.error(str(k), f"{what} {n} is out of range (allowed: {lo}..{hi})")
    return n


def _level(sec: Section, name: str, default: Any = ...) -> int:
    return sec.integer(name, lo=0, hi=levels.LOWEST_LEVEL) if default is ... else \
        sec.integer(name, default, lo=0, hi=levels.LOWEST_LEVEL)


def _ports(sec: Section) -> dict[int, PortConfig]:
    out = {}
    for k in list(sec.data):
        port = _int_key(sec, k, "port", 0, 510)
        p = sec.section(k)
        rate = p.number("rate_bps", lo=0, lo_open=True)
        if math.isinf(rate) or math.isnan(rate):
            raise p.error("rate_bps", f"{rate} is not a finite number")
        mode = p.choice("dscp_mode", DSCP_MODES, "rewrite")
        role = p.choice("mode", PORT_MODES, None) if p.get("mode", None) is not None else None
        td = p.get("trusted_dscp", False)
        trusted: dict[int, int] = {}
        if td is True:  # trust the class selectors of the default map
            trusted = {levels.default_dscp(lv): lv for lv in range(levels.NUM_QUEUES)}
        elif isinstance(td, dict):
            tsec = p.section("trusted_dscp")
            for dk in list(td):
                dscp = _int_key(tsec, dk, "dscp", 0, 63)
                trusted[dscp] = _level(tsec, dk)
            tsec.done()
        elif td is not False:
            raise p.error("trusted_dscp", f"{td!r} is not allowed (allowed: true, false, or a mapping dscp: level)")
        p.done()
        out[port] = PortConfig(port, rate, mode, trusted, role)
    return out


def _entry(sec: Section) -> StaticEntry:
    e = StaticEntry(table=sec.string("table"), match=dict(sec.section("match").data),
                    action=sec.get("action", None), params=dict(sec.section("params").data),
                    priority=sec.integer("priority", 0, lo=0), default=sec.boolean("default", False))
    if e.action is not None and not isinstance(e.action, str):
        raise sec.error("action", f"{e.action!r} is not a string")
    sec.done()
    return e


def _switch(sec: Section, source: str) -> SwitchConfig:
    name = sec.string("name")
    sw = SwitchConfig(
        name=name,
        address=_address(sec, "address", unix=True),  # a switch in another netns: unix socket
        device_id=sec.integer("device_id", 1, lo=0, hi=(1 << 64) - 1),
        election_id=sec.integer("election_id", 1, lo=1, hi=(1 << 128) - 1),
        role=sec.string("role", ""),
        p4info=_path(source, sec.string("p4info", str(DEFAULT_P4INFO))),
        ports=_ports(sec.section("ports")),
    )
    dc = sec.get("device_config", None)
    if dc is not None:
        if not isinstance(dc, str):
            raise sec.error("device_config", f"{dc!r} is not a string (path to the bmv2 JSON)")
        sw.device_config = _path(source, dc)
    else:
        default = ROOT / "p4src" / "build" / "mfs.json"
        sw.device_config = default
    raw = sec.sequence("entries", [])
    sw.entries = [_entry(Section(e, source, f"{sec.key('entries')}[{i}]")) for i, e in enumerate(raw)]
    mp = sec.get("multicast_ports", None)
    if mp is not None:
        if not isinstance(mp, list) or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 510
                                               for x in mp):
            raise sec.error("multicast_ports", f"{mp!r} is not a list of port numbers 0..510")
        sw.multicast_ports = list(mp)
    if not _exists(sw.p4info):
        raise sec.error("p4info", f"file {sw.p4info} does not exist")
    try:  # names in static entries are checked now, so --check catches a typo (not the first resync)
        schema = P4Schema.load(sw.p4info)
    except P4InfoError as e:
        raise sec.error("p4info", str(e)) from None
    for i, e in enumerate(sw.entries):
        try:
            schema.table_entry(e.table, e.match, e.action, e.params, e.priority, e.default)
        except P4InfoError as err:
            raise ConfigError(source, f"{sec.key('entries')}[{i}]", str(err)) from None
    sec.done()
    return sw


def _host(sec: Section, host_id: int, switches: dict[str, SwitchConfig]) -> HostConfig:
    h = HostConfig(name=sec.string("name"), address=sec.string("address"), token=sec.string("token"),
                   host_id=host_id, ceiling=_level(sec, "ceiling", levels.LOWEST_LEVEL),
                   switch=sec.string("switch", ""), port=None, trusted=sec.boolean("trusted", False))
    try:
        ipaddress.IPv4Address(h.address)
    except ValueError:
        raise sec.error("address", f"{h.address!r} is not an IPv4 address") from None
    if len(h.token) < 8:
        raise sec.error("token", "is too short (at least 8 characters)")
    if h.switch and h.switch not in switches:
        raise sec.error("switch", f"{h.switch!r} is not a configured switch (allowed: {', '.join(switches)})")
    port = sec.get("port", None)
    if port is not None:
        h.port = sec.integer("port", lo=0, hi=510)
    if h.trusted and (not h.switch or h.port is None):
        raise sec.error("trusted", "a trusted host needs `switch` and `port` (where its proposals arrive)")
    sec.done()
    return h


def _stage_default(sec: Section) -> StageDefault:
    stage = sec.integer("stage", lo=min(VALID_STAGES), hi=max(VALID_STAGES))
    rli = sec.get("rli", None)
    lo, hi = 0, 0xFFFF
    if rli is not None:
        if not (isinstance(rli, list) and len(rli) == 2 and all(isinstance(x, int) and 0 <= x <= 0xFFFF for x in rli)
                and rli[0] <= rli[1]):
            raise sec.error("rli", f"{rli!r} is not [low, high] with 0 <= low <= high <= 65535")
        lo, hi = rli
    d = StageDefault(stage, _level(sec, "level"), lo, hi, sec.integer("priority", 1, lo=1, hi=(1 << 31) - 1))
    sec.done()
    return d


def parse_policy(sec: Section):
    """Hand the policy section to mfs.policy (the one policy library)."""
    try:
        from mfs.policy import PolicyConfig
    except ImportError as e:
        raise ConfigError(sec.source, sec.path, f"the policy library is not available: {e}") from None
    return PolicyConfig.from_section(sec)


def parse(data: Any, source: str = "<config>") -> ControllerConfig:
    top = Section(data, source)
    sw_list = top.sequence("switches")
    if not sw_list:
        raise top.error("switches", "needs at least one switch")
    switches = [_switch(Section(s, source, f"switches[{i}]"), source) for i, s in enumerate(sw_list)]
    by_name: dict[str, SwitchConfig] = {}
    for i, s in enumerate(switches):
        if s.name in by_name:
            raise ConfigError(source, f"switches[{i}].name", f"duplicate switch name {s.name!r}")
        by_name[s.name] = s
    hosts = [_host(Section(h, source, f"hosts[{i}]"), i, by_name) for i, h in enumerate(top.sequence("hosts", []))]
    seen: set[str] = set()
    for i, h in enumerate(hosts):
        if h.name in seen:
            raise ConfigError(source, f"hosts[{i}].name", f"duplicate host name {h.name!r}")
        seen.add(h.name)
    cfg = ControllerConfig(source=source, switches=switches, hosts=hosts,
                           policy=parse_policy(top.section("policy")))
    api = top.section("api")
    cfg.api_listen = _address(api, "listen", cfg.api_listen, unix=True)  # hosts in netns reach a unix socket
    api.done()
    admin = top.section("admin")
    cfg.admin_listen = _address(admin, "listen", cfg.admin_listen)
    admin.done()
    cfg.gc_timeout_s = top.number("gc_timeout_s", cfg.gc_timeout_s, lo=0, lo_open=True)
    schemas = [P4Schema.load(s.p4info) for s in switches]
    cfg.placement = resolve_placement(top.choice("placement", PLACEMENT_CHOICES, "auto"), schemas)
    cfg.source_bound = frozenset(s.name for s, sc in zip(switches, schemas) if source_bound(sc))
    if cfg.placement == "all" and cfg.source_bound:
        log.warning("%s: placement all: switches %s bind flow entries to the sender's port (docs/p4-api.md "
                    "revision 2): they hold only the entries of the hosts on their own edge ports, not every "
                    "flow's (controller/placement.py)", source, ", ".join(sorted(cfg.source_bound)))
    cfg.flow_idle_timeout_s = top.number("flow_idle_timeout_s", cfg.flow_idle_timeout_s, lo=0, hi=1e7)
    poll = top.section("poll")
    cfg.counter_poll_s = poll.number("counters_s", cfg.counter_poll_s, lo=0, lo_open=True)
    cfg.reconnect_min_s = poll.number("reconnect_min_s", cfg.reconnect_min_s, lo=0, lo_open=True)
    cfg.reconnect_max_s = poll.number("reconnect_max_s", cfg.reconnect_max_s, lo=cfg.reconnect_min_s)
    cfg.write_timeout_s = poll.number("write_timeout_s", cfg.write_timeout_s, lo=0, lo_open=True)
    poll.done()
    cfg.stage_defaults = [_stage_default(Section(d, source, f"stage_defaults[{i}]"))
                          for i, d in enumerate(top.sequence("stage_defaults", []))]
    cfg.classify_default_level = _level(top, "classify_default_level", cfg.classify_default_level)
    ld = top.get("level_dscp", None)
    if ld is not None:
        lsec = top.section("level_dscp")
        for k in list(lsec.data):
            lv = _int_key(lsec, k, "level", 0, levels.LOWEST_LEVEL)
            cfg.level_dscp[lv] = lsec.integer(k, lo=0, hi=63)
        lsec.done()
    uf = top.section("unknown_flows")
    cfg.unknown_flows = UnknownFlows(install=uf.boolean("install", False),
                                     filter_clear_s=uf.number("filter_clear_s", 10.0, lo=0, lo_open=True, hi=1e7))
    uf.done()
    lim = top.section("limits")
    L = Limits()
    max_conn = lim.integer("max_connections", L.max_connections, lo=1, hi=1 << 20)
    cfg.limits = Limits(
        reports_per_s=lim.number("reports_per_s", L.reports_per_s, lo=0, lo_open=True),
        burst=lim.number("burst", L.burst, lo=1),
        queue_batches=lim.integer("queue_batches", L.queue_batches, lo=1, hi=1 << 20),
        max_batch_events=lim.integer("max_batch_events", L.max_batch_events, lo=1, hi=1 << 24),
        flow_id_bits=lim.integer("flow_id_bits", L.flow_id_bits, lo=4, hi=28),
        max_layers=lim.integer("max_layers", L.max_layers, lo=1, hi=65535),
        max_flow_bytes=lim.integer("max_flow_bytes", L.max_flow_bytes, lo=1),
        deadline_past_s=lim.number("deadline_past_s", L.deadline_past_s, lo=0),
        deadline_future_s=lim.number("deadline_future_s", L.deadline_future_s, lo=0, lo_open=True),
        max_flows_per_host=lim.integer("max_flows_per_host", L.max_flows_per_host, lo=1, hi=1 << 24),
        max_requests_per_host=lim.integer("max_requests_per_host", L.max_requests_per_host, lo=1, hi=1 << 24),
        max_unknown_requests=lim.integer("max_unknown_requests", L.max_unknown_requests, lo=0, hi=1 << 24),
        max_connections=max_conn,
        max_connections_per_peer=lim.integer("max_connections_per_peer", max(1, max_conn // 4), lo=1, hi=max_conn),
        idle_timeout_s=lim.number("idle_timeout_s", L.idle_timeout_s, lo=0, lo_open=True),
        handshake_timeout_s=lim.number("handshake_timeout_s", L.handshake_timeout_s, lo=0, lo_open=True),
    )
    lim.done()
    if len(hosts) > (1 << (32 - cfg.limits.flow_id_bits)):
        raise ConfigError(source, "limits.flow_id_bits",
                          f"{cfg.limits.flow_id_bits} leaves room for only {1 << (32 - cfg.limits.flow_id_bits)} "
                          f"hosts, {len(hosts)} configured")
    top.done()
    return cfg


def load(path: str | Path) -> ControllerConfig:
    return parse(load_yaml(path), str(path))
