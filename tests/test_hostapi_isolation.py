"""One host must not harm another (issue 10, items 1, 5, 6): request ids are per host and a
request is shared only with the peers its owner names; per-host caps on flows, requests and
layer state; GC frees a silent host's requests and layer state; registering again does not
refill the rate-limit bucket; a round's work is bounded; a period in which the controller
itself was not running does not make a host silent."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time

import grpc
import pytest

from controller.testing import config_data
from mfs.proto import report_pb2 as pb
from mfs.proto import report_pb2_grpc as pbg
from tests.test_hostapi import Env, ev, fs, run

H2 = ("h2", "token-of-h2", "10.0.0.2")


def req(rid, layers=8, deadline_in=5.0, peers=()):
    now = time.time()
    return pb.RequestStart(request_id=rid, batch_id=rid, deadline=now + deadline_in, arrival=now, num_layers=layers,
                           remaining_compute=0.5, peers=list(peers))


def slow_batch_events(monkeypatch, pol, seconds: float):
    """Make the policy's batch_event block the event loop ``seconds`` per call; returns the real one."""
    real = pol.batch_event

    def slow(now, batch_id, kind):
        time.sleep(seconds)
        return real(now, batch_id, kind)
    monkeypatch.setattr(pol, "batch_event", slow)
    return real


def reasons(ack) -> list[str]:
    return [r.reason.split(":")[0] for r in ack.rejected]


def level(e, fid, stage):
    return e.c.engine.desired[(stage, fid)]


def test_another_hosts_request_cannot_be_touched():
    """h1 (its own valid token) replays h2's request 7 with a past deadline, ends it, and sends
    layer boundaries for it: h2's flows keep their levels and h2's request stays live."""
    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register(*H2)
            b2 = r2.flow_id_base
            s3, s1 = b2 + 1, b2 + 2
            ack = await e.report(r2, [ev(1, request_start=req(7, deadline_in=30)),
                                      ev(2, flow_start=fs(s3, stage=3, request_id=7, target_layer=0, size_bytes=400_000)),
                                      ev(3, flow_start=fs(s1, stage=1, request_id=7, target_layer=6, current_layer=0,
                                                          size_bytes=400_000))])
            assert not ack.rejected
            before = {s3: level(e, s3, 3), s1: level(e, s1, 1)}
            past = time.time() - 60
            ack = await e.report(r1, [
                ev(1, request_start=pb.RequestStart(request_id=7, batch_id=7, deadline=past, arrival=past - 1,
                                                    num_layers=8, remaining_compute=0.1)),
                *[ev(2 + i, layer=pb.LayerBoundary(request_id=7, current_layer=i, prefill_done=i == 8))
                  for i in range(9)],
                ev(20, request_end=pb.RequestEnd(request_id=7))])
            assert not ack.rejected  # all about h1's own request 7: nothing to refuse, nothing reaches h2's
            ack = await e.report(r1, [ev(21, request_end=pb.RequestEnd(request_id=7))])
            assert reasons(ack) == ["unknown_request"]
            await e.report(r2, [])  # a round of ticks
            assert {s3: level(e, s3, 3), s1: level(e, s1, 1)} == before
            assert ("h2", 7) in e.c.engine.requests and e.c.engine.requests[("h2", 7)].info is not None
            # h2's own layer boundary still promotes its own fetch
            await e.report(r2, [ev(4, layer=pb.LayerBoundary(request_id=7, current_layer=6))])
            assert level(e, s1, 1) < before[s1]
    run(go())


