"""Hostile host reports to the controller's HostReports API (docs/report-api.md).

A real controller and a real embedded switch on loopback. Seeded random hostile
events (NaN/inf/negative values, bad stages and layers, foreign flow ids,
duplicated and out-of-order seqs, unknown flows and requests), floods from one
host while another must still be applied promptly, a host that registers
twice, stolen and forged sessions. Every event is either applied or rejected
with a documented reason and counted; no exception escapes the servicer;
nothing accepted before is lost.
"""

from __future__ import annotations

import asyncio
import math
import random
import time

import grpc
import pytest

from controller.testing import EmbeddedTarget, config_data
from mfs.proto import report_pb2 as pb
from tests.test_hostapi import Env, ev, fs, run

# the reason codes of docs/report-api.md ("Rejections")
REASONS = {"no_kind", "bad_time", "bad_stage", "bad_size", "bad_deadline", "bad_layer", "bad_bytes", "bad_dst",
           "bad_kind", "not_owner", "unknown_flow", "duplicate_flow", "unknown_request", "policy", "seq_order"}
RPC_REFUSALS = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAUTHENTICATED}
H2_BASE = 1 << 20  # config_data: flow_id_bits 20, h1 is host 0, h2 host 1


@pytest.fixture
def switch():
    t = EmbeddedTarget()
    yield t
    t.stop()


class SwitchEnv(Env):
    """Env of tests/test_hostapi.py, but with a real embedded switch behind the controller."""

    def __init__(self, address: str, **over):
        super().__init__(switches=config_data([address])["switches"], **over)

    async def __aenter__(self):
        await super().__aenter__()
        await self.c.engine.wait_ready(15)
        return self


def installed(t: EmbeddedTarget) -> dict[tuple[int, int], int]:
    """(stage, flow_id) -> level (the key's ingress_port/src_addr are the owner's, not checked here)."""
    return {k[:2]: e.params["level"] for k, e in t.handle.switch.entries["MfsIngress.mfs_flow"].items()}


def hostile_event(rng: random.Random, seq: int, base: int, now: float) -> pb.Event:
    """One event of a random kind with field values drawn from valid and hostile ones."""
    pick = rng.choice
    fid = pick([base + rng.randrange(64), base + rng.randrange(64), base + (1 << 20), H2_BASE + 3, 0, 2**32 - 1])
    t = pick([now, now, now, math.nan, math.inf, -1.0])
    deadline = pick([0.0, now + 5, math.nan, math.inf, -math.inf, -1.0, now - 1e7, now + 1e9])
    layer = pick([0, 3, 31, -1, 10**6, -2**31])
    kind = pick(["flow_start", "flow_start", "progress", "flow_end", "layer", "request_start", "request_end",
                 "batch", None])
    e = pb.Event(seq=seq, time=t)
    rid = rng.randrange(4)
    if kind == "flow_start":
        e.flow_start.CopyFrom(pb.FlowStart(
            flow_id=fid, stage=pick([1, 2, 3, 3, 0, 4, 9, 255]), request_id=rid,
            size_bytes=pick([1000, 1, 0, 2**64 - 1, 10**12]), deadline=deadline, target_layer=layer,
            current_layer=pick([0, 1, -5, 10**6]), dst=pick(["h2", "10.0.0.2", "", "x" * 300, "\0"])))
    elif kind == "progress":
        e.progress.CopyFrom(pb.Progress(flow_id=fid, bytes_sent=pick([0, 500, 1000, 1001, 2**64 - 1])))
    elif kind == "flow_end":
        e.flow_end.flow_id = fid
    elif kind == "layer":
        e.layer.CopyFrom(pb.LayerBoundary(request_id=rid, current_layer=layer, prefill_done=rng.random() < 0.5))
    elif kind == "request_start":
        e.request_start.CopyFrom(pb.RequestStart(
            request_id=rid, deadline=deadline, arrival=pick([0.0, now, math.nan, -1.0]),
            num_layers=pick([0, 1, 32, 2**32 - 1]), remaining_compute=pick([0.0, 0.5, math.nan, -1.0, 1e12]),
            remaining_bytes=pick([0, 10**6, 2**64 - 1])))
    elif kind == "request_end":
        e.request_end.request_id = rid
    elif kind == "batch":
        e.batch.CopyFrom(pb.BatchEvent(batch_id=rid, kind=pick(["arrival", "departure", "", "bogus"])))
    return e


