"""The agent's transport header (carried after the MFS header) — one layout.

Data and acknowledgement datagrams of the host-agent transport::

    MFS header (16 B, mfs.header)   -- absent in DSCP mode (port DSCP_PORT)
    transport header (24 B, below)
    DATA: payload bytes   |   ACK: sack bitmap (32 B)

Transport header, network byte order::

    type:8  flags:8  chunk:16  transfer_id:32  offset:64  total:64

* ``type``: 1 = DATA, 2 = ACK.
* ``chunk``: payload bytes per DATA datagram of this transfer (all but the last are full).
* ``transfer_id``: the flow id (unique per sending host; receivers key by source address + id).
* ``offset``: DATA: byte offset of the payload; ACK: cumulative bytes received in order.
* ``total``: size of the whole transfer in bytes.
* ACK bitmap (256 bits, little-endian integer): bit ``i`` set = chunk ``offset/chunk + 1 + i``
  has arrived (selective ack). Windows up to 256 chunks are fully covered.
"""

from __future__ import annotations

import struct

from mfs.header import MFS_UDP_PORT

DSCP_PORT = MFS_UDP_PORT + 1  # 19783: agent traffic without the shim, classified by DSCP
T_DATA = 1
T_ACK = 2
TH = struct.Struct("!BBHIQQ")
TH_LEN = TH.size  # 24
SACK_BYTES = 32
SACK_BITS = 8 * SACK_BYTES


class MalformedTransport(ValueError):
    """A datagram's transport header is invalid; the message names the field."""


def parse(buf, offset: int = 0) -> tuple[int, int, int, int, int]:
    """(type, chunk, transfer_id, offset, total); raises MalformedTransport."""
    if len(buf) - offset < TH_LEN:
        raise MalformedTransport(f"truncated transport header: {len(buf) - offset} bytes, need {TH_LEN}")
    typ, _flags, chunk, tid, off, total = TH.unpack_from(buf, offset)
    if typ not in (T_DATA, T_ACK):
        raise MalformedTransport(f"type={typ} is not DATA(1) or ACK(2)")
    if chunk == 0:
        raise MalformedTransport("chunk=0")
    if off > total:
        raise MalformedTransport(f"offset={off} > total={total}")
    return typ, chunk, tid, off, total
