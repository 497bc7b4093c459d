"""Embedded switch forwarding rate.

1. In-process ``Pipeline.process()`` rate (packets/s) on a mix of MFS (flow-table
   hit), routed IPv4 and best-effort frames.
2. Packets/s forwarded by the ``mfs-switch`` process between two network
   namespaces, port 2 shaped (1 Gbit/s, so the shaper and the 8 strict-priority
   queues are active but the switch is the bottleneck), traffic half level 0,
   half level 7. Baseline in the same run and topology: a bare Python
   AF_PACKET forwarder (recv -> send, no pipeline), and simple_switch_grpc when
   installed (mfs.tools.find_tool) with p4src/build/mfs.json.
Needs root for (2); prints why when it skips.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DURATION = 3.0

SENDER = r"""
import socket, sys, time
sys.path.insert(0, sys.argv[1])
from mfs import header
dur = float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
hi = header.pack(3, 1) + b"h" * 48
lo = b"l" * 64
end = time.monotonic() + dur
n = 0
while time.monotonic() < end:
    for _ in range(64):
        try:
            s.sendto(hi, ("10.9.0.2", header.MFS_UDP_PORT)); s.sendto(lo, ("10.9.0.2", 9000)); n += 2
        except BlockingIOError:
            time.sleep(0.0002)
print(n)
"""

RECEIVER = r"""
import socket, select, sys, time
dur = float(sys.argv[1])
socks = []
for port in (19782, 9000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    socks.append(s)
print("listening", flush=True)
n = 0; first = last = None
end = time.monotonic() + dur
while time.monotonic() < end:
    r, _, _ = select.select(socks, [], [], 0.1)
    for s in r:
        while True:
            try:
                s.recv(2048)
            except BlockingIOError:
                break
            n += 1
            last = time.monotonic()
            if first is None:
                first = last
print(n, (last - first) if first and last and last > first else 0.0, flush=True)
"""

BARE_FORWARDER = r"""
import socket, select, sys, signal
a, b = sys.argv[1], sys.argv[2]
socks = {}
for i in (a, b):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); s.setsockopt(263, 23, 1); s.bind((i, 3))
    s.setblocking(False); socks[i] = s
peer = {socks[a].fileno(): socks[b], socks[b].fileno(): socks[a]}
by = {s.fileno(): s for s in socks.values()}
ep = select.epoll()
for fd in by: ep.register(fd, select.EPOLLIN)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("ready", flush=True)
while True:
    for fd, _ in ep.poll():
        s, o = by[fd], peer[fd]
        for _ in range(64):
            try:
                f = s.recv(65536)
            except BlockingIOError:
                break
            try:
                o.send(f)
            except OSError:
                pass
