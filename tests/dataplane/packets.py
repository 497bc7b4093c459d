"""Frames for the target-neutral data-plane cases (docs/dataplane-tests.md).

``build(spec)`` turns a case's ``packet:`` mapping into Ethernet bytes (scapy for
Ethernet/ARP/IPv4/TCP/UDP, :func:`mfs.header.pack` for the MFS header);
``parse(frame)`` reads back what the checks compare (ports, DSCP, TTL, MACs,
IPv4 checksum validity, the bytes after the UDP header).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from mfs import header as mfsh
from mfs.configutil import ConfigError, Section

DEFAULT_SRC_MAC = "02:00:00:00:00:01"
DEFAULT_DST_MAC = "02:00:00:00:00:02"
ETH_MIN_FRAME = 60


def build(spec: dict, source: str = "<case>", key: str = "packet") -> bytes:
    """Build one frame; a ConfigError names the bad key."""
    s = Section(spec, source, key)
    eth = s.section("eth")
    frame = Ether(src=eth.string("src", DEFAULT_SRC_MAC), dst=eth.string("dst", DEFAULT_DST_MAC))
    eth.done()
    has_ip, has_arp = "ipv4" in spec, "arp" in spec
    if has_ip and has_arp:
        raise s.error("arp", "a packet has either ipv4 or arp, not both")
    if has_arp:
        a = s.section("arp")
        frame = frame / ARP(op=a.integer("op", 1, 1, 2), psrc=a.string("psrc", "10.0.1.1"),
                            pdst=a.string("pdst", "10.0.1.2"), hwsrc=frame.src)
        a.done()
    elif has_ip:
        ip = s.section("ipv4")
        frame = frame / IP(src=ip.string("src", "10.0.1.1"), dst=ip.string("dst", "10.0.2.1"),
                           tos=ip.integer("dscp", 0, 0, 63) << 2, ttl=ip.integer("ttl", 64, 0, 255))
        ip.done()
        has_mfs = "mfs" in spec or "mfs_raw_hex" in spec
        if "tcp" in spec:
            t = s.section("tcp")
            frame = frame / TCP(sport=t.integer("sport", 40000, 0, 65535), dport=t.integer("dport", 80, 0, 65535))
            t.done()
        else:
            u = s.section("udp")
            frame = frame / UDP(sport=u.integer("sport", 40000, 0, 65535),
                                dport=u.integer("dport", mfsh.MFS_UDP_PORT if has_mfs else 9000, 0, 65535))
            u.done()
        body = b""
        if "mfs" in spec and "mfs_raw_hex" in spec:
            raise s.error("mfs_raw_hex", "give either mfs or mfs_raw_hex")
        if "mfs" in spec:
            m = s.section("mfs")
            proposed = m.get("proposed", None)
            try:
                body = mfsh.pack(m.integer("stage", lo=0, hi=255), m.integer("flow_id", 0, 0),
                                 m.integer("request_id", 0, 0), m.integer("target_layer", 0, 0),
                                 m.integer("rli", mfsh.RLI_UNKNOWN, 0), proposed, m.boolean("last", False))
            except mfsh.MalformedHeader as e:
                raise s.error("mfs", str(e)) from None
            m.done()
        elif "mfs_raw_hex" in spec:
            try:
                body = bytes.fromhex(s.string("mfs_raw_hex").replace(" ", ""))
            except ValueError:
                raise s.error("mfs_raw_hex", "is not hex") from None
        payload_len = s.integer("payload_len", 0, 0, 1400)
        frame = frame / Raw(body + bytes((i * 7) & 0xFF for i in range(payload_len)))
    for k in ("ipv4", "arp", "mfs", "mfs_raw_hex", "tcp", "udp", "payload_len"):
        s.get(k, None)  # read above (ignored without ipv4)
    s.done()
    out = bytes(frame)
    # pad like a NIC to the Ethernet minimum (60 bytes without FCS); the
    # padding is outside the IPv4 total length
    return out + bytes(max(0, ETH_MIN_FRAME - len(out)))


@dataclass
class Parsed:
    src: str
    dst: str
    ethertype: int
    dscp: int | None = None
    ttl: int | None = None
    ipv4_checksum_ok: bool | None = None
    udp_payload: bytes | None = None


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def ipv4_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def parse(frame: bytes) -> Parsed:
    p = Parsed(src=_mac(frame[6:12]), dst=_mac(frame[0:6]), ethertype=struct.unpack_from("!H", frame, 12)[0])
    if p.ethertype == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0xF) * 4
        p.dscp, p.ttl = frame[15] >> 2, frame[22]
        p.ipv4_checksum_ok = ipv4_checksum(frame[14:14 + ihl]) == 0
        total = struct.unpack_from("!H", frame, 16)[0]
        if frame[23] == 17 and len(frame) >= 14 + ihl + 8:
            p.udp_payload = bytes(frame[14 + ihl + 8:14 + total])
    return p


__all__ = ["build", "parse", "Parsed", "ConfigError", "ipv4_checksum"]
