"""Data plane of the embedded switch: raw AF_PACKET ports, 8 strict-priority
queues per egress port, each port shaped to a configured bit rate.

One thread runs one event loop (Python has one GIL; more threads would only
contend for it):

    loop:
        poll(sockets + wake pipe, timeout = next departure time of any shaped port)
        for each readable port: recv up to RX_BATCH frames -> Pipeline.ingress -> enqueue
        for each port with packets: while the token bucket allows, dequeue from the
            highest-priority non-empty queue (level 0 first), run Pipeline.egress
            (queue depth / delay feed the registers), send

A shaped port sends ``rate`` bits/s on average with a burst of BURST_S seconds
of traffic (at least two full frames), so late wake-ups of the loop do not lose
rate. Queues are tail-drop, ``buffer_packets`` (and optionally ``buffer_bytes``)
per queue; drops (tail drops and frames whose send failed, e.g. larger than
the interface MTU) are counted per port and level in :attr:`Dataplane.drops`.
A frame whose send fails is taken back out of ``queue_counter``: the counter
counts what left the port.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mfs import levels
from topo import netns
from topo.embedded.pipeline import CPU_PORT, Pipeline, stat_index

log = logging.getLogger("mfs.switch.dataplane")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20: never read our own transmissions
RX_BATCH = 64
MAX_FRAME = 65536
BURST_S = 0.002


class PcapWriter:
    """Minimal pcap (LINKTYPE_ETHERNET) writer, like bmv2's --pcap files."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, MAX_FRAME, 1))

    def write(self, frame: bytes) -> None:
        t = time.time()
        self.f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
        self.f.write(frame)

    def close(self) -> None:
        self.f.close()


def disable_offloads(ifname: str) -> bool:
    """Checksum and segmentation offloads of ``ifname`` off (SIOCETHTOOL, no ethtool binary needed),
    so frames are real-sized and carry full checksums. False (and a warning naming why) when not."""
    try:
        netns.offloads_off(ifname)
        return True
    except netns.NetError as e:
        log.warning("%s", e)
        return False


@dataclass
class Port:
    number: int
    ifname: str
    sock: socket.socket
    rate_bps: float | None  # None: line rate (no shaping)
    queues: list = field(default_factory=lambda: [collections.deque() for _ in range(levels.NUM_QUEUES)])
    qbytes: list = field(default_factory=lambda: [0] * levels.NUM_QUEUES)
    backlog: int = 0
    next_free: float = 0.0
    burst_s: float = BURST_S
    rx: int = 0
    tx: int = 0
    tx_bytes: int = 0
    pcap_in: PcapWriter | None = None
    pcap_out: PcapWriter | None = None


