"""The incremental MFS (issue 10 item 1) against a straightforward recomputation.

``Reference`` recomputes everything the obvious way on every event, as the policy did before it
was made incremental: Algorithm 1 over every active batch from flows scanned anew
(:func:`mfs.policy.red.inter_schedule`), a request's P2D bytes by scanning its flows, every
Stage-3 flow of every prefill-done request re-checked one by one on each tick. Random event
sequences must give identical answers (levels, changes, ranks, pruned requests).
"""

from __future__ import annotations

import math
import random

import pytest

from mfs.header import STAGE_COLLECTIVE, STAGE_P2D
from mfs.policy import FlowInfo, MfsPolicy, PolicyConfig, RequestInfo, link_name
from mfs.policy.red import RequestLoad, inter_schedule


class Reference(MfsPolicy):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.ref_rank: dict[int, int] = {}
        self.ref_active: set[int] = set()
        self.ref_batch: dict[int, int] = {}
        self.ref_pruned: set[int] = set()
        self.ref_pushes: dict[int, list[tuple[int, int]]] = {}  # request -> (size, layer) of its pushes
        self.ref_last_tick = -math.inf

    # P2D bytes: scan the flows
    def _on_flow_added(self, st):
        super()._on_flow_added(st)
        if st.info.stage == STAGE_P2D:
            self.ref_pushes.setdefault(st.info.request_id, []).append((st.info.size_bytes, st.info.target_layer))

    def _on_flow_removed(self, st):
        super()._on_flow_removed(st)
        rid = st.info.request_id
        if st.info.stage == STAGE_P2D and not self._live_p2d(rid) and rid not in self._requests:
            self.ref_pushes.pop(rid, None)

    def _live_p2d(self, rid):
        return [s for s in self._flows.values() if s.info.stage == STAGE_P2D and s.info.request_id == rid]

    def p2d_bytes(self, st):
        if self.cfg.mlu_bytes == "message":
            return st.bytes_left
        rid = st.info.request_id
        left = sum(s.bytes_left for s in self._live_p2d(rid))
        req = self._requests.get(rid)
        pushes = self.ref_pushes.get(rid)
        if req is None or not pushes or rid in self._prefill_done:
            return left
        top = max(layer for _, layer in pushes)
        return left + max(0, req.num_layers - 1 - top) * (sum(s for s, _ in pushes) / len(pushes))

    # levels: one flow at a time
    def _initial_level(self, now, st):
        if st.info.stage != STAGE_P2D:
            return self._early_level(st)
        if st.info.request_id in self.ref_pruned:
            st.scavenger = True
            return self.layout.scavenger
        level, st.mlu, infeasible = self.p2d_target(now, st)
        if infeasible and self.cfg.on_infeasible == "scavenger":
            st.scavenger = True
        return self._tiers[-1] if level is None else level

    def _recheck(self, now, st, changes):
        if st.scavenger:
            return
        if st.info.stage == STAGE_P2D:
            level, st.mlu, infeasible = self.p2d_target(now, st)
            if infeasible and self.cfg.on_infeasible == "scavenger":
                st.scavenger = True
                self._set(st, level, changes)
                return
            if level is None:
                return
        else:
            level = self._early_level(st)
        self._promote(st, level, changes)

    def _on_layer(self, now, rid):
        changes = {}
        for st in self.flows_of(rid):
            self._recheck(now, st, changes)
        return changes

    def tick(self, now, budget=None):
        self._now = now
        if now - self.ref_last_tick < self.cfg.recheck_interval_s:
            return {}
        self.ref_last_tick = now
        changes = {}
        for st in list(self._flows.values()):
            if st.info.stage == STAGE_P2D and st.info.request_id in self._prefill_done:
                self._recheck(now, st, changes)
        return changes

    # batches: membership from the registered requests, Algorithm 1 from scratch
    def _on_request_start(self, now, req):
        old = self.ref_batch.get(req.request_id)
        self.ref_batch[req.request_id] = req.batch_id
        if old is not None and old != req.batch_id:
            self._emptied(old)
        return {}

    def _on_request_end(self, now, rid, req):
        bid = self.ref_batch.pop(rid, None)
        if bid is not None:
            self._emptied(bid)
        if rid not in self._req_flows:
            self.ref_pruned.discard(rid)
        if not self._live_p2d(rid):
            self.ref_pushes.pop(rid, None)
        return {}

    def _emptied(self, bid):
        if bid not in self.ref_batch.values():
            self.ref_active.discard(bid)
            self.ref_rank.pop(bid, None)

    def _on_batch(self, now, bid, kind):
        if kind == "arrival":
            self.ref_active.add(bid)
        else:
            self.ref_active.discard(bid)
            self.ref_rank.pop(bid, None)
        if not (self.cfg.red or self.cfg.pruning):
            return {}
        batches = {}
        for b in self.ref_active:
            reqs = [self.ref_load(self._requests[r]) for r, rb in self.ref_batch.items() if rb == b]
            if reqs:
                batches[b] = reqs
        bps = self.cfg.bandwidth_bps / 8.0 * (1.0 - self.rho_for_link(""))
        res = inter_schedule(now, batches, bps, self.cfg.prune_budget, prune=self.cfg.pruning)
        self.ref_rank = {b: i for i, b in enumerate(res.order)} if self.cfg.red else {}
        changes = {}
        for rid in res.pruned:
            self.ref_pruned.add(rid)
            for st in self.flows_of(rid):
                if st.info.stage == STAGE_P2D and not st.scavenger:
                    st.scavenger = True
                    self._set(st, self.layout.scavenger, changes)
        return changes

    def ref_load(self, req):
        rid = req.request_id
        pruned = rid in self.ref_pruned
        loads, fixed = {}, {}
        if req.remaining_bytes > 0:
            if not pruned:
                loads["*"] = float(req.remaining_bytes)
        else:
            for st in self.flows_of(rid):
                i = st.info
                if i.stage == STAGE_P2D and pruned:
                    continue
                into = loads if i.stage == STAGE_P2D else fixed
                for port in {link_name(i.src, "tx") if i.src else "*", link_name(i.dst, "rx") if i.dst else "*"}:
                    into[port] = into.get(port, 0.0) + st.bytes_left
        return RequestLoad(rid, req.deadline, self.remaining_compute(req), loads, fixed, pruned)

    def rank(self, fid):
        st = self._state(fid)
        if st.info.stage == STAGE_P2D:
            return 0.0
        bid = self.ref_batch.get(st.info.request_id, st.info.batch_id)
        return float(self.ref_rank.get(bid, math.inf))

    def is_pruned(self, rid):
        return rid in self.ref_pruned


