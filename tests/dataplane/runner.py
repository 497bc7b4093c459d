"""Target-neutral data-plane case runner (case format: docs/dataplane-tests.md).

A *target* is anything that implements :class:`DataplaneTarget` (the embedded
switch in topo/embedded, bmv2 in tests/dataplane/bmv2_target.py). ``load_cases()``
reads and validates ``tests/dataplane/cases/*.yaml``; ``run_case(target, case)``
resets the target, applies the setup, sends every packet and checks outputs,
counters and digests, raising :class:`CaseFailure` with every mismatch listed.
"""

from __future__ import annotations

import ipaddress

from collections import Counter as Multiset
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mfs import levels
from mfs.configutil import ConfigError, Section, load_yaml

from . import packets

CASES_DIR = Path(__file__).resolve().parent / "cases"


@runtime_checkable
class DataplaneTarget(Protocol):
    def reset(self) -> None:
        """Forget every table entry, multicast group, counter and digest (a fresh pipeline)."""

    def write(self, setup_items: list[dict]) -> None:
        """Apply setup items (table entries by P4Info names, default actions, multicast groups)."""

    def send(self, port: int, frame: bytes) -> list[tuple[int, bytes, int | None]]:
        """Inject a frame; return the copies it caused as (out_port, frame_bytes, level)."""

    def counter(self, name: str, index: int) -> tuple[int, int]:
        """(packets, bytes) of an indexed counter, by P4Info name."""

    def digests(self) -> list[dict]:
        """mfs_miss_t digests received since reset, as {field: int} dicts."""

    def register(self, name: str, index: int) -> int:
        """One register cell, by P4Info name."""

    def packet_out(self, values: dict) -> None:
        """Send a P4Runtime PacketOut whose packet_out header fields are ``values`` (by name)."""


@dataclass
class Expect:
    out_port: int
    level: int | None = None
    dscp: int | None = None
    ttl: int | None = None
    eth_src: str | None = None
    eth_dst: str | None = None
    vlan: list[int] | None = None


@dataclass
class PacketStep:
    in_port: int
    frame: bytes
    expect: list[Expect]
    note: str = ""
    write: list[dict] | None = None  # a control-plane step instead of a packet: setup items to apply
    packet_out: dict | None = None  # a controller operation instead of a packet: packet_out header fields


@dataclass
class Case:
    name: str
    source: str
    setup: list[dict]
    packets: list[PacketStep]
    counters: list[tuple[str, int, int]] = field(default_factory=list)
    digests: list[dict] = field(default_factory=list)
    digest_count: int | None = None  # exact number of mfs_miss_t digests, when given
    registers: list[tuple[str, int, int]] = field(default_factory=list)


class CaseFailure(AssertionError):
    pass


SETUP_KEYS = {"table", "match", "action", "params", "priority", "default", "multicast_group", "ports",
              "register", "index", "value", "idle_timeout_ns"}


def _setup_item(raw: Any, source: str, key: str) -> dict:
    s = Section(raw, source, key)
    if "register" in s.data:
        item = {"register": s.string("register"), "index": s.integer("index", lo=0),
                "value": s.integer("value", lo=0)}
    elif "multicast_group" in s.data:
        item = {"multicast_group": s.integer("multicast_group", lo=1, hi=65535),
                "ports": [int(p) for p in s.sequence("ports")]}
    else:
        item = {"table": s.string("table"), "action": s.string("action"),
                "params": dict(s.get("params", {}) or {})}
        if s.boolean("default", False):
            item["default"] = True
        else:
            item["match"] = dict(s.get("match", {}) or {})
            item["priority"] = s.integer("priority", 0, lo=0)
            if "idle_timeout_ns" in s.data:
                item["idle_timeout_ns"] = s.integer("idle_timeout_ns", lo=0)
    s.done()
    return item


