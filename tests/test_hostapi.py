"""Host report API: authentication, seq/acks, and every rejection reason (docs/report-api.md).

The controller runs with a switch address nobody listens on: these tests are
about the host side, the engine still applies events (they just are not written).
"""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import pytest

from controller import config as config_mod
from controller.main import Controller
from controller.testing import config_data
from mfs.proto import report_pb2 as pb
from mfs.proto import report_pb2_grpc as pbg

DEAD_SWITCH = "127.0.0.1:1"


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Env:
    def __init__(self, **over):
        data = config_data([DEAD_SWITCH], **over)
        self.cfg = config_mod.parse(data, "hostapi-test.yaml")

    async def __aenter__(self):
        self.c = Controller(self.cfg)
        await self.c.start(admin="")
        self.ch = grpc.aio.insecure_channel(f"127.0.0.1:{self.c.api_port}")
        self.stub = pbg.HostReportsStub(self.ch)
        return self

    async def __aexit__(self, *exc):
        await self.ch.close()
        await self.c.stop()

    async def register(self, host="h1", token="token-of-h1", address="10.0.0.1"):
        return await self.stub.Register(pb.RegisterRequest(host=host, token=token, address=address))

    async def report(self, reg, events):
        return await self.stub.Report(pb.ReportBatch(session=reg.session, events=events))

    def rejected(self, reason: str) -> float:
        return self.c.metrics.total("rejected_reports", reason=reason)


def fs(fid, **kw):
    d = dict(flow_id=fid, stage=1, request_id=1, size_bytes=1000, target_layer=2)
    d.update(kw)
    return pb.FlowStart(**d)


def ev(seq, **kind):
    return pb.Event(seq=seq, time=time.time(), **kind)


# ------------------------------------------------------------------ auth
@pytest.mark.parametrize("host,token,address", [
    ("h1", "wrong-token!", "10.0.0.1"),   # wrong token
    ("h1", "token-of-h1", "10.0.0.9"),    # wrong address
    ("h9", "token-of-h1", "10.0.0.1"),    # unknown host
    ("h2", "token-of-h1", "10.0.0.2"),    # another host's token
])
def test_register_refuses_bad_credentials(host, token, address):
    async def go():
        async with Env() as e:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await e.register(host, token, address)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert e.rejected("auth") == 1
    run(go())


def test_register_gives_disjoint_flow_ranges_and_session_checks():
    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register("h2", "token-of-h2", "10.0.0.2")
            assert r1.flow_id_bits == r2.flow_id_bits == 20
            assert {r1.flow_id_base, r2.flow_id_base} == {0, 1 << 20}
            assert r1.last_seq == 0 and abs(r1.server_time - time.time()) < 60
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await e.stub.Report(pb.ReportBatch(session="forged", events=[]))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # re-registering invalidates the old session and reports the last applied seq
            await e.report(r1, [ev(5, flow_start=fs(1))])
            r1b = await e.register()
            assert r1b.last_seq == 5
            with pytest.raises(grpc.aio.AioRpcError):
                await e.report(r1, [])
            assert e.rejected("session") == 2
    run(go())


# ------------------------------------------------------------------ seq / acks
def test_duplicates_are_acked_and_ignored_and_seq_must_increase():
    async def go():
        async with Env() as e:
            r = await e.register()
            ack = await e.report(r, [ev(1, flow_start=fs(1)), ev(2, flow_start=fs(2))])
            assert ack.acked_seq == 2 and not ack.rejected
            # a retry of the same batch: acknowledged, not applied twice (no duplicate_flow rejection)
            ack = await e.report(r, [ev(1, flow_start=fs(1)), ev(2, flow_start=fs(2))])
            assert ack.acked_seq == 2 and not ack.rejected
            assert e.c.metrics.total("duplicate_events") == 2
            ack = await e.report(r, [ev(4, flow_end=pb.FlowEnd(flow_id=1)), ev(3, flow_end=pb.FlowEnd(flow_id=2))])
            assert ack.acked_seq == 4
            assert [(x.seq, x.reason.split(":")[0]) for x in ack.rejected] == [(3, "seq_order")]
            assert 1 not in e.c.engine.flows and 2 in e.c.engine.flows
    run(go())


# ------------------------------------------------------------------ each rejection reason
NAN, INF = math.nan, math.inf


