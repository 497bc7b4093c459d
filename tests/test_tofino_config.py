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
    ("buffer: {urgent_levels: [0,1,2,3,4,5,6,7]}\nports: [{dev_port: 1}]\n", "buffer.urgent_levels", "every level"),
    ("buffer: {urgent_levels: [9]}\nports: [{dev_port: 1}]\n", "buffer.urgent_levels[0]", "not a level"),
    ("buffer: {urgent_guaranteed_cells: 20000, urgent_pool_cells: 30000}\nports: [{dev_port: 1}]\n",
     "buffer.urgent_guaranteed_cells", "exceed urgent_pool_cells"),
    ("buffer: {best_effort_baf_percent: 50}\nports: [{dev_port: 1}]\n", "buffer.best_effort_baf_percent",
     "buffer absorption factor"),
    ("ports: [{dev_port: 1, mode: spine}]\n", "ports[0].mode", "allowed: edge, fabric"),
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


def test_buffer_admission_protects_urgent_levels():
    """Urgent levels: their own egress pool and guaranteed cells; best-effort levels share another
    (capped) pool, so their backlog can never take the urgent queues' cells (BF-RT and Stratum)."""
    q = tofino.load(QUEUES)
    urgent = set(q.buffer.urgent_levels)
    assert 0 in urgent and levels.LOWEST_LEVEL not in urgent
    script = tofino.bfrt_script(q)
    rows = re.findall(r"tm\.queue\.buffer\.mod\(pipe=(\d), pg_id=pg_id, pg_queue=qid_to_pg_queue\[(\d)\], "
                      r"guaranteed_cells=(\d+), pool_id='EG_APP_POOL_(\d)'", script)
    assert len(rows) == len(q.ports) * levels.NUM_QUEUES
    for pipe, qid, cells, pool in rows:
        if levels.level_of_queue(int(qid)) in urgent:
            assert (int(cells), int(pool)) == (q.buffer.urgent_guaranteed_cells, tofino.URGENT_POOL)
        else:
            assert (int(cells), int(pool)) == (0, tofino.BEST_EFFORT_POOL)
    assert tofino.URGENT_POOL != tofino.BEST_EFFORT_POOL
    text = tofino.stratum_snippet(q)
    maps = re.findall(r"# level (\d)\s+queue_id: \d\s+priority: PRIO_\d\s+weight: \d+\s+"
                      r"minimum_guaranteed_cells: (\d+)\s+pool: EGRESS_APP_POOL_(\d)", text)
    assert len(maps) == len(q.ports) * levels.NUM_QUEUES
    assert {(int(lv) in urgent, int(pool)) for lv, _c, pool in maps} == {(True, 0), (False, 1)}
    assert re.findall(r"pool: EGRESS_APP_POOL_(\d)\s+pool_size: (\d+)", text) == [
        ("0", str(q.buffer.urgent_pool_cells)), ("1", str(q.buffer.best_effort_pool_cells))]


def test_per_pipe_queues_port_shaping_and_port_modes(tmp_path):
    p = _write(tmp_path, "ports:\n  - {dev_port: 4, mode: fabric, max_rate_gbps: 25, port_id: 7}\n"
                         "  - {dev_port: 140}\n")
    q = tofino.load(p)
    script = tofino.bfrt_script(q)
    compile(script, "tm_config.py", "exec")
    # dev_port 140 is in pipe 1: its queues are configured in pipe 1, dev_port 4's in pipe 0
    assert "_port_queues(140)  # pipe 1" in script
    assert set(re.findall(r"sched_cfg\.mod\(pipe=(\d)", script)) == {"0", "1"}
    assert "port_md.add(ingress_port=4, fabric=1)" in script and "port_md.add(ingress_port=140, fabric=0)" in script
    text = tofino.stratum_snippet(q)
    # the port is shaped (current fields, keyed by the singleton port id), not each queue
    assert re.search(r"per_port_shaping_configs \{\s+key: 7\b.*?max_rate_bps: 25000000000\s+max_burst_bytes: 9000",
                     text, flags=re.S)
    assert "max_rate_bytes" not in text and "max_rate:" not in text


def test_port_metadata_lines_match_the_compiled_bfrt_schema():
    """The script's PORT_METADATA lines name the table and fields of bf-p4c's committed bfrt.json
    (p4src/build/tna/bfrt.json): program name, Pipeline instance, parser, key and data field."""
    import json
    bfrt = json.loads((ROOT / "p4src" / "build" / "tna" / "bfrt.json").read_text())
    tables = {t["name"]: t for t in bfrt["tables"]}
    script = tofino.bfrt_script(tofino.load(QUEUES))
    table = re.search(r"bfrt\.mfs\.(\S+)\.PORT_METADATA", script).group(1) + ".$PORT_METADATA"
    assert table in tables, f"{table} is not in bfrt.json ({sorted(n for n in tables if 'PORT' in n)})"
    keys = {k["name"].split(".")[-1] for k in tables[table]["key"]}
    data = {d["singleton"]["name"] for d in tables[table]["data"]}
    for fields in re.findall(r"port_md\.add\((.*?)\)", script):
        names = {f.split("=")[0].strip() for f in fields.split(",")}
        assert names == keys | (names & data) and names - keys <= data, (names, keys, data)
        assert "fabric" in names
