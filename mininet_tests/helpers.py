"""Shared pieces of the end-to-end tests: target selection, traffic runs, direct P4Runtime writes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfs.p4info import bmv2_unavailable
from topo.net import BMV2_JSON, DEFAULT_P4INFO, Network

TRAFFIC = str(Path(__file__).resolve().parent / "traffic.py")
TARGETS = [pytest.param("embedded", id="embedded"),
           pytest.param("bmv2", id="bmv2", marks=pytest.mark.bmv2)]


def require_target(target: str, shared_bottleneck: bool = True) -> None:
    """Skip (with the reason) when ``target`` cannot run this test: bmv2 absent, or the test
    needs strict priority behind a shared rate-limited port, which bmv2 cannot emulate."""
    if target == "bmv2" and (why := bmv2_unavailable(BMV2_JSON)):
        pytest.skip(f"bmv2: {why}")
    if target == "bmv2" and shared_bottleneck:
        pytest.skip("bmv2 cannot emulate strict priority on a rate-limited port (per-queue pps rates, "
                    "docs/emulation.md 'bmv2 rate caveat'); this test needs a shared bottleneck")


def flow_arg(stage: int, fid: int, packets: int, rate_bps: float, start: float = 0.0) -> str:
    return f"{stage}:{fid}:{packets}:{rate_bps:g}:{start:g}"


def run_traffic(net: Network, src: str, dst: str, flows: list[str], tmp: Path, size: int = 500,
                during=None, idle: float = 2.0) -> list[list]:
    """Start a receiver on ``dst``, send ``flows`` from ``src``; return rows [t, flow_id, seq, dscp].

    ``during(t_send_start)`` is called (in this process) while the sender runs.
    """
    out, ready = tmp / f"rx-{time.monotonic_ns()}.json", tmp / f"ready-{time.monotonic_ns()}"
    rx = net.host_popen(dst, [sys.executable, TRAFFIC, "recv", "--out", str(out), "--idle", str(idle),
                              "--max-time", "150", "--ready-file", str(ready)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 20
        while not ready.exists():
            assert rx.poll() is None, rx.stderr.read().decode()
            assert time.monotonic() < end, "receiver did not start"
            time.sleep(0.05)
        cmd = [sys.executable, TRAFFIC, "send", "--dst", net.ip(dst), "--size", str(size)]
        for f in flows:
            cmd += ["--flow", f]
        t_send = time.time()
        tx = net.host_popen(src, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if during is not None:
            during(t_send)
        _, err = tx.communicate(timeout=150)
        assert tx.returncode == 0, err.decode()
        rx.wait(timeout=160)
        assert rx.returncode == 0, rx.stderr.read().decode()
        return json.loads(out.read_text())
    finally:
        for p in (rx,):
            if p.poll() is None:
                p.kill()
                p.wait()


def by_flow(rows: list[list], fid: int) -> list[list]:
    return [r for r in rows if r[1] == fid]


def span(rows: list[list]) -> float:
    return rows[-1][0] - rows[0][0] if len(rows) > 1 else 0.0


def write_levels(net: Network, sw: str, levels: dict[tuple[int, int], int], kind: str = "insert",
                 election_id: int = 1, src: str = "h1") -> float:
    """Insert/modify ``mfs_flow`` entries {(stage, flow_id): level} directly; returns the time the write returned.
    A source-bound flow table (docs/p4-api.md revision 2) gets the sending host ``src``'s port and address."""
    from controller.p4rt.client import SwitchClient, update
    from mfs.p4info import P4Schema

    schema = P4Schema.load(DEFAULT_P4INFO)
    bound = {}
    fields = schema.table("MfsIngress.mfs_flow").fields
    if "ingress_port" in fields:
        bound["ingress_port"] = net.topo.next_port(sw, src)
    if "src_addr" in fields:
        bound["src_addr"] = net.ip(src)

    async def go():
        c = SwitchClient(net.grpc_addr(sw), net.topo.switches[sw].device_id, election_id=election_id)
        assert await c.open(), f"no primary session on {sw}"
        try:
            errs = await c.write([update(kind, schema.table_entry("MfsIngress.mfs_flow",
                                                                  {"stage": st, "flow_id": fid, **bound},
                                                                  "MfsIngress.set_level", {"level": lv}))
                                  for (st, fid), lv in levels.items()])
            assert not errs, errs
        finally:
            await c.close()
    asyncio.run(go())
    return time.time()
