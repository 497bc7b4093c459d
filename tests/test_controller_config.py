"""Controller YAML: the example loads; every error names the file, the key and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from controller import config as config_mod
from controller.main import main as controller_main
from controller.testing import config_data
from mfs.configutil import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "controller" / "examples" / "controller.yaml"


def test_example_config_loads():
    cfg = config_mod.load(EXAMPLE)
    assert [s.name for s in cfg.switches] == ["s1"]
    assert cfg.switch("s1").ports[3].dscp_mode == "clear"
    assert cfg.switch("s1").ports[2].trusted_dscp[56] == 0  # trusted_dscp: true = class selectors
    assert cfg.host("h1").trusted and cfg.host("h1").ceiling == 2
    assert cfg.policy.scheduler == "mfs" and cfg.policy.K == 8
    assert len(cfg.switch("s1").entries) == 2


def _set(data, path, value):
    cur = data
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    last = keys[-1]
    if value is _DEL:
        del cur[last]
    elif isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


_DEL = object()

BAD = [
    ("switches", [], "switches", "at least one switch"),
    ("switches.0.address", "no-port", "switches[0].address", "host:port"),
    ("switches.0.election_id", 0, "switches[0].election_id", "allowed: 1.."),
    ("switches.0.ports", {1: {"rate_bps": 1e9, "dscp_mode": "paint"}}, "switches[0].ports.1.dscp_mode",
     "allowed: rewrite, clear, leave"),
    ("switches.0.ports", {1: {"rate_bps": -5}}, "switches[0].ports.1.rate_bps", "out of range"),
    ("switches.0.ports", {999: {"rate_bps": 1e9}}, "switches[0].ports.999", "0..510"),
    ("switches.0.ports", {1: {"rate_bps": 1e9, "trusted_dscp": {70: 1}}}, "switches[0].ports.1.trusted_dscp.70",
     "0..63"),
    ("switches.0.p4info", "/nonexistent/p4info.txtpb", "switches[0].p4info", "does not exist"),
    ("switches.0.colour", "red", "switches[0].colour", "unknown key"),
    ("switches.0.entries", [{"table": "x", "oops": 1}], "switches[0].entries[0].oops", "unknown key"),
    ("hosts.0.token", "short", "hosts[0].token", "too short"),
    ("hosts.0.address", "10.0.0.300", "hosts[0].address", "not an IPv4 address"),
    ("hosts.0.switch", "s9", "hosts[0].switch", "allowed: s1"),
    ("hosts.0.ceiling", 9, "hosts[0].ceiling", "allowed: 0..7"),
    ("hosts.1.name", "h1", "hosts[1].name", "duplicate host name"),
    ("hosts.0.port", _DEL, "hosts[0].trusted", "needs `switch` and `port`"),
    ("stage_defaults", [{"stage": 4, "level": 1}], "stage_defaults[0].stage", "allowed: 1..3"),
    ("stage_defaults", [{"stage": 1, "level": 1, "rli": [5, 2]}], "stage_defaults[0].rli", "low <= high"),
    ("policy", {"scheduler": "magic"}, "policy.scheduler", "allowed: mfs"),
    ("policy", {"K": 12}, "policy.K", "2..8"),
    ("gc_timeout_s", 0, "gc_timeout_s", "out of range"),
    ("limits", {"flow_id_bits": 31}, "limits.flow_id_bits", "4..28"),
    ("limits", {"max_connections": 16, "max_connections_per_peer": 17}, "limits.max_connections_per_peer",
     "1..16"),
    ("api", {"listen": "1.2.3.4:99999"}, "api.listen", "host:port"),
    ("api", {"listen": "unix:relative.sock"}, "api.listen", "absolute path"),
    ("admin", {"listen": "unix:/run/mfs/admin.sock"}, "admin.listen", "host:port"),
    ("typo_key", 1, "typo_key", "unknown key"),
]


@pytest.mark.parametrize("path,value,key,allowed", BAD, ids=[b[2] + ":" + b[3][:12] for b in BAD])
def test_bad_values_name_file_key_and_allowed(path, value, key, allowed):
    data = copy.deepcopy(config_data(["127.0.0.1:9559"]))
    _set(data, path, value)
    with pytest.raises(ConfigError) as ei:
        config_mod.parse(data, "ctl.yaml")
    msg = str(ei.value)
    assert msg.startswith(f"ctl.yaml: {key}"), msg
    assert allowed in msg, msg


def test_not_yaml_and_missing_file(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("switches: [\n  - {name: s1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML at line"):
        config_mod.load(p)
    assert controller_main(["--config", str(p), "--check"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert controller_main(["--config", str(tmp_path / "none.yaml"), "--check"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_check_flag_accepts_the_example(capsys):
    assert controller_main(["--config", str(EXAMPLE), "--check"]) == 0
    assert "OK" in capsys.readouterr().out


def test_ideal_policy_is_refused_by_the_controller():
    from controller.engine import Engine
    data = config_data(["127.0.0.1:9559"], policy={"scheduler": "llf"})
    cfg = config_mod.parse(data, "ctl.yaml")
    with pytest.raises(ValueError, match="simulator can run it, a switch cannot"):
        Engine(cfg)



def test_host_api_may_listen_on_a_unix_socket():
    data = copy.deepcopy(config_data(["127.0.0.1:9559"]))
    data["api"] = {"listen": "unix:/run/mfs/ctl.sock"}
    assert config_mod.parse(data, "ctl.yaml").api_listen == "unix:/run/mfs/ctl.sock"