def test_peers_named_by_the_owner_share_its_request():
    """Prefill and decode hosts share requests by design (hostagent/workload.py): the owner (the
    host that starts it) names its peers, who may report the request's layer boundaries and
    flows, but not end it. A peer's flow reported before the owner's request_start joins it."""
    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register(*H2)
            b2 = r2.flow_id_base
            # the race: h2's fetch for request 11 arrives before h1 starts request 11
            ack = await e.report(r2, [ev(1, flow_start=fs(b2 + 1, stage=1, request_id=11, target_layer=3,
                                                          current_layer=0, size_bytes=400_000, owner="h1"))])
            assert not ack.rejected
            ack = await e.report(r1, [ev(1, request_start=req(11, peers=["h2"]))])
            assert not ack.rejected
            rec = e.c.engine.flows[b2 + 1]
            assert rec.req is e.c.engine.requests[("h1", 11)]
            lvl0 = level(e, b2 + 1, 1)
            # the owner's layer boundary promotes the peer's fetch
            await e.report(r1, [ev(2, layer=pb.LayerBoundary(request_id=11, current_layer=3))])
            assert level(e, b2 + 1, 1) < lvl0
            # the peer's own layer boundary reaches the owner's request too
            ack = await e.report(r2, [ev(2, flow_start=fs(b2 + 2, stage=1, request_id=11, target_layer=6,
                                                          current_layer=0, size_bytes=400_000, owner="h1"))])
            lvl1 = level(e, b2 + 2, 1)
            ack = await e.report(r2, [ev(3, layer=pb.LayerBoundary(request_id=11, current_layer=6, owner="h1"))])
            assert not ack.rejected and level(e, b2 + 2, 1) < lvl1
            assert e.c.engine.requests[("h1", 11)].layer == (6, False)
            # ... but may not end it
            ack = await e.report(r2, [ev(4, request_end=pb.RequestEnd(request_id=11))])
            assert reasons(ack) == ["not_owner"]
            ack = await e.report(r1, [ev(3, request_start=req(12, peers=["h9"]))])
            assert reasons(ack) == ["bad_peer"]
            ack = await e.report(r1, [ev(4, request_end=pb.RequestEnd(request_id=11))])
            assert not ack.rejected and e.c.engine.requests[("h1", 11)].info is None  # ended (its flows live on)
            assert ("h2", 11) not in e.c.engine.peers
    run(go())


def test_naming_a_peer_does_not_take_over_its_own_requests():
    """The link between a request and a peer's events takes both sides: the owner names the peer
    (request_start.peers) and the peer names the owner (FlowStart/LayerBoundary.owner). h1 naming
    h2 a peer of "its" request 7 (with a past deadline) neither moves h2's own flow on h2's id 7
    onto h1's request nor lets it reach h2's later events on id 7; h2's events naming h1 join h1's
    request, and a placeholder joins only the owner it names."""
    hosts = config_data([])["hosts"] + [{"name": "h3", "address": "10.0.0.3", "token": "token-of-h3"}]

    async def go():
        async with Env(hosts=hosts) as e:
            r1, r2 = await e.register(), await e.register(*H2)
            b2 = r2.flow_id_base
            eng = e.c.engine
            ack = await e.report(r2, [ev(1, flow_start=fs(b2 + 1, stage=3, request_id=7, target_layer=0,
                                                          size_bytes=400_000))])
            assert not ack.rejected
            before = level(e, b2 + 1, 3)
            past = time.time() - 60
            ack = await e.report(r1, [ev(1, request_start=pb.RequestStart(
                request_id=7, batch_id=7, deadline=past, arrival=past - 1, num_layers=8, remaining_compute=0.1,
                peers=["h2"]))])
            assert not ack.rejected
            await e.report(r2, [])  # a round of ticks
            assert eng.flows[b2 + 1].req is eng.requests[("h2", 7)] and level(e, b2 + 1, 3) == before
            # h2's later events on its id 7 without owner stay in h2's namespace
            ack = await e.report(r2, [ev(2, layer=pb.LayerBoundary(request_id=7, current_layer=8, prefill_done=True)),
                                      ev(3, flow_start=fs(b2 + 2, stage=1, request_id=7, target_layer=5,
                                                          size_bytes=400_000))])
            assert not ack.rejected
            assert eng.requests[("h1", 7)].layer is None and eng.requests[("h2", 7)].layer == (8, True)
            assert eng.flows[b2 + 2].req is eng.requests[("h2", 7)]
            # naming an owner that has not named h2 a peer, on an id h2 uses itself: refused
            ack = await e.report(r2, [ev(4, flow_start=fs(b2 + 3, stage=1, request_id=7, size_bytes=400_000,
                                                          owner="h3"))])
            assert reasons(ack) == ["request_conflict"]
            ack = await e.report(r2, [ev(5, flow_start=fs(b2 + 3, stage=1, request_id=7, size_bytes=400_000,
                                                          owner="nobody"))])
            assert reasons(ack) == ["bad_peer"]
            # h2 confirms the link to h1's request 7 on another id: its events reach h1's request
            ack = await e.report(r1, [ev(2, request_start=req(8, peers=["h2"]))])
            ack = await e.report(r2, [ev(6, flow_start=fs(b2 + 4, stage=1, request_id=8, target_layer=5,
                                                          size_bytes=400_000, owner="h1")),
                                      ev(7, layer=pb.LayerBoundary(request_id=8, current_layer=2, owner="h1"))])
            assert not ack.rejected
            assert eng.flows[b2 + 4].req is eng.requests[("h1", 8)] and eng.requests[("h1", 8)].layer == (2, False)
            # a placeholder claimed for h3 does not join h1's request 9 naming h2 (h3's does)
            ack = await e.report(r2, [ev(8, flow_start=fs(b2 + 5, stage=3, request_id=9, size_bytes=400_000,
                                                          owner="h3"))])
            assert not ack.rejected
            await e.report(r1, [ev(3, request_start=req(9, peers=["h2"]))])
            assert eng.flows[b2 + 5].req is eng.requests[("h2", 9)]
            r3 = await e.register("h3", "token-of-h3", "10.0.0.3")
            ack = await e.report(r3, [ev(1, request_start=req(9, peers=["h2"]))])
            assert not ack.rejected and eng.flows[b2 + 5].req is eng.requests[("h3", 9)]
            assert ("h2", 9) not in eng.requests
    run(go())


