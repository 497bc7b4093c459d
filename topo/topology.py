"""Topology files: load, validate and normalise (see docs/emulation.md).

Two input formats, one result (:class:`Topology`):

* **YAML** (``topo/topologies/*.yaml``)::

      name: line2
      defaults: {bandwidth: 100, queue_buffer: 64}      # Mb/s, packets
      hosts:
        - {name: h1, ip: 10.0.0.1/24, role: prefill}
        - {name: h2, ip: 10.0.0.2/24, role: decode, mac: "02:00:00:00:00:02"}
      switches:
        - {name: s1, target: embedded, device_id: 1}
      links:
        - [h1, s1-p1]                      # tutorials list form: a, b[, latency, bandwidth]
        - {a: h2, b: s1, bandwidth: 20}    # mapping form; a missing port is assigned

* **tutorials topology.json** (``{"hosts": {"h1": {"ip": ..., "mac": ...}},
  "switches": {"s1": {...}}, "links": [["h1", "s1-p1"], ["s1-p2", "h2", "0ms", 100]]}``),
  the p4lang/tutorials layout, so existing files can be reused. Host ``commands`` and
  switch ``runtime_json``/``program``/``cli_input`` are accepted and not executed: the
  builder derives addresses, static ARP, routes and table entries itself.

Every error is a :class:`mfs.configutil.ConfigError` naming the file, the key and
what is allowed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mfs.configutil import ConfigError, Section, load_yaml
from mfs.levels import LOWEST_LEVEL, NUM_QUEUES

ROLES = ("prefill", "decode", "kvcache", "other")
TARGETS = ("embedded", "bmv2")
TOPOLOGY_DIR = Path(__file__).resolve().parent / "topologies"
_NAME = re.compile(r"^[a-z][a-z0-9]{0,5}$")  # short: names end up in 15-char interface names
_ENDPOINT = re.compile(r"^(?P<node>[a-z][a-z0-9]*?)(?:-p(?P<port>[0-9]+))?$")
_LATENCY = re.compile(r"^\s*(?P<v>[0-9]+(?:\.[0-9]+)?)\s*(?P<u>us|ms|s)?\s*$")
_RATE = re.compile(r"^\s*(?P<v>[0-9]+(?:\.[0-9]+)?)\s*(?P<u>kbit|mbit|gbit|bit)?\s*$", re.I)


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    ip: ipaddress.IPv4Interface
    mac: str
    role: str = "other"
    ceiling: int | None = None  # None = proposals not trusted; else the highest level it may propose

    @property
    def address(self) -> str:
        return str(self.ip.ip)


@dataclass(frozen=True, slots=True)
class Switch:
    name: str
    target: str
    device_id: int
    grpc_port: int | None  # None = pick a free loopback port at start
    priority_queues: int = NUM_QUEUES
    queue_buffer: int = 64  # packets per queue
    thrift_port: int | None = None  # bmv2 only

    def port_mac(self, port: int) -> str:
        return f"02:5e:{self.device_id >> 8 & 0xff:02x}:{self.device_id & 0xff:02x}:00:{port & 0xff:02x}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    node: str
    port: int | None  # switch port number; None for a host

    def __str__(self) -> str:
        return self.node if self.port is None else f"{self.node}-p{self.port}"


@dataclass(frozen=True, slots=True)
class Link:
    a: Endpoint
    b: Endpoint
    bandwidth_bps: float  # both directions
    latency_s: float = 0.0
    queue_buffer: int | None = None  # overrides the switch's per-queue buffer on these ports


@dataclass(slots=True)
class Topology:
    name: str
    hosts: dict[str, Host]
    switches: dict[str, Switch]
    links: list[Link]
    source: str = "<topology>"
    shape_hosts: bool = False  # also rate-limit each host's own egress (tc) at the link rate
    notes: list[str] = field(default_factory=list)  # what was accepted but not executed

    # ------------------------------------------------------------ queries
    def host_link(self, host: str) -> tuple[Link, Endpoint]:
        """The link of a host and the switch endpoint at its other end."""
        for ln in self.links:
            if ln.a.node == host:
                return ln, ln.b
            if ln.b.node == host:
                return ln, ln.a
        raise KeyError(host)

    def switch_ports(self, switch: str) -> dict[int, tuple[Link, Endpoint]]:
        """port -> (link, the endpoint at the other end)."""
        out: dict[int, tuple[Link, Endpoint]] = {}
        for ln in self.links:
            if ln.a.node == switch:
                out[ln.a.port] = (ln, ln.b)
            if ln.b.node == switch:
                out[ln.b.port] = (ln, ln.a)
        return dict(sorted(out.items()))

    def next_port(self, switch: str, host: str) -> int:
        """Egress port of ``switch`` on the shortest path to ``host`` (BFS over switches)."""
        _, attach = self.host_link(host)
        if attach.node == switch:
            return attach.port
        seen, todo = {switch: None}, deque([switch])
        while todo:
            sw = todo.popleft()
            for port, (_, other) in self.switch_ports(sw).items():
                if other.node in self.switches and other.node not in seen:
                    seen[other.node] = port if sw == switch else seen[sw]
                    if other.node == attach.node:
                        return seen[other.node]
                    todo.append(other.node)
        raise ValueError(f"{self.source}: no path from switch {switch} to host {host}")

    def hosts_by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts.values() if h.role == role]


# ---------------------------------------------------------------- parsing helpers
def parse_rate(value, where: Section, key: str) -> float:
    """Mb/s number (tutorials) or a string like '100mbit' / '1gbit' -> bits/s."""
    if isinstance(value, bool):
        raise where.error(key, f"{value!r} is not a bit rate (e.g. 100 for Mb/s, or '100mbit')")
    if isinstance(value, (int, float)):
        bps = float(value) * 1e6
    else:
        m = _RATE.match(str(value))
        if not m:
            raise where.error(key, f"{value!r} is not a bit rate (e.g. 100 for Mb/s, or '100mbit', '1gbit')")
        unit = (m["u"] or "mbit").lower()
        bps = float(m["v"]) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[unit]
    if not 1e5 <= bps <= 100e9:
        raise where.error(key, f"{value!r} is out of range (allowed: 0.1..100000 Mb/s)")
    return bps


def parse_latency(value, where: Section, key: str) -> float:
    if isinstance(value, bool):
        raise where.error(key, f"{value!r} is not a latency (e.g. '2ms')")
    if isinstance(value, (int, float)):
        s = float(value) / 1e3  # bare numbers are milliseconds
    else:
        m = _LATENCY.match(str(value))
        if not m:
            raise where.error(key, f"{value!r} is not a latency (e.g. '0ms', '500us', '0.01s')")
        s = float(m["v"]) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m["u"] or "ms"]
    if not 0 <= s <= 1.0:
        raise where.error(key, f"{value!r} is out of range (allowed: 0..1s)")
    return s


def _mac(value, where: Section, key: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", value):
        raise where.error(key, f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(value[:2], 16) & 1:
        raise where.error(key, f"{value} is a multicast MAC (the first octet must be even)")
    return value.lower()


# ---------------------------------------------------------------- loading
def load(path: str | Path) -> Topology:
    """Load a topology from YAML or tutorials-style JSON. A bare name looks in topo/topologies/."""
    p = resolve(path)
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except OSError as e:
            raise ConfigError(str(p), "", f"cannot read: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(str(p), "", f"not valid JSON: not UTF-8 text (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(str(p), "", f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        return from_tutorials(data, str(p), default_name=p.parent.name if p.stem == "topology" else p.stem)
    return from_dict(load_yaml(p), str(p), default_name=p.stem)


def resolve(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists() and not p.suffix and not p.parent.parts:
        for ext in (".yaml", ".json"):
            if (TOPOLOGY_DIR / (p.name + ext)).exists():
                return TOPOLOGY_DIR / (p.name + ext)
    if not p.exists():
        known = ", ".join(sorted(q.stem for q in TOPOLOGY_DIR.glob("*.yaml")))
        raise ConfigError(str(p), "", f"no such topology file (shipped topologies: {known})")
    return p


def from_dict(data, source: str = "<topology>", default_name: str = "topo") -> Topology:
    top = Section(data, source)
    name = top.string("name", default_name)
    defaults = top.section("defaults")
    d_bw = parse_rate(defaults.get("bandwidth", 100), defaults, "bandwidth")
    d_buf = defaults.integer("queue_buffer", 64, lo=1, hi=100000)
    d_target = defaults.choice("target", TARGETS, "embedded")
    defaults.done()
    shape = top.boolean("shape_hosts", False)

    hosts_raw = top.sequence("hosts")
    switches_raw = top.sequence("switches")
    links_raw = top.sequence("links")
    top.done()

    hosts = []
    for i, h in enumerate(hosts_raw):
        s = Section(h, source, f"hosts[{i}]")
        hosts.append(_host(s, s.string("name"), i))
        s.done()
    switches = []
    for i, w in enumerate(switches_raw):
        s = Section(w, source, f"switches[{i}]")
        switches.append(_switch(s, s.string("name"), i, d_target, d_buf))
        s.done()
    links = []
    for i, ln in enumerate(links_raw):
        key = f"links[{i}]"
        if isinstance(ln, list):
            links.append(_link_list(ln, Section({}, source, key), d_bw))
        else:
            s = Section(ln, source, key)
            a, b = s.get("a"), s.get("b")
            bw = parse_rate(s.get("bandwidth", None), s, "bandwidth") if s.get("bandwidth", None) is not None else d_bw
            lat = parse_latency(s.get("latency", 0), s, "latency")
            buf = s.integer("queue_buffer", None, lo=1, hi=100000) if s.get("queue_buffer", None) is not None else None
            s.done()
            links.append((_endpoint(a, s, "a"), _endpoint(b, s, "b"), bw, lat, buf, s, ("a", "b")))
    return _assemble(name, hosts, switches, links, source, shape)


def from_tutorials(data, source: str = "<topology.json>", default_name: str = "topo") -> Topology:
    """p4lang/tutorials topology.json -> Topology (hosts/switches are mappings keyed by name)."""
    top = Section(data, source)
    hosts_m = top.section("hosts", required=True)
    switches_m = top.section("switches", required=True)
    links_raw = top.sequence("links")
    top.done()
    notes: list[str] = []
    hosts = []
    for i, (hname, h) in enumerate(hosts_m.data.items()):
        s = Section(h, source, f"hosts.{hname}")
        hosts_m._seen.add(hname)
        hosts.append(_host(s, hname, i))
        if s.get("commands", None):
            notes.append(f"hosts.{hname}.commands not executed (the builder sets addresses, routes and ARP)")
        s.done()
    switches = []
    for i, (sname, w) in enumerate(switches_m.data.items()):
        s = Section(w, source, f"switches.{sname}")
        switches_m._seen.add(sname)
        for k in ("runtime_json", "program", "cli_input", "cpu_port"):
            if s.get(k, None) is not None:
                notes.append(f"switches.{sname}.{k} ignored (MFS generates its entries; program is p4src/)")
        switches.append(_switch(s, sname, i, "embedded", 64))
        s.done()
    links = [_link_list(ln, Section({}, source, f"links[{i}]"), 100e6) for i, ln in enumerate(links_raw)]
    t = _assemble(default_name, hosts, switches, links, source, False)
    t.notes.extend(notes)
    return t


def _host(s: Section, name, index: int) -> Host:
    if not isinstance(name, str) or not _NAME.match(name):
        raise s.error("name", f"{name!r} is not a valid node name (lowercase letter then up to 5 "
                              f"letters/digits, e.g. p1, dec1; names become interface names)")
    ip = s.get("ip")
    try:
        iface = ipaddress.IPv4Interface(ip if "/" in str(ip) else f"{ip}/24")
    except (ValueError, TypeError):
        raise s.error("ip", f"{ip!r} is not an IPv4 address (e.g. 10.0.0.1/24)") from None
    mac_v = s.get("mac", None)
    mac = _mac(mac_v, s, "mac") if mac_v is not None else None
    role = s.choice("role", ROLES, "other")
    ceiling = s.get("ceiling", None)
    if ceiling is not None:
        ceiling = s.integer("ceiling", lo=0, hi=LOWEST_LEVEL)
    return Host(name, iface, mac or "", role, ceiling)


def _switch(s: Section, name, index: int, d_target: str, d_buf: int) -> Switch:
    if not isinstance(name, str) or not _NAME.match(name):
        raise s.error("name", f"{name!r} is not a valid node name (lowercase letter then up to 5 letters/digits)")
    target = s.choice("target", TARGETS, d_target)
    dev = s.integer("device_id", index + 1, lo=0, hi=2**16 - 1)
    gp = s.get("grpc_port", None)
    if gp is not None:
        gp = s.integer("grpc_port", lo=1024, hi=65535)
    tp = s.get("thrift_port", None)
    if tp is not None:
        tp = s.integer("thrift_port", lo=1024, hi=65535)
    pq = s.integer("priority_queues", NUM_QUEUES, lo=NUM_QUEUES, hi=NUM_QUEUES)
    buf = s.integer("queue_buffer", d_buf, lo=1, hi=100000)
    return Switch(name, target, dev, gp, pq, buf, tp)


def _endpoint(value, s: Section, key: str) -> Endpoint:
    m = _ENDPOINT.match(str(value)) if isinstance(value, str) else None
    if not m:
        raise s.error(key, f"{value!r} is not a link endpoint (a host name, a switch name, or switch-pN)")
    port = int(m["port"]) if m["port"] is not None else None
    if port is not None and not 1 <= port <= 509:
        raise s.error(key, f"port {port} is out of range (allowed: 1..509; 510 is the CPU port of P4Runtime "
                           f"PacketOut, 511 the drop port)")
    return Endpoint(m["node"], port)


def _link_list(ln, s: Section, d_bw: float):
    if not isinstance(ln, list) or not 2 <= len(ln) <= 4:
        raise ConfigError(s.source, s.path, f"{ln!r} is not a link (allowed: [a, b] or [a, b, latency, bandwidth])")
    a, b = _endpoint(ln[0], s, "0"), _endpoint(ln[1], s, "1")
    lat = parse_latency(ln[2], s, "2") if len(ln) > 2 else 0.0
    bw = parse_rate(ln[3], s, "3") if len(ln) > 3 else d_bw
    return (a, b, bw, lat, None, s, ("0", "1"))


def _assemble(name, hosts: list[Host], switches: list[Switch], raw_links, source: str, shape: bool) -> Topology:
    hmap: dict[str, Host] = {}
    smap: dict[str, Switch] = {}
    for i, h in enumerate(hosts):
        if h.name in hmap:
            raise ConfigError(source, f"hosts[{i}].name", f"duplicate host name {h.name!r}")
        hmap[h.name] = h
    for i, w in enumerate(switches):
        if w.name in smap or w.name in hmap:
            raise ConfigError(source, f"switches[{i}].name", f"duplicate node name {w.name!r}")
        smap[w.name] = w
    if not hmap:
        raise ConfigError(source, "hosts", "at least one host is required")
    if not smap:
        raise ConfigError(source, "switches", "at least one switch is required")
    _unique(source, "hosts", [(h.name, h.address) for h in hmap.values()], "ip")
    _unique(source, "switches", [(w.name, w.device_id) for w in smap.values()], "device_id")
    _unique(source, "switches", [(w.name, w.grpc_port) for w in smap.values() if w.grpc_port], "grpc_port")

    used: dict[str, set[int]] = {w: set() for w in smap}
    for a, b, _, _, _, s, keys in raw_links:
        for key, ep in zip(keys, (a, b)):
            if ep.node not in hmap and ep.node not in smap:
                raise s.error(key, f"unknown node {ep.node!r} (hosts: {', '.join(hmap)}; switches: {', '.join(smap)})")
            if ep.node in hmap and ep.port is not None:
                raise s.error(key, f"{ep} names a port on host {ep.node}; hosts have one interface (use {ep.node})")
            if ep.port is not None:
                if ep.port in used[ep.node]:
                    raise s.error(key, f"port {ep} is used by two links")
                used[ep.node].add(ep.port)
        if a.node == b.node:
            raise s.error(keys[1], f"link connects {a.node} to itself")
        if a.node in hmap and b.node in hmap:
            raise s.error(keys[1], f"link {a.node}-{b.node} joins two hosts; hosts connect to switches")

    links: list[Link] = []
    for a, b, bw, lat, buf, _, _ in raw_links:
        eps = []
        for ep in (a, b):
            if ep.node in smap and ep.port is None:
                port = min(set(range(1, 510)) - used[ep.node])
                used[ep.node].add(port)
                ep = Endpoint(ep.node, port)
            eps.append(ep)
        links.append(Link(eps[0], eps[1], bw, lat, buf))

    count = {h: 0 for h in hmap}
    for ln in links:
        for ep in (ln.a, ln.b):
            if ep.node in count:
                count[ep.node] += 1
    for h, n in count.items():
        if n != 1:
            raise ConfigError(source, "links", f"host {h} has {n} links (allowed: exactly 1)")

    # fill in MACs last so that generated ones cannot collide with given ones
    given = {h.mac for h in hmap.values() if h.mac}
    n = 0
    for hname, h in list(hmap.items()):
        if not h.mac:
            while True:
                n += 1
                mac = f"02:00:00:00:{n >> 8 & 0xff:02x}:{n & 0xff:02x}"
                if mac not in given:
                    break
            hmap[hname] = Host(h.name, h.ip, mac, h.role, h.ceiling)
    _unique(source, "hosts", [(h.name, h.mac) for h in hmap.values()], "mac")
    topo = Topology(name, hmap, smap, links, source, shape)
    for hname in hmap:  # every host reachable from every switch
        for sname in smap:
            topo.next_port(sname, hname)
    return topo


def _unique(source: str, section: str, pairs, what: str) -> None:
    seen: dict = {}
    for name, v in pairs:
        if v in seen:
            raise ConfigError(source, f"{section}.{name}.{what}", f"{v} is also used by {seen[v]}")
        seen[v] = name
