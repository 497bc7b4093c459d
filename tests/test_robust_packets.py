"""Malformed packets into the embedded switch pipeline (deterministic, seeded).

The oracle below is written from docs/header.md and docs/p4-api.md (not from
topo/embedded/pipeline.py): which frames carry a valid MFS header, which are
malformed MFS (class_counter[6], best-effort level, header bytes untouched) and
which are plain best effort, which IPv4 headers are dropped (drop_counter: bad
version/IHL, bad checksum, TTL expiry). Every generated frame goes through
``start_server(...).switch.process``; nothing may raise, every frame that
reaches classification is counted exactly once in class_counter (any index but 7),
class_counter[7] counts exactly the rejected proposals and drop_counter exactly
the drops.
"""

from __future__ import annotations

import random
import struct

import pytest
from finsy.proto import p4r

from mfs import header as mfsh
from mfs.p4info import P4Schema
from topo.embedded.pipeline import (CLS_BE, CLS_FLOW, CLS_MALFORMED, CLS_MFS_BE, CLS_REJECTED, DROP_BAD_IPV4,
                                    DROP_IPV4_CHECKSUM, DROP_TTL_EXPIRED, ETH_ARP, ETH_IPV4, PROTO_TCP, PROTO_UDP,
                                    ipv4_checksum)
from topo.embedded.server import start_server

SCHEMA = P4Schema.load()
INS, MOD = p4r.Update.INSERT, p4r.Update.MODIFY
BE_LEVEL = 4  # classify_default is set to this, so "best effort" is not the program's initial 7
FLOW_STAGE, FLOW_ID, FLOW_LEVEL = 3, 4242, 1
PORTS = (1, 2, 3)
N_RANDOM = 400  # per generator; bounded (shared CPU)


# ---------------------------------------------------------------- frame builders (by hand, from the docs)
def eth(ethertype: int, dst: bytes = b"\x02\0\0\0\0\x02") -> bytes:
    return dst + b"\x02\0\0\0\0\x01" + struct.pack("!H", ethertype)


def ipv4(payload: bytes, proto: int = PROTO_UDP, ihl: int = 5, total_len: int | None = None, frag: int = 0,
         ttl: int = 64, dst: str = "10.0.2.1") -> bytes:
    d = bytes(int(x) for x in dst.split("."))
    options = b"\0" * (4 * max(0, ihl - 5))
    tl = 20 + len(options) + len(payload) if total_len is None else total_len
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tl & 0xFFFF, 1, frag, ttl, proto, 0, bytes([10, 0, 1, 1]), d)
    h = h[:10] + struct.pack("!H", ipv4_checksum(h)) + h[12:]
    return h + options + payload


def udp(payload: bytes, dport: int = mfsh.MFS_UDP_PORT, length: int | None = None) -> bytes:
    ln = 8 + len(payload) if length is None else length
    return struct.pack("!HHHH", 40000, dport, ln & 0xFFFF, 0) + payload


def mfs_frame(hdr: bytes, app: bytes = b"data", udp_len: int | None = None, **ip) -> bytes:
    return eth(ETH_IPV4) + ipv4(udp(hdr + app, length=udp_len), **ip)


def raw_mfs(ver: int = 1, flags: int = 0, stage: int = 3, proposed: int = 0, flow_id: int = 7) -> bytes:
    return struct.pack("!BBBBIIHH", (ver << 4) | flags, stage, proposed, 0, flow_id, 9, 3, 0xFFFF)


# ---------------------------------------------------------------- the oracle
def expected(frame: bytes, in_port: int) -> tuple[int | None, bool, int | None]:
    """(class_counter index or None if not classified, proposal rejected?, drop_counter index or
    None) with the tables of ``sw``: edge ports, no router MACs, one flow entry for (port 1,
    10.0.1.1), a route for 10.0.2.0/24 only."""
    n = len(frame)
    if n < 14:
        return None, False, None
    off, eth_type = 14, struct.unpack_from("!H", frame, 12)[0]
    for _ in range(2):   # up to two VLAN tags are parsed
        if eth_type not in (0x8100, 0x88A8) or n < off + 4:
            break
        eth_type, off = struct.unpack_from("!H", frame, off + 2)[0], off + 4
    if eth_type != ETH_IPV4 or n < off + 20:
        return CLS_BE, False, None
    ver, ihl = frame[off] >> 4, frame[off] & 0xF
    if ver != 4 or ihl < 5:
        return None, False, DROP_BAD_IPV4
    if n < off + 4 * ihl or ipv4_checksum(frame[off:off + 4 * ihl]) != 0:
        return None, False, DROP_IPV4_CHECKSUM
    dst_routed = frame[off + 16:off + 19] == bytes([10, 0, 2])
    ttl_drop = DROP_TTL_EXPIRED if dst_routed and frame[off + 8] <= 1 else None
    frag, proto = struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF, frame[off + 9]
    l4 = off + 4 * ihl
    if frag != 0 or proto != PROTO_UDP or n < l4 + 8:
        return CLS_BE, False, ttl_drop
    if struct.unpack_from("!H", frame, l4 + 2)[0] != mfsh.MFS_UDP_PORT:
        return CLS_BE, False, ttl_drop
    udp_len = struct.unpack_from("!H", frame, l4 + 4)[0]
    total_len = struct.unpack_from("!H", frame, off + 2)[0]
    if udp_len < 8 + mfsh.MFS_HEADER_LEN or total_len != (4 * ihl + udp_len) & 0xFFFF:
        return CLS_MALFORMED, False, ttl_drop
    try:
        h = mfsh.unpack(frame, l4 + 8)
    except mfsh.MalformedHeader:
        return CLS_MALFORMED, False, ttl_drop
    src = frame[off + 12:off + 16]
    if (h.stage, h.flow_id, in_port, src) == (FLOW_STAGE, FLOW_ID, 1, bytes([10, 0, 1, 1])):
        return CLS_FLOW, False, ttl_drop
    return CLS_MFS_BE, h.proposed is not None, ttl_drop  # no trust entries, no stage defaults