def test_a_peers_flows_join_the_owners_request_with_their_progress_without_a_scan_of_all_flows(monkeypatch):
    """A peer's flows reported before the owner's request_start move onto it keeping their progress,
    looked up by id (the policy's flows() — every flow, ranked — is not scanned once per moved flow);
    a live policy change replays progress the same way."""
    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register(*H2)
            b2 = r2.flow_id_base
            eng = e.c.engine
            events = []
            for i in range(20):
                events += [ev(2 * i + 1, flow_start=fs(b2 + i, stage=3, request_id=5, size_bytes=1_000_000,
                                                       owner="h1")),
                           ev(2 * i + 2, progress=pb.Progress(flow_id=b2 + i, bytes_sent=1000 * (i + 1)))]
            ack = await e.report(r2, events)
            assert not ack.rejected

            def no_scan():
                raise AssertionError("policy.flows() scanned")
            monkeypatch.setattr(eng.policy, "flows", no_scan)
            ack = await e.report(r1, [ev(1, request_start=req(5, peers=["h2"]))])
            assert not ack.rejected
            assert all(eng.flows[b2 + i].req is eng.requests[("h1", 5)] for i in range(20))
            assert [eng.policy._flows[b2 + i].bytes_sent for i in range(20)] == [1000 * (i + 1) for i in range(20)]
            eng.set_policy({"K": 6})
            assert [eng.policy._flows[b2 + i].bytes_sent for i in range(20)] == [1000 * (i + 1) for i in range(20)]
    run(go())


def test_per_host_caps_on_flows_requests_and_unknown_layer_state():
    limits = {"max_flows_per_host": 4, "max_requests_per_host": 3, "max_unknown_requests": 5}
    async def go():
        async with Env(limits=limits) as e:
            r1, r2 = await e.register(), await e.register(*H2)
            ack = await e.report(r1, [ev(i + 1, flow_start=fs(r1.flow_id_base + i)) for i in range(6)])
            assert reasons(ack) == ["host_cap"] * 2 and "max_flows_per_host" in ack.rejected[0].reason
            ack = await e.report(r2, [ev(i + 1, flow_start=fs(r2.flow_id_base + i)) for i in range(4)])
            assert not ack.rejected  # the other host's share is untouched
            ack = await e.report(r1, [ev(7, flow_end=pb.FlowEnd(flow_id=r1.flow_id_base)),
                                      ev(8, flow_start=fs(r1.flow_id_base + 10))])
            assert not ack.rejected  # ending one makes room
            ack = await e.report(r1, [ev(9 + i, request_start=req(100 + i)) for i in range(4)])
            assert reasons(ack) == ["host_cap"]
            ack = await e.report(r1, [ev(13, request_end=pb.RequestEnd(request_id=100)),
                                      ev(14, request_start=req(200)), ev(15, request_start=req(201))])
            assert reasons(ack) == ["host_cap"]
            pol_layers = len(e.c.engine.policy._req_layer)
            ack = await e.report(r1, [ev(20 + i, layer=pb.LayerBoundary(request_id=5000 + i, current_layer=1))
                                      for i in range(10)])
            assert reasons(ack) == ["host_cap"] * 5
            assert len(e.c.engine.policy._req_layer) == pol_layers + 5
            ack = await e.report(r2, [ev(10 + i, layer=pb.LayerBoundary(request_id=5000 + i, current_layer=1))
                                      for i in range(5)])
            assert not ack.rejected
    run(go())


