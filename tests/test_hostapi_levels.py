"""ReportAck.levels: the controller tells each host the level of its own flows (docs/report-api.md),
for flows started in the batch and flows re-levelled since that host's previous ack — whatever the
scheduler — and never another host's flows."""

from __future__ import annotations

import time

import pytest

from tests.test_hostapi import Env, ev, fs, run
from mfs.proto import report_pb2 as pb


def levels(ack) -> dict[int, int]:
    return {fl.flow_id: fl.level for fl in ack.levels}


def req(rid, layers=8):
    now = time.time()
    return pb.RequestStart(request_id=rid, batch_id=rid, deadline=now + 5, arrival=now, num_layers=layers,
                           remaining_compute=0.5)


def test_levels_for_new_flows_promotions_and_only_own_flows():
    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register("h2", "token-of-h2", "10.0.0.2")
            b1, b2 = r1.flow_id_base, r2.flow_id_base
            s1, s2 = b1 + 1, b1 + 2
            ack = await e.report(r1, [ev(1, request_start=req(7)),
                                      ev(2, flow_start=fs(s1, stage=1, request_id=7, target_layer=4,
                                                          current_layer=0, size_bytes=200_000)),
                                      ev(3, flow_start=fs(s2, stage=2, request_id=7, target_layer=0,
                                                          size_bytes=50_000))])
            got = levels(ack)
            desired = {fid: e.c.engine.desired[(st, fid)] for fid, st in ((s1, 1), (s2, 2))}
            assert got == desired, (got, desired)  # exactly the new flows, at the level the switches get
            assert got[s2] < got[s1]  # MFS: Stage 2 above a Stage-1 fetch due in 4 layers
            # nothing changed since: an empty ack
            assert levels(await e.report(r1, [ev(4, progress=pb.Progress(flow_id=s2, bytes_sent=1000))])) == {}
            # the request reaches the fetch's target layer: the fetch is promoted, and only it is news
            ack = await e.report(r1, [ev(5, layer=pb.LayerBoundary(request_id=7, current_layer=4))])
            got = levels(ack)
            assert set(got) == {s1} and got[s1] < desired[s1], (got, desired)
            assert got[s1] == e.c.engine.desired[(1, s1)]
            # h2's flows go to h2 only; h1's next ack does not carry them
            ack2 = await e.report(r2, [ev(1, flow_start=fs(b2 + 1, stage=3, request_id=9, size_bytes=10_000))])
            assert set(levels(ack2)) == {b2 + 1}
            assert levels(await e.report(r1, [])) == {}
            # a flow that ended before its news was taken is not reported
            e.c.engine.level_news.clear()
            await e.report(r2, [ev(2, flow_start=fs(b2 + 2, stage=1, request_id=9, target_layer=3)),
                                ev(3, flow_end=pb.FlowEnd(flow_id=b2 + 2))])
            assert b2 + 2 not in e.c.engine.level_news.get("h2", {})
    run(go())


@pytest.mark.parametrize("scheduler", ["fair", "sjf", "edf"])
def test_levels_for_every_scheduler(scheduler):
    async def go():
        async with Env(policy={"scheduler": scheduler, "bandwidth_bps": 1e9}) as e:
            r = await e.register()
            fids = [r.flow_id_base + i for i in range(3)]
            ack = await e.report(r, [ev(1, request_start=req(3))] +
                                 [ev(2 + i, flow_start=fs(f, stage=1 + i, request_id=3, size_bytes=10_000 * (i + 1)))
                                  for i, f in enumerate(fids)])
            got = levels(ack)
            assert got == {f: e.c.engine.desired[(1 + i, f)] for i, f in enumerate(fids)}
    run(go())


def test_pending_levels_are_bounded_per_host(monkeypatch):
    from controller import engine as eng

    monkeypatch.setattr(eng, "MAX_PENDING_LEVELS_PER_HOST", 4)

    async def go():
        async with Env() as e:
            r = await e.register()
            evs = [ev(1 + i, flow_start=fs(r.flow_id_base + i, stage=3, request_id=1)) for i in range(6)]
            ack = await e.report(r, evs)
            got = levels(ack)
            assert list(got) == [r.flow_id_base + i for i in range(2, 6)]  # the newest kept
            assert e.c.metrics.total("level_news_dropped") == 2
    run(go())


def rates(ack) -> dict[int, float]:
    return {fl.flow_id: fl.rate for fl in ack.levels if fl.HasField("rate")}


def test_karuna_pacing_rates_reach_the_host():
    """Karuna's deadline flows carry the policy's rate_limit (bytes left / time left) in the ack; a
    flow without a deadline none; progress that moves the rate is news; flows of other schedulers
    are never paced."""
    async def go():
        async with Env(policy={"scheduler": "karuna", "bandwidth_bps": 1e9}) as e:
            r = await e.register()
            d, s = r.flow_id_base + 1, r.flow_id_base + 2
            t0 = time.time()
            ack = await e.report(r, [ev(1, request_start=req(7)),
                                     ev(2, flow_start=fs(d, stage=3, request_id=7, size_bytes=1_000_000,
                                                         deadline=t0 + 2.0)),
                                     ev(3, flow_start=fs(s, stage=1, request_id=7, size_bytes=50_000))])
            got = rates(ack)
            assert set(got) == {d}, got  # the Stage-1 fetch has no deadline: no rate news
            pol = e.c.engine.policy
            assert got[d] == pytest.approx(pol.rate_limit(d), rel=0.06)
            assert 1_000_000 / 2.0 <= got[d] <= 1_000_000 / (2.0 - (time.time() - t0)) * 1.01
            # 90 % sent: bytes left / time left drops ~10 x, which is news; the level is not changed
            ack = await e.report(r, [ev(4, progress=pb.Progress(flow_id=d, bytes_sent=900_000))])
            assert set(rates(ack)) == {d} and rates(ack)[d] < got[d] / 5
            assert levels(ack) == {d: e.c.engine.desired[(3, d)]}
            assert rates(await e.report(r, [])) == {}
    run(go())

    async def fair():
        async with Env(policy={"scheduler": "fair", "bandwidth_bps": 1e9}) as e:
            r = await e.register()
            ack = await e.report(r, [ev(1, request_start=req(7)),
                                     ev(2, flow_start=fs(r.flow_id_base + 1, stage=3, request_id=7,
                                                         size_bytes=1_000_000, deadline=time.time() + 2.0))])
            assert levels(ack) and rates(ack) == {}
    run(fair())
