"""Reliable UDP transfers between host agents (one I/O thread per agent).

A *transfer* is ``total`` bytes from this agent to a peer agent, cut into
``chunk``-byte DATA datagrams. Every datagram carries the MFS header (stamped by
an ``mfs.header.Stamper`` into a reused buffer; LAST on the final chunk) and the
transport header of :mod:`hostagent.wire`. In DSCP mode the shim is left out,
the datagrams go to port ``wire.DSCP_PORT`` and the IP TOS byte carries the level.

Loss recovery (strict-priority queues tail-drop low levels, so loss is normal):

* sender window: at most ``window`` bytes of a transfer are in flight (sent, not acked);
* the receiver acks after each burst it drains (and at least every ``ack_every``
  datagrams): cumulative offset + a 64-chunk selective-ack bitmap. An ACK carries
  the transfer's own MFS header, so it is classified like its data;
* a chunk is declared lost — and queued for retransmission — when a chunk sent
  after it has been acked (RACK-style), or when it has been in flight longer than
  the retransmission timeout (RTO = srtt + 4·rttvar, 20 ms .. 1 s, doubled per
  timeout; Karn: no RTT samples from retransmitted chunks);
* completion = every byte delivered: the receiver reports ``on_received`` when its
  bitmap is full; the sender completes when the cumulative ack reaches ``total``.
  Finished receivers keep a tombstone for ``DONE_TTL`` seconds so late duplicates
  are re-acked instead of starting a new transfer.

Send order: with ``priority_queue`` the sender always serves a pending transfer
with the smallest ``rank`` (highest level) that has window room, round robin one
datagram at a time among transfers of that rank — host-side strict priority across
levels and fair sharing within one, as the simulator's sending NIC — so the NIC
queue never holds urgent data behind non-urgent data the host chose to send first.
Without it, all transfers are served round robin. ``rerank`` changes a transfer's
rank (the agent passes the controller's level from ReportAck.levels).

Pacing: ``pace(flow_id, rate)`` caps a transfer at ``rate`` payload bytes/s (the
controller's FlowLevel.rate: the policy's ``rate_limit``, e.g. Karuna's minimal
rate that meets a deadline): its datagrams (retransmissions included) leave at
most one chunk ahead of ``rate`` × time since pacing began; while it waits, the
send queue serves the next transfer (work conserving, as the simulator's
water-filling with caps). ``None`` lifts the cap.
"""

from __future__ import annotations

import errno
import os
import logging
import queue
import select
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

from mfs import header as H
from mfs.levels import default_dscp
from hostagent import wire

log = logging.getLogger("mfs.hostagent.transport")

DEFAULT_CHUNK = 1400  # payload bytes: 20 IP + 8 UDP + 16 MFS + 24 transport + 1400 = 1468 < 1500
DEFAULT_WINDOW = 128 * 1024
MIN_RTO, MAX_RTO, INIT_RTO = 0.02, 1.0, 0.1
# socket send buffer: the FIFO between the transport's pick (round robin or priority) and the wire.
# Behind a host shaped to its line rate it should be a few datagrams (a NIC's doorbell queue),
# else it holds ~100 ms of data in FIFO order whatever the transport chose ($MFS_AGENT_SNDBUF).
SNDBUF = int(os.environ.get("MFS_AGENT_SNDBUF", 4 << 20))
DONE_TTL = 30.0
ACK_EVERY = 16


@dataclass(frozen=True, slots=True)
class Delivered:
    """A transfer fully received by this agent."""

    src: str  # sender IPv4 address
    flow_id: int
    stage: int
    request_id: int
    target_layer: int
    total: int
    first_time: float  # unix seconds of the first datagram
    time: float  # unix seconds when the last missing byte arrived