def test_unknown_request_cap_counts_placeholders_a_flow_created():
    """limits.max_unknown_requests holds for layer state given to a placeholder that a flow_start
    created (no layer state yet) as for a new request id: a loop of flow_start(new id), layer(id),
    flow_end keeps at most the cap of layer states."""
    async def go():
        async with Env(limits={"max_unknown_requests": 2}) as e:
            r1 = await e.register()
            b1 = r1.flow_id_base
            pol = e.c.engine.policy
            layers0 = len(pol._req_layer)
            events = []
            for i in range(12):
                events += [ev(3 * i + 1, flow_start=fs(b1 + i, request_id=900 + i)),
                           ev(3 * i + 2, layer=pb.LayerBoundary(request_id=900 + i, current_layer=1)),
                           ev(3 * i + 3, flow_end=pb.FlowEnd(flow_id=b1 + i))]
            ack = await e.report(r1, events)
            assert reasons(ack) == ["host_cap"] * 10
            assert len(pol._req_layer) == layers0 + 2 and e.c.engine.placeholders["h1"] == 2
            assert sum(1 for k in e.c.engine.requests if k[0] == "h1") == 2
    run(go())


def test_entries_installed_for_unreported_flows_count_against_the_hosts_flow_cap():
    """unknown_flows.install: an unreported flow's entry counts against its owner's
    limits.max_flows_per_host as a live flow does: past the cap no more are installed, and the
    host's own flow_start of a new flow is refused; its flow_start of an installed one takes it
    over (no extra entry)."""
    async def go():
        async with Env(limits={"max_flows_per_host": 3}, unknown_flows={"install": True}) as e:
            r1 = await e.register()
            b1 = r1.flow_id_base
            eng = e.c.engine
            src = int(ipaddress.IPv4Address("10.0.0.1"))
            kinds = [eng.on_miss("s1", {"stage": 1, "flow_id": b1 + i, "src_addr": src, "ingress_port": 1})
                     for i in range(5)]
            assert kinds == ["installed"] * 3 + ["unreported"] * 2
            assert sum(1 for k in eng.desired if k[1] >= b1) == 3
            ack = await e.report(r1, [ev(1, flow_start=fs(b1 + 10))])
            assert reasons(ack) == ["host_cap"]
            ack = await e.report(r1, [ev(2, flow_start=fs(b1 + 1))])  # takes over its installed entry
            assert not ack.rejected and eng.live_flows["h1"] == 1 and eng.miss_installed["h1"] == 2
            ack = await e.report(r1, [ev(3, flow_end=pb.FlowEnd(flow_id=b1 + 1)),
                                      ev(4, flow_end=pb.FlowEnd(flow_id=b1 + 2)),  # an installed entry ends
                                      ev(5, flow_start=fs(b1 + 10)), ev(6, flow_start=fs(b1 + 11))])
            assert not ack.rejected and eng.miss_installed["h1"] == 1 and eng.live_flows["h1"] == 2
            assert eng.on_miss("s1", {"stage": 1, "flow_id": b1 + 20, "src_addr": src, "ingress_port": 1}) \
                == "unreported"
    run(go())


def test_gc_frees_requests_and_layer_state_of_silent_hosts():
    async def go():
        async with Env(gc_timeout_s=0.6) as e:
            r1, r2 = await e.register(), await e.register(*H2)
            ack = await e.report(r1, [ev(1, request_start=req(1)), ev(2, request_start=req(2)),
                                      ev(3, layer=pb.LayerBoundary(request_id=77, current_layer=2)),
                                      ev(4, flow_start=fs(r1.flow_id_base + 1, request_id=1))])
            assert not ack.rejected
            await e.report(r1, [ev(5, request_start=req(3, peers=["h2"]))])
            await e.report(r2, [ev(1, request_start=req(1)),
                                ev(2, flow_start=fs(r2.flow_id_base + 1, stage=3, request_id=3, size_bytes=10**6))])
            pol = e.c.engine.policy
            assert len(pol._requests) == 4 and len(pol._req_layer) == 5
            for _ in range(10):  # h2 keeps reporting, h1 is silent
                await e.report(r2, [])
                await asyncio.sleep(0.2)
            eng = e.c.engine
            # h1's requests and layer state are gone; h2's flow on h1's request 3 lives on
            assert [k for k, r in eng.requests.items() if k[0] == "h1" and (r.info or r.layer)] == []
            assert list(eng.flows) == [r2.flow_id_base + 1]
            assert len(pol._requests) == 1 and len(pol._req_layer) == 1  # h2's only
            assert eng.live_requests["h1"] == 0 and eng.placeholders["h1"] == 0 and eng.live_flows["h1"] == 0
            n = e.c.metrics.total("gc_requests")
            for _ in range(4):  # later GC passes find nothing more to free
                await e.report(r2, [])
                await asyncio.sleep(0.2)
            assert e.c.metrics.total("gc_requests") == n
    run(go())


