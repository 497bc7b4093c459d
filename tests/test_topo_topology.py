"""Topology files: the shipped ones load, tutorials JSON is accepted, bad input names file/key."""

import json

import pytest

from mfs.configutil import ConfigError
from topo import topology as T


@pytest.mark.parametrize("name", ["line2", "demo", "two_switch"])
def test_shipped_topologies_load(name):
    t = T.load(name)
    assert t.hosts and t.switches
    for h in t.hosts:  # every host reachable from every switch
        for s in t.switches:
            assert t.next_port(s, h) in t.switch_ports(s)


def test_demo_has_the_roles_the_demo_needs():
    t = T.load("demo")
    assert len(t.hosts_by_role("prefill")) == 4
    assert len(t.hosts_by_role("decode")) == 1
    assert len(t.hosts_by_role("kvcache")) == 1
    assert all(ln.bandwidth_bps == 100e6 for ln in t.links)


def test_two_switch_routes_cross_the_trunk():
    t = T.load("two_switch")
    assert t.next_port("s1", "d1") == 3 and t.next_port("s1", "p2") == 2
    assert t.next_port("s2", "p1") == 3 and t.next_port("s2", "kv1") == 2
    trunk = [ln for ln in t.links if ln.a.node in t.switches and ln.b.node in t.switches]
    assert len(trunk) == 1 and trunk[0].bandwidth_bps == 50e6


def test_tutorials_json(tmp_path):
    d = tmp_path / "pod"
    d.mkdir()
    (d / "topology.json").write_text(json.dumps({
        "hosts": {"h1": {"ip": "10.0.1.1/24", "mac": "08:00:00:00:01:11", "commands": ["route add default gw"]},
                  "h2": {"ip": "10.0.2.2/24", "mac": "08:00:00:00:02:22"}},
        "switches": {"s1": {"runtime_json": "pod/s1-runtime.json", "priority_queues": 8}},
        "links": [["h1", "s1-p1"], ["s1-p2", "h2", "2ms", 20]]}))
    t = T.load(d / "topology.json")
    assert t.name == "pod"
    ln, ep = t.host_link("h2")
    assert (ep.node, ep.port) == ("s1", 2) and ln.bandwidth_bps == 20e6 and ln.latency_s == pytest.approx(0.002)
    assert t.hosts["h1"].mac == "08:00:00:00:01:11"
    assert any("commands" in n for n in t.notes) and any("runtime_json" in n for n in t.notes)


def test_ports_and_macs_are_assigned():
    t = T.from_dict({"hosts": [{"name": "a", "ip": "10.0.0.1"}, {"name": "b", "ip": "10.0.0.2",
                                                                  "mac": "02:00:00:00:00:01"}],
                     "switches": [{"name": "s1"}],
                     "links": [["a", "s1-p2"], {"a": "b", "b": "s1", "bandwidth": "1gbit"}]})
    assert t.host_link("b")[1].port == 1 and t.host_link("a")[1].port == 2
    assert t.host_link("b")[0].bandwidth_bps == 1e9
    assert t.hosts["a"].mac != t.hosts["b"].mac  # generated MAC avoids the given one
    assert str(t.hosts["a"].ip) == "10.0.0.1/24"


BASE = {"hosts": [{"name": "h1", "ip": "10.0.0.1/24"}, {"name": "h2", "ip": "10.0.0.2/24"}],
        "switches": [{"name": "s1"}], "links": [["h1", "s1-p1"], ["h2", "s1-p2"]]}


@pytest.mark.parametrize("patch, key, words", [
    ({"hosts": [{"name": "h1", "ip": "10.0.0.1", "role": "gpu"}]}, "hosts[0].role", "allowed: prefill"),
    ({"hosts": [{"name": "h1", "ip": "10.0.0.300"}]}, "hosts[0].ip", "not an IPv4"),
    ({"hosts": [{"name": "h1", "ip": "10.0.0.1", "colour": 1}]}, "hosts[0].colour", "unknown key"),
    ({"hosts": [{"name": "H-1", "ip": "10.0.0.1"}]}, "hosts[0].name", "not a valid node name"),
    ({"switches": [{"name": "s1", "target": "tofino"}]}, "switches[0].target", "allowed: embedded, bmv2"),
    ({"switches": [{"name": "s1", "priority_queues": 4}]}, "switches[0].priority_queues", "out of range"),
    ({"links": [["h1", "s1-p1"], ["h2", "s1-p1"]]}, "links[1].1", "used by two links"),
    ({"links": [["h1", "s9-p1"], ["h2", "s1-p2"]]}, "links[0].1", "unknown node 's9'"),
    ({"links": [["h1", "s1-p1"], ["h2", "s1-p2", "0ms", "fast"]]}, "links[1].3", "not a bit rate"),
    ({"links": [["h1", "s1-p1"]]}, "links", "host h2 has 0 links"),
    ({"hosts": [{"name": "h1", "ip": "10.0.0.1"}, {"name": "h2", "ip": "10.0.0.1"}]}, "hosts.h2.ip", "also used by h1"),
    ({"defaults": {"bandwidth": 0.001}}, "defaults.bandwidth", "out of range"),
    ({"links": [["h1", "s1-p1"], ["h2", "s1-p510"]]}, "links[1].1", "510 is the CPU port"),
])
def test_bad_input_names_file_and_key(patch, key, words):
    data = {**BASE, **patch}
    with pytest.raises(ConfigError) as ei:
        T.from_dict(data, "bad.yaml")
    msg = str(ei.value)
    assert msg.startswith(f"bad.yaml: {key}:"), msg
    assert words in msg, msg


def test_missing_file_lists_shipped_topologies(tmp_path):
    with pytest.raises(ConfigError) as ei:
        T.load(tmp_path / "nope.yaml")
    assert "demo" in str(ei.value) and "line2" in str(ei.value)