@dataclass(slots=True)
class TxTransfer:
    header: H.MfsHeader
    peer: tuple[str, int]
    total: int
    chunk: int
    rank: float
    order: int
    tos: int
    on_done: Callable[["TxTransfer"], None] | None
    on_progress: Callable[["TxTransfer", int], None] | None = None
    nchunks: int = 0
    next_idx: int = 0
    acked: bytearray = field(default_factory=bytearray)
    acked_count: int = 0
    cum: int = 0  # chunks acked in order
    inflight: "OrderedDict[int, float]" = field(default_factory=OrderedDict)  # idx -> monotonic send time
    retx: deque = field(default_factory=deque)
    retx_set: set = field(default_factory=set)
    retransmitted: set = field(default_factory=set)
    packets: int = 0
    retransmits: int = 0
    srtt: float | None = None
    rttvar: float = 0.0
    rto: float = INIT_RTO
    start_time: float = 0.0
    end_time: float | None = None
    stamper: H.Stamper | None = None
    buf: bytearray | None = None
    hdr_len: int = 0
    rate: float | None = None  # pacing cap, payload bytes/s (None = unpaced)
    pace_at: float = 0.0  # monotonic time before which a paced transfer may not send

    @property
    def flow_id(self) -> int:
        return self.header.flow_id

    @property
    def done(self) -> bool:
        return self.end_time is not None

    def bytes_acked(self) -> int:
        full = self.acked_count * self.chunk
        if self.nchunks and self.acked[self.nchunks - 1]:
            full -= self.nchunks * self.chunk - self.total
        return max(0, min(self.total, full))

    def inflight_bytes(self) -> int:
        return len(self.inflight) * self.chunk

    def has_data(self, window: int) -> bool:
        return (bool(self.retx) or self.next_idx < self.nchunks) and self.inflight_bytes() < window

    def sendable(self, window: int, now: float = 0.0) -> bool:
        """Data to send, window room and (if paced) its time has come (``now``: monotonic)."""
        return self.has_data(window) and (self.rate is None or self.pace_at <= now)


@dataclass(slots=True)
class RxTransfer:
    src: tuple[str, int]
    header_bytes: bytes  # the MFS header to echo on ACKs (LAST cleared); b"" in DSCP mode
    header: H.MfsHeader | None
    tid: int
    chunk: int
    total: int
    nchunks: int
    got: bytearray
    count: int = 0
    cum: int = 0
    maxidx: int = 0
    unacked: int = 0
    first_time: float = 0.0
    done_at: float | None = None  # monotonic
    tos: int = 0