# ---------------------------------------------------------------- generators
def mutants(rng: random.Random):
    """Yield (description, frame)."""
    good = mfs_frame(mfsh.pack(3, 7, request_id=9, proposed=2))
    yield "valid", good
    yield "valid flow entry", mfs_frame(mfsh.pack(FLOW_STAGE, FLOW_ID))
    # every truncation of a valid MFS frame (Ethernet, IPv4, UDP, MFS header cut at each byte)
    for cut in range(len(good) + 1):
        yield f"truncated to {cut}", good[:cut]
    # MFS header truncated at every length 0..15, UDP length both honest and lying
    for k in range(mfsh.MFS_HEADER_LEN):
        hdr = mfsh.pack(3, 7)[:k]
        yield f"mfs {k} bytes, honest udp len", mfs_frame(hdr, app=b"")
        yield f"mfs {k} bytes + padding, honest udp len", mfs_frame(hdr, app=b"") + b"\0" * 32
        yield f"mfs {k} bytes, udp len says 24", mfs_frame(hdr, app=b"", udp_len=24)
    # bad version / stage / flags
    for ver in range(16):
        yield f"ver {ver}", mfs_frame(raw_mfs(ver=ver))
    for stage in (0, 4, 9, 255) + tuple(range(1, 4)):
        yield f"stage {stage}", mfs_frame(raw_mfs(stage=stage))
    for flags in range(16):
        yield f"flags {flags:#x}", mfs_frame(raw_mfs(flags=flags, proposed=rng.randrange(256)))
    # IPv4 header oddities
    for ihl in range(16):
        yield f"ihl {ihl}", mfs_frame(mfsh.pack(3, 7), ihl=ihl)
    for tl in (0, 1, 19, 20, 21, 43, 0xFFFF):
        yield f"ip total_len {tl}", mfs_frame(mfsh.pack(3, 7), total_len=tl)
    for ul in (0, 7, 8, 23, 24, 25, 0xFFFF):
        yield f"udp len {ul}", mfs_frame(mfsh.pack(3, 7), udp_len=ul)
    yield "fragment", mfs_frame(mfsh.pack(3, 7), frag=1)
    yield "more-fragments flag", mfs_frame(mfsh.pack(3, 7), frag=0x2000)
    for ttl in (0, 1, 2):
        yield f"ttl {ttl}", mfs_frame(mfsh.pack(3, 7), ttl=ttl)
    # truncated TCP / ARP / IPv4 without L4, other UDP port
    tcp = eth(ETH_IPV4) + ipv4(struct.pack("!HHIIBBHHH", 1, mfsh.MFS_UDP_PORT, 0, 0, 0x50, 2, 1, 0, 0), proto=PROTO_TCP)
    arp = eth(ETH_ARP, b"\xff" * 6) + bytes(28)
    for cut in range(14, len(tcp) + 1, 3):
        yield f"tcp truncated to {cut}", tcp[:cut]
    for cut in range(14, len(arp) + 1, 3):
        yield f"arp truncated to {cut}", arp[:cut]
    yield "udp other port", eth(ETH_IPV4) + ipv4(udp(mfsh.pack(3, 7), dport=53))
    # huge frames
    yield "jumbo", mfs_frame(mfsh.pack(3, 7), app=b"j" * 9000)
    yield "64 KiB", mfs_frame(mfsh.pack(3, 7), app=b"h" * 65000, udp_len=0xFFFF)
    yield "64 KiB random", bytes(rng.randrange(256) for _ in range(65536))
    # random bytes, random bytes behind valid prefixes, random byte flips of a valid frame
    for i in range(N_RANDOM):
        yield f"random {i}", rng.randbytes(rng.randrange(0, 120))
    for i in range(N_RANDOM):
        prefix = good[:rng.choice((14, 34, 42, 50, 58))]
        yield f"valid prefix + random {i}", prefix + rng.randbytes(rng.randrange(0, 40))
    for i in range(N_RANDOM):
        b = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        yield f"flipped {i}", bytes(b)


