"""Frames for the target-neutral data-plane cases (docs/dataplane-tests.md).

``build(spec)`` turns a case's ``packet:`` mapping into Ethernet bytes (scapy for
Ethernet/ARP/IPv4/TCP/UDP, :func:`mfs.header.pack` for the MFS header);
``parse(frame)`` reads back what the checks compare (ports, DSCP, TTL, MACs,
IPv4 checksum validity, the bytes after the UDP header).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP, IPOption
from scapy.layers.l2 import ARP, Dot1Q, Ether
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
    tpid = eth.integer("tpid", 0x8100, 0, 0xFFFF)   # outer tag's TPID (0x88a8: 802.1ad)
    eth.done()
    vids = [int(v) for v in s.sequence("vlan", [])]   # 802.1Q tags, outer first
    if len(vids) > 3 or not all(0 <= v < 4096 for v in vids):
        raise s.error("vlan", "give up to 3 VLAN ids 0..4095")
    if vids:
        frame.type = tpid
        for v in vids:
            frame = frame / Dot1Q(vlan=v)
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
        ipl = IP(src=ip.string("src", "10.0.1.1"), dst=ip.string("dst", "10.0.2.1"),
                 tos=ip.integer("dscp", 0, 0, 63) << 2, ttl=ip.integer("ttl", 64, 0, 255))
        if "options_hex" in ip.data:   # raw option bytes (a multiple of 4), IHL follows
            try:
                ipl.options = [IPOption(bytes.fromhex(ip.string("options_hex").replace(" ", "")))]
            except ValueError:
                raise ip.error("options_hex", "is not hex") from None
        for key, field, hi in (("version", "version", 15), ("ihl", "ihl", 15), ("total_len", "len", 65535),
                               ("checksum", "chksum", 65535)):
            if key in ip.data:   # overrides of what scapy would compute (malformed headers)
                setattr(ipl, field, ip.integer(key, lo=0, hi=hi))
        ip.done()
        frame = frame / ipl
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
    for k in ("ipv4", "arp", "mfs", "mfs_raw_hex", "tcp", "udp", "payload_len", "vlan"):
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
    vlan: list[int] | None = None
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
    off, p.vlan = 14, []
    while p.ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4 and len(p.vlan) < 3:
        p.vlan.append(struct.unpack_from("!H", frame, off)[0] & 0xFFF)
        p.ethertype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if p.ethertype == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 0xF) * 4
        p.dscp, p.ttl = frame[off + 1] >> 2, frame[off + 8]
        p.ipv4_checksum_ok = ipv4_checksum(frame[off:off + ihl]) == 0
        total = struct.unpack_from("!H", frame, off + 2)[0]
        if frame[off + 9] == 17 and len(frame) >= off + ihl + 8:
            p.udp_payload = bytes(frame[off + ihl + 8:off + total])
    return p


__all__ = ["build", "parse", "Parsed", "ConfigError", "ipv4_checksum"]
