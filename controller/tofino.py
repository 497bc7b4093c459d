"""Tofino TM configuration generator: p4src/queues.yaml -> bfrt_python + Stratum.

    python -m controller.tofino --queues p4src/queues.yaml --out out/tofino

writes ``out/tofino/tm_config.py`` (run inside ``bfshell -b``) and
``out/tofino/chassis_config_qos.pb.txt`` (a Stratum ``vendor_config`` snippet to
merge into the chassis config). Both configure, for every port of
p4src/queues.yaml, in the port's pipe (dev_port >> 7):

* scheduling: strict priority min = max = qid (``tf1.tm.queue.sched_cfg``;
  Stratum ``queue_mapping.priority``), so qid 7 (level 0) is served first;
* buffer admission: the urgent levels (``buffer.urgent_levels``) get guaranteed
  cells and their own egress application pool, the other (best-effort) levels
  share a second, capped pool, so a best-effort backlog can fill only its own
  pool and never tail-drops an urgent queue (``tf1.tm.queue.buffer`` +
  ``tf1.tm.pool.cfg``; Stratum ``minimum_guaranteed_cells``/``pool`` +
  ``pool_configs``);
* port shaping (``max_rate_gbps``): the port, not each queue
  (``tf1.tm.port.sched_shaping``; Stratum ``node_id_to_port_shaping_config``
  ``byte_shaping { max_rate_bps max_burst_bytes }``);
* the port mode for p4src/tna/mfs.p4 (``mode: edge|fabric``): the ingress
  parser's port metadata (``pipe.MfsIngressParser.$PORT_METADATA``, field
  ``fabric``) -- BF-RT only, Stratum has no port-metadata setting.

The level -> qid conversion lives in the P4 program (qid = 7 - level, and
ingress_cos = qid so PFC can pause one level, mfs/levels.py); this module only
makes the TM serve qid 7 first and protect the urgent queues' buffer.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mfs import levels
from mfs.configutil import ConfigError, Section, load_yaml

TM_PRIORITIES = 8  # BF_TM_SCH_PRIO_0..7, 7 highest
MAX_DEV_PORT = 511
MAX_DWRR_WEIGHT = 1023
CELL_BYTES = 80  # Tofino 1 buffer cell
MAX_CELLS = 1 << 20
URGENT_POOL, BEST_EFFORT_POOL = 0, 1  # egress application pools (EG_APP_POOL_n / EGRESS_APP_POOL_n)
BAFS = ("1_POINT_5", "3", "6", "11", "20", "33", "53", "60", "66", "71", "75", "80")  # BAF_<x>_PERCENT


@dataclass(frozen=True)
class PortCfg:
    dev_port: int
    max_rate_gbps: float | None = None
    mode: str = "edge"  # edge (host-facing: classify) | fabric (switch-facing: trust DSCP)
    port_id: int | None = None  # Stratum singleton port id (chassis config), default dev_port

    @property
    def pipe(self) -> int:
        return self.dev_port >> 7

    @property
    def singleton_id(self) -> int:
        return self.dev_port if self.port_id is None else self.port_id


@dataclass(frozen=True)
class BufferCfg:
    urgent_levels: tuple[int, ...] = (0, 1, 2, 3)
    urgent_guaranteed_cells: int = 1000  # per urgent queue, reserved (not shared)
    urgent_pool_cells: int = 60000
    best_effort_pool_cells: int = 40000  # shared by every best-effort queue of every port
    urgent_baf: str = "80"  # dynamic threshold: % of the pool's free cells one queue may take
    best_effort_baf: str = "33"


@dataclass(frozen=True)
class QueueLayout:
    num_queues: int
    scheduling: str
    dwrr_weights: tuple[int, ...]
    node_id: int
    ports: tuple[PortCfg, ...] = field(default_factory=tuple)
    buffer: BufferCfg = field(default_factory=BufferCfg)

    def urgent(self, qid: int) -> bool:
        return self.level_of(qid) in self.buffer.urgent_levels

    def priority(self, qid: int) -> int:
        """TM scheduling priority of queue qid (strict: qid itself, so qid 7 first)."""
        return qid if self.scheduling == "strict" else 0

    def level_of(self, qid: int) -> int:
        return levels.level_of_queue(qid)


def load(path: str | Path) -> QueueLayout:
    src = str(path)
    s = Section(load_yaml(path), src)
    n = s.integer("num_queues", levels.NUM_QUEUES, levels.NUM_QUEUES, levels.NUM_QUEUES)
    sched = s.choice("scheduling", ["strict", "dwrr"], "strict")
    weights = s.sequence("dwrr_weights", [MAX_DWRR_WEIGHT] * n)
    if len(weights) != n:
        raise s.error("dwrr_weights", f"has {len(weights)} entries, need one per queue ({n})")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_DWRR_WEIGHT:
            raise s.error(f"dwrr_weights[{i}]", f"{w!r} is out of range (allowed: 1..{MAX_DWRR_WEIGHT})")
    node_id = s.integer("node_id", 1, lo=1)
    ports = []
    raw_ports = s.sequence("ports")
    if not raw_ports:
        raise s.error("ports", "is empty (list the dev_ports to configure)")
    seen = set()
    for i, raw in enumerate(raw_ports):
        p = Section(raw, src, f"ports[{i}]")
        dp = p.integer("dev_port", lo=0, hi=MAX_DEV_PORT)
        if dp in seen:
            raise p.error("dev_port", f"{dp} is listed twice")
        seen.add(dp)
        rate = p.number("max_rate_gbps", None, lo=0, lo_open=True) if "max_rate_gbps" in p.data else None
        mode = p.choice("mode", ["edge", "fabric"], "edge")
        pid = p.integer("port_id", None, lo=1) if "port_id" in p.data else None
        p.done()
        ports.append(PortCfg(dp, rate, mode, pid))
    b = s.section("buffer")
    urgent = b.sequence("urgent_levels", list(BufferCfg.urgent_levels))
    for i, lv in enumerate(urgent):
        if isinstance(lv, bool) or not isinstance(lv, int) or not 0 <= lv <= levels.LOWEST_LEVEL:
            raise b.error(f"urgent_levels[{i}]", f"{lv!r} is not a level 0..{levels.LOWEST_LEVEL}")
    if len(set(urgent)) == levels.NUM_QUEUES:
        raise b.error("urgent_levels", "lists every level: nothing would be best effort")
    def baf(key: str, default: str) -> str:
        v = str(b.get(key, default))
        if v not in BAFS:
            raise b.error(key, f"{v!r} is not a Tofino buffer absorption factor (allowed: {', '.join(BAFS)})")
        return v

    buf = BufferCfg(
        urgent_levels=tuple(sorted(set(urgent))),
        urgent_guaranteed_cells=b.integer("urgent_guaranteed_cells", BufferCfg.urgent_guaranteed_cells, 0, MAX_CELLS),
        urgent_pool_cells=b.integer("urgent_pool_cells", BufferCfg.urgent_pool_cells, 1, MAX_CELLS),
        best_effort_pool_cells=b.integer("best_effort_pool_cells", BufferCfg.best_effort_pool_cells, 1, MAX_CELLS),
        urgent_baf=baf("urgent_baf_percent", BufferCfg.urgent_baf),
        best_effort_baf=baf("best_effort_baf_percent", BufferCfg.best_effort_baf))
    b.done()
    n_urgent = len(buf.urgent_levels)
    reserved = buf.urgent_guaranteed_cells * n_urgent * len(ports)
    if reserved > buf.urgent_pool_cells:
        raise b.error("urgent_guaranteed_cells", f"{buf.urgent_guaranteed_cells} x {n_urgent} urgent queues x "
                                                 f"{len(ports)} ports = {reserved} cells exceed urgent_pool_cells "
                                                 f"({buf.urgent_pool_cells})")
    s.done()
    return QueueLayout(n, sched, tuple(weights), node_id, tuple(ports), buf)


def bfrt_script(q: QueueLayout) -> str:
    bu = q.buffer
    out = [
        "# Generated by controller/tofino.py from p4src/queues.yaml -- run with: bfshell -b <this file>",
        f"# MFS: level L -> qid {levels.NUM_QUEUES - 1} - L (p4src/tna/mfs.p4); "
        f"scheduling: {q.scheduling}; urgent levels {list(bu.urgent_levels)}",
        "tm = bfrt.tf1.tm",
        "def _port_queues(dev_port):",
        "    cfg = tm.port.cfg.get(dev_port=dev_port, print_ents=False).data",
        "    return cfg[b'pg_id'], cfg[b'egress_qid_queues']",
        "",
        "# buffer admission: urgent levels and best effort in separate egress pools (per pipe)",
    ]
    for pipe in sorted({p.pipe for p in q.ports}):
        out.append(f"tm.pool.cfg.mod(pipe={pipe}, pool='EG_APP_POOL_{URGENT_POOL}', size_cells={bu.urgent_pool_cells})")
        out.append(f"tm.pool.cfg.mod(pipe={pipe}, pool='EG_APP_POOL_{BEST_EFFORT_POOL}', "
                   f"size_cells={bu.best_effort_pool_cells})")
    out.append("")
    for p in q.ports:
        out.append(f"pg_id, qid_to_pg_queue = _port_queues({p.dev_port})  # pipe {p.pipe}")
        for qid in range(q.num_queues):
            prio = q.priority(qid)
            key = f"pipe={p.pipe}, pg_id=pg_id, pg_queue=qid_to_pg_queue[{qid}]"
            out.append(
                f"tm.queue.sched_cfg.mod({key}, "
                f"min_priority={prio}, max_priority={prio}, dwrr_weight={q.dwrr_weights[qid]}, "
                f"scheduling_enable=True)  # qid {qid} = level {q.level_of(qid)}")
            if q.urgent(qid):
                out.append(f"tm.queue.buffer.mod({key}, guaranteed_cells={bu.urgent_guaranteed_cells}, "
                           f"pool_id='EG_APP_POOL_{URGENT_POOL}', pool_max_cells={bu.urgent_pool_cells}, "
                           f"dynamic_baf='BAF_{bu.urgent_baf}_PERCENT', tail_drop_enable=True)  # urgent")
            else:
                out.append(f"tm.queue.buffer.mod({key}, guaranteed_cells=0, "
                           f"pool_id='EG_APP_POOL_{BEST_EFFORT_POOL}', pool_max_cells={bu.best_effort_pool_cells}, "
                           f"dynamic_baf='BAF_{bu.best_effort_baf}_PERCENT', tail_drop_enable=True)  # best effort")
        if p.max_rate_gbps is not None:
            kbps = int(round(p.max_rate_gbps * 1e6))
            out.append(f"tm.port.sched_shaping.mod(dev_port={p.dev_port}, unit='BPS', provisioning='UPPER', "
                       f"max_rate={kbps}, max_burst_size=9000)")
            out.append(f"tm.port.sched_cfg.mod(dev_port={p.dev_port}, max_rate_enable=True)")
        out.append("")
    out.append("# port mode (p4src/tna/mfs.p4 port metadata): fabric ports trust DSCP, edge ports classify")
    out.append("port_md = bfrt.mfs.pipe.MfsIngressParser.PORT_METADATA")
    for p in q.ports:
        out.append(f"port_md.add(ingress_port={p.dev_port}, fabric={1 if p.mode == 'fabric' else 0})  # {p.mode}")
    out.append("")
    out.append("print('MFS TM configuration applied')")
    return "\n".join(out) + "\n"


def stratum_snippet(q: QueueLayout) -> str:
    bu = q.buffer
    out = [
        "# Generated by controller/tofino.py from p4src/queues.yaml.",
        "# Merge into the Stratum chassis_config (the node with this id). The port mode (edge/fabric)",
        "# is port metadata, which Stratum does not set: run the BF-RT script's PORT_METADATA lines.",
        "vendor_config {", "  tofino_config {",
    ]
    shaped = [p for p in q.ports if p.max_rate_gbps is not None]
    if shaped:
        out += ["    node_id_to_port_shaping_config {", f"      key: {q.node_id}", "      value {"]
        for p in shaped:
            out += ["        per_port_shaping_configs {",
                    f"          key: {p.singleton_id}  # singleton port (dev_port {p.dev_port})",
                    "          value {", "            byte_shaping {",
                    f"              max_rate_bps: {int(round(p.max_rate_gbps * 1e9))}",
                    "              max_burst_bytes: 9000",
                    "            }", "          }", "        }"]
        out += ["      }", "    }"]
    out += ["    node_id_to_qos_config {", f"      key: {q.node_id}", "      value {"]
    for pool, size in ((URGENT_POOL, bu.urgent_pool_cells), (BEST_EFFORT_POOL, bu.best_effort_pool_cells)):
        out += ["        pool_configs {",
                f"          # {'urgent levels' if pool == URGENT_POOL else 'best-effort levels'}",
                f"          pool: EGRESS_APP_POOL_{pool}", f"          pool_size: {size}",
                "          enable_color_drop: false", "        }"]
    for p in q.ports:
        out += ["        queue_configs {", f"          sdk_port: {p.dev_port}"]
        for qid in range(q.num_queues):
            urgent = q.urgent(qid)
            out += ["          queue_mapping {",
                    f"            # level {q.level_of(qid)}",
                    f"            queue_id: {qid}",
                    f"            priority: PRIO_{q.priority(qid)}",
                    f"            weight: {q.dwrr_weights[qid]}",
                    f"            minimum_guaranteed_cells: {bu.urgent_guaranteed_cells if urgent else 0}",
                    f"            pool: EGRESS_APP_POOL_{URGENT_POOL if urgent else BEST_EFFORT_POOL}"
                    f"  # {'urgent' if urgent else 'best effort'}",
                    f"            base_use_limit: {bu.urgent_guaranteed_cells if urgent else 0}",
                    f"            baf: BAF_{bu.urgent_baf if urgent else bu.best_effort_baf}_PERCENT",
                    "            hysteresis: 0",
                    "          }"]
        out += ["        }"]
    out += ["      }", "    }", "  }", "}"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mfsctl tofino-config", description=__doc__.splitlines()[0])
    ap.add_argument("--queues", default="p4src/queues.yaml", help="queue layout YAML")
    ap.add_argument("--out", default="out/tofino", help="output directory")
    args = ap.parse_args(argv)
    try:
        layout = load(args.queues)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tm_config.py").write_text(bfrt_script(layout))
    (out / "chassis_config_qos.pb.txt").write_text(stratum_snippet(layout))
    print(f"wrote {out / 'tm_config.py'} and {out / 'chassis_config_qos.pb.txt'} "
          f"({len(layout.ports)} ports, {layout.num_queues} queues, {layout.scheduling})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