def cases(now):
    H = 3 * 3600
    return [
        ("no_kind", pb.Event(seq=0, time=now)),
        ("bad_time", pb.Event(seq=0, time=NAN, flow_end=pb.FlowEnd(flow_id=1))),
        ("bad_stage", ev(0, flow_start=fs(10, stage=0))),
        ("bad_stage", ev(0, flow_start=fs(10, stage=4))),
        ("bad_size", ev(0, flow_start=fs(10, size_bytes=0))),
        ("bad_size", ev(0, flow_start=fs(10, size_bytes=1 << 50))),
        ("bad_deadline", ev(0, flow_start=fs(10, deadline=NAN))),
        ("bad_deadline", ev(0, flow_start=fs(10, deadline=INF))),
        ("bad_deadline", ev(0, flow_start=fs(10, deadline=now - H))),
        ("bad_deadline", ev(0, flow_start=fs(10, deadline=now + 30 * 86400))),
        ("bad_layer", ev(0, flow_start=fs(10, target_layer=-1))),
        ("bad_layer", ev(0, flow_start=fs(10, current_layer=5000))),
        ("bad_layer", ev(0, layer=pb.LayerBoundary(request_id=1, current_layer=-3))),
        ("bad_layer", ev(0, request_start=pb.RequestStart(request_id=2, deadline=now + 1, arrival=now, num_layers=0))),
        ("bad_deadline", ev(0, request_start=pb.RequestStart(request_id=2, deadline=NAN, arrival=now, num_layers=4))),
        ("bad_time", ev(0, request_start=pb.RequestStart(request_id=2, deadline=now + 1, arrival=INF, num_layers=4))),
        ("bad_dst", ev(0, flow_start=fs(10, dst="x" * 300))),
        ("bad_bytes", ev(0, progress=pb.Progress(flow_id=1, bytes_sent=1 << 50))),
        ("bad_kind", ev(0, batch=pb.BatchEvent(batch_id=1, kind="explode"))),
        ("not_owner", ev(0, flow_start=fs((1 << 20) + 5))),  # h2's range
        ("not_owner", ev(0, progress=pb.Progress(flow_id=(1 << 21), bytes_sent=1))),
        ("unknown_flow", ev(0, progress=pb.Progress(flow_id=77, bytes_sent=1))),
        ("unknown_flow", ev(0, flow_end=pb.FlowEnd(flow_id=78))),
        ("duplicate_flow", ev(0, flow_start=fs(1))),
        ("unknown_request", ev(0, request_end=pb.RequestEnd(request_id=999))),
        ("bad_bytes", ev(0, progress=pb.Progress(flow_id=1, bytes_sent=5000))),  # > size_bytes 1000
    ]


def test_every_rejection_reason_is_named_and_counted():
    async def go():
        async with Env() as e:
            r = await e.register()
            await e.report(r, [ev(1, flow_start=fs(1))])
            now = time.time()
            cs = cases(now)
            events = []
            for i, (_, event) in enumerate(cs):
                event.seq = 100 + i
                events.append(event)
            ack = await e.report(r, events)
            got = {x.seq: x.reason for x in ack.rejected}
            assert ack.acked_seq == 100 + len(cs) - 1
            for i, (reason, _) in enumerate(cs):
                assert got.get(100 + i, "").startswith(reason + ":"), (i, reason, got.get(100 + i))
            # every reason is counted, per reason
            want: dict[str, int] = {}
            for reason, _ in cs:
                want[reason] = want.get(reason, 0) + 1
            for reason, n in want.items():
                assert e.rejected(reason) == n, reason
            # the good flow survived all that
            assert 1 in e.c.engine.flows
    run(go())


def test_flood_is_refused_without_stalling_other_hosts():
    async def go():
        async with Env(limits={"reports_per_s": 10, "burst": 20}) as e:
            r1 = await e.register()
            r2 = await e.register("h2", "token-of-h2", "10.0.0.2")
            ack = await e.report(r1, [ev(i + 1, flow_start=fs(i + 1)) for i in range(15)])
            assert not ack.rejected
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await e.report(r1, [ev(100 + i, flow_start=fs(100 + i)) for i in range(15)])
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "events/s" in ei.value.details()
            assert e.rejected("flood") == 1
            assert 100 not in e.c.engine.flows  # nothing of a refused batch is applied
            # the flooded batch's seqs are not consumed: the host retries the same seqs later
            assert e.c.hostapi.by_host["h1"].accepted_seq == 15
            t0 = time.perf_counter()
            ack = await e.report(r2, [ev(1, flow_start=fs((1 << 20) + 1))])
            assert not ack.rejected and time.perf_counter() - t0 < 5
            assert (1 << 20) + 1 in e.c.engine.flows
    run(go())


def test_batch_too_large_and_queue_full():
    async def go():
        async with Env(limits={"max_batch_events": 5, "queue_batches": 1}) as e:
            r = await e.register()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await e.report(r, [ev(i + 1, flow_start=fs(i + 1)) for i in range(6)])
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.rejected("batch_too_large") == 1
            # stall the engine (as a stuck round would) so that the host's queue fills
            eng_task = e.c.engine._tasks[0]
            eng_task.cancel()
            first = asyncio.ensure_future(e.report(r, [ev(1, flow_start=fs(1))]))
            for _ in range(100):
                if e.c.engine.pending("h1"):
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await e.report(r, [ev(2, flow_start=fs(2))])
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert e.rejected("queue_full") == 1
            await e.c.engine.round()  # the pending batch is applied and its caller acked
            ack = await first
            assert ack.acked_seq == 1 and 1 in e.c.engine.flows
    run(go())