"""


def bench_process(n: int = 30000) -> float:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from mfs import header as mfsh
    from mfs.p4info import P4Schema
    from topo.embedded.pipeline import Pipeline

    schema = P4Schema.load()
    p = Pipeline(schema)
    for te in (schema.table_entry("mfs_flow", {"stage": 3, "flow_id": 1, "ingress_port": 1, "src_addr": "10.0.1.1"},
                                  "set_level", {"level": 0}),
               schema.table_entry("ipv4_lpm", {"dst_addr": ("10.0.2.0", 24)}, "route",
                                  {"port": 2, "src_mac": 1, "dst_mac": 2}),
               schema.table_entry("l2_fwd", {"dst_addr": "02:00:00:00:00:02"}, "l2_forward", {"port": 2})):
        p.write_table(1, te)
    frames = [bytes(Ether(dst="02:00:00:00:00:02") / IP(src="10.0.1.1", dst="10.0.3.1") / UDP(dport=mfsh.MFS_UDP_PORT)
                    / (mfsh.pack(3, 1) + b"x" * 48)),
              bytes(Ether(dst="02:00:00:00:00:09") / IP(dst="10.0.2.9", ttl=9) / UDP(dport=9000) / (b"y" * 64)),
              bytes(Ether(dst="02:00:00:00:00:02") / IP(dst="10.0.3.1") / UDP(dport=9000) / (b"z" * 64))]
    t0 = time.perf_counter()
    for i in range(n):
        p.process(1, frames[i % 3])
    return n / (time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(net, start_switch) -> tuple[float, int]:
    """Start a switch with start_switch(), blast h1 -> h2 for DURATION, return (received pkt/s, sent)."""
    proc = start_switch()
    rx = None
    try:
        rx = subprocess.Popen(net.cmd(2, PY, "-c", RECEIVER, str(DURATION + 1.5)), stdout=subprocess.PIPE, text=True)
        assert rx.stdout.readline().strip() == "listening"
        tx = subprocess.run(net.cmd(1, PY, "-c", SENDER, str(ROOT), str(DURATION)), capture_output=True, text=True,
                            timeout=60)
        sent = int(tx.stdout.split()[0])
        n, span = rx.stdout.readline().split()
        rx.wait(timeout=10)
        return (int(n) / DURATION), sent
    finally:
        if rx is not None and rx.poll() is None:
            rx.kill()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_netns() -> dict[str, float]:
    from finsy.proto import p4r

    from mfs.p4info import CPU_PORT, P4Schema
    from mfs.tools import find_tool
    from tests.dataplane.embedded_target import P4RTClient, update
    from topo.embedded.testnet import TwoHosts

    schema = P4Schema.load()
    entries = [schema.table_entry("l2_fwd", {"dst_addr": mac}, "l2_forward", {"port": port})
               for mac, port in (("02:00:00:09:00:01", 1), ("02:00:00:09:00:02", 2))]
    entries.append(schema.table_entry("mfs_flow", {"stage": 3, "flow_id": 1, "ingress_port": 1, "src_addr": "10.9.0.1"},
                                      "set_level", {"level": 0}))
    out: dict[str, float] = {}
    with TwoHosts() as net:
        def program(addr, device_config=b""):
            c = P4RTClient(addr, election_id=1)
            c.open()
            c.set_pipeline(schema.info, device_config=device_config)
            c.write([update(p4r.Update.INSERT, table_entry=te) for te in entries])
            c.close()

        def embedded():
            addr = f"127.0.0.1:{_free_port()}"
            p = subprocess.Popen([PY, "-m", "topo.embedded.main", "-i", f"1@{net.sw_if[1]}", "-i",
                                  f"2@{net.sw_if[2]}", "--grpc-server-addr", addr, "--port-rate", "2=1gbit",
                                  "--queue-buffer", "256", "--log-level", "warning"],
                                 cwd=ROOT, stdout=subprocess.PIPE, text=True)
            if not p.stdout.readline().startswith("ready"):
                raise RuntimeError("mfs-switch did not start")
            program(addr)
            return p

        def bare():
            p = subprocess.Popen([PY, "-c", BARE_FORWARDER, net.sw_if[1], net.sw_if[2]], stdout=subprocess.PIPE,
                                 text=True)
            p.stdout.readline()
            return p

        out["bare"], sent = _measure(net, bare)
        out["embedded"], sent_e = _measure(net, embedded)
        out["offered"] = sent_e / DURATION
        ss = find_tool("simple_switch_grpc")
        js = ROOT / "p4src" / "build" / "mfs.json"
        if ss and js.exists():
            def bmv2():
                addr = f"127.0.0.1:{_free_port()}"
                p = subprocess.Popen([ss, "-i", f"1@{net.sw_if[1]}", "-i", f"2@{net.sw_if[2]}", "--no-p4",
                                      "--device-id", "1", "--thrift-port", str(_free_port()), "--",
                                      "--grpc-server-addr", addr, "--priority-queues", "8",
                                      "--cpu-port", str(CPU_PORT)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                deadline = time.monotonic() + 20
                while True:
                    try:
                        program(addr, js.read_bytes())
                        return p
                    except Exception:
                        if time.monotonic() > deadline:
                            p.kill()
                            raise
                        time.sleep(0.5)
            out["bmv2"], _ = _measure(net, bmv2)
        else:
            print("  bmv2: skipped (simple_switch_grpc not found or p4src/build/mfs.json missing)")
    return out


def main() -> int:
    rate = bench_process()
    print(f"  in-process Pipeline.process(): {rate:,.0f} pkt/s")
    if os.geteuid() != 0:
        print("  netns forwarding: skipped (needs root for network namespaces)")
        return 0
    r = bench_netns()
    print(f"  sender offered            : {r['offered']:,.0f} pkt/s (64-byte UDP payloads, half level 0, half level 7)")
    print(f"  bare AF_PACKET forwarder  : {r['bare']:,.0f} pkt/s (baseline, no pipeline)")
    print(f"  mfs-switch (1 Gbit/s shaped port, strict priority): {r['embedded']:,.0f} pkt/s "
          f"= {r['embedded'] / max(r['bare'], 1):.2f} x bare forwarder")
    if "bmv2" in r:
        print(f"  simple_switch_grpc        : {r['bmv2']:,.0f} pkt/s; mfs-switch / bmv2 = "
              f"{r['embedded'] / max(r['bmv2'], 1):.2f}")
    print(f"  goal >= 20,000 pkt/s (bmv2's typical rate): {'met' if r['embedded'] >= 20000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
