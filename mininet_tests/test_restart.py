"""Restart of the switch process mid-run: the controller resyncs and traffic continues."""

import threading
import time

import pytest

from topo.net import Network, unique_tag
from topo.topology import load

from .helpers import TARGETS, by_flow, flow_arg, require_target, run_traffic

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.mark.parametrize("target", TARGETS)
def test_switch_restart_controller_resyncs(target, tmp_path):
    require_target(target, shared_bottleneck=False)
    fid, n, rate = 41, 1200, 1e6  # 500 B packets at 1 Mb/s: ~4.8 s of traffic
    with Network(load("line2"), tag=unique_tag(), target=target, controller=True, agents=False,
                 logdir=tmp_path / "logs") as net:
        # the controller installed the routes: traffic flows before the restart
        marks = {}

        def restart(_t_send):
            time.sleep(1.0)
            marks["down"] = time.time()
            net.restart_switch("s1")  # all switch state is lost (new process)
            marks["up"] = time.time()

        rows = run_traffic(net, "h1", "h2", [flow_arg(3, fid, n, rate)], tmp_path, during=restart, idle=3.0)
        assert not net.check_processes(), net.check_processes()
    got = by_flow(rows, fid)
    before = [r for r in got if r[0] < marks["down"]]
    after = [r for r in got if r[0] > marks["up"]]
    assert len(before) > 100, f"no traffic before the restart ({len(before)} packets)"
    assert after, "no traffic after the restart: the controller did not reinstall the routes"
    resumed = after[0][0] - marks["up"]
    assert resumed < 10.0, f"traffic resumed {resumed:.1f}s after the switch came back"
    # the rest of the flow arrives once resynced
    assert after[-1][2] >= n - 5
