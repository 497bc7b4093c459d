"""Host agent: stamped packets per second, fast path vs scapy, in the same run.

Fast paths (what the agent uses): ``mfs.header.Stamper`` into a reused buffer plus
the transport header, then (a) ``sendto`` on a UDP socket, (b) ``AF_PACKET``
``send`` of a prebuilt Ethernet frame. Baselines: scapy building the same packet
with the MFS layer and sending it with ``sendp`` (L2) and ``send`` (L3).
Everything is sent out of a veth interface (peer end up, no address: frames are
dropped on arrival) inside a network namespace this
benchmark creates and removes (needs root; otherwise only the no-syscall and
loopback figures are printed). Also: end-to-end goodput of two agents on loopback.

Goal: fast path >= 10x scapy and >= 100k packets/s on one core.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mfs import header as H  # noqa: E402
from hostagent import wire  # noqa: E402

PAYLOAD = 1400
DST = "10.99.0.2"
SRC = "10.99.0.1"
IFACE = "mfsb0"


def _header() -> H.MfsHeader:
    return H.MfsHeader(stage=2, flow_id=4097, request_id=42, target_layer=7, rli=0)


def _rate(fn, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        n += fn(1000)
    return n / (time.perf_counter() - t0)


def stamp_only(seconds: float) -> float:
    st = H.Stamper(_header())
    buf = bytearray(H.MFS_HEADER_LEN + wire.TH_LEN + PAYLOAD)
    pack = wire.TH.pack_into

    def run(k):
        for i in range(k):
            st.stamp_into(buf, i == k - 1)
            pack(buf, 16, wire.T_DATA, 0, PAYLOAD, 4097, i * PAYLOAD, 1 << 30)
        return k
    return _rate(run, seconds)


def _stamp_send(seconds: float, view, send) -> float:
    """Packets/s of: stamp the MFS header + transport header into ``view`` in place, then ``send()``."""
    st = H.Stamper(_header())
    pack = wire.TH.pack_into

    def run(k):
        for i in range(k):
            st.stamp_into(view, False)
            pack(view, 16, wire.T_DATA, 0, PAYLOAD, 4097, i * PAYLOAD, 1 << 30)
            try:
                send()
            except OSError:  # ENOBUFS from a full queue: the packet was still stamped and handed over
                pass
        return k
    return _rate(run, seconds)


def udp_fast(seconds: float, dst: tuple[str, int]) -> float:
    buf = bytearray(H.MFS_HEADER_LEN + wire.TH_LEN + PAYLOAD)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return _stamp_send(seconds, buf, lambda: s.sendto(buf, dst))


def _frame_prefix() -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=SRC, dst=DST) / \
        UDP(sport=H.MFS_UDP_PORT, dport=H.MFS_UDP_PORT, chksum=0) / bytes(H.MFS_HEADER_LEN + wire.TH_LEN + PAYLOAD)
    return bytes(pkt)


def packet_fast(seconds: float) -> float:
    frame = bytearray(_frame_prefix())
    off = len(frame) - (H.MFS_HEADER_LEN + wire.TH_LEN + PAYLOAD)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((IFACE, 0))
        return _stamp_send(seconds, memoryview(frame)[off:], lambda: s.send(frame))


def _scapy_packets(n: int, l2: bool):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from hostagent.scapy_mfs import MFS, MFSTransport
    out = []
    for i in range(n):
        p = IP(src=SRC, dst=DST) / UDP(sport=H.MFS_UDP_PORT, dport=H.MFS_UDP_PORT) / \
            MFS(stage=2, flow_id=4097, request_id=42, target_layer=7, rli=0) / \
            MFSTransport(type=1, chunk=PAYLOAD, transfer_id=4097, offset=i * PAYLOAD, total=1 << 30) / \
            (b"\0" * PAYLOAD)
        out.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p if l2 else p)
    return out


def scapy_rate(n: int, l2: bool) -> float:
    from scapy.config import conf
    from scapy.sendrecv import send, sendp
    from scapy.supersocket import L3RawSocket
    conf.L3socket = L3RawSocket  # kernel routing and neighbour table (scapy's own ARP would stall)
    t0 = time.perf_counter()
    pkts = _scapy_packets(n, l2)  # building and stamping is part of scapy's per-packet cost
    if l2:
        sendp(pkts, iface=IFACE, verbose=False)
    else:
        send(pkts, verbose=False)  # routed out of IFACE (the only route to DST)
    return n / (time.perf_counter() - t0)


def agents_goodput(nbytes: int = 20_000_000) -> float:
    from hostagent.agent import AgentConfig, HostAgent
    from hostagent.testing import loopback_addresses
    a_ip, b_ip = loopback_addresses(2)
    a = HostAgent(AgentConfig("bench-a", a_ip)).start()
    b = HostAgent(AgentConfig("bench-b", b_ip)).start()
    try:
        t0 = time.perf_counter()
        a.submit(2, b_ip, nbytes, request_id=1).wait(120)
        return nbytes * 8 / (time.perf_counter() - t0)
    finally:
        a.close()
        b.close()


def worker() -> None:
    """Runs inside the benchmark namespace; prints one JSON object."""
    out = {"udp_fast": udp_fast(1.5, (DST, H.MFS_UDP_PORT)), "packet_fast": packet_fast(1.5),
           "scapy_sendp": scapy_rate(3000, True), "scapy_send": scapy_rate(3000, False)}
    print(json.dumps(out))


def _netns_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: cannot create a network namespace"
    if not shutil.which("ip"):
        return "iproute2 (ip) not installed"
    return None


def _in_netns() -> dict | str:
    ns = f"mfsbench{os.getpid()}"
    sh = lambda *a: subprocess.run(["ip", *a], capture_output=True, text=True, check=True)  # noqa: E731
    try:
        sh("netns", "add", ns)
        for cmd in (["link", "add", IFACE, "type", "veth", "peer", "name", IFACE + "p"],
                    ["addr", "add", f"{SRC}/24", "dev", IFACE], ["link", "set", IFACE, "up"],
                    ["link", "set", IFACE + "p", "up"], ["link", "set", "lo", "up"],
                    ["neigh", "add", DST, "lladdr", "02:00:00:00:00:02", "dev", IFACE]):
            sh("-n", ns, *cmd)
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.bench_hostagent", "--worker"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if r.returncode != 0:
            return f"worker failed: {r.stderr.strip()[-400:]}"
        return json.loads(r.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return "worker did not finish within 120 s"
    except subprocess.CalledProcessError as e:
        return f"namespace setup failed: {' '.join(e.cmd)}: {e.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> int:
    stamp = stamp_only(1.0)
    print(f"stamp only (Stamper + transport header, no syscall): {stamp:,.0f} packets/s")
    reason = _netns_reason()
    res = reason if reason else _in_netns()
    if isinstance(res, str):
        print(f"send paths skipped: {res}")
        fast = None
    else:
        print(f"fast path, UDP sendto on a veth:              {res['udp_fast']:,.0f} packets/s")
        print(f"fast path, AF_PACKET prebuilt frame:           {res['packet_fast']:,.0f} packets/s")
        print(f"scapy sendp (L2, build + MFS layer + send):     {res['scapy_sendp']:,.0f} packets/s")
        print(f"scapy send  (L3, build + MFS layer + send):     {res['scapy_send']:,.0f} packets/s")
        fast = max(res["udp_fast"], res["packet_fast"])
        base = max(res["scapy_sendp"], res["scapy_send"])
        print(f"ratio fast / best scapy: {fast / base:.1f}x  (UDP {res['udp_fast'] / base:.1f}x, "
              f"AF_PACKET {res['packet_fast'] / base:.1f}x; goal >= 10x)")
        print(f"goal >= 100k packets/s on one core: {'met' if fast >= 100_000 else 'NOT met'} ({fast:,.0f})")
        print(f"1 Gb/s of {PAYLOAD}-byte payloads needs {1e9 / 8 / (PAYLOAD + 68):,.0f} packets/s")
    gp = agents_goodput()
    print(f"agent to agent on loopback (transport, acks, one 20 MB transfer): {gp / 1e6:,.0f} Mb/s goodput")
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        raise SystemExit(main())
