"""Stages, tables and memories a bf-p4c compile uses, from its own reports.

    python -m mfs.tofino_resources OUT        # OUT: bf-p4c -o OUT ... --verbose 1

Reads OUT/pipe/logs/resources.json (per-stage MAU use: logical tables, SRAM,
TCAM, map RAM, stateful/statistics ALUs, gateways), OUT/pipe/logs/phv.json (PHV
containers and bits used) and OUT/pipe/context.json (which gress a table is in).
bf-p4c writes the two logs only with ``--verbose 1`` or more (docs/tofino.md).
Prints one line per stage and the totals; ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Tofino 1 per-stage resources (resources.json gives the SRAM/TCAM geometry; these are the rest)
MAP_RAMS_PER_STAGE = 48
LOGICAL_TABLES_PER_STAGE = 16


class ReportError(ValueError):
    """The bf-p4c output directory lacks a report this needs. The message says which and why."""


@dataclass
class Stage:
    stage: int
    tables: dict[str, list[str]] = field(default_factory=lambda: {"ingress": [], "egress": []})
    gateways: int = 0
    srams: int = 0
    tcams: int = 0
    map_rams: int = 0
    stateful_alus: list[str] = field(default_factory=list)
    stats_alus: list[str] = field(default_factory=list)


@dataclass
class PhvUse:
    containers_used: int
    containers: int
    bits_allocated: int   # field slices placed (overlaid fields counted each)
    bits: int


@dataclass
class Report:
    n_stages: int
    stages_used: dict[str, int]
    stages: list[Stage]
    sram_total: int
    tcam_total: int
    phv: dict[str, PhvUse]

    def totals(self) -> dict[str, int]:
        return {"srams": sum(s.srams for s in self.stages), "tcams": sum(s.tcams for s in self.stages),
                "map_rams": sum(s.map_rams for s in self.stages),
                "logical_tables": sum(len(t) for s in self.stages for t in s.tables.values()),
                "gateways": sum(s.gateways for s in self.stages)}


def _load(path: Path, why: str) -> dict:
    if not path.exists():
        raise ReportError(f"{path} does not exist ({why})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e})") from None


def _users(units: list[dict]) -> list[str]:
    return [u["used_by"] for unit in units for u in unit.get("usages", [])]


def read(out: Path) -> Report:
    """The report of the bf-p4c output directory ``out`` (the ``-o`` of bf-p4c)."""
    logs = out / "pipe" / "logs"
    verbose = "bf-p4c writes it with --verbose 1"
    res = _load(logs / "resources.json", verbose)["resources"]
    phv = _load(logs / "phv.json", verbose)
    ctx = _load(out / "pipe" / "context.json", "bf-p4c's context for the driver")
    gress = {t["name"]: t.get("direction", "?") for t in ctx.get("tables", [])}

    mau = res["mau"]
    stages, sram_total, tcam_total = [], 0, 0
    for st in mau["mau_stages"]:
        s = Stage(stage=st["stage_number"])
        rams, tcams = st["rams"], st["tcams"]
        sram_total = rams["nRows"] * rams["nColumns"]
        tcam_total = tcams["nRows"] * tcams["nColumns"]
        s.srams = len(rams.get("srams", []))
        s.tcams = len(tcams.get("tcams", []))
        s.map_rams = len(st["map_rams"].get("maprams", []))
        s.gateways = len(st["gateways"].get("gateways", []))
        for lt in st["logical_tables"].get("ids", []):
            s.tables.setdefault(gress.get(lt["table_name"], "?"), []).append(lt["table_name"])
        s.stateful_alus = sorted(set(_users(st["meter_alus"].get("meters", []))))
        s.stats_alus = sorted(set(_users(st["statistic_alus"].get("stats", []))))
        stages.append(s)
    stages.sort(key=lambda s: s.stage)
    used = {g: max((s.stage + 1 for s in stages if s.tables.get(g)), default=0) for g in ("ingress", "egress")}

    phv_use = {}
    for kind, groups in res["phv_containers"].items():   # normal (MAU) and tagalong (T-PHV)
        placed = [c for c in phv["containers"] if c.get("container_type") == kind and c.get("slices")]
        phv_use[kind] = PhvUse(
            containers_used=len(placed), containers=sum(g["units"] for g in groups),
            bits_allocated=sum(sl["field_slice"]["slice_info"]["msb"] - sl["field_slice"]["slice_info"]["lsb"] + 1
                               for c in placed for sl in c["slices"]),
            bits=sum(g["units"] * g["width"] for g in groups))
    return Report(n_stages=mau["nStages"], stages_used=used, stages=stages,
                  sram_total=sram_total * mau["nStages"], tcam_total=tcam_total * mau["nStages"],
                  phv=phv_use)


def _short(names: list[str]) -> str:
    p4 = sorted(n.split(".")[-1] for n in names if n.startswith(("MfsIngress.", "MfsEgress.")))
    other = len(names) - len(p4)
    return ", ".join(p4 + ([f"+{other} compiler"] if other else []))


def format_report(r: Report) -> str:
    lines = [f"stages used: ingress {r.stages_used['ingress']} of {r.n_stages}, "
             f"egress {r.stages_used['egress']} of {r.n_stages}",
             "stage | ingress tables | egress tables | gateways | SRAM | TCAM | map RAM | stateful ALU | stats ALU"]
    for s in r.stages:
        if not any(s.tables.values()) and not s.gateways:
            continue
        lines.append(f"{s.stage:>5} | {len(s.tables.get('ingress', []))}: {_short(s.tables.get('ingress', []))} "
                     f"| {len(s.tables.get('egress', []))}: {_short(s.tables.get('egress', []))} | {s.gateways} "
                     f"| {s.srams} | {s.tcams} | {s.map_rams} | {', '.join(n.split('.')[-1] for n in s.stateful_alus)} "
                     f"| {', '.join(n.split('.')[-1] for n in s.stats_alus)}")
    t = r.totals()
    lines.append(f"total: {t['logical_tables']} logical tables, {t['gateways']} gateways, "
                 f"SRAM {t['srams']} of {r.sram_total} ({100 * t['srams'] / r.sram_total:.1f} %), "
                 f"TCAM {t['tcams']} of {r.tcam_total} ({100 * t['tcams'] / r.tcam_total:.1f} %), "
                 f"map RAM {t['map_rams']} of {MAP_RAMS_PER_STAGE * r.n_stages}")
    for kind, u in r.phv.items():
        lines.append(f"PHV {kind}: {u.containers_used} of {u.containers} containers "
                     f"({100 * u.containers_used / u.containers:.1f} %), {u.bits_allocated} of {u.bits} bits "
                     f"allocated ({100 * u.bits_allocated / u.bits:.1f} %)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mfs.tofino_resources", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="bf-p4c output directory (-o), compiled with --verbose 1")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    try:
        r = read(args.out)
    except ReportError as e:
        print(f"tofino_resources: {e}", file=sys.stderr)
        return 2
    print(json.dumps({**asdict(r), "totals": r.totals()}, indent=1) if args.json else format_report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