HOSTS = ["h0", "h1", "h2", "h3"]


def _drive(seed: int, steps: int, **cfg):
    """Run the same random events through both; return counts of what was exercised."""
    rnd = random.Random(seed)
    conf = PolicyConfig(**{"bandwidth_bps": 8e3, "recheck_interval_s": rnd.choice([0.0, 0.01]), **cfg})
    inc, ref = MfsPolicy(conf), Reference(conf)
    stats = {"pruned": 0, "walks": 0, "batch_events": 0}
    walk = inc._walk

    def counted(*a):
        stats["walks"] += 1
        return walk(*a)

    inc._walk = counted
    now = 0.0
    fid = 0
    live: set[int] = set()
    ever_pruned: set[int] = set()
    for step in range(steps):
        rids = list(range(step // 60, step // 60 + 12))  # a sliding window of request ids
        now += rnd.choice([0.0, 0.001, 0.01, 0.05])
        ev = rnd.random()
        if ev < 0.12:
            rid = rnd.choice(rids)
            req = RequestInfo(rid, rnd.randrange(6), deadline=now + rnd.uniform(-0.05, 1.5), arrival=now,
                              num_layers=rnd.randint(1, 6), remaining_compute=rnd.choice([0.0, 0.05, 0.3, 1.0]),
                              remaining_bytes=rnd.choice([0, 0, 0, 0, rnd.randrange(1, 2000)]))
            out = [p.request_start(now, req) for p in (inc, ref)]
        elif ev < 0.17:
            rid = rnd.choice(rids)
            out = [p.request_end(now, rid) for p in (inc, ref)]
        elif ev < 0.42:
            fid += 1
            stage = rnd.choice([1, 2, 3, 3])
            info = FlowInfo(fid, stage, rnd.choice(rids), rnd.randrange(0, 3000),
                            deadline=rnd.choice([None, None, now + rnd.uniform(-0.1, 2.0)]),
                            target_layer=rnd.randrange(6), current_layer=rnd.randrange(3),
                            batch_id=rnd.randrange(6), src=rnd.choice(HOSTS + [""]), dst=rnd.choice(HOSTS))
            out = [p.flow_start(now, FlowInfo(*[getattr(info, f) for f in info.__slots__])) for p in (inc, ref)]
            live.add(fid)
        elif ev < 0.52 and live:
            f = rnd.choice(sorted(live))
            sent = rnd.randrange(0, 3500)
            out = [p.progress(now, f, sent) for p in (inc, ref)]
        elif ev < 0.58 and live:
            f = rnd.choice(sorted(live))
            live.discard(f)
            out = [p.flow_end(now, f) for p in (inc, ref)]
        elif ev < 0.72:
            rid, layer, done = rnd.choice(rids), rnd.randrange(7), rnd.random() < 0.25
            out = [p.layer_boundary(now, rid, layer, done) for p in (inc, ref)]
        elif ev < 0.82:
            out = [p.tick(now) for p in (inc, ref)]
        elif ev < 0.95:
            bid, kind = rnd.randrange(6), rnd.choice(["arrival", "arrival", "departure"])
            out = [p.batch_event(now, bid, kind) for p in (inc, ref)]
            stats["batch_events"] += 1
        else:
            link = rnd.choice(["", link_name(rnd.choice(HOSTS), rnd.choice(["tx", "rx"]))])
            rho = rnd.random()
            out = [p.link_load(now, rho, link) for p in (inc, ref)]
        assert out[0] == out[1], (step, out)
        assert {s.info.flow_id: s.level for s in inc.flows()} == {s.info.flow_id: s.level for s in ref.flows()}, step
        assert [inc.rank(f) for f in sorted(live)] == [ref.rank(f) for f in sorted(live)], step
        assert [inc.is_pruned(r) for r in rids] == [ref.is_pruned(r) for r in rids], step
        ever_pruned |= ref.ref_pruned
        assert [s.scavenger for s in inc.flows()] == [s.scavenger for s in ref.flows()], step
    stats["pruned"] = len(ever_pruned)
    return stats


@pytest.mark.parametrize("seed", range(6))
def test_incremental_equals_reference_default(seed):
    _drive(seed, 1200)


@pytest.mark.parametrize("cfg", [
    {"K": 4}, {"on_infeasible": "urgent"}, {"on_infeasible": "keep"}, {"mlu_bytes": "message"},
    {"red": False}, {"pruning": False}, {"prune_budget": 1}, {"prune_budget": 0},
    {"red": False, "pruning": False}, {"bandwidth_bps": 8e5}, {"bandwidth_bps": 8e1},
])
def test_incremental_equals_reference_configs(cfg):
    for seed in range(3):
        _drive(100 + seed, 800, **cfg)


def test_the_random_runs_exercise_pruning_and_the_skipped_walk():
    s = _drive(1000, 2500)
    assert s["pruned"] > 20  # Algorithm 1 really pruned in these runs ...
    assert 0 < s["walks"] < s["batch_events"] / 2  # ... through the walk, which the bound skipped mostly


# --- cost: what one event touches ---------------------------------------------------------------
def test_tick_rechecks_a_request_with_many_pushes_as_one_group(monkeypatch):
    """20k Stage-3 flows under a prefill-done request: a tick computes one MLU, not 20k."""
    pol = MfsPolicy(PolicyConfig(bandwidth_bps=8e9, recheck_interval_s=0.0))
    pol.request_start(0, RequestInfo(1, 1, deadline=10.0, arrival=0, num_layers=4))
    pol.layer_boundary(0, 1, 4, prefill_done=True)
    for f in range(20_000):
        pol.flow_start(0, FlowInfo(f, STAGE_P2D, 1, 1000, target_layer=3, src="p", dst="d"))
    calls = []
    orig = pol.p2d_target
    monkeypatch.setattr(pol, "p2d_target", lambda now, st: (calls.append(1), orig(now, st))[1])
    assert pol.tick(1.0) == {}
    assert len(calls) == 1
    # when their level does change, every flow is reported once
    ch = pol.tick(9.97)  # 20 MB left, 30 ms: MLU 0.67
    assert len(ch) == 20_000 and set(ch.values()) == {0} and len(calls) == 2


def test_tick_budget_carries_the_rest_of_the_pass_over():
    def make():
        pol = MfsPolicy(PolicyConfig(bandwidth_bps=8e9, recheck_interval_s=1.0))
        for rid in range(10):
            pol.request_start(0, RequestInfo(rid, rid, deadline=1.0, arrival=0, num_layers=1))
            pol.flow_start(0, FlowInfo(rid, STAGE_P2D, rid, 10**8, src="p", dst=f"d{rid}"))
            pol.layer_boundary(0, rid, 1, prefill_done=True)
        return pol

    whole = make().tick(0.9)  # MLU 0.1 / 0.1 = 1 -> the top tier, for all 10
    assert len(whole) == 10
    pol = make()
    parts, calls = {}, 0
    while True:
        parts.update(pol.tick(0.9, budget=3))
        calls += 1
        if not pol.pending_work():
            break
    assert parts == whole and calls == 4
    assert pol.tick(0.95, budget=3) == {}  # the next pass waits for recheck_interval_s again
    with pytest.raises(ValueError, match="budget"):
        pol.tick(5.0, budget=0)


def test_batch_event_touches_only_changed_batches(monkeypatch):
    """With many feasible batches, a batch event re-keys only the batch that changed and
    skips Algorithm 1's walk (the bound proves nothing can be pruned)."""
    import mfs.policy.rmlq as rmlq

    pol = MfsPolicy(PolicyConfig(bandwidth_bps=8e9))
    for b in range(2000):
        pol.request_start(0, RequestInfo(b, b, deadline=10.0 + b, arrival=0, num_layers=4, remaining_compute=1.0))
        pol.flow_start(0, FlowInfo(b, STAGE_COLLECTIVE, b, 10**6, src=f"h{b % 7}", dst=f"h{b % 5}"))
        pol.batch_event(0, b, "arrival")
    splits, walks = [], []
    orig_split, orig_walk = rmlq.red_split, pol._walk
    monkeypatch.setattr(rmlq, "red_split", lambda d: (splits.append(1), orig_split(d))[1])
    monkeypatch.setattr(pol, "_walk", lambda *a: (walks.append(1), orig_walk(*a))[1])
    pol.request_start(1, RequestInfo(5000, 5000, deadline=10.5, arrival=1, num_layers=4))
    pol.flow_start(1, FlowInfo(5000, STAGE_COLLECTIVE, 5000, 10, src="h0", dst="h1"))
    assert pol.batch_event(1, 5000, "arrival") == {}
    assert len(splits) == 1 and walks == []
    assert pol.rank(5000) == 1 and pol.rank(0) == 0 and pol.rank(1) == 2


def test_sorted_keys_matches_a_sorted_list(monkeypatch):
    from bisect import bisect_left

    from mfs.policy.rmlq import SortedKeys

    monkeypatch.setattr(SortedKeys, "LOAD", 4)  # many bucket splits and removals
    rnd = random.Random(7)
    sk, ref = SortedKeys(), []
    for _ in range(3000):
        k = (rnd.randrange(60), rnd.randrange(5))
        if rnd.random() < 0.55:
            if k not in ref:
                sk.add(k)
                ref.append(k)
                ref.sort()
        else:
            sk.remove(k)
            if k in ref:
                ref.remove(k)
        assert list(sk) == ref and len(sk) == len(ref)
        probe = (rnd.randrange(60), rnd.randrange(5))
        assert sk.index(probe) == bisect_left(ref, probe)
        if ref:
            assert sk.first() == ref[0]