def test_hostile_events_are_rejected_counted_and_nothing_accepted_is_lost(switch):
    async def go():
        async with SwitchEnv(switch.address) as e:
            r1 = await e.register()
            r2 = await e.register("h2", "token-of-h2", "10.0.0.2")
            keep = [H2_BASE + i for i in range(1, 6)]  # h2's flows, accepted before the storm
            ack = await e.report(r2, [ev(i + 1, flow_start=fs(f, stage=3)) for i, f in enumerate(keep)])
            assert not ack.rejected
            before = installed(switch)
            assert {(3, f) for f in keep} <= set(before)

            rng = random.Random(1234)
            seq = 0
            n_rejected = n_applied = n_dup = 0
            seen: set[str] = set()
            for _ in range(60):
                now = time.time()
                events = []
                for _ in range(rng.randrange(1, 25)):
                    r = rng.random()
                    if r < 0.1 and seq > 3:
                        s = rng.randrange(1, seq)  # a duplicate / backwards seq
                    elif r < 0.15:
                        s = seq  # repeated within the batch
                    else:
                        seq += rng.randrange(1, 3)  # gaps are allowed
                        s = seq
                    events.append(hostile_event(rng, s, 0, now))
                acked_before = e.c.hostapi.by_host["h1"].accepted_seq
                try:
                    ack = await e.report(r1, events)
                except grpc.aio.AioRpcError as err:
                    assert err.code() in RPC_REFUSALS, f"{err.code()}: {err.details()}"
                    continue
                assert ack.acked_seq >= acked_before
                for rej in ack.rejected:
                    code, _, msg = rej.reason.partition(": ")
                    assert code in REASONS, f"undocumented reason {rej.reason!r}"
                    assert msg, rej.reason
                    seen.add(code)
                n_rejected += len(ack.rejected)
                dups = sum(1 for x in events if x.seq <= acked_before)
                n_dup += dups
                n_applied += len(events) - dups - len(ack.rejected)
            assert n_rejected > 100 and n_applied > 20  # the generator reaches both sides
            assert len(seen) >= 10, f"the generator reaches few rejection reasons: {sorted(seen)}"
            counted = sum(e.rejected(r) for r in REASONS)
            assert counted == n_rejected, "every rejected event is counted once per reason"
            assert e.c.metrics.total("duplicate_events") >= n_dup

            # h2's flows survived h1's storm (h1 tried h2's ids: not_owner), on the switch too
            assert all(f in e.c.engine.flows and e.c.engine.flows[f].host == "h2" for f in keep)
            assert {(3, f) for f in keep} <= set(installed(switch))
            # the servicer and the engine are still alive: a plain report is applied and installed
            ack = await e.report(r2, [ev(10, flow_start=fs(H2_BASE + 99, stage=3))])
            assert not ack.rejected and (3, H2_BASE + 99) in installed(switch)
    run(go(), timeout=120)