class Dataplane:
    def __init__(self, switch: Pipeline, ports: dict[int, str], port_rates: dict[int, float] | None = None,
                 buffer_packets: int = 64, buffer_bytes: int | None = None, pcap_dir: str | Path | None = None,
                 offloads_off: bool = True):
        if buffer_packets < 1:
            raise ValueError(f"buffer_packets must be >= 1, got {buffer_packets}")
        self.switch = switch
        self.buffer_packets = buffer_packets
        self.buffer_bytes = buffer_bytes
        port_rates = dict(port_rates or {})
        unknown = sorted(set(port_rates) - set(ports))
        if unknown:
            raise ValueError(f"port rate given for unknown port(s) {unknown} (ports: {sorted(ports)})")
        self.ports: dict[int, Port] = {}
        self.drops: dict[int, list[int]] = {}
        try:
            for num, ifname in sorted(ports.items()):
                if not 0 <= num < CPU_PORT:
                    raise ValueError(f"port number {num} not in 0..{CPU_PORT - 1} "
                                     f"({CPU_PORT} is the CPU port, 511 the drop port)")
                if offloads_off:
                    disable_offloads(ifname)
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                try:
                    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                    s.bind((ifname, ETH_P_ALL))
                except OSError as e:
                    s.close()
                    raise OSError(e.errno, f"port {num}: cannot bind to interface {ifname!r}: {e.strerror}") from None
                s.setblocking(False)
                rate = port_rates.get(num)
                if rate is not None and rate <= 0:
                    raise ValueError(f"port {num}: rate must be > 0 bit/s, got {rate}")
                p = Port(num, ifname, s, rate)
                if rate:
                    p.burst_s = max(BURST_S, 2 * 1514 * 8 / rate)
                if pcap_dir:
                    d = Path(pcap_dir)
                    d.mkdir(parents=True, exist_ok=True)
                    p.pcap_in, p.pcap_out = PcapWriter(d / f"{num}_in.pcap"), PcapWriter(d / f"{num}_out.pcap")
                self.ports[num] = p
                self.drops[num] = [0] * levels.NUM_QUEUES
        except Exception:
            self._close_ports()
            raise
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._run, name="dataplane", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        if self._stop:
            return
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._close_ports()

    def _close_ports(self) -> None:
        for p in self.ports.values():
            p.sock.close()
            for w in (p.pcap_in, p.pcap_out):
                if w:
                    w.close()

    def stats(self) -> dict[int, dict]:
        return {n: {"rx": p.rx, "tx": p.tx, "tx_bytes": p.tx_bytes, "backlog": p.backlog,
                    "drops": list(self.drops[n])} for n, p in self.ports.items()}

    # ------------------------------------------------------------ the loop
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug must be visible, not a silent dead switch
            log.exception("data plane loop crashed")
            raise

    def _loop(self) -> None:
        ep = select.epoll()
        by_fd = {}
        for p in self.ports.values():
            ep.register(p.sock.fileno(), select.EPOLLIN)
            by_fd[p.sock.fileno()] = p
        ep.register(self._wake_r, select.EPOLLIN)
        ingress, ports = self.switch.ingress, self.ports
        mono = time.monotonic
        while not self._stop:
            timeout = -1.0
            now = mono()
            for p in ports.values():
                if p.backlog:
                    wait = p.next_free - p.burst_s - now if p.rate_bps else 0.0
                    timeout = wait if timeout < 0 else min(timeout, wait)
            events = ep.poll(max(0.0, timeout) if timeout >= 0 else -1)
            for fd, _ev in events:
                p = by_fd.get(fd)
                if p is None:
                    continue
                sock = p.sock
                for _ in range(RX_BATCH):
                    try:
                        frame = sock.recv(MAX_FRAME)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        log.warning("port %d (%s): recv failed: %s", p.number, p.ifname, e)
                        break
                    p.rx += 1
                    if p.pcap_in:
                        p.pcap_in.write(frame)
                    t = mono()
                    for out_port, buf, level in ingress(p.number, frame):
                        self._enqueue(out_port, buf, level, t)
            self._transmit(mono())

    def _enqueue(self, port: int, buf: bytearray, level: int, t: float) -> None:
        p = self.ports.get(port)
        if p is None:
            return  # no such port: dropped like an unconnected bmv2 port
        q = p.queues[level]
        n = len(buf)
        if len(q) >= self.buffer_packets or (self.buffer_bytes is not None and p.qbytes[level] + n > self.buffer_bytes):
            self.drops[port][level] += 1
            return
        q.append((buf, t))
        p.qbytes[level] += n
        p.backlog += 1

    def _uncount(self, port: int, level: int, nbytes: int) -> None:
        """Take a frame that never left back out of the egress queue_counter."""
        pk, by = self.switch.counter("MfsEgress.queue_counter")
        idx = stat_index(port, level)
        if pk[idx] > 0:
            pk[idx] -= 1
            by[idx] = max(0, by[idx] - nbytes)

    def _transmit(self, now: float) -> None:
        egress = self.switch.egress
        for p in self.ports.values():
            while p.backlog:
                rate = p.rate_bps
                if rate and p.next_free - p.burst_s > now:
                    break
                for level in range(levels.NUM_QUEUES):  # strict priority: level 0 first
                    q = p.queues[level]
                    if q:
                        break
                buf, t = q.popleft()
                p.qbytes[level] -= len(buf)
                p.backlog -= 1
                out = egress(p.number, buf, level, len(q), int((now - t) * 1e6))
                if out is None:
                    continue
                if rate:
                    p.next_free = max(p.next_free, now) + len(out) * 8 / rate
                try:
                    p.sock.send(out)
                except OSError as e:  # e.g. EMSGSIZE (> MTU), ENOBUFS, interface down: the frame is lost
                    self.drops[p.number][level] += 1
                    self._uncount(p.number, level, len(out))
                    log.debug("port %d: send failed: %s", p.number, e)
                    continue
                p.tx += 1
                p.tx_bytes += len(out)
                if p.pcap_out:
                    p.pcap_out.write(bytes(out))