def _expect(raw: Any, source: str, key: str) -> Expect:
    s = Section(raw, source, key)
    eth = s.section("eth")
    e = Expect(out_port=s.integer("out_port", lo=0, hi=511),
               level=s.integer("level", None, 0, levels.LOWEST_LEVEL) if "level" in s.data else None,
               dscp=s.integer("dscp", None, 0, 63) if "dscp" in s.data else None,
               ttl=s.integer("ttl", None, 0, 255) if "ttl" in s.data else None,
               eth_src=eth.string("src") if "src" in eth.data else None,
               eth_dst=eth.string("dst") if "dst" in eth.data else None,
               vlan=[int(v) for v in s.sequence("vlan")] if "vlan" in s.data else None)
    eth.done()
    s.done()
    return e


def load_case(path: str | Path) -> Case:
    path = Path(path)
    src = path.name
    s = Section(load_yaml(path), src)
    case = Case(name=s.string("name"), source=src, setup=[], packets=[])
    s.string("description", "")
    for i, item in enumerate(s.sequence("setup", [])):
        case.setup.append(_setup_item(item, src, f"setup[{i}]"))
    for i, raw in enumerate(s.sequence("packets")):
        p = Section(raw, src, f"packets[{i}]")
        if "packet_out" in p.data:
            po = p.section("packet_out")
            fields = {k: po.integer(k, lo=0) for k in po.data}
            if not fields:
                raise ConfigError(src, f"packets[{i}].packet_out", "expected the packet_out header fields, "
                                                                    "e.g. {op: 1, reserved: 0, index: 0x575}")
            case.packets.append(PacketStep(0, b"", [], p.string("note", ""), packet_out=fields))
            p.done()
            continue
        if "write" in p.data:
            items = [_setup_item(it, src, f"packets[{i}].write[{j}]") for j, it in enumerate(p.sequence("write"))]
            case.packets.append(PacketStep(0, b"", [], p.string("note", ""), write=items))
            p.done()
            continue
        frame = packets.build(p.get("packet"), src, f"packets[{i}].packet")
        exp = [_expect(e, src, f"packets[{i}].expect[{j}]") for j, e in enumerate(p.sequence("expect"))]
        case.packets.append(PacketStep(p.integer("in_port", lo=0, hi=511), frame, exp, p.string("note", "")))
        p.done()
    for i, raw in enumerate(s.sequence("counters", [])):
        c = Section(raw, src, f"counters[{i}]")
        case.counters.append((c.string("name"), c.integer("index", lo=0), c.integer("packets", lo=0)))
        c.done()
    for i, raw in enumerate(s.sequence("registers", [])):
        c = Section(raw, src, f"registers[{i}]")
        case.registers.append((c.string("name"), c.integer("index", lo=0), c.integer("value", lo=0)))
        c.done()
    if "digest_count" in s.data:
        case.digest_count = s.integer("digest_count", lo=0)
    for i, raw in enumerate(s.sequence("digests", [])):
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(src, f"digests[{i}]", "expected a non-empty mapping of digest fields")
        case.digests.append(dict(raw))
    s.done()
    return case


def load_cases(directory: str | Path = CASES_DIR) -> list[Case]:
    files = sorted(Path(directory).glob("*.yaml"))
    if not files:
        raise ConfigError(str(directory), "", "no *.yaml case files")
    return [load_case(f) for f in files]


def _check_output(step_no: int, exp: Expect, frame: bytes, level: int | None, sent: bytes) -> list[str]:
    errs = []
    where = f"packets[{step_no}] out_port {exp.out_port}"
    got = packets.parse(frame)
    want = packets.parse(sent)
    if exp.level is not None:
        if level is None:
            errs.append(f"{where}: target did not report a level (expected {exp.level})")
        elif level != exp.level:
            errs.append(f"{where}: level {level}, expected {exp.level}")
    if exp.dscp is not None and got.dscp != exp.dscp:
        errs.append(f"{where}: dscp {got.dscp}, expected {exp.dscp}")
    if exp.ttl is not None and got.ttl != exp.ttl:
        errs.append(f"{where}: ttl {got.ttl}, expected {exp.ttl}")
    if exp.eth_src is not None and got.src != exp.eth_src.lower():
        errs.append(f"{where}: eth src {got.src}, expected {exp.eth_src}")
    if exp.eth_dst is not None and got.dst != exp.eth_dst.lower():
        errs.append(f"{where}: eth dst {got.dst}, expected {exp.eth_dst}")
    if exp.vlan is not None and got.vlan != exp.vlan:
        errs.append(f"{where}: VLAN tags {got.vlan}, expected {exp.vlan}")
    if got.ipv4_checksum_ok is False:
        errs.append(f"{where}: IPv4 header checksum is wrong")
    # invariant: the UDP payload (MFS header + data) is never rewritten
    if want.udp_payload is not None and got.udp_payload != want.udp_payload:
        errs.append(f"{where}: UDP payload / MFS header bytes changed")
    return errs