def test_registering_again_does_not_refill_the_rate_limit_bucket():
    async def go():
        async with Env(limits={"reports_per_s": 1, "burst": 20}) as e:
            r1 = await e.register()
            assert not (await e.report(r1, [ev(i + 1, batch=pb.BatchEvent(batch_id=1, kind="arrival"))
                                            for i in range(20)])).rejected
            r1 = await e.register()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await e.report(r1, [ev(30 + i, batch=pb.BatchEvent(batch_id=1, kind="arrival")) for i in range(10)])
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    run(go())


def test_a_slow_policy_under_one_hosts_big_batch_does_not_hold_back_another_host(monkeypatch):
    """A round applies a bounded number of events, round robin: h2's 3,000-event batch (the
    policy made slow: 1 ms per event) is applied over several rounds, and h1's report, sent from
    its own thread while that batch is being applied, gets in between them."""
    from controller import engine as engine_mod
    monkeypatch.setattr(engine_mod, "ROUND_EVENTS", 256)

    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register(*H2)
            slow_batch_events(monkeypatch, e.c.engine.policy, 0.001)
            out = {}

            def small():  # h1 as a separate process would be: its own channel and thread
                time.sleep(0.3)
                with grpc.insecure_channel(f"127.0.0.1:{e.c.api_port}") as ch:
                    stub = pbg.HostReportsStub(ch)
                    t1 = time.perf_counter()
                    ack = stub.Report(pb.ReportBatch(session=r1.session,
                                                     events=[ev(1, flow_start=fs(r1.flow_id_base + 1))]), timeout=30)
                    out["t"], out["ack"] = time.perf_counter() - t1, ack
            th = threading.Thread(target=small)
            th.start()
            t0 = time.perf_counter()
            ack = await e.report(r2, [ev(i + 1, batch=pb.BatchEvent(batch_id=i, kind="arrival")) for i in range(3000)])
            t_big = time.perf_counter() - t0
            await asyncio.get_running_loop().run_in_executor(None, th.join)
            assert not ack.rejected and not out["ack"].rejected
            assert out["t"] < 0.5 * t_big, (out["t"], t_big)
    run(go())


def test_a_host_with_a_high_cost_estimate_does_not_starve_while_another_keeps_its_queue_full():
    """Every host with queued events applies at least one per round: h2's estimated cost per event
    is high (5 ms: its 10-event slice would overrun the round's budget), h1 keeps its queue full
    of cheap events; h2's report is still applied (before: h2 was skipped in every round in which
    h1 applied something, and its estimate, never measured again, kept it skipped for good)."""
    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register(*H2)
            eng = e.c.engine
            seq = iter(range(1, 10**9))
            stop, h2_costly = False, False

            async def feed():  # h1's queue never empty (events straight into the engine: no rate limit)
                while not stop:
                    if h2_costly:  # the estimates pinned (a noisy measurement must not reorder them)
                        eng._cost.update(h1=0.0, h2=0.005)
                    while eng.pending("h1") < 3:
                        eng.submit("h1", [ev(next(seq), progress=pb.Progress(flow_id=r1.flow_id_base + 1))
                                          for _ in range(300)], time.perf_counter())
                    await asyncio.sleep(0)
            feeder = asyncio.create_task(feed())
            try:
                await asyncio.sleep(0.05)
                rounds = eng.rounds
                h2_costly = True
                ack = await asyncio.wait_for(e.report(r2, [ev(i + 1, layer=pb.LayerBoundary(request_id=3,
                                                                                             current_layer=i))
                                                           for i in range(10)]), 10)
                assert not ack.rejected and eng.requests[("h2", 3)].layer == (9, False)
                assert eng.pending("h1") > 0 and eng.rounds > rounds  # h1 kept its queue full meanwhile
            finally:
                stop = True
                await feeder
    run(go())


def test_no_host_is_silent_for_a_period_the_controller_was_not_running(monkeypatch):
    """The event loop blocked for 4 s (a long policy computation): h1, which kept reporting
    every 0.2 s as far as it could, must not be garbage collected (gc_timeout_s = 2)."""
    async def go():
        async with Env(gc_timeout_s=2.0) as e:
            r1, r2 = await e.register(), await e.register(*H2)
            assert not (await e.report(r1, [ev(1, flow_start=fs(r1.flow_id_base + 1))])).rejected
            stop = False

            async def keepalive():
                while not stop:
                    await e.report(r1, [])
                    await asyncio.sleep(0.2)
            ka = asyncio.ensure_future(keepalive())
            await asyncio.sleep(0.5)
            real = slow_batch_events(monkeypatch, e.c.engine.policy, 4.0)  # the loop frozen 4 s
            await e.report(r2, [ev(1, batch=pb.BatchEvent(batch_id=1, kind="arrival"))])
            monkeypatch.setattr(e.c.engine.policy, "batch_event", real)
            await asyncio.sleep(1.5)  # several GC passes after the freeze
            stop = True
            await ka
            assert r1.flow_id_base + 1 in e.c.engine.flows
            assert e.c.metrics.total("gc_entries") == 0
            assert e.c.metrics.total("controller_stalls") >= 1
    run(go())


