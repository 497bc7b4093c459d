"""The committed build outputs (p4src/build) are what p4c makes of p4src/, and
p4src/build/tna what bf-p4c makes of p4src/tna (names equal to the v1model P4Info).

Skips, saying why, when p4c / bf-p4c is not installed (docs/bmv2.md, docs/tofino.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from mfs.tools import find_tool, missing_reason

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "p4src" / "build"

pytestmark = pytest.mark.timeout(600)


def _canonical(path: Path) -> p4i.P4Info:
    """P4Info with repeated entities sorted by id (p4c's order is not part of the contract)."""
    info = text_format.Parse(path.read_text(), p4i.P4Info())
    for kind in ("tables", "actions", "counters", "registers", "digests"):
        items = sorted(getattr(info, kind), key=lambda e: e.preamble.id)
        del getattr(info, kind)[:]
        getattr(info, kind).extend(items)
    return info


def _strip_sources(obj):
    """bmv2 JSON without source_info / file paths (they differ between checkouts)."""
    if isinstance(obj, dict):
        return {k: _strip_sources(v) for k, v in obj.items() if k not in ("source_info", "program")}
    if isinstance(obj, list):
        return [_strip_sources(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    if not find_tool("p4c"):
        pytest.skip(missing_reason("p4c"))
    out = tmp_path_factory.mktemp("p4build")
    r = subprocess.run(["bash", str(ROOT / "p4src" / "compile.sh")],
                       env={**os.environ, "OUT": str(out), "TNA_BUILD": str(out / "tna-build")},
                       capture_output=True, text=True)
    if r.returncode == 2:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, f"compile.sh failed:\n{r.stdout}\n{r.stderr}"
    return out


def test_p4info_is_up_to_date(compiled):
    fresh, committed = _canonical(compiled / "mfs.p4info.txtpb"), _canonical(BUILD / "mfs.p4info.txtpb")
    assert fresh == committed, (
        "p4src/build/mfs.p4info.txtpb differs from p4c's output: run `make p4` and commit.\n"
        + text_format.MessageToString(fresh))


def test_bmv2_json_is_up_to_date(compiled):
    if not (BUILD / "mfs.json").exists():
        pytest.fail("p4src/build/mfs.json is not committed: run `make p4` and commit it")
    fresh = _strip_sources(json.loads((compiled / "mfs.json").read_text()))
    committed = _strip_sources(json.loads((BUILD / "mfs.json").read_text()))
    assert fresh == committed, "p4src/build/mfs.json is stale: run `make p4` and commit it"


# ---------------------------------------------------------------- Tofino (bf-p4c)
TNA = BUILD / "tna"


def _names(info: p4i.P4Info) -> dict[str, set[str]]:
    """Entity names by kind, without bf-p4c's Pipeline prefix ("pipe.")."""
    out = {}
    for kind in ("tables", "actions", "counters", "registers", "digests"):
        out[kind] = {e.preamble.name.removeprefix("pipe.") for e in getattr(info, kind)}
    return out


def test_tofino_p4info_has_the_v1model_names():
    """The controller resolves the same names on both targets; only port_mode (port metadata on
    Tofino) and its actions are v1model-only (docs/p4-api.md)."""
    if not (TNA / "mfs.p4info.txtpb").exists():
        pytest.skip("p4src/build/tna/mfs.p4info.txtpb is not committed yet (needs bf-p4c: docs/tofino.md)")
    tna, v1 = _names(_canonical(TNA / "mfs.p4info.txtpb")), _names(_canonical(BUILD / "mfs.p4info.txtpb"))
    v1["tables"] -= {"MfsIngress.port_mode"}
    v1["actions"] -= {"MfsIngress.edge_port", "MfsIngress.fabric_port"}
    assert tna == v1


@pytest.fixture(scope="module")
def compiled_tna(compiled):
    """compile.sh (the ``compiled`` run) also compiles p4src/tna when bf-p4c is found."""
    if not find_tool("bf-p4c"):
        pytest.skip(missing_reason("bf-p4c"))
    assert (compiled / "tna" / "mfs.p4info.txtpb").exists(), "compile.sh found bf-p4c but wrote no Tofino P4Info"
    return compiled / "tna"


def test_tofino_resource_report(compiled_tna):
    """docs/tofino.md's figures come from mfs.tofino_resources on bf-p4c's own reports: every P4
    table and extern of the Tofino P4Info is placed in a stage, within the device's stages."""
    from mfs.tofino_resources import format_report, read
    r = read(compiled_tna.parent / "tna-build")
    print(format_report(r))
    placed = {n for s in r.stages for names in s.tables.values() for n in names}
    placed |= {n for s in r.stages for n in s.stateful_alus + s.stats_alus}
    info = _canonical(compiled_tna / "mfs.p4info.txtpb")
    wanted = {e.preamble.name for kind in ("tables", "counters", "registers") for e in getattr(info, kind)}
    assert wanted <= placed, f"not placed in any stage: {sorted(wanted - placed)}"
    # A register or counter used from tables in two stages gets a copy in each (bf-p4c does not
    # refuse it): the miss_filter clear would then never reach the test-and-set's copy.
    for kind in ("counters", "registers"):
        for e in getattr(info, kind):
            stages = [s.stage for s in r.stages if e.preamble.name in s.stateful_alus + s.stats_alus]
            assert len(stages) == 1, f"{e.preamble.name} is in stages {stages}: one call site, one stage"
    assert 0 < r.stages_used["ingress"] <= r.n_stages and 0 < r.stages_used["egress"] <= r.n_stages
    assert r.phv["normal"].containers_used <= r.phv["normal"].containers


def test_tofino_resource_report_names_what_is_missing(tmp_path, capsys):
    """Without bf-p4c's --verbose logs the report says which file is missing and why."""
    from mfs.tofino_resources import main
    (tmp_path / "pipe").mkdir()
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "resources.json does not exist" in err and "--verbose 1" in err


def test_tofino_p4info_is_up_to_date(compiled_tna):
    if not (TNA / "mfs.p4info.txtpb").exists():
        pytest.fail("p4src/build/tna/mfs.p4info.txtpb is not committed: run `make p4` with bf-p4c and commit it")
    fresh, committed = _canonical(compiled_tna / "mfs.p4info.txtpb"), _canonical(TNA / "mfs.p4info.txtpb")
    assert fresh == committed, "p4src/build/tna/mfs.p4info.txtpb is stale: run `make p4` (bf-p4c) and commit it"


def _bfrt_canonical(path: Path) -> dict:
    """bfrt.json with its tables sorted by name. bf-p4c emits its debug tables ``pipe.snapshot.*``
    for ingress and egress in either order from one run to the next (measured: two compiles of
    the same source), and ``snapshot.cfg``'s id and ``depends_on`` follow that order; everything
    else, including the snapshot tables' fields, is compared as is."""
    bfrt = json.loads(path.read_text())
    for t in bfrt["tables"]:
        if t["name"].endswith("snapshot.cfg"):
            t.pop("id", None)
            t["depends_on"] = sorted(t.get("depends_on", []))
    bfrt["tables"].sort(key=lambda t: t["name"])
    return bfrt


def test_tofino_bfrt_json_is_up_to_date(compiled_tna):
    if not (TNA / "bfrt.json").exists():
        pytest.fail("p4src/build/tna/bfrt.json is not committed: run `make p4` with bf-p4c and commit it")
    fresh, committed = _bfrt_canonical(compiled_tna / "bfrt.json"), _bfrt_canonical(TNA / "bfrt.json")
    assert fresh == committed, "p4src/build/tna/bfrt.json is stale: run `make p4` (bf-p4c) and commit it"
