"""One convention for link-load keys: what the simulator and the controller report reaches MLU."""

from __future__ import annotations

import pytest

from mfs.header import STAGE_P2D
from mfs.policy import FlowInfo, MfsPolicy, PolicyConfig, link_name
from mfs.sim.engine import ClusterConfig, Simulator
from mfs.sim.model import Hardware, ModelConfig
from mfs.sim.workload import Request


def test_link_name_convention_and_rho_for():
    pol = MfsPolicy(PolicyConfig(bandwidth_bps=8e9))
    assert link_name("h1", "tx") == "h1:tx" and link_name("h1", "rx") == "h1:rx"
    f = FlowInfo(1, STAGE_P2D, 1, int(0.3e9), deadline=1.0, src="h1", dst="h2")
    pol.link_load(0, 0.5, "h1:tx")  # the sender's uplink loads the flow
    assert pol.rho_for(f) == 0.5
    pol.link_load(0, 0.7, "h2:rx")  # so does the receiver's downlink
    assert pol.rho_for(f) == 0.7
    pol.link_load(0, 0.8, "h1:rx")  # what h1 receives does not load a flow h1 sends
    pol.link_load(0, 0.85, "h2:tx")
    assert pol.rho_for(f) == 0.7
    assert pol.flow_start(0, f) == 0  # MLU = 0.3 / (1 - 0.7) = 1 -> the top tier


@pytest.mark.parametrize("bad", ["h1", "h1:up", ":tx", "tx:h1"])
def test_link_load_refuses_a_key_outside_the_convention(bad):
    pol = MfsPolicy(PolicyConfig())
    with pytest.raises(ValueError, match="not a load key"):
        pol.link_load(0, 0.5, bad)
    with pytest.raises(ValueError, match="direction"):
        link_name("h1", "up")


TINY = ModelConfig("tiny", num_layers=2, hidden=1024, num_heads=8, num_kv_heads=8, head_dim=128, moe_inter=1024,
                   num_experts=8, top_k=2, tp=8, ep=2)


def test_simulator_link_loads_reach_the_policy_rho():
    """Issue 9 (1): the simulator reported "<host>:tx"/"<host>:rx" while the policy looked up
    "<host>", so every flow's rho stayed 0 and MLU never saw the load."""

    class Spy(MfsPolicy):
        seen = 0.0

        def link_load(self, now, rho, link=""):
            super().link_load(now, rho, link)
            for st in self._flows.values():
                self.seen = max(self.seen, self.rho_for(st.info))

    pol = Spy(PolicyConfig(bandwidth_bps=8e9))
    hw = Hardware(peak_flops=1e12, nic_bw=1e9, layer_overhead=0.0)
    cl = ClusterConfig(servers=4, gpus_per_server=8, warmup=0, measured=4, tick_s=1e-4)
    sim = Simulator(TINY, pol, cl, hw)
    sim.run([Request(i, 0.0, 4096, 1, (), 512) for i in range(4)])
    assert all(k == "" or k.endswith((":tx", ":rx")) for k in pol._rho)
    assert pol.seen > 0.0