def test_an_exception_in_gc_does_not_stop_ticks_and_gc():
    """A GC pass that raises is logged and counted (engine_timer_errors); the timers go on: later
    GC passes run (before: the timer task died, and ticks and GC stopped for good)."""
    async def go():
        async with Env(gc_timeout_s=0.4) as e:
            eng = e.c.engine
            real, calls = eng.gc, []

            async def flaky(alive=None):
                calls.append(alive)
                if len(calls) == 1:
                    raise RuntimeError("a bug in GC")
                return await real(alive)
            eng.gc = flaky
            for _ in range(200):  # GC runs every 0.1 s; wait for 2 more passes (at most 10 s)
                if len(calls) >= 3:
                    break
                await asyncio.sleep(0.05)
            assert len(calls) >= 3 and e.c.metrics.total("engine_timer_errors") == 1
    run(go())


def test_the_policy_recheck_is_spread_over_rounds(monkeypatch):
    """20k Stage-3 flows under prefill-done requests made every policy tick re-check them all
    in one round (another host's report p50 4 -> 252 ms). The engine gives the policy's tick a
    budget of flow groups per round (mfs.policy ``tick(now, budget)``); the rest of a pass
    follows in the next rounds."""
    from controller import engine as engine_mod
    monkeypatch.setattr(engine_mod, "TICK_BUDGET", 10)

    async def go():
        async with Env(policy={"scheduler": "mfs", "K": 8, "bandwidth_bps": 1e9, "recheck_interval_s": 0.05},
                       limits={"max_flows_per_host": 500}) as e:
            r1, r2 = await e.register(), await e.register(*H2)
            pol = e.c.engine.policy
            calls: list[tuple] = []
            real = pol.tick

            def tick(now, budget=None):
                before = pol.pending_work()
                out = real(now, budget=budget)
                calls.append((budget, before, pol.pending_work()))
                return out
            monkeypatch.setattr(pol, "tick", tick)
            evs = []
            for i in range(200):
                evs += [ev(len(evs) + 1, request_start=req(i, layers=4, deadline_in=60)),
                        ev(len(evs) + 2, flow_start=fs(r2.flow_id_base + i, stage=3, request_id=i, target_layer=0,
                                                       size_bytes=1_000_000, deadline=time.time() + 60))]
            evs += [ev(401 + i, layer=pb.LayerBoundary(request_id=i, current_layer=4, prefill_done=True))
                    for i in range(200)]
            assert not (await e.report(r2, evs)).rejected
            t0 = time.monotonic()
            while not any(before >= 150 for _, before, _ in calls) and time.monotonic() - t0 < 10:
                await e.report(r1, [])
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # the pass completes over the next rounds
            passes = [c for c in calls if c[1] or c[2]]
            assert passes, calls[:10]
            assert all(b == 10 for b, _, _ in calls)
            assert max(after for _, _, after in passes) >= 150  # one pass: 200 groups, 10 per round
            assert all(before - after <= 10 for _, before, after in passes if before)
            assert calls[-1][2] == 0 or any(after == 0 for _, _, after in passes)
    run(go())


def test_a_hosts_concurrent_batches_are_applied_in_arrival_order():
    """A big batch's checks yield to the event loop; the host's next batch, sent while they run,
    must still be applied after it (per-host order): here it ends a flow the big batch starts."""
    async def go():
        async with Env(limits={"max_flows_per_host": 5000}) as e:
            r1 = await e.register()
            big = [ev(i + 1, flow_start=fs(r1.flow_id_base + i)) for i in range(4000)]
            first = asyncio.ensure_future(e.report(r1, big))
            await asyncio.sleep(0)  # the big batch is on its way first
            second = asyncio.ensure_future(e.report(r1, [ev(4001, flow_end=pb.FlowEnd(flow_id=r1.flow_id_base))]))
            a, b = await first, await second
            assert not a.rejected and not b.rejected, b.rejected
            assert r1.flow_id_base not in e.c.engine.flows and len(e.c.engine.flows) == 3999
    run(go())


