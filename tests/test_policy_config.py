"""PolicyConfig: defaults, YAML loading, round trip, and errors that name the key."""

import pytest

from mfs.configutil import ConfigError, Section
from mfs.policy import PolicyConfig
from mfs.policy.config import Layout


def load(data, source="controller.yaml"):
    return PolicyConfig.from_section(Section(data, source, "policy"))


def test_defaults_and_round_trip():
    c = PolicyConfig()
    assert (c.scheduler, c.K, c.E, c.U, c.mlu_mapping) == ("mfs", 8, 4.0, 0.5, "u_top")
    assert c.layout == Layout(0, 1, (2, 3, 4), (5, 6), 7)
    assert c.mlu_cutoffs() == [0.5, 0.125]
    assert PolicyConfig(mlu_mapping="q1_top").mlu_cutoffs() == [0.125, 0.03125]
    for conf in (c, PolicyConfig(scheduler="sjf", K=3, ideal=True), PolicyConfig(K=5, U=0.9)):
        assert PolicyConfig.from_dict(conf.to_dict()) == conf


def test_yaml_values_and_custom_layout():
    c = load({"scheduler": "mfs", "K": 6, "E": 2, "U": 1, "recheck_interval_s": 0.01,
              "layout": {"urgent_p2d": 0, "stage2": 1, "stage1": [1, 2], "p2d": [3, 4], "scavenger": 5},
              "mlu_thresholds": [0.9, 0.3]})
    assert c.K == 6 and c.layout.stage1 == (1, 2) and c.mlu_cutoffs() == [0.9, 0.3]
    assert len(c.sjf_thresholds) == 5 and len(c.karuna_thresholds) == 4 and len(c.edf_thresholds_s) == 4


@pytest.mark.parametrize("data,key,allowed", [
    ({"K": 12}, "policy.K", "2..8"),
    ({"K": 1}, "policy.K", "2..8"),
    ({"scheduler": "wfq"}, "policy.scheduler", "mfs, fair, fifo, sjf, edf, karuna, pias, llf"),
    ({"mlu_mapping": "x"}, "policy.mlu_mapping", "u_top, q1_top"),
    ({"on_infeasible": "drop"}, "policy.on_infeasible", "scavenger, urgent, keep"),
    ({"E": 1}, "policy.E", ">1.0"),
    ({"U": 0}, "policy.U", ">0.0"),
    ({"rho_cap": 1.0}, "policy.rho_cap", "<=0.99"),
    ({"bandwidth_bps": "fast"}, "policy.bandwidth_bps", "not a number"),
    ({"ideal": True}, "policy.ideal", "sjf, edf, fifo, llf"),
    ({"scheduler": "llf", "ideal": False}, "policy.ideal", "true, null"),
    ({"sjf_thresholds": [1, 2]}, "policy.sjf_thresholds", "needs exactly 7"),
    ({"pias_thresholds": [1, 2, 3, 3, 5, 6, 7]}, "policy.pias_thresholds", "strictly increasing"),
    ({"mlu_thresholds": [0.1, 0.5]}, "policy.mlu_thresholds", "strictly decreasing"),
    ({"edf_thresholds_s": [1, 2, 3, 4, 5, -6]}, "policy.edf_thresholds_s[5]", "positive"),
    ({"prune_budget": -1}, "policy.prune_budget", ">=0"),
    ({"Kay": 3}, "policy.Kay", "unknown key"),
    ({"layout": {"urgent_p2d": 0}}, "policy.layout.stage2", "is required"),
    ({"layout": {"urgent_p2d": 0, "stage2": 1, "stage1": [2], "p2d": [3], "scavenger": 9}},
     "policy.layout.scavenger", "0..7"),
    ({"layout": {"urgent_p2d": 0, "stage2": 1, "stage1": [3, 2], "p2d": [5], "scavenger": 7}},
     "policy.layout.stage1", "strictly increasing"),
    ({"layout": {"urgent_p2d": 0, "stage2": 1, "stage1": [2], "p2d": [5], "scavenger": 3}},
     "policy.layout.scavenger", "lowest level"),
    ({"layout": {"urgent_p2d": 0, "stage2": 1, "stage1": [], "p2d": [5], "scavenger": 7}},
     "policy.layout.stage1", "non-empty"),
])
def test_errors_name_file_key_and_allowed_values(data, key, allowed):
    with pytest.raises(ConfigError) as ei:
        load(data)
    msg = str(ei.value)
    assert msg.startswith(f"controller.yaml: {key}: "), msg
    assert allowed in msg


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match="K: 9 is out of range"):
        PolicyConfig(K=9)
    with pytest.raises(ConfigError, match="layout.stage2"):
        PolicyConfig(K=4, layout=Layout(0, 4, (1,), (2,), 3))


def test_to_dict_leaves_derived_values_null_so_k_can_change():
    d = PolicyConfig().to_dict()
    assert d["layout"] is None and d["sjf_thresholds"] is None and d["edf_thresholds_s"] is None
    c4 = PolicyConfig.from_dict({**d, "K": 4})  # what `mfsctl policy set K=4` does
    assert c4.layout.scavenger == 3 and len(c4.sjf_thresholds) == 3
    custom = PolicyConfig(K=4, sjf_thresholds=[1, 2, 3])
    assert custom.to_dict()["sjf_thresholds"] == [1.0, 2.0, 3.0]
    assert PolicyConfig.from_dict(custom.to_dict()) == custom


def test_switch_schedulers_exclude_the_ideal_oracle():
    from mfs.policy import switch_schedulers
    names = switch_schedulers()
    assert "llf" not in names
    assert {"mfs", "fair", "fifo", "sjf", "edf", "karuna", "pias"} <= set(names)
    from mfs.policy import PolicyConfig, make_switch_policy
    assert make_switch_policy(PolicyConfig(scheduler="fifo")).num_levels == 1  # one FIFO queue
    assert make_switch_policy(PolicyConfig(scheduler="sjf")).num_levels == 8
    with pytest.raises(ValueError, match="'llf' is ideal"):
        make_switch_policy(PolicyConfig(scheduler="llf"))
    with pytest.raises(ValueError, match="'sjf' is ideal"):
        make_switch_policy(PolicyConfig(scheduler="sjf", ideal=True))
