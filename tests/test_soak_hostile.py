"""Bounded soak (issue 10, "Done when"): a hostile host (its own process, controller/hostile.py:
floods in maximal batches beyond its rate limit, re-registering, filling the table, layer state
for requests never started, the legitimate host's request and flow ids, garbage bytes, idle
connections) beside a legitimate host reporting a steady stream. The legitimate host's reports
stay prompt (p99 under a generous bound: a busy 2-core box), none of its events is refused, and
every one of its live flows has its entry on the switch at the level the controller wants."""

from __future__ import annotations


import numpy as np
import pytest

from controller import config as config_mod
from controller.hostile import result, spawn
from controller.testing import LiveController, TargetUnavailable, config_data, free_port, open_target
from tests.test_hostapi_agent import wait

DURATION_S = 15.0
# alone it is a few ms; 27-66 ms measured (3 runs, 2026-12-01, beside other test runs on the 2-core
# box): 1 s is ~15x that, robust on a busy box, and still catches a round that holds the loop for
# long (a freeze was 60 s); a speed figure is make bench's
P99_BOUND_S = 1.0


@pytest.mark.slow  # ~35 s: in `make test`, not in `make test-unit`
def test_hostile_host_beside_a_legitimate_one():
    try:
        cm = open_target("embedded-process")
        t = cm.__enter__()
    except TargetUnavailable as e:
        pytest.skip(str(e))
    api = free_port()
    cfg = config_mod.parse(config_data([t.address], api={"listen": f"127.0.0.1:{api}"}), "soak.yaml")
    lc = LiveController(cfg)
    target = f"127.0.0.1:{api}"
    victim_base = 0  # h1 is host 0
    proc = spawn(target, DURATION_S + 5, victim_base=victim_base)
    try:
        r = result(spawn(target, DURATION_S, "h1", "token-of-h1", "10.0.0.1", role="legit"))
        r["live"] = {tuple(x) for x in r["live"]}
        eng = lc.c.engine

        def mine():
            return {(row["stage"], row["flow_id"]): (row["level"], row["installed"]["s1"])
                    for row in lc.call(lc.c.flows()) if row["host"] == "h1"}
        # checked while the attack goes on
        assert proc.poll() is None, "the hostile host stopped early"
        assert set(mine()) == r["live"]
        wait(lambda: all(lvl is not None and lvl == inst for lvl, inst in mine().values()),
             what=f"the legitimate host's entries installed: {mine()}")
        assert eng.live_flows.get("h2", 0) <= cfg.limits.max_flows_per_host
        attack = result(proc, 60)
        lat = np.asarray(r["latency"])
        p50, p99 = np.quantile(lat, 0.5), np.quantile(lat, 0.99)
        print(f"legitimate host: {lat.size} reports, p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms; "
              f"hostile: {attack}")
        assert not r["rejected"], r["rejected"][:5]
        assert p99 < P99_BOUND_S, (p50, p99)
        # the attack was really made, and refused as documented
        assert attack.get("report_RESOURCE_EXHAUSTED", 0) > 0 and attack.get("garbage_INVALID_ARGUMENT", 0) > 0
        refused = lc.c.metrics.by_label("rejected_reports", "reason")
        assert refused.get("flood", 0) + refused.get("queue_full", 0) > 0 and refused.get("decode", 0) > 0, refused
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lc.stop()
        cm.__exit__(None, None, None)
