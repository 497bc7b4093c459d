"""MFS header round trip: scapy layer <-> fast encoder (Stamper) <-> mfs.header.unpack
<-> the byte positions docs/header.md gives the P4 parser; malformed dissection."""

import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from mfs import header as H
from hostagent import wire
from hostagent.scapy_mfs import MFS, MFSTransport, from_header

HEADERS = [
    H.MfsHeader(stage=1, flow_id=0, request_id=0, target_layer=0, rli=0),
    H.MfsHeader(stage=2, flow_id=0xDEADBEEF, request_id=0xFFFFFFFF, target_layer=55, rli=0, last=True),
    H.MfsHeader(stage=3, flow_id=4097, request_id=123456, target_layer=0xFFFF, rli=H.RLI_UNKNOWN, proposed=3),
    H.MfsHeader(stage=1, flow_id=7, request_id=9, target_layer=12, rli=5, proposed=0, last=True),
]


@pytest.mark.parametrize("h", HEADERS)
def test_scapy_build_equals_pack_and_stamper(h):
    packed = h.pack()
    assert bytes(from_header(h)) == packed
    buf = bytearray(40)
    H.Stamper(h).stamp_into(buf, last=h.last)
    assert bytes(buf[:16]) == packed
    assert H.unpack(bytes(from_header(h))) == h


@pytest.mark.parametrize("h", HEADERS)
def test_scapy_dissects_fast_encoder_output(h):
    buf = bytearray(H.MFS_HEADER_LEN + wire.TH_LEN + 10)
    H.Stamper(h).stamp_into(buf, last=h.last)
    wire.TH.pack_into(buf, 16, wire.T_DATA, 0, 1400, h.flow_id, 2800, 5000)
    p = IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=19782, dport=19782) / bytes(buf)))
    m = p[MFS]
    assert (m.ver, m.stage, m.flow_id, m.request_id, m.target_layer, m.rli) == \
        (1, h.stage, h.flow_id, h.request_id, h.target_layer, h.rli)
    assert bool(int(m.flags) & H.FLAG_LAST) == h.last
    assert bool(int(m.flags) & H.FLAG_PROPOSED) == (h.proposed is not None)
    assert m.to_header() == h
    t = p[MFSTransport]
    assert (t.type, t.chunk, t.transfer_id, t.offset, t.total) == (wire.T_DATA, 1400, h.flow_id, 2800, 5000)
    assert wire.parse(bytes(t)) == (wire.T_DATA, 1400, h.flow_id, 2800, 5000)


def test_byte_positions_match_docs_header_md():
    # docs/header.md: byte0 = ver<<4 | flags, byte1 stage, byte2 proposed, byte3 reserved,
    # 4..7 flow_id, 8..11 request_id, 12..13 target_layer, 14..15 rli, network byte order.
    h = H.MfsHeader(stage=3, flow_id=0x01020304, request_id=0x0A0B0C0D, target_layer=0x1122, rli=0x3344,
                    proposed=5, last=True)
    expected = bytes([0x13, 0x03, 0x05, 0x00, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D, 0x11, 0x22, 0x33, 0x44])
    assert bytes(from_header(h)) == expected
    assert bytes(MFS(ver=1, flags="PROPOSED+LAST", stage=3, proposed=5, flow_id=0x01020304,
                     request_id=0x0A0B0C0D, target_layer=0x1122, rli=0x3344)) == expected
    # the UDP port the parser selects on
    pkt = bytes(UDP(sport=1, dport=H.MFS_UDP_PORT) / MFS(stage=1))
    assert pkt[2:4] == b"\x4d\x46"


@pytest.mark.parametrize("payload,why", [
    (b"", "empty"),
    (b"\x10\x01\x00", "truncated"),
    (HEADERS[0].pack()[:15], "15 bytes"),
    (b"\x20" + HEADERS[0].pack()[1:], "version 2"),
    (b"\x00" + HEADERS[0].pack()[1:], "version 0"),
    (HEADERS[0].pack()[:1] + b"\x00" + HEADERS[0].pack()[2:], "stage 0"),
    (HEADERS[0].pack()[:1] + b"\x04" + HEADERS[0].pack()[2:], "stage 4"),
])
def test_malformed_dissects_as_raw(payload, why):
    raw = bytes(IP() / UDP(dport=H.MFS_UDP_PORT) / payload)
    p = IP(raw)
    assert MFS not in p, why
    if payload:
        assert p[Raw].load == payload
    with pytest.raises(H.MalformedHeader):
        H.unpack(payload)


def test_random_bytes_never_raise():
    rng = random.Random(7)
    for _ in range(500):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 48)))
        p = IP(bytes(IP() / UDP(dport=H.MFS_UDP_PORT) / payload))
        try:
            H.unpack(payload)
            valid = True
        except H.MalformedHeader:
            valid = False
        assert (MFS in p) == valid


def test_dscp_port_dissects_transport_without_shim():
    body = wire.TH.pack(wire.T_ACK, 0, 1400, 9, 2800, 4200) + bytes(wire.SACK_BYTES)
    p = IP(bytes(IP(tos=0xB8) / UDP(dport=wire.DSCP_PORT) / body))
    assert MFS not in p
    assert p[MFSTransport].type == wire.T_ACK and p[MFSTransport].transfer_id == 9


def test_wire_parse_rejects_bad_transport_headers():
    with pytest.raises(wire.MalformedTransport, match="truncated"):
        wire.parse(b"\x01" * 10)
    with pytest.raises(wire.MalformedTransport, match="type=9"):
        wire.parse(wire.TH.pack(9, 0, 1400, 1, 0, 0))
    with pytest.raises(wire.MalformedTransport, match="chunk=0"):
        wire.parse(wire.TH.pack(1, 0, 0, 1, 0, 0))
    with pytest.raises(wire.MalformedTransport, match="offset=10 > total=5"):
        wire.parse(wire.TH.pack(1, 0, 1400, 1, 10, 5))
