"""A hostile host and a legitimate one, for the soak test and the benchmark (issue 10).

The hostile host holds a valid token and uses it against the others, as found in the
issue: floods of ``request_start`` + ``batch`` events in maximal batches (beyond its rate
limit), re-registering to refill its bucket, filling the flow table, layer state for
requests never started, replaying the legitimate host's request ids (start with a past
deadline, layer boundaries, end), events on the other host's flow ids, garbage bytes,
and idle TCP connections. Run each host as its own process (``python -m controller.hostile
--role hostile|legit``, :func:`spawn`) so its client work does not share the controller's
interpreter (its GIL) — as real hosts do not.

The legitimate host reports a steady stream of small batches (flow starts, progress,
layer boundaries, flow ends of its own requests) and measures each Report's latency: the
ack returns after the batch's entries are written, so it is report->installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import time

import grpc

from mfs.proto import report_pb2 as pb
from mfs.proto import report_pb2_grpc as pbg


class _Seq:
    def __init__(self, start: int = 0):
        self.n = start

    def ev(self, **kind) -> pb.Event:
        self.n += 1
        return pb.Event(seq=self.n, time=time.time(), **kind)


async def hostile(target: str, host: str, token: str, address: str, duration: float, victim_base: int,
                  victim_requests: int = 64, idle_connections: int = 32, in_flight: int = 16, seed: int = 1) -> dict:
    """Attack for ``duration`` seconds; returns counts of what it tried and how it was answered."""
    rng = random.Random(seed)
    stats: dict[str, int] = {}

    def count(k: str, n: int = 1) -> None:
        stats[k] = stats.get(k, 0) + n
    host_, port = target.rsplit(":", 1)
    idle = []
    for _ in range(idle_connections):  # connections that never speak HTTP/2
        try:
            idle.append(socket.create_connection((host_, int(port)), timeout=2))
        except OSError:
            count("idle_refused")
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.HostReportsStub(ch)
        raw = ch.unary_unary("/mfs.report.v1.HostReports/Report")
        reg = await stub.Register(pb.RegisterRequest(host=host, token=token, address=address))
        seq = _Seq(reg.last_seq)
        base = reg.flow_id_base
        end = time.monotonic() + duration
        slots = asyncio.Semaphore(in_flight)
        tasks: set[asyncio.Future] = set()

        async def report(session: str, evs: list) -> None:
            try:
                ack = await stub.Report(pb.ReportBatch(session=session, events=evs), timeout=10)
                count("batches_applied")
                count("events_rejected", len(ack.rejected))
            except grpc.aio.AioRpcError as e:
                count(f"report_{e.code().name}")
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(0.01)
            finally:
                slots.release()
        rid = 1_000_000
        fid = 0
        i = 0
        while time.monotonic() < end:
            i += 1
            now = time.time()
            k = 4 if i % 50 == 0 else (0, 1, 2, 3, 5)[(i - 1) % 5]  # the flood first
            if k == 0:  # the freeze of item 1: many request_start + batch events in maximal batches
                evs = []
                for _ in range(2500):
                    rid += 1
                    evs.append(seq.ev(request_start=pb.RequestStart(
                        request_id=rid, batch_id=rid, deadline=now + 30, arrival=now, num_layers=32,
                        remaining_compute=1.0)))
                    evs.append(seq.ev(batch=pb.BatchEvent(batch_id=rid, kind="arrival")))
            elif k == 1:  # fill the flow table
                evs = []
                for _ in range(3000):
                    fid = (fid + 1) % (1 << reg.flow_id_bits)
                    evs.append(seq.ev(flow_start=pb.FlowStart(flow_id=base + fid, stage=rng.choice((1, 2, 3)),
                                                              request_id=rid, size_bytes=10**9, target_layer=1)))
            elif k == 2:  # layer state for requests never started
                evs = [seq.ev(layer=pb.LayerBoundary(request_id=10**9 + rng.randrange(10**6), current_layer=1))
                       for _ in range(3000)]
            elif k == 3:  # the victim's requests and flows
                past = now - 600
                evs = []
                for r in range(victim_requests):
                    evs.append(seq.ev(request_start=pb.RequestStart(request_id=r, batch_id=r, deadline=past,
                                                                    arrival=past - 1, num_layers=32)))
                    evs.append(seq.ev(layer=pb.LayerBoundary(request_id=r, current_layer=32, prefill_done=True)))
                    evs.append(seq.ev(request_end=pb.RequestEnd(request_id=r)))
                    evs.append(seq.ev(flow_end=pb.FlowEnd(flow_id=victim_base + r)))
            elif k == 4:  # every 50th: register again, hoping for a full bucket
                try:
                    reg = await stub.Register(pb.RegisterRequest(host=host, token=token, address=address))
                    count("registers")
                except grpc.aio.AioRpcError as e:
                    count(f"register_{e.code().name}")
                continue
            else:  # garbage bytes
                for blob in (b"\xff" * 64, pb.ReportBatch(session=reg.session, events=[seq.ev()]).SerializeToString()[:-2]):
                    try:
                        await raw(blob, timeout=5)
                    except grpc.aio.AioRpcError as e:
                        count(f"garbage_{e.code().name}")
                continue
            await slots.acquire()  # up to `in_flight` Reports at once: its queue fills, its bucket empties
            tasks.add(asyncio.ensure_future(report(reg.session, evs)))
            tasks.difference_update([t for t in tasks if t.done()])
        await asyncio.gather(*tasks)
    for s in idle:
        s.close()
    return stats


async def legit(target: str, host: str, token: str, address: str, duration: float, keep: int = 40,
                period: float = 0.01, first: int = 0) -> dict:
    """Report like a serving host for ``duration`` seconds: per request a Stage-3 push and a
    Stage-1 fetch, a layer boundary, progress, and the ends — ``keep`` flows stay live at the
    end. Request ids count from ``first``, flow ids from its base + 2 * ``first`` (a second run
    of the same host must not reuse the first run's live ids). Returns the Report latencies (s),
    the live flows {(stage, flow id)}, and rejections."""
    lat: list[float] = []
    rejected: list[str] = []
    live: dict[int, int] = {}  # flow id -> stage
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.HostReportsStub(ch)
        reg = await stub.Register(pb.RegisterRequest(host=host, token=token, address=address))
        seq = _Seq(reg.last_seq)
        base = reg.flow_id_base
        end = time.monotonic() + duration
        r = first
        while time.monotonic() < end or len(live) < keep:
            now = time.time()
            f3, f1 = base + 2 * (r % 200_000), base + 2 * (r % 200_000) + 1
            batches = [[seq.ev(request_start=pb.RequestStart(request_id=r, batch_id=r, deadline=now + 5, arrival=now,
                                                             num_layers=32, remaining_compute=0.2)),
                        seq.ev(flow_start=pb.FlowStart(flow_id=f3, stage=3, request_id=r, size_bytes=4_000_000,
                                                       target_layer=0)),
                        seq.ev(flow_start=pb.FlowStart(flow_id=f1, stage=1, request_id=r, size_bytes=1_000_000,
                                                       target_layer=4, current_layer=0))],
                       [seq.ev(layer=pb.LayerBoundary(request_id=r, current_layer=4)),
                        seq.ev(progress=pb.Progress(flow_id=f1, bytes_sent=500_000))]]
            live[f3], live[f1] = 3, 1
            if len(live) > keep:  # end the oldest request's flows
                old = sorted(live)[:2]
                batches.append([seq.ev(flow_end=pb.FlowEnd(flow_id=f)) for f in old])
                for f in old:
                    del live[f]
            for evs in batches:
                t0 = time.perf_counter()
                ack = await stub.Report(pb.ReportBatch(session=reg.session, events=evs), timeout=60)
                lat.append(time.perf_counter() - t0)
                rejected.extend(x.reason for x in ack.rejected)
            r += 1
            await asyncio.sleep(period)
    return {"latency": lat, "live": {(st, f) for f, st in live.items()}, "rejected": rejected,
            "flow_id_base": base}


def spawn(target: str, duration: float, host: str = "h2", token: str = "token-of-h2", address: str = "10.0.0.2",
          victim_base: int = 0, role: str = "hostile", first: int = 0) -> subprocess.Popen:
    """A host as its own process (defaults: the hostile one, host h2 of controller.testing.config_data);
    its last stdout line is the JSON of :func:`hostile`'s counts, or of :func:`legit`'s result
    (``role="legit"``; ``live`` as a list of [stage, flow id])."""
    return subprocess.Popen([sys.executable, "-m", "controller.hostile", "--role", role, "--target", target,
                             "--host", host, "--token", token, "--address", address, "--duration", str(duration),
                             "--victim-base", str(victim_base), "--first", str(first)],
                            stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    """The JSON a spawned host printed last (it is waited for)."""
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"host process exited with {proc.returncode} and printed {out[-500:]!r}")
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="a hostile host against a controller's host API (tests, benchmark)")
    ap.add_argument("--target", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--address", required=True)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--victim-base", type=int, default=0, help="flow-id base of the host it attacks")
    ap.add_argument("--role", choices=("hostile", "legit"), default="hostile")
    ap.add_argument("--first", type=int, default=0, help="legit: first request id (flow ids from base + 2x)")
    a = ap.parse_args(argv)
    if a.role == "legit":
        r = asyncio.run(legit(a.target, a.host, a.token, a.address, a.duration, first=a.first))
        r["live"] = sorted(r["live"])
    else:
        r = asyncio.run(hostile(a.target, a.host, a.token, a.address, a.duration, a.victim_base))
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