def run_case(target: DataplaneTarget, case: Case) -> None:
    target.reset()
    target.write(case.setup)
    errs: list[str] = []
    for n, step in enumerate(case.packets):
        if step.write is not None:
            target.write(step.write)
            continue
        if step.packet_out is not None:
            err = apply_packet_out(target, step.packet_out)
            if err:
                errs.append(f"packets[{n}] ({step.note or 'packet_out'}): {err}")
            continue
        outs = target.send(step.in_port, step.frame)
        got_ports = Multiset(p for p, _, _ in outs)
        want_ports = Multiset(e.out_port for e in step.expect)
        note = f" ({step.note})" if step.note else ""
        if got_ports != want_ports:
            errs.append(f"packets[{n}]{note}: out ports {sorted(got_ports.elements())}, "
                        f"expected {sorted(want_ports.elements())}")
            continue
        by_port: dict[int, list] = {}
        for p, fr, lv in outs:
            by_port.setdefault(p, []).append((fr, lv))
        for e in step.expect:
            fr, lv = by_port[e.out_port].pop(0)
            errs += [m + note for m in _check_output(n, e, fr, lv, step.frame)]
    for name, index, want in case.counters:
        got, _bytes = target.counter(name, index)
        if got != want:
            errs.append(f"counter {name}[{index}]: {got} packets, expected {want}")
    for name, index, want in case.registers:
        got = target.register(name, index)
        if got != want:
            errs.append(f"register {name}[{index}]: {got}, expected {want}")
    if case.digests or case.digest_count is not None:
        got_d = target.digests()
        if case.digest_count is not None and len(got_d) != case.digest_count:
            errs.append(f"{len(got_d)} mfs_miss_t digests, expected {case.digest_count}: {got_d}")
        for want in case.digests:
            if not any(all(d.get(k) == _digest_value(v) for k, v in want.items()) for d in got_d):
                errs.append(f"digest {want} not received (got {got_d})")
    if errs:
        raise CaseFailure(f"{case.source} ({case.name}):\n  " + "\n  ".join(errs))


CONTROLLER_OP_COUNTER = ("MfsIngress.class_counter", 10)  # every packet from the CPU port (docs/p4-api.md)
PACKET_OUT_WAIT_S = 10.0  # generous: a PacketOut is applied asynchronously, the machine is loaded


def apply_packet_out(target: DataplaneTarget, values: dict) -> str:
    """Send a PacketOut and wait until the pipeline has taken it (class_counter[10] grew): a PacketOut
    is asynchronous on every target, and the next packet must see its effect. '' or what went wrong."""
    import time

    before, _ = target.counter(*CONTROLLER_OP_COUNTER)
    target.packet_out(values)
    deadline = time.monotonic() + PACKET_OUT_WAIT_S
    while time.monotonic() < deadline:
        if target.counter(*CONTROLLER_OP_COUNTER)[0] > before:
            return ""
        time.sleep(0.02)
    return f"PacketOut {values} not applied within {PACKET_OUT_WAIT_S:.0f} s (class_counter[10] unchanged)"


def _digest_value(v: Any) -> Any:
    if isinstance(v, str) and v.count(".") == 3:
        return int(ipaddress.IPv4Address(v))
    return v
