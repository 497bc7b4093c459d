"""Bad YAML and unknown P4Info names: one clear error line naming file and key, never a traceback.

* seeded mutation fuzz of every shipped configuration (controller example, topologies,
  tutorials-style JSON, the policy section, p4src/queues.yaml): each mutant either
  loads or raises ConfigError "<file>: <key>: <what is wrong>" on one line;
* the command-line tools (mfs-controller --check, mfs-topo run, python -m controller.tofino,
  mfs-switch --table-size) exit non-zero with exactly that one line on stderr;
* unknown P4Info names in static entries fail at config load with the name and suggestions.
"""

from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller import config as config_mod
from controller import tofino
from mfs.configutil import ConfigError, Section, load_yaml
from mfs.policy import PolicyConfig
from topo import topology

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "controller" / "examples" / "controller.yaml"
QUEUES = ROOT / "p4src" / "queues.yaml"
TOPOLOGIES = sorted((ROOT / "topo" / "topologies").glob("*.yaml"))
TUTORIALS = ROOT / "topo" / "topologies" / "tutorials-pod" / "topology.json"
PY = sys.executable
SRC = "fz.yaml"
N_MUTANTS = 150  # per configuration; bounded (shared CPU)

HOSTILE = [None, True, False, 0, -1, 1, 2**70, -2**70, 1.5, math.nan, math.inf, -math.inf, "", "x", "nan", "1e999",
           [], [1], {}, {"zz": 1}, {1: 2}, "10.0.0.1/abc", "\0", "a" * 2000, [[]], 3.0, "h1", "s1"]


# ---------------------------------------------------------------- mutation fuzz
def _paths(d, pre=()):
    if pre:
        yield pre
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, pre + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, pre + (i,))


