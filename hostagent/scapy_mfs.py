"""The MFS header (docs/header.md) and the agent transport header as scapy layers.

``UDP(dport=19782) / MFS(...) / MFSTransport(...)`` builds; dissection of a UDP
datagram to port 19782 yields ``MFS`` only when mfs.header.unpack accepts the bytes
(>= 16 bytes, ver 1, stage 1..3). Anything else becomes ``Raw`` — the same
"malformed" rule as the P4 parser; dissection never raises.

Field widths and order follow mfs.header; tests/test_scapy_mfs.py checks that
a scapy-built header is byte-identical to ``mfs.header.pack`` and the fast
``Stamper``.
"""

from __future__ import annotations

from scapy.config import conf
from scapy.fields import BitField, ByteEnumField, ByteEnumKeysField, ByteField, FlagsField, IntField, LongField, \
    ShortField, XByteField
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers

from mfs import header as H
from hostagent import wire

STAGE_NAMES = {H.STAGE_KV_REUSE: "kv_reuse", H.STAGE_COLLECTIVE: "collective", H.STAGE_P2D: "p2d"}


class MFS(Packet):
    name = "MFS"
    fields_desc = [
        BitField("ver", H.MFS_VERSION, 4),
        FlagsField("flags", 0, 4, ["PROPOSED", "LAST", "R4", "R8"]),
        ByteEnumField("stage", H.STAGE_KV_REUSE, STAGE_NAMES),
        ByteField("proposed", 0),
        XByteField("reserved", 0),
        IntField("flow_id", 0),
        IntField("request_id", 0),
        ShortField("target_layer", 0),
        ShortField("rli", H.RLI_UNKNOWN),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        if _pkt is not None:
            try:
                H.unpack(_pkt)
            except H.MalformedHeader:
                return conf.raw_layer
        return cls

    def to_header(self) -> H.MfsHeader:
        """The mfs.header view of this layer (raises MalformedHeader if invalid)."""
        return H.unpack(bytes(self)[:H.MFS_HEADER_LEN])

    def guess_payload_class(self, payload):
        return MFSTransport if len(payload) >= wire.TH_LEN else conf.raw_layer

    def mysummary(self):
        return self.sprintf("MFS stage=%stage% flow=%flow_id% req=%request_id% layer=%target_layer% rli=%rli%")


class MFSTransport(Packet):
    name = "MFSTransport"
    fields_desc = [
        ByteEnumKeysField("type", wire.T_DATA, {wire.T_DATA: "DATA", wire.T_ACK: "ACK"}),
        XByteField("tflags", 0),
        ShortField("chunk", 1400),
        IntField("transfer_id", 0),
        LongField("offset", 0),
        LongField("total", 0),
    ]

    def guess_payload_class(self, payload):
        return conf.raw_layer


def from_header(h: H.MfsHeader) -> MFS:
    """Scapy layer with the same fields as an mfs.header.MfsHeader."""
    return MFS(ver=h.version, flags=h.flags, stage=h.stage, proposed=h.proposed or 0, flow_id=h.flow_id,
               request_id=h.request_id, target_layer=h.target_layer, rli=h.rli)


bind_layers(UDP, MFS, dport=H.MFS_UDP_PORT)
bind_layers(UDP, MFSTransport, dport=wire.DSCP_PORT)
