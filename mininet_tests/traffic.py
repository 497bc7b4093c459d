"""Independent traffic tools for the end-to-end tests (run inside host namespaces).

    python mininet_tests/traffic.py send --dst 10.0.0.2 --flow 3:101:400:2e6 --flow 3:102:400:2e6:0.5
    python mininet_tests/traffic.py recv --out rx.json --idle 2 --max-time 60

``--flow STAGE:FLOW_ID:PACKETS:RATE_BPS[:START_S]``: paced UDP datagrams to port 19782
carrying an MFS header (mfs.header) and a sequence number. The receiver records, per
datagram, the arrival time, the flow id, the sequence number and the DSCP the switch
wrote (IP_RECVTOS), and writes them as JSON when the sender has been quiet for
``--idle`` seconds. Independent of the host agent on purpose: these tests check the
switch and the controller, not the agent.
"""

from __future__ import annotations

import argparse
import heapq
import json
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfs.header import MFS_UDP_PORT, pack  # noqa: E402

SEQ = struct.Struct("!I")


def send(dst: str, flows: list[tuple[int, int, int, float, float]], size: int) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    t0 = time.monotonic()
    heap = []  # (due time, flow index, seq)
    for i, (_, _, n, rate, start) in enumerate(flows):
        if n > 0:
            heap.append((t0 + start, i, 0))
    heapq.heapify(heap)
    bits = (size + 42) * 8  # UDP/IP/Ethernet on the wire
    hdrs = [pack(stage, fid, request_id=fid, rli=0) for stage, fid, *_ in flows]
    pad = bytes(max(0, size - 16 - SEQ.size))
    sent = [0] * len(flows)
    while heap:
        due, i, seq = heapq.heappop(heap)
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        try:
            s.sendto(hdrs[i] + SEQ.pack(seq) + pad, (dst, MFS_UDP_PORT))
            sent[i] += 1
        except OSError:
            pass
        stage, fid, n, rate, _ = flows[i]
        if seq + 1 < n:
            heapq.heappush(heap, (due + bits / rate, i, seq + 1))
    return {"sent": {str(f[1]): c for f, c in zip(flows, sent)}, "duration": time.monotonic() - t0}


def recv(idle: float, max_time: float, ready_file: str | None) -> list[list]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    s.bind(("0.0.0.0", MFS_UDP_PORT))
    s.settimeout(0.2)
    if ready_file:
        Path(ready_file).write_text("ready")
    rows: list[list] = []
    start = time.time()
    last = None
    while time.time() - start < max_time:
        try:
            data, anc, _, _ = s.recvmsg(65535, socket.CMSG_SPACE(4))
        except socket.timeout:
            if last is not None and time.time() - last > idle:
                break
            continue
        now = time.time()
        last = now
        tos = 0
        for level, typ, val in anc:
            if level == socket.IPPROTO_IP and typ == socket.IP_TOS:
                tos = val[0]
        if len(data) >= 16 + SEQ.size:
            fid = struct.unpack_from("!I", data, 4)[0]
            rows.append([now, fid, SEQ.unpack_from(data, 16)[0], tos >> 2])
    return rows


def _flow(text: str) -> tuple[int, int, int, float, float]:
    parts = text.split(":")
    if not 4 <= len(parts) <= 5:
        raise argparse.ArgumentTypeError(f"{text!r}: expected STAGE:FLOW_ID:PACKETS:RATE_BPS[:START_S]")
    try:
        return int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]), float(parts[4]) if len(parts) == 5 else 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: numbers expected in STAGE:FLOW_ID:PACKETS:RATE_BPS[:START_S]") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("send")
    a.add_argument("--dst", required=True)
    a.add_argument("--flow", type=_flow, action="append", required=True)
    a.add_argument("--size", type=int, default=500, help="UDP payload bytes")
    b = sub.add_parser("recv")
    b.add_argument("--out", required=True)
    b.add_argument("--idle", type=float, default=2.0)
    b.add_argument("--max-time", type=float, default=120.0)
    b.add_argument("--ready-file")
    args = ap.parse_args(argv)
    if args.cmd == "send":
        print(json.dumps(send(args.dst, args.flow, args.size)))
    else:
        rows = recv(args.idle, args.max_time, args.ready_file)
        Path(args.out).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