def test_another_hosts_batch_cannot_be_touched():
    """Batch ids are per host, as request ids are: h1 (its own valid token) announces the departure
    of h2's batch 2, the arrival of h2's never-announced batch 3 and puts a request with a past
    deadline into h2's batch 1 — h2's Stage-1/2 coflow ranking (RED order of its batches) stays
    as it was. A peer of a batch's requests reaches only its own batch of that id with batch
    events (in hostagent/workload.py only the owner, the instance's first host, sends them)."""
    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register(*H2)
            b2 = r2.flow_id_base
            pol = e.c.engine.policy
            # h2: batch 1 (request 1, loose deadline), batch 2 (request 2, tight), batch 3 (request 3,
            # tighter, not announced yet); a Stage-1 fetch of each
            ack = await e.report(r2, [ev(1, request_start=req(1, deadline_in=60)),
                                      ev(2, request_start=req(2, deadline_in=20)),
                                      ev(3, request_start=req(3, deadline_in=10)),
                                      *[ev(3 + i, flow_start=fs(b2 + i, stage=1, request_id=i, batch_id=i,
                                                               target_layer=4, size_bytes=400_000))
                                        for i in (1, 2, 3)],
                                      ev(7, batch=pb.BatchEvent(batch_id=1, kind="arrival")),
                                      ev(8, batch=pb.BatchEvent(batch_id=2, kind="arrival"))])
            assert not ack.rejected
            ranks = {i: pol.rank(b2 + i) for i in (1, 2, 3)}
            assert ranks == {1: 1.0, 2: 0.0, 3: float("inf")}  # batch 2 first; batch 3 not ranked
            past = time.time() - 30
            ack = await e.report(r1, [
                ev(1, batch=pb.BatchEvent(batch_id=2, kind="departure")),
                ev(2, batch=pb.BatchEvent(batch_id=3, kind="arrival")),
                ev(3, request_start=pb.RequestStart(request_id=9, batch_id=1, deadline=past, arrival=past - 1,
                                                    num_layers=8, remaining_compute=0.1)),
                ev(4, flow_start=fs(r1.flow_id_base + 1, stage=1, request_id=40, batch_id=2, target_layer=4,
                                    size_bytes=400_000)),
                ev(5, batch=pb.BatchEvent(batch_id=1, kind="arrival"))])
            assert not ack.rejected  # all about h1's own batches: nothing to refuse, nothing reaches h2's
            ack = await e.report(r1, [ev(6, batch=pb.BatchEvent(batch_id=1, kind="departure"))])
            assert not ack.rejected
            assert {i: pol.rank(b2 + i) for i in (1, 2, 3)} == ranks
            # h1's flow naming "batch 2" (h2's id) does not take h2's batch's rank
            assert pol.rank(r1.flow_id_base + 1) == float("inf")
            # h2's own events still move its own batches
            ack = await e.report(r2, [ev(9, batch=pb.BatchEvent(batch_id=3, kind="arrival"))])
            assert not ack.rejected and {i: pol.rank(b2 + i) for i in (1, 2, 3)} == {1: 2.0, 2: 1.0, 3: 0.0}
            # a peer of the requests of h2's batch 5 reaches only its own batch 5 with batch events
            ack = await e.report(r2, [ev(10, request_start=req(5, deadline_in=30, peers=["h1"]))])
            assert not ack.rejected
            ack = await e.report(r1, [ev(7, batch=pb.BatchEvent(batch_id=5, kind="arrival"))])
            assert not ack.rejected and not e.c.engine.batches.recs[("h2", 5)].active
            assert e.c.engine.batches.recs[("h1", 5)].active
            ack = await e.report(r1, [ev(8, batch=pb.BatchEvent(batch_id=5, kind="departure"))])
            assert not ack.rejected and ("h1", 5) not in e.c.engine.batches.recs
            ack = await e.report(r2, [ev(11, batch=pb.BatchEvent(batch_id=5, kind="arrival"))])
            assert not ack.rejected and e.c.engine.batches.recs[("h2", 5)].active
            # the owner ends the request and the batch departs: its id is forgotten
            ack = await e.report(r2, [ev(12, request_end=pb.RequestEnd(request_id=5)),
                                      ev(13, batch=pb.BatchEvent(batch_id=5, kind="departure"))])
            assert not ack.rejected and ("h2", 5) not in e.c.engine.batches.recs
            # a live policy change (mfsctl policy set) replays the active batches: the ranking stays
            e.c.engine.set_policy({"K": 6})
            pol = e.c.engine.policy
            assert {i: pol.rank(b2 + i) for i in (1, 2, 3)} == {1: 2.0, 2: 1.0, 3: 0.0}
    run(go())