def mutate(data, rng: random.Random, n: int):
    """``n`` random edits: replace a value by a hostile one, delete a key, add an unknown key or list item."""
    d = copy.deepcopy(data)
    for _ in range(n):
        paths = list(_paths(d))
        if not paths:
            return rng.choice(HOSTILE)
        p = rng.choice(paths)
        parent = d
        for k in p[:-1]:
            parent = parent[k]
        r = rng.random()
        if r < 0.6:
            parent[p[-1]] = copy.deepcopy(rng.choice(HOSTILE))
        elif r < 0.8 and isinstance(parent, dict):
            del parent[p[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(["typo_key", "nmae", 7])] = 1
        else:
            parent.append(copy.deepcopy(rng.choice(HOSTILE)))
    return d


def _queues(data, tmp_path: Path):
    p = tmp_path / SRC
    p.write_text(yaml.safe_dump(data))
    return tofino.load(p)


def _policy(data, _tmp):
    return PolicyConfig.from_section(Section(data, SRC, "policy"))


CONFIGS = [("controller", load_yaml(EXAMPLE), lambda d, _t: config_mod.parse(d, SRC))]
CONFIGS += [(f"topology {p.stem}", load_yaml(p), lambda d, _t: topology.from_dict(d, SRC)) for p in TOPOLOGIES]
CONFIGS += [("tutorials json", json.loads(TUTORIALS.read_text()), lambda d, _t: topology.from_tutorials(d, SRC)),
            ("policy section", load_yaml(EXAMPLE)["policy"], _policy),
            ("queues.yaml", load_yaml(QUEUES), _queues)]


@pytest.mark.parametrize("name,data,parse", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_mutated_configs_fail_with_one_clear_line(name, data, parse, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # queues: the error names SRC relative to here
    parse(copy.deepcopy(data), tmp_path)  # the shipped file itself loads
    rng = random.Random(sum(map(ord, name)))
    failed = 0
    for i in range(N_MUTANTS):
        m = mutate(data, rng, 1 + i % 3)
        try:
            parse(m, tmp_path)
        except ConfigError as e:
            failed += 1
            msg = str(e)
            assert msg.startswith(f"{SRC}: ") or msg.startswith(f"{tmp_path / SRC}: "), msg
            assert "\n" not in msg, f"error is not one line: {msg!r}"
            assert e.message, msg
        except Exception as e:  # pragma: no cover - the message names the mutant
            pytest.fail(f"{name}: {type(e).__name__}: {e} for mutant {str(m)[:400]}")
    assert failed > N_MUTANTS // 3, "the mutations hardly ever produce an invalid config"


def test_integer_yaml_keys_are_accepted():
    data = load_yaml(EXAMPLE)
    data["level_dscp"] = {0: 56, 1: 48}  # the documented form; crashed Section.done() once
    data["switches"][0]["ports"][2]["trusted_dscp"] = {46: 1}
    cfg = config_mod.parse(data, SRC)
    assert cfg.level_dscp[1] == 48 and cfg.switch("s1").ports[2].trusted_dscp == {46: 1}
    data["level_dscp"] = {0: 56, 9: 1}
    with pytest.raises(ConfigError, match=r"level_dscp\.9: level 9 is out of range \(allowed: 0\.\.7\)"):
        config_mod.parse(data, SRC)


# ---------------------------------------------------------------- command-line tools
BAD_FILES = {
    "binary": b"\xff\xfe\x00garbage\x80",
    "unclosed": b"switches: [1, 2\n",
    "tab": b"\tswitches: 1\n",
    "top-level list": b"- 1\n- 2\n",
    "python tag": b"!!python/object/apply:os.system ['true']\n",
}


def _run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)


def _one_clear_line(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


def _controller_yaml(tmp_path: Path, mutate_fn) -> Path:
    data = load_yaml(EXAMPLE)
    mutate_fn(data)
    p = tmp_path / "bad-controller.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_cli_tools_refuse_unparsable_files_in_one_line(kind, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(BAD_FILES[kind])
    _one_clear_line(_run([PY, "-m", "controller.main", "--config", str(bad), "--check"]), str(bad))
    _one_clear_line(_run([PY, "-m", "controller.tofino", "--queues", str(bad), "--out", str(tmp_path / "o")]),
                    str(bad))
    _one_clear_line(_run([PY, "-m", "topo.cli", "run", str(bad)]), str(bad))
    assert not (tmp_path / "o").exists()


def test_cli_tools_name_key_and_allowed_values(tmp_path):
    cfg = _controller_yaml(tmp_path, lambda d: d["policy"].update(K=12))
    _one_clear_line(_run([PY, "-m", "controller.main", "--config", str(cfg), "--check"]),
                    str(cfg), "policy.K", "12")
    cfg = _controller_yaml(tmp_path, lambda d: d["limits"].update(burts=5))
    _one_clear_line(_run([PY, "-m", "controller.main", "--config", str(cfg), "--check"]),
                    "limits.burts", "unknown key", "burst")
    cfg = _controller_yaml(tmp_path, lambda d: d["policy"].update(scheduler="nonesuch"))
    _one_clear_line(_run([PY, "-m", "controller.main", "--config", str(cfg), "--check"]),
                    "policy.scheduler", "'nonesuch'", "mfs")
    topo = tmp_path / "bad-topo.yaml"
    data = load_yaml(ROOT / "topo" / "topologies" / "line2.yaml")
    data["switches"][0]["target"] = "tofino9"
    topo.write_text(yaml.safe_dump(data))
    _one_clear_line(_run([PY, "-m", "topo.cli", "run", str(topo)]), str(topo), "switches[0].target", "embedded")
    q = tmp_path / "bad-queues.yaml"
    data = load_yaml(QUEUES)
    data["scheduling"] = "wfq"
    q.write_text(yaml.safe_dump(data))
    _one_clear_line(_run([PY, "-m", "controller.tofino", "--queues", str(q), "--out", str(tmp_path / "o")]),
                    "scheduling", "'wfq'", "strict, dwrr")
    ok = _run([PY, "-m", "controller.main", "--config", str(EXAMPLE), "--check"])
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr


# ---------------------------------------------------------------- unknown P4Info names
ROUTE = {"table": "MfsIngress.ipv4_lpm", "match": {"dst_addr": "10.0.0.9/32"}, "action": "MfsIngress.route",
         "params": {"port": 1, "src_mac": "02:00:00:00:01:00", "dst_mac": "02:00:00:00:00:09"}}


@pytest.mark.parametrize("field,value,words", [
    ("table", "MfsIngress.ipv4_lmp", ["unknown table 'MfsIngress.ipv4_lmp'", "did you mean MfsIngress.ipv4_lpm"]),
    ("action", "MfsIngress.rout", ["unknown action 'MfsIngress.rout'", "did you mean MfsIngress.route"]),
    ("match", {"dst_adr": "10.0.0.9/32"}, ["no match field 'dst_adr'", "dst_addr"]),
    ("match", {"dst_addr": "10.0.0.9/abc"}, ["dst_addr", "prefix length 'abc'"]),
    ("params", {"port": 1, "src_mac": "02:00:00:00:01:00", "dmac": 1}, ["unknown params ['dmac']", "dst_mac"]),
    ("params", {"port": 600, "src_mac": "02:00:00:00:01:00", "dst_mac": 1}, ["route.port", "9 bits"]),
])
def test_unknown_p4info_names_in_static_entries(field, value, words, tmp_path):
    def bad(d):
        e = dict(ROUTE)
        e[field] = value
        d["switches"][0]["entries"].append(e)

    with pytest.raises(ConfigError) as ei:
        config_mod.parse(load_yaml(_controller_yaml(tmp_path, bad)), SRC)
    msg = str(ei.value)
    assert msg.startswith(f"{SRC}: switches[0].entries[2]: "), msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_unknown_names_on_the_command_line(tmp_path):
    cfg = _controller_yaml(tmp_path, lambda d: d["switches"][0]["entries"].append(
        dict(ROUTE, table="MfsIngress.mfs_flw")))
    _one_clear_line(_run([PY, "-m", "controller.main", "--config", str(cfg), "--check"]),
                    "switches[0].entries[2]", "'MfsIngress.mfs_flw'", "did you mean MfsIngress.mfs_flow")
    _one_clear_line(_run([PY, "-m", "topo.embedded.main", "--grpc-server-addr", "127.0.0.1:0",
                          "--table-size", "mfs_flws=4"]), "'mfs_flws'", "did you mean")
