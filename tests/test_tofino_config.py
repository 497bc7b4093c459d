"""controller/tofino.py: p4src/queues.yaml -> bfrt_python script + Stratum snippet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller import tofino
from mfs import levels
from mfs.configutil import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUEUES = ROOT / "p4src" / "queues.yaml"


def _write(tmp_path, text, name="q.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_committed_layout_is_strict_and_complete():
    q = tofino.load(QUEUES)
    assert q.scheduling == "strict" and q.num_queues == levels.NUM_QUEUES
    prios = [q.priority(qid) for qid in range(q.num_queues)]
    assert prios == sorted(set(prios)), "strict: priorities strictly increase with qid"
    # level 0 (the highest) must land on the queue with the highest TM priority
    assert q.priority(levels.queue_of(0)) == tofino.TM_PRIORITIES - 1
    assert q.priority(levels.queue_of(levels.LOWEST_LEVEL)) == 0


def test_bfrt_script_configures_every_queue_of_every_port():
    q = tofino.load(QUEUES)
    script = tofino.bfrt_script(q)
    compile(script, "tm_config.py", "exec")  # valid Python for bfshell -b
    rows = re.findall(r"pg_queue=qid_to_pg_queue\[(\d)\], min_priority=(\d), max_priority=(\d).*# qid \d = level (\d)",
                      script)
    assert len(rows) == len(q.ports) * levels.NUM_QUEUES
    for qid, lo, hi, level in rows:
        assert lo == hi == qid, "strict priority: min = max = qid"
        assert int(level) == levels.level_of_queue(int(qid))
    assert {int(lv) for *_, lv in rows} == set(range(levels.NUM_QUEUES)), "every level mapped"
    shaped = [p for p in q.ports if p.max_rate_gbps]
    assert script.count("tm.port.sched_shaping.mod(") == len(shaped)


def test_stratum_snippet_queue_mapping():
    q = tofino.load(QUEUES)
    text = tofino.stratum_snippet(q)
    assert text.count("{") == text.count("}")
    ports = re.findall(r"sdk_port: (\d+)", text)
    assert [int(p) for p in ports] == [p.dev_port for p in q.ports]
    maps = re.findall(r"# level (\d)\s+queue_id: (\d)\s+priority: PRIO_(\d)", text)
    assert len(maps) == len(q.ports) * levels.NUM_QUEUES
    for level, qid, prio in maps:
        assert int(qid) == levels.queue_of(int(level)) and prio == qid


def test_dwrr_layout_has_no_strict_priorities(tmp_path):
    p = _write(tmp_path, "scheduling: dwrr\ndwrr_weights: [1,2,3,4,5,6,7,8]\nports: [{dev_port: 1}]\n")
    q = tofino.load(p)
    assert {q.priority(i) for i in range(8)} == {0}
    assert "weight: 8" in tofino.stratum_snippet(q)


@pytest.mark.parametrize("text, key, words", [
    ("ports: [{dev_port: 600}]\n", "ports[0].dev_port", "out of range"),
    ("ports: [{dev_port: 1, speed: 3}]\n", "ports[0].speed", "unknown key"),
    ("scheduling: fifo\nports: [{dev_port: 1}]\n", "scheduling", "allowed: strict, dwrr"),
    ("num_queues: 4\nports: [{dev_port: 1}]\n", "num_queues", "out of range"),
    ("dwrr_weights: [1, 2]\nports: [{dev_port: 1}]\n", "dwrr_weights", "one per queue"),
    ("dwrr_weights: [1,2,3,4,5,6,7,5000]\nports: [{dev_port: 1}]\n", "dwrr_weights[7]", "1..1023"),
    ("ports: [{dev_port: 1}, {dev_port: 1}]\n", "ports[1].dev_port", "twice"),
    ("ports: [{dev_port: 1, max_rate_gbps: 0}]\n", "ports[0].max_rate_gbps", "out of range"),
    ("ports: []\n", "ports", "empty"),
    ("num_queues: 8\n", "ports", "required"),
])
def test_bad_yaml_names_file_and_key(tmp_path, text, key, words):
    p = _write(tmp_path, text, "bad-queues.yaml")
    with pytest.raises(ConfigError) as ei:
        tofino.load(p)
    msg = str(ei.value)
    assert "bad-queues.yaml" in msg and f": {key}:" in msg and words in msg, msg


def test_main_writes_files_and_reports_errors(tmp_path, capsys):
    assert tofino.main(["--queues", str(QUEUES), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "tm_config.py").read_text().startswith("# Generated")
    assert "queue_configs" in (tmp_path / "o" / "chassis_config_qos.pb.txt").read_text()
    bad = _write(tmp_path, "scheduling: [\n")
    assert tofino.main(["--queues", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