# ---------------------------------------------------------------- the test
@pytest.fixture
def sw():
    h = start_server(address="127.0.0.1:0")
    s = h.switch
    s.write_table(MOD, SCHEMA.table_entry("classify_default", None, "set_level", {"level": BE_LEVEL}, default=True))
    s.write_table(INS, SCHEMA.table_entry("mfs_flow", {"stage": FLOW_STAGE, "flow_id": FLOW_ID, "ingress_port": 1,
                                                       "src_addr": "10.0.1.1"},
                                          "set_level", {"level": FLOW_LEVEL}))
    s.write_table(INS, SCHEMA.table_entry("ipv4_lpm", {"dst_addr": ("10.0.2.0", 24)}, "route",
                                          {"port": 2, "src_mac": 1, "dst_mac": 2}))
    s.write_table(MOD, SCHEMA.table_entry("dscp_rewrite", None, "rewrite_dscp", None, default=True))
    s.write_group(INS, 1, [(p, 0) for p in PORTS])
    yield s
    h.stop()


def test_malformed_frames_never_raise_nor_misclassify(sw):
    rng = random.Random(20240611)
    pk, by = sw.counter("MfsIngress.class_counter")
    dpk, _dby = sw.counter("MfsIngress.drop_counter")
    want, want_drops = [0] * len(pk), [0] * len(dpk)
    reached = 0  # frames that reach classification
    main = [i for i in range(len(pk)) if i != CLS_REJECTED]  # one of these per classified frame
    for what, frame in mutants(rng):
        before, dbefore = list(pk), list(dpk)
        port = rng.choice(PORTS)
        try:
            out = sw.process(port, frame)
        except Exception as e:  # pragma: no cover - the assertion names the frame
            pytest.fail(f"{what}: process() raised {type(e).__name__}: {e} on {frame[:64].hex()}")
        cls, rejected, drop = expected(frame, port)
        delta = [a - b for a, b in zip(pk, before)]
        ddelta = [a - b for a, b in zip(dpk, dbefore)]
        if drop is not None:
            want_drops[drop] += 1
            assert ddelta[drop] == 1 and sum(ddelta) == 1 and out == [], f"{what}: drops {ddelta}, expected {drop}"
        else:
            assert sum(ddelta) == 0, f"{what}: dropped ({ddelta}), expected forwarded"
        if cls is None:
            assert delta == [0] * len(pk) and out == [], what
            continue
        reached += 1
        want[cls] += 1
        want[CLS_REJECTED] += rejected
        assert delta[cls] == 1 and sum(delta[i] for i in main) == 1, \
            f"{what}: counted as {delta}, expected class {cls}"
        assert delta[CLS_REJECTED] == int(rejected), f"{what}: rejected proposal counted {delta[CLS_REJECTED]}"
        want_level = FLOW_LEVEL if cls == CLS_FLOW else BE_LEVEL
        for port, buf, level in out:
            assert level == want_level, f"{what}: level {level}, expected {want_level} (class {cls})"
            assert port in PORTS
            if cls == CLS_MALFORMED:  # header bytes are never rewritten
                assert bytes(buf[42:]) == frame[42:], what
            assert len(buf) == len(frame), f"{what}: frame length changed"
    assert list(pk) == want, "class_counter totals differ from the oracle"
    assert list(dpk) == want_drops, "drop_counter totals differ from the oracle"
    assert sum(pk[i] for i in main) == reached > 1000
    assert all(b >= p * 14 for p, b in zip(pk, by))


def test_malformed_mfs_forwarded_at_best_effort_not_dropped(sw):
    for k in range(mfsh.MFS_HEADER_LEN):
        frame = mfs_frame(mfsh.pack(FLOW_STAGE, FLOW_ID)[:k], app=b"")
        out = sw.process(1, frame)
        assert [(p, lvl) for p, _b, lvl in out] == [(2, BE_LEVEL)], f"MFS header cut at {k} bytes"
    out = sw.process(1, mfs_frame(raw_mfs(stage=9, flow_id=FLOW_ID)))
    assert [(p, lvl) for p, _b, lvl in out] == [(2, BE_LEVEL)]
    assert sw.counter("MfsIngress.class_counter")[0][CLS_MALFORMED] == mfsh.MFS_HEADER_LEN + 1


def test_hostile_in_ports_and_levels(sw):
    # ports outside the 9-bit range and a proposal of 255 from a trusted host: clamped, no exception
    sw.write_table(INS, SCHEMA.table_entry("mfs_trust", {"ingress_port": 1, "src_addr": "10.0.1.1"},
                                           "trust_proposal", {"ceiling": 0}))
    out = sw.process(1, mfs_frame(mfsh.pack(2, 99, proposed=255)))
    assert [lvl for _p, _b, lvl in out] == [7]
    for port in (0, 511, 512, 1 << 20):
        sw.process(port, mfs_frame(mfsh.pack(2, 99)))
