"""Controller process: `mfs-controller --config controller.yaml` (docs/controller.md).

Runs, on one asyncio loop: the switch supervisors and the promotion engine
(controller/engine.py), the HostReports gRPC server (controller/hostapi.py);
and in a thread the admin HTTP listener (controller/admin.py). SIGTERM/SIGINT
stop everything cleanly (servers closed, P4Runtime streams closed; switch
entries stay, so a restarted controller adopts them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from controller import config as config_mod
from controller.admin import AdminServer
from controller.config import ControllerConfig
from controller.engine import Engine
from controller.hostapi import HostApi
from controller.metrics import Metrics
from mfs.configutil import ConfigError
from mfs.levels import LOWEST_LEVEL

log = logging.getLogger("mfs.controller")
HOST_KEYS = {"ceiling", "trusted"}
PORT_KEYS = {"dscp_mode", "trusted_dscp"}


class Controller:
    def __init__(self, cfg: ControllerConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.engine = Engine(cfg, self.metrics)
        self.hostapi = HostApi(cfg, self.engine, self.metrics)
        self.admin: AdminServer | None = None
        self.t0 = time.time()
        self.api_port = 0
        self.admin_port = 0

    async def start(self, api: str | None = None, admin: str | None = None) -> None:
        self.engine.start()
        self.api_port = await self.hostapi.start(api or self.cfg.api_listen)
        admin_addr = admin if admin is not None else self.cfg.admin_listen
        if admin_addr:
            self.admin = AdminServer(self, asyncio.get_running_loop())
            self.admin_port = self.admin.start(admin_addr)
        log.info("controller up: host API on port %d, admin on port %d, %d switches",
                 self.api_port, self.admin_port, len(self.cfg.switches))

    async def stop(self) -> None:
        if self.admin is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.admin.stop)
            self.admin = None
        await self.hostapi.stop()
        await self.engine.stop()

    # ------------------------------------------------------------------ admin views (run on the loop)
    async def refresh_gauges(self) -> None:
        for name, s in self.engine.supervisors.items():
            self.metrics.gauge("flow_table_entries", len(s.installed), switch=name)
            self.metrics.gauge("flow_table_occupancy", len(s.installed) / max(1, s.flow_table.size), switch=name)
            self.metrics.gauge("flow_table_overflow", len(s.overflow), switch=name)
            self.metrics.gauge("switch_ready", 1.0 if s.ready.is_set() else 0.0, switch=name)
        self.metrics.gauge("live_flows", len(self.engine.flows))
        self.metrics.gauge("promotions_per_second", self.metrics.rate("promotions"))

    async def status(self) -> dict:
        e, m = self.engine, self.metrics
        lat = m.quantiles("report_to_installed_seconds")
        wl = m.quantiles("write_seconds")
        return {
            "uptime_s": time.time() - self.t0, "policy": self.cfg.policy.scheduler, "K": self.cfg.policy.K,
            "switches_ready": sum(s.ready.is_set() for s in e.supervisors.values()),
            "switches": len(e.supervisors), "hosts_registered": len(self.hostapi.by_host),
            "hosts_configured": len(self.cfg.hosts), "live_flows": len(e.flows), "adopted_entries": len(e.adopted),
            "rounds": e.rounds, "promotions": m.total("promotions"),
            "promotions_per_s": m.rate("promotions"), "entry_updates": m.total("entry_updates"),
            "report_to_installed_ms": {k: (v * 1e3 if v is not None else None) for k, v in lat.items()},
            "write_ms": {k: (v * 1e3 if v is not None else None) for k, v in wl.items()},
            "rejected": m.by_label("rejected_reports", "reason"),
            "table_full_fallbacks": m.total("table_full_fallbacks"),
            "api_port": self.api_port, "admin_port": self.admin_port,
        }

    async def switches(self) -> list[dict]:
        return [s.status() for s in self.engine.supervisors.values()]

    async def flows(self) -> list[dict]:
        return self.engine.flow_rows()

    async def queues(self) -> list[dict]:
        out = []
        for s in self.engine.supervisors.values():
            try:
                out.extend(await s.read_queues())
            except Exception as ex:  # noqa: BLE001 - one switch down must not hide the others
                out.append({"switch": s.sw.name, "error": str(ex)})
        return out

    async def policy(self) -> dict:
        hosts = {h.name: {"ceiling": h.ceiling, "trusted": h.trusted, "switch": h.switch, "port": h.port}
                 for h in self.cfg.hosts}
        ports = {sw.name: {str(p): {"dscp_mode": pc.dscp_mode, "trusted_dscp": bool(pc.trusted_dscp),
                                    "rate_bps": pc.rate_bps} for p, pc in sw.ports.items()}
                 for sw in self.cfg.switches}
        return {"policy": self.cfg.policy.to_dict(), "hosts": hosts, "ports": ports}

    async def set_policy(self, body: dict) -> dict:
        """Apply ``{key: value}``: policy keys (scheduler, K, E, U, layout, recheck_interval_s, ...),
        ``hosts.<name>.ceiling|trusted`` and ``ports.<switch>.<port>.dscp_mode|trusted_dscp``."""
        pol = {k: v for k, v in body.items() if not k.startswith(("hosts.", "ports."))}
        static_changed = False
        # validate everything before changing anything
        host_ups, port_ups = [], []
        for k, v in body.items():
            parts = k.split(".")
            if parts[0] == "hosts":
                if len(parts) != 3 or parts[2] not in HOST_KEYS or self.cfg.host(parts[1]) is None:
                    raise ValueError(f"{k}: expected hosts.<configured host>.{{{'|'.join(sorted(HOST_KEYS))}}}")
                h = self.cfg.host(parts[1])
                if parts[2] == "ceiling" and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= LOWEST_LEVEL):
                    raise ValueError(f"{k}: {v!r} is out of range (allowed: 0..{LOWEST_LEVEL})")
                if parts[2] == "trusted":
                    if not isinstance(v, bool):
                        raise ValueError(f"{k}: {v!r} is not a boolean (allowed: true, false)")
                    if v and (not h.switch or h.port is None):
                        raise ValueError(f"{k}: host {h.name} has no switch/port in the config")
                host_ups.append((h, parts[2], v))
            elif parts[0] == "ports":
                sw = next((s for s in self.cfg.switches if len(parts) == 4 and s.name == parts[1]), None)
                port = int(parts[2]) if sw is not None and parts[2].isdigit() else None
                if sw is None or port not in sw.ports or parts[3] not in PORT_KEYS:
                    raise ValueError(f"{k}: expected ports.<switch>.<configured port>.{{{'|'.join(sorted(PORT_KEYS))}}}")
                if parts[3] == "dscp_mode" and v not in config_mod.DSCP_MODES:
                    raise ValueError(f"{k}: {v!r} is not allowed (allowed: {', '.join(config_mod.DSCP_MODES)})")
                if parts[3] == "trusted_dscp" and not isinstance(v, bool):
                    raise ValueError(f"{k}: {v!r} is not a boolean (allowed: true, false)")
                port_ups.append((sw.ports[port], parts[3], v))
        if pol:
            self.engine.set_policy(pol)
            await self.engine.flush()  # the new levels are on the switches when the call returns
        for h, key, v in host_ups:
            setattr(h, key, v)
            static_changed = True
        for pc, key, v in port_ups:
            if key == "dscp_mode":
                pc.dscp_mode = v
            else:
                pc.trusted_dscp = {d: lv for d, lv in ((config_mod.levels.default_dscp(lv), lv)
                                                       for lv in range(LOWEST_LEVEL + 1))} if v else {}
            static_changed = True
        if static_changed:
            await asyncio.gather(*(s.reprogram() for s in self.engine.supervisors.values()))
        self.metrics.count("policy_changes")
        return await self.policy()


async def run(cfg: ControllerConfig, stop: asyncio.Event | None = None) -> None:
    ctl = Controller(cfg)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await ctl.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await ctl.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mfs-controller", description="MFS controller (docs/controller.md)")
    ap.add_argument("--config", required=True, help="controller YAML (see controller/examples/controller.yaml)")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as e:
        print(f"mfs-controller: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: OK ({len(cfg.switches)} switches, {len(cfg.hosts)} hosts, "
              f"policy {cfg.policy.scheduler})")
        return 0
    try:
        asyncio.run(run(cfg))
    except (OSError, ValueError) as e:
        print(f"mfs-controller: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