def test_flood_from_one_host_does_not_delay_another(switch):
    async def go():
        async with SwitchEnv(switch.address, limits={"reports_per_s": 2000, "burst": 2000,
                                                     "max_batch_events": 500, "queue_batches": 4}) as e:
            r1 = await e.register()
            r2 = await e.register("h2", "token-of-h2", "10.0.0.2")
            stop = asyncio.Event()
            refused = applied = 0

            async def flooder(k: int):
                nonlocal refused, applied
                seq = k * 10**6
                while not stop.is_set():
                    batch = [ev(seq + i + 1, progress=pb.Progress(flow_id=7, bytes_sent=1)) for i in range(500)]
                    seq += 500
                    try:
                        await e.report(r1, batch)
                        applied += 1
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
                        refused += 1
                    await asyncio.sleep(0)

            tasks = [asyncio.create_task(flooder(k)) for k in range(1, 9)]
            await asyncio.sleep(0.5)
            try:
                t0 = time.perf_counter()
                ack = await e.report(r2, [ev(1, flow_start=fs(H2_BASE + 1, stage=3))])
                assert not ack.rejected
                deadline = time.monotonic() + 10  # generous: the machine is shared
                while (3, H2_BASE + 1) not in installed(switch):
                    assert time.monotonic() < deadline, "h2's flow not installed while h1 floods"
                    await asyncio.sleep(0.01)
                waited = time.perf_counter() - t0
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            assert refused > 0, "the flood was not limited"
            assert waited < 10
            assert e.rejected("flood") + e.rejected("queue_full") == refused
    run(go(), timeout=120)


def test_register_twice_and_stolen_or_forged_sessions(switch):
    async def go():
        async with SwitchEnv(switch.address) as e:
            r1 = await e.register()
            ack = await e.report(r1, [ev(1, flow_start=fs(1, stage=3)), ev(2, flow_start=fs(2, stage=3))])
            assert not ack.rejected
            # two concurrent registrations of the same host: one session wins, the old one is dead
            ra, rb = await asyncio.gather(e.register(), e.register())
            assert ra.session != rb.session and ra.last_seq == rb.last_seq == 2
            live = e.c.hostapi.by_host["h1"].session
            assert live in (ra.session, rb.session)
            for stale in {r1.session, ra.session, rb.session} - {live}:
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await e.stub.Report(pb.ReportBatch(session=stale, events=[ev(3, flow_end=pb.FlowEnd(flow_id=1))]))
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Register again" in ei.value.details()
            assert 1 in e.c.engine.flows  # the stale session's flow_end was not applied
            # forged sessions: empty, random, huge
            for forged in ("", "0" * 32, "x" * 100_000):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await e.stub.Report(pb.ReportBatch(session=forged, events=[ev(3, flow_end=pb.FlowEnd(flow_id=1))]))
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # h2 holding h1's session can only act as h1 (its own ids are not_owner there)
            ack = await e.stub.Report(pb.ReportBatch(session=live, events=[ev(3, flow_start=fs(H2_BASE + 1))]))
            assert [r.reason.split(":")[0] for r in ack.rejected] == ["not_owner"]
            # h2's own session cannot end h1's flows
            r2 = await e.register("h2", "token-of-h2", "10.0.0.2")
            ack = await e.report(r2, [ev(1, flow_end=pb.FlowEnd(flow_id=1)), ev(2, progress=pb.Progress(flow_id=2))])
            assert [r.reason.split(":")[0] for r in ack.rejected] == ["not_owner", "not_owner"]
            assert {(3, 1), (3, 2)} <= set(installed(switch))
            assert e.rejected("session") == len({r1.session, ra.session, rb.session} - {live}) + 3
            # the new session continues from the applied seq: seq 1..2 are duplicates
            ack = await e.stub.Report(pb.ReportBatch(session=live, events=[ev(2, flow_end=pb.FlowEnd(flow_id=2)),
                                                                           ev(4, flow_end=pb.FlowEnd(flow_id=2))]))
            assert not ack.rejected and ack.acked_seq == 4 and 2 not in e.c.engine.flows
    run(go(), timeout=120)


def test_giant_batches_are_refused_whole(switch):
    async def go():
        async with SwitchEnv(switch.address, limits={"max_batch_events": 1000}) as e:
            r1 = await e.register()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await e.report(r1, [ev(i + 1, flow_start=fs(i + 1)) for i in range(50_000)])
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit 1000" in ei.value.details()
            assert not e.c.engine.flows and e.c.hostapi.by_host["h1"].accepted_seq == 0
            ack = await e.report(r1, [ev(1, flow_start=fs(1))])  # the same seqs are still usable
            assert not ack.rejected and 1 in e.c.engine.flows
    run(go(), timeout=120)
