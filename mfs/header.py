"""The MFS shim header: the one byte layout (see docs/header.md).

Every parser in the project (the P4 programs, the embedded switch, the scapy
layer in hostagent, the receivers) uses these constants; the P4 constants in
``p4src/shared/mfs_constants.p4`` mirror them and a test checks that they agree.

Layout, 16 bytes, network byte order, carried right after a UDP header whose
destination port is ``MFS_UDP_PORT``::

     0               1               2               3
    +-------+-------+---------------+---------------+---------------+
    | ver:4 |flags:4|   stage:8     | proposed:8    |  reserved:8   |
    +-------+-------+---------------+---------------+---------------+
    |                         flow_id:32                            |
    +---------------------------------------------------------------+
    |                        request_id:32                          |
    +-------------------------------+-------------------------------+
    |        target_layer:16        |            rli:16             |
    +-------------------------------+-------------------------------+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MFS_UDP_PORT = 19782  # 0x4D46, "MF"
MFS_HEADER_LEN = 16
MFS_VERSION = 1

# flags (low nibble of byte 0)
FLAG_PROPOSED = 0x1  # `proposed` carries a host-proposed level
FLAG_LAST = 0x2  # last packet of the message (layer transfer)
FLAG_MASK = 0xF

# stages
STAGE_KV_REUSE = 1  # Stage 1: KV-block retrieval (implicit deadline, RLI)
STAGE_COLLECTIVE = 2  # Stage 2: collectives (RLI 0, GPU blocked)
STAGE_P2D = 3  # Stage 3: prefill-to-decode KV push (explicit deadline, MLU)
VALID_STAGES = (STAGE_KV_REUSE, STAGE_COLLECTIVE, STAGE_P2D)

RLI_UNKNOWN = 0xFFFF

_FMT = struct.Struct("!BBBBIIHH")
assert _FMT.size == MFS_HEADER_LEN


class MalformedHeader(ValueError):
    """A byte string is not a valid MFS header; the message says which field."""


@dataclass(frozen=True, slots=True)
class MfsHeader:
    stage: int
    flow_id: int
    request_id: int = 0
    target_layer: int = 0
    rli: int = RLI_UNKNOWN
    proposed: int | None = None  # host-proposed level (sets FLAG_PROPOSED)
    last: bool = False
    version: int = MFS_VERSION

    @property
    def flags(self) -> int:
        return (FLAG_PROPOSED if self.proposed is not None else 0) | (FLAG_LAST if self.last else 0)

    def pack(self) -> bytes:
        return pack(
            self.stage,
            self.flow_id,
            self.request_id,
            self.target_layer,
            self.rli,
            self.proposed,
            self.last,
            self.version,
        )


def _check(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >> bits:
        raise MalformedHeader(f"{name}={value!r} does not fit in {bits} bits")


def pack(
    stage: int,
    flow_id: int,
    request_id: int = 0,
    target_layer: int = 0,
    rli: int = RLI_UNKNOWN,
    proposed: int | None = None,
    last: bool = False,
    version: int = MFS_VERSION,
) -> bytes:
    """Encode one header; raises MalformedHeader naming the bad field."""
    if stage not in VALID_STAGES:
        raise MalformedHeader(f"stage={stage!r} is not one of {VALID_STAGES}")
    _check("version", version, 4)
    _check("flow_id", flow_id, 32)
    _check("request_id", request_id, 32)
    _check("target_layer", target_layer, 16)
    _check("rli", rli, 16)
    flags = FLAG_LAST if last else 0
    if proposed is not None:
        _check("proposed", proposed, 8)
        flags |= FLAG_PROPOSED
    return _FMT.pack((version << 4) | flags, stage, proposed or 0, 0, flow_id, request_id, target_layer, rli)


def unpack(buf: bytes | bytearray | memoryview, offset: int = 0) -> MfsHeader:
    """Decode and validate a header at ``offset``.

    Rejects (MalformedHeader): fewer than 16 bytes, version != 1, stage not in 1..3.
    These are exactly the conditions under which the P4 parser marks the
    packet malformed (best effort + counted), see docs/header.md.
    """
    if len(buf) - offset < MFS_HEADER_LEN:
        raise MalformedHeader(f"truncated: {len(buf) - offset} bytes, need {MFS_HEADER_LEN}")
    vf, stage, proposed, _rsvd, flow_id, request_id, target_layer, rli = _FMT.unpack_from(buf, offset)
    version = vf >> 4
    if version != MFS_VERSION:
        raise MalformedHeader(f"version={version}, expected {MFS_VERSION}")
    if stage not in VALID_STAGES:
        raise MalformedHeader(f"stage={stage} is not one of {VALID_STAGES}")
    return MfsHeader(
        stage=stage,
        flow_id=flow_id,
        request_id=request_id,
        target_layer=target_layer,
        rli=rli,
        proposed=proposed if vf & FLAG_PROPOSED else None,
        last=bool(vf & FLAG_LAST),
        version=version,
    )


class Stamper:
    """Hot-path encoder: one pre-built header per transfer, patched in place.

    ``stamp_into(buf)`` writes the 16 header bytes at the start of ``buf``
    (a bytearray/memoryview of the UDP payload); only the flags byte changes
    between packets of one message, so it costs one slice assignment.
    """

    __slots__ = ("_hdr", "_hdr_last")

    def __init__(self, header: MfsHeader):
        self._hdr = pack(header.stage, header.flow_id, header.request_id, header.target_layer,
                         header.rli, header.proposed, False, header.version)
        self._hdr_last = pack(header.stage, header.flow_id, header.request_id, header.target_layer,
                              header.rli, header.proposed, True, header.version)

    @property
    def header(self) -> bytes:
        return self._hdr

    def stamp_into(self, buf, last: bool = False) -> None:
        buf[:MFS_HEADER_LEN] = self._hdr_last if last else self._hdr