class Transport:
    """Sender and receiver of one agent; all socket I/O runs in one thread."""

    def __init__(self, address: str, port: int = H.MFS_UDP_PORT, dscp_port: int = wire.DSCP_PORT, *,
                 chunk: int = DEFAULT_CHUNK, window: int = DEFAULT_WINDOW, priority_queue: bool = False,
                 on_received: Callable[[Delivered], None] | None = None, drop_every: int = 0,
                 name: str = "agent"):
        if not 1 <= chunk <= 65000:
            raise ValueError(f"chunk={chunk} must be in 1..65000 bytes")
        if window < chunk:
            raise ValueError(f"window={window} must be at least one chunk ({chunk} bytes)")
        if drop_every < 0:
            raise ValueError(f"drop_every={drop_every} must be >= 0")
        self.address, self.chunk, self.window = address, chunk, window
        self.priority_queue = priority_queue
        self.on_received = on_received
        self.drop_every = drop_every  # test hook: drop every k-th outgoing datagram (0 = never)
        self.name = name
        self.sock = self._bind(address, port)
        self.dsock = self._bind(address, dscp_port)
        self.port = self.sock.getsockname()[1]
        self.dscp_port = self.dsock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._tx: dict[int, TxTransfer] = {}
        self._rr: deque[int] = deque()
        self._rx: dict[tuple, RxTransfer] = {}
        self._order = 0
        self._stop = False
        self._blocked = False
        self._thread: threading.Thread | None = None
        self._ackbuf = bytearray(H.MFS_HEADER_LEN + wire.TH_LEN + wire.SACK_BYTES)
        self.stats = {"tx_packets": 0, "tx_bytes": 0, "retransmits": 0, "rx_packets": 0, "rx_bytes": 0,
                      "acks_sent": 0, "acks_received": 0, "malformed": 0, "dropped_by_hook": 0,
                      "send_errors": 0, "duplicates": 0, "completed_tx": 0, "completed_rx": 0,
                      "lost_rto": 0, "lost_rack": 0}
        self._sent_count = 0

    @staticmethod
    def _bind(address: str, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt, size in ((socket.SO_RCVBUF, 4 << 20), (socket.SO_SNDBUF, SNDBUF)):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass
        try:
            s.bind((address, port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"cannot bind UDP {address}:{port}: {e.strerror}") from None
        s.setblocking(False)
        return s

    # ---- API (any thread) ------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mfs-io-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for s in (self.sock, self.dsock, self._wake_r, self._wake_w):
            s.close()

    def send(self, header: H.MfsHeader, peer: tuple[str, int], total: int, *, rank: float = 0.0,
             dscp_mode: bool = False, level: int | None = None,
             on_done: Callable[[TxTransfer], None] | None = None,
             on_progress: Callable[[TxTransfer, int], None] | None = None,
             rate: float | None = None) -> TxTransfer:
        """Queue a transfer of ``total`` bytes to ``peer`` (ip, MFS port), paced at ``rate`` bytes/s if given
        (:meth:`pace`). Returns its handle."""
        if total < 0:
            raise ValueError(f"bytes={total} must be >= 0")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate={rate!r} must be > 0 bytes/s (or None)")
        tos = default_dscp(level if level is not None else 7) << 2 if dscp_mode else 0
        if dscp_mode:
            peer = (peer[0], peer[1] + (wire.DSCP_PORT - H.MFS_UDP_PORT))
        t = TxTransfer(header=header, peer=peer, total=total, chunk=self.chunk, rank=rank, order=0, tos=tos,
                       on_done=on_done, on_progress=on_progress, rate=rate)
        t.nchunks = max(1, -(-total // self.chunk))
        t.acked = bytearray(t.nchunks)
        t.start_time = time.time()
        if not dscp_mode:
            t.stamper = H.Stamper(header)
        t.hdr_len = (0 if dscp_mode else H.MFS_HEADER_LEN) + wire.TH_LEN
        t.buf = bytearray(t.hdr_len + self.chunk)
        self._cmds.put(("send", t))
        self._wake()
        return t

    def restamp(self, flow_id: int, header: H.MfsHeader, rank: float | None = None) -> None:
        """New header fields (e.g. RLI after a layer boundary) for the not-yet-sent datagrams."""
        self._cmds.put(("restamp", flow_id, header, rank))
        self._wake()

    def rerank(self, flow_id: int, rank: float) -> None:
        """New send-queue rank for a transfer (e.g. the controller's level for it); a smaller
        rank is a promotion (its retransmission timer is reset, as for a restamp)."""
        self._cmds.put(("restamp", flow_id, None, rank))
        self._wake()

    def pace(self, flow_id: int, rate: float | None) -> None:
        """Cap a transfer at ``rate`` payload bytes/s (None: unpaced)."""
        if rate is not None and not rate > 0:
            raise ValueError(f"rate={rate!r} must be > 0 bytes/s (or None)")
        self._cmds.put(("pace", flow_id, rate))
        self._wake()

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the I/O thread."""
        self._cmds.put(("call", fn))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # ---- I/O thread ------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop:
                busy = self._commands()
                busy |= self._receive(self.sock, True)
                busy |= self._receive(self.dsock, False)
                self._flush_acks()
                busy |= self._send_some(128)
                next_timer = self._timers()
                if not busy:
                    wl = [self.sock, self.dsock] if self._blocked else []
                    timeout = max(0.0005, min(0.05, next_timer - time.monotonic()))
                    r, w, _ = select.select([self.sock, self.dsock, self._wake_r], wl, [], timeout)
                    if w:
                        self._blocked = False
                    if self._wake_r in r:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
        except Exception:  # pragma: no cover - a bug; make it visible
            log.exception("%s: transport I/O thread died", self.name)
            raise

    def _commands(self) -> bool:
        busy = False
        while True:
            try:
                cmd = self._cmds.get_nowait()
            except queue.Empty:
                return busy
            busy = True
            if cmd[0] == "send":
                t = cmd[1]
                self._order += 1
                t.order = self._order
                self._tx[t.flow_id] = t
                self._rr.append(t.flow_id)
            elif cmd[0] == "restamp":
                _, fid, hdr, rank = cmd
                t = self._tx.get(fid)
                if t is not None:
                    if (hdr is not None and hdr.rli < t.header.rli) or (rank is not None and rank < t.rank):
                        # promoted: its datagrams still queued at the old (deferred) level would hold the
                        # window for a backed-off RTO (up to 1 s); forget the RTT learnt while deferred
                        # so they are declared lost after MIN_RTO and resent at the new level
                        t.srtt, t.rttvar, t.rto = None, 0.0, MIN_RTO
                    if hdr is not None:
                        t.header = hdr
                        if t.stamper is not None:
                            t.stamper = H.Stamper(hdr)
                    if rank is not None:
                        t.rank = rank
            elif cmd[0] == "pace":
                _, fid, rate = cmd
                t = self._tx.get(fid)
                if t is not None:
                    if rate is not None and t.rate is None:
                        t.pace_at = time.monotonic()  # no credit from before it was paced
                    t.rate = rate
            elif cmd[0] == "call":
                cmd[1]()

    def _sendto(self, sock: socket.socket, data, addr, tos: int = 0) -> bool:
        self._sent_count += 1
        if self.drop_every and self._sent_count % self.drop_every == 0:
            self.stats["dropped_by_hook"] += 1
            return True
        try:
            if tos:
                sock.sendmsg([data], [(socket.IPPROTO_IP, socket.IP_TOS, struct.pack("i", tos))], 0, addr)
            else:
                sock.sendto(data, addr)
            return True
        except BlockingIOError:
            self._sent_count -= 1
            self._blocked = True
            return False
        except OSError as e:
            # ENOBUFS/ECONNREFUSED/EHOSTUNREACH...: the datagram is lost; recovery retransmits it
            self.stats["send_errors"] += 1
            if e.errno not in (errno.ENOBUFS, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                               errno.EPERM, errno.EMSGSIZE):
                log.warning("%s: sendto %s: %s", self.name, addr, e)
            return True

    def _pick(self) -> TxTransfer | None:
        now = time.monotonic()
        if self.priority_queue:
            best, at = None, -1
            for i, fid in enumerate(self._rr):
                t = self._tx.get(fid)
                if t is not None and t.sendable(self.window, now) and (best is None or t.rank < best.rank):
                    best, at = t, i
            if best is not None:
                self._rr.rotate(-(at + 1))  # the chosen one goes last: round robin within its rank
            return best
        for _ in range(len(self._rr)):
            fid = self._rr[0]
            self._rr.rotate(-1)
            t = self._tx.get(fid)
            if t is not None and t.sendable(self.window, now):
                return t
        return None

    def _send_some(self, budget: int) -> bool:
        sent = False
        while budget > 0 and not self._blocked:
            t = self._pick()
            if t is None:
                break
            if t.retx:
                idx = t.retx.popleft()
                t.retx_set.discard(idx)
                if t.acked[idx]:
                    continue
                t.retransmits += 1
                self.stats["retransmits"] += 1
                t.retransmitted.add(idx)
            else:
                idx = t.next_idx
            if not self._send_chunk(t, idx):
                if idx != t.next_idx:
                    t.retx.appendleft(idx)
                    t.retx_set.add(idx)
                break
            if idx == t.next_idx:
                t.next_idx += 1
            t.inflight.pop(idx, None)
            t.inflight[idx] = now = time.monotonic()
            if t.rate is not None:  # one chunk of credit at most: the next datagram n/rate later
                t.pace_at = max(t.pace_at, now - t.chunk / t.rate) + min(t.chunk, t.total - idx * t.chunk) / t.rate
            sent = True
            budget -= 1
        return sent

    def _send_chunk(self, t: TxTransfer, idx: int) -> bool:
        off = idx * t.chunk
        n = min(t.chunk, t.total - off)
        buf = t.buf
        last = idx == t.nchunks - 1
        if t.stamper is not None:
            t.stamper.stamp_into(buf, last)
            wire.TH.pack_into(buf, H.MFS_HEADER_LEN, wire.T_DATA, 0, t.chunk, t.flow_id, off, t.total)
            sock = self.sock
        else:
            wire.TH.pack_into(buf, 0, wire.T_DATA, 0, t.chunk, t.flow_id, off, t.total)
            sock = self.dsock
        end = t.hdr_len + n
        if not self._sendto(sock, memoryview(buf)[:end], t.peer, t.tos):
            return False
        t.packets += 1
        self.stats["tx_packets"] += 1
        self.stats["tx_bytes"] += end
        return True

    def _timers(self) -> float:
        """Retransmit timed-out chunks; return the monotonic time of the next expiry."""
        now = time.monotonic()
        nxt = now + 0.05
        for t in self._tx.values():
            if t.rate is not None and t.pace_at > now and t.has_data(self.window):
                nxt = min(nxt, t.pace_at)  # a paced transfer's next datagram
            if not t.inflight:
                continue
            _, sent = next(iter(t.inflight.items()))
            due = sent + t.rto
            if due <= now:  # every chunk older than one RTO is lost; back off once
                expired = [i for i, s in t.inflight.items() if s + t.rto <= now]
                for i in expired:
                    del t.inflight[i]
                    if i not in t.retx_set and not t.acked[i]:
                        self.stats["lost_rto"] += 1
                        t.retx.append(i)
                        t.retx_set.add(i)
                t.rto = min(MAX_RTO, t.rto * 2)
                nxt = now
            else:
                nxt = min(nxt, due)
        tomb = [k for k, r in self._rx.items() if r.done_at is not None and now - r.done_at > DONE_TTL]
        for k in tomb:
            del self._rx[k]
        return nxt

    def _receive(self, sock: socket.socket, shim: bool) -> bool:
        got = False
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP errors surfaced on the socket (peer not listening yet)
                continue
            got = True
            self.stats["rx_packets"] += 1
            self.stats["rx_bytes"] += len(data)
            off = H.MFS_HEADER_LEN if shim else 0
            try:
                typ, chunk, tid, offset, total = wire.parse(data, off)
            except wire.MalformedTransport:
                self.stats["malformed"] += 1
                continue
            if typ == wire.T_DATA:
                self._on_data(data, addr, shim, chunk, tid, offset, total)
            else:
                self._on_ack(data, off, tid, offset)
        return got

    def _on_data(self, data: bytes, addr, shim: bool, chunk: int, tid: int, offset: int, total: int) -> None:
        key = (addr, tid, shim)
        r = self._rx.get(key)
        if r is None or (r.done_at is not None and r.total != total):
            hdr = None
            hb = b""
            if shim:
                try:
                    hdr = H.unpack(data)
                except H.MalformedHeader:
                    self.stats["malformed"] += 1
                    return
                hb = bytes([data[0] & ~H.FLAG_LAST & 0xFF]) + data[1:H.MFS_HEADER_LEN]
            n = max(1, -(-total // chunk))
            r = RxTransfer(src=addr, header_bytes=hb, header=hdr, tid=tid, chunk=chunk, total=total, nchunks=n,
                           got=bytearray(n), first_time=time.time())
            self._rx[key] = r
        if r.done_at is None:
            if offset % chunk or chunk != r.chunk:
                self.stats["malformed"] += 1
                return
            idx = offset // chunk
            if idx >= r.nchunks:
                self.stats["malformed"] += 1
                return
            if r.got[idx]:
                self.stats["duplicates"] += 1
            else:
                r.got[idx] = 1
                r.count += 1
                if idx > r.maxidx:
                    r.maxidx = idx
                out_of_order = idx != r.cum
                while r.cum < r.nchunks and r.got[r.cum]:
                    r.cum += 1
                if out_of_order:
                    r.unacked = ACK_EVERY  # ack now: the sender learns about the hole quickly
            r.unacked += 1
            if r.count == r.nchunks:
                r.done_at = time.monotonic()
                self.stats["completed_rx"] += 1
                self._send_ack(r)
                if self.on_received is not None and r.header is not None:
                    h = r.header
                    self._deliver(Delivered(addr[0], h.flow_id, h.stage, h.request_id, h.target_layer, r.total,
                                            r.first_time, time.time()))
                elif self.on_received is not None:
                    self._deliver(Delivered(addr[0], tid, 0, 0, 0, r.total, r.first_time, time.time()))
            elif r.unacked >= ACK_EVERY:
                self._send_ack(r)
        else:
            self.stats["duplicates"] += 1
            r.unacked += 1  # re-ack a finished transfer (our final ACK was lost)

    def _deliver(self, d: Delivered) -> None:
        try:
            self.on_received(d)
        except Exception:
            log.exception("%s: on_received callback failed", self.name)

    def _flush_acks(self) -> None:
        for r in self._rx.values():
            if r.unacked:
                self._send_ack(r)

    def _send_ack(self, r: RxTransfer) -> None:
        r.unacked = 0
        bits = 0
        base = r.cum + 1
        got = r.got
        for j in range(base, min(r.nchunks, base + wire.SACK_BITS, r.maxidx + 1)):
            if got[j]:
                bits |= 1 << (j - base)
        cum_bytes = min(r.total, r.cum * r.chunk)
        buf = self._ackbuf
        hl = len(r.header_bytes)
        if hl:
            buf[:hl] = r.header_bytes
        wire.TH.pack_into(buf, hl, wire.T_ACK, 0, r.chunk, r.tid, cum_bytes, r.total)
        buf[hl + wire.TH_LEN:hl + wire.TH_LEN + wire.SACK_BYTES] = bits.to_bytes(wire.SACK_BYTES, "little")
        sock = self.sock if hl else self.dsock
        if self._sendto(sock, memoryview(buf)[:hl + wire.TH_LEN + wire.SACK_BYTES], r.src, r.tos):
            self.stats["acks_sent"] += 1

    def _on_ack(self, data: bytes, off: int, tid: int, cum_bytes: int) -> None:
        self.stats["acks_received"] += 1
        t = self._tx.get(tid)
        if t is None or t.done:
            return
        sack = off + wire.TH_LEN
        if len(data) < sack + wire.SACK_BYTES:
            self.stats["malformed"] += 1
            return
        bits = int.from_bytes(data[sack:sack + wire.SACK_BYTES], "little")
        cum = t.nchunks if cum_bytes >= t.total else cum_bytes // t.chunk
        newly: list[int] = []
        for idx in range(t.cum, min(cum, t.nchunks)):
            if not t.acked[idx]:
                newly.append(idx)
        i = 0
        while bits:
            if bits & 1:
                j = cum + 1 + i
                if j < t.nchunks and not t.acked[j]:
                    newly.append(j)
            bits >>= 1
            i += 1
        now = time.monotonic()
        latest_sent = None
        for idx in newly:
            t.acked[idx] = 1
            t.acked_count += 1
            sent = t.inflight.pop(idx, None)
            if sent is not None:
                if latest_sent is None or sent > latest_sent:
                    latest_sent = sent
                if idx not in t.retransmitted:
                    self._rtt_sample(t, now - sent)
        if newly:
            t.rto = max(MIN_RTO, min(MAX_RTO, t.srtt + 4 * t.rttvar)) if t.srtt is not None else t.rto
        while t.cum < t.nchunks and t.acked[t.cum]:
            t.cum += 1
        if latest_sent is not None:
            # RACK: anything sent before a chunk that has been acked is lost
            lost = [idx for idx, s in t.inflight.items() if s < latest_sent]
            for idx in lost:
                del t.inflight[idx]
                if idx not in t.retx_set:
                    self.stats["lost_rack"] += 1
                    t.retx.append(idx)
                    t.retx_set.add(idx)
        if newly and t.on_progress is not None:
            try:
                t.on_progress(t, t.bytes_acked())
            except Exception:
                log.exception("%s: on_progress callback failed", self.name)
        if t.acked_count == t.nchunks:
            t.end_time = time.time()
            self.stats["completed_tx"] += 1
            del self._tx[t.flow_id]
            try:
                self._rr.remove(t.flow_id)
            except ValueError:
                pass
            if t.on_done is not None:
                try:
                    t.on_done(t)
                except Exception:
                    log.exception("%s: on_done callback failed", self.name)

    @staticmethod
    def _rtt_sample(t: TxTransfer, rtt: float) -> None:
        if t.srtt is None:
            t.srtt, t.rttvar = rtt, rtt / 2
        else:
            t.rttvar = 0.75 * t.rttvar + 0.25 * abs(t.srtt - rtt)
            t.srtt = 0.875 * t.srtt + 0.125 * rtt

    def pending(self) -> int:
        return len(self._tx)
