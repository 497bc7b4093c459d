"""On the emulated workload, MFS's TTFT SLO attainment beats fair sharing.

A small Mooncake slice on the demo cluster, at a rate where the 100 Mb/s decode port is
congested by Stage-3 pushes while Stage-2 collectives block the GPUs: the stage-aware
scheduler should win clearly. Same requests, fresh cluster per policy.
"""

import argparse

import pytest

from topo import demo
from topo.net import Network, unique_tag
from topo.topology import load

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _args(**kw):
    a = argparse.Namespace(trace="mooncake-conversation", skip=0, requests=16, rate=2.0, slo_scale=None,
                           time_limit=60.0, instance_size=2, target="embedded")
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_mfs_beats_fair_on_emulated_workload(tmp_path):
    pytest.importorskip("hostagent.workload", reason="the workload driver is not available")
    args = _args()
    requests = demo.load_requests(args)
    topo = load("demo")
    res = {}
    for pol in ("mfs", "fair"):
        with Network(topo, tag=unique_tag(), policy=pol, logdir=tmp_path / pol,
                     policy_options={"bandwidth_bps": 100e6}) as net:
            res[pol] = demo.replay(net, requests, args, pol).summary
            assert not net.check_processes()
    assert res["mfs"]["requests"] == res["fair"]["requests"] == len(requests)
    assert res["mfs"]["attainment"] > res["fair"]["attainment"], res
