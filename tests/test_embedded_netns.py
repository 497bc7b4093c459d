"""Strict priority on a rate-limited port, with real packets through the mfs-switch process.

h1 (netns) --veth-- [port 1  mfs-switch  port 2, shaped] --veth-- h2 (netns)

h1 sends a best-effort UDP flood (level 7 by classify_default) at twice the
port rate and an MFS flow (flow table -> level 0) at the port rate; h2 counts
what arrives. Strict priority: the MFS flow gets most of the port, the flood is
starved. Bounds are generous (the machine is shared).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from finsy.proto import p4r

from mfs.p4info import P4Schema
from tests.dataplane.embedded_target import P4RTClient, update
from topo.embedded.testnet import TwoHosts

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
RATE_BPS = 8_000_000
DURATION = 4.0

SENDER = r"""
import socket, sys, time, struct
sys.path.insert(0, sys.argv[1])
from mfs import header
dur, rate = float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = 1400
hi = header.pack(3, 1, request_id=1) + b"h" * (payload - 16)
lo = b"l" * payload
# offered loads in packets/s: high = 1x port rate, low = 2x port rate
pps_hi = rate / ((payload + 42) * 8)
pps_lo = 2 * pps_hi
t0 = time.monotonic(); n_hi = n_lo = 0
while True:
    t = time.monotonic() - t0
    if t > dur:
        break
    while n_hi < t * pps_hi:
        s.sendto(hi, ("10.9.0.2", header.MFS_UDP_PORT)); n_hi += 1
    while n_lo < t * pps_lo:
        try:
            s.sendto(lo, ("10.9.0.2", 9000)); n_lo += 1
        except BlockingIOError:
            break
    time.sleep(0.001)
print(n_hi, n_lo)
"""

RECEIVER = r"""
import socket, select, sys, time, json
dur = float(sys.argv[1])
socks = {}
for port in (19782, 9000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); s.setblocking(False)
    socks[s] = port
got = {19782: 0, 9000: 0}
print("listening", flush=True)
end = time.monotonic() + dur
while time.monotonic() < end:
    r, _, _ = select.select(list(socks), [], [], 0.1)
    for s in r:
        while True:
            try:
                got[socks[s]] += len(s.recv(65535))
            except BlockingIOError:
                break
print(json.dumps(got), flush=True)
"""


@pytest.fixture
def topo():
    with TwoHosts() as net:
        yield net


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.netns
def test_strict_priority_on_shaped_port(topo, tmp_path):
    net = topo
    s1, s2 = net.sw_if[1], net.sw_if[2]
    addr = f"127.0.0.1:{_free_port()}"
    sw = subprocess.Popen([PY, "-m", "topo.embedded.main", "--device-id", "1", "-i", f"1@{s1}", "-i", f"2@{s2}",
                           "--grpc-server-addr", addr, "--port-rate", f"2={RATE_BPS}", "--queue-buffer", "32",
                           "--log-file", str(tmp_path / "switch.log")],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
    rx = None
    try:
        assert sw.stdout.readline().startswith("ready"), "switch did not become ready"
        schema = P4Schema.load()
        c = P4RTClient(addr, election_id=1)
        assert c.open().status.code == 0
        c.set_pipeline(schema.info)
        c.write([update(p4r.Update.INSERT, table_entry=schema.table_entry(
                    "l2_fwd", {"dst_addr": mac}, "l2_forward", {"port": port}))
                 for mac, port in (("02:00:00:09:00:01", 1), ("02:00:00:09:00:02", 2))]
                + [update(p4r.Update.INSERT, table_entry=schema.table_entry(
                    "mfs_flow", {"stage": 3, "flow_id": 1}, "set_level", {"level": 0}))])
        rx = subprocess.Popen(net.cmd(2, PY, "-c", RECEIVER, str(DURATION + 1.5)),
                              stdout=subprocess.PIPE, text=True)
        assert rx.stdout.readline().strip() == "listening"
        tx = subprocess.run(net.cmd(1, PY, "-c", SENDER, str(ROOT), str(DURATION), str(RATE_BPS)),
                            capture_output=True, text=True, timeout=60)
        assert tx.returncode == 0, tx.stderr
        n_hi, n_lo = map(int, tx.stdout.split())
        got = json.loads(rx.stdout.readline())
        rx.wait(timeout=10)
        hi_bps, lo_bps = got["19782"] * 8 / DURATION, got["9000"] * 8 / DURATION
        ce = p4r.CounterEntry(counter_id=schema.counter("queue_counter").id)
        ce.index.index = 2 * 8 + 0
        (q0,) = c.read([p4r.Entity(counter_entry=ce)])
        c.close()
        print(f"sent hi={n_hi} lo={n_lo} pkts; received hi={hi_bps / 1e6:.2f} Mbit/s lo={lo_bps / 1e6:.2f} Mbit/s "
              f"on a {RATE_BPS / 1e6:.0f} Mbit/s port")
        assert n_lo > 1.5 * n_hi * 0.8, "sender could not offer the low-priority overload"
        # the high-priority flow gets most of the port although the flood offers twice as much
        assert hi_bps > 0.6 * RATE_BPS, (hi_bps, lo_bps)
        assert lo_bps < 0.25 * RATE_BPS, (hi_bps, lo_bps)
        # the shaper holds the port rate (generous: +25%)
        assert hi_bps + lo_bps < 1.25 * RATE_BPS
        assert q0.counter_entry.data.packet_count >= got["19782"] // 1400
    finally:
        if rx is not None and rx.poll() is None:
            rx.kill()
        sw.terminate()
        try:
            assert sw.wait(timeout=10) == 0, "switch did not exit cleanly on SIGTERM"
        finally:
            if sw.poll() is None:
                sw.kill()