def test_a_hosts_own_batch_ids_are_its_own_even_when_another_host_names_it_a_peer():
    """h1 starts request 7 in its batch 7 naming h2 a peer: h2's own batch 7 (its arrival and
    departure) is still h2's, not refused as h1's."""
    async def go():
        async with Env() as e:
            r1, r2 = await e.register(), await e.register(*H2)
            ack = await e.report(r1, [ev(1, request_start=req(7, peers=["h2"]))])
            assert not ack.rejected
            ack = await e.report(r2, [ev(1, batch=pb.BatchEvent(batch_id=7, kind="arrival"))])
            assert not ack.rejected
            eng = e.c.engine
            assert eng.batches.recs[("h2", 7)].active and not eng.batches.recs[("h1", 7)].active
            ack = await e.report(r2, [ev(2, batch=pb.BatchEvent(batch_id=7, kind="departure"))])
            assert not ack.rejected and ("h2", 7) not in eng.batches.recs and ("h1", 7) in eng.batches.recs
    run(go())


def test_batches_per_host_are_capped_and_freed_by_gc():
    """A host's batches (with requests, or announced) count against limits.max_requests_per_host;
    GC ends a silent host's batches (the policy sees them depart) and forgets them."""
    async def go():
        async with Env(gc_timeout_s=0.6, limits={"max_requests_per_host": 3}) as e:
            r1, r2 = await e.register(), await e.register(*H2)
            ack = await e.report(r1, [ev(i + 1, batch=pb.BatchEvent(batch_id=100 + i, kind="arrival"))
                                      for i in range(5)])
            assert reasons(ack) == ["host_cap"] * 2 and "batches" in ack.rejected[0].reason
            ack = await e.report(r2, [ev(1, batch=pb.BatchEvent(batch_id=100, kind="arrival"))])
            assert not ack.rejected  # the other host's share is untouched
            ack = await e.report(r1, [ev(6, batch=pb.BatchEvent(batch_id=100, kind="departure")),
                                      ev(7, request_start=req(1))])
            assert not ack.rejected  # a departure makes room (the request's batch 1 is new)
            pol = e.c.engine.policy
            assert len(pol._active_batches) == 3
            for _ in range(10):  # h2 keeps reporting, h1 is silent
                await e.report(r2, [])
                await asyncio.sleep(0.2)
            assert [k for k in e.c.engine.batches.recs] == [("h2", 100)]
            assert e.c.engine.live_batches["h1"] == 0 and len(pol._active_batches) == 1
    run(go())


def test_gc_writes_the_level_changes_the_policy_returns_for_a_silent_hosts_request_and_batch(monkeypatch):
    """GC ends a silent host's requests and makes its batches depart; the level changes the
    policy returns for that (e.g. another host's request no longer pruned) reach the desired
    state and the switches, as they do for the same events from a host (they were dropped)."""
    async def go():
        async with Env(gc_timeout_s=0.6) as e:
            r1, r2 = await e.register(), await e.register(*H2)
            ack = await e.report(r1, [ev(1, request_start=req(1)),
                                      ev(2, batch=pb.BatchEvent(batch_id=1, kind="arrival"))])
            assert not ack.rejected
            f3, f1 = r2.flow_id_base + 1, r2.flow_id_base + 2
            ack = await e.report(r2, [ev(1, request_start=req(1, deadline_in=60)),
                                      ev(2, flow_start=fs(f3, stage=3, request_id=1, size_bytes=10**6)),
                                      ev(3, flow_start=fs(f1, stage=1, request_id=1, batch_id=1, target_layer=4,
                                                          size_bytes=400_000))])
            assert not ack.rejected
            pol = e.c.engine.policy
            new3, new1 = level(e, f3, 3) - 1, level(e, f1, 1) - 1
            real_end, real_batch = pol.request_end, pol.batch_event

            def request_end(now, rid):  # say: ending h1's request promotes h2's Stage-3 flow
                out = real_end(now, rid)
                return {**out, f3: new3}

            def batch_event(now, bid, kind):  # and its batch's departure h2's Stage-1 fetch
                out = real_batch(now, bid, kind)
                return {**out, f1: new1} if kind == "departure" else out
            monkeypatch.setattr(pol, "request_end", request_end)
            monkeypatch.setattr(pol, "batch_event", batch_event)
            for _ in range(10):  # h2 keeps reporting, h1 is silent
                await e.report(r2, [])
                await asyncio.sleep(0.2)
            assert e.c.metrics.total("gc_requests") >= 1
            assert (level(e, f3, 3), level(e, f1, 1)) == (new3, new1)
            # and the host hears of it in its acks, as of any level change
            ack = await e.report(r2, [])
            assert not ack.rejected
    run(go())
