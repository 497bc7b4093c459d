"""P4Runtime targets for the controller's tests and benchmark: the embedded switch
(always) and bmv2 ``simple_switch_grpc`` (when installed and the bmv2 JSON is built).

    with open_target("embedded", table_sizes={"MfsIngress.mfs_flow": 4}) as t:
        t.address, t.restart(), t.read_flow_entries()

A target that cannot run raises :class:`TargetUnavailable` with the reason
(tests turn it into a skip, the benchmark prints it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mfs.p4info import CPU_PORT, bmv2_unavailable
from mfs.tools import find_tool

ROOT = Path(__file__).resolve().parents[1]
BMV2_JSON = ROOT / "p4src" / "build" / "mfs.json"
TARGETS = ("embedded", "bmv2")  # what the component tests run against (in-process embedded: h.restart())


class TargetUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedTarget:
    name = "embedded"
    resizable = True  # honours table_sizes
    device_config = b""  # what SetForwardingPipelineConfig needs besides the P4Info

    def __init__(self, device_id: int = 1, table_sizes: dict | None = None):
        try:
            from topo.embedded.server import start_server
        except ImportError as e:
            raise TargetUnavailable(f"embedded switch not importable: {e}") from None
        self.handle = start_server(address="127.0.0.1:0", device_id=device_id, table_sizes=table_sizes)
        self.address, self.device_id = self.handle.address, device_id

    def restart(self) -> None:
        self.handle.restart()

    def stop(self) -> None:
        self.handle.stop()


class _ProcessTarget:
    """A switch in its own process (as in deployment), listening on a loopback port."""

    name = "process"
    resizable = False
    device_config = b""

    def __init__(self, device_id: int = 1):
        self.device_id = device_id
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None
        self._start()

    def command(self) -> list[str]:
        raise NotImplementedError

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetUnavailable(f"{self.name} exited with {self.proc.returncode} (log {self.log.name})")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.1)
        self.stop()
        raise TargetUnavailable(f"{self.name} did not listen on {self.address} within 20 s")

    def restart(self) -> None:
        self._kill()
        self._start()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        self._kill()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


class EmbeddedProcessTarget(_ProcessTarget):
    """The embedded switch as its own process (`python -m topo.embedded.main`)."""

    name = "embedded-process"

    def __init__(self, device_id: int = 1, table_sizes: dict | None = None):
        self.table_sizes = table_sizes or {}
        super().__init__(device_id)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "topo.embedded.main", "--device-id", str(self.device_id),
               "--grpc-server-addr", self.address]
        for t, n in self.table_sizes.items():
            cmd += ["--table-size", f"{t}={n}"]
        return cmd


class Bmv2Target(_ProcessTarget):
    name = "bmv2"

    def __init__(self, device_id: int = 1, table_sizes: dict | None = None):
        why = bmv2_unavailable(BMV2_JSON)
        if why:
            raise TargetUnavailable(why)
        exe = find_tool("simple_switch_grpc")
        if table_sizes:
            raise TargetUnavailable("bmv2 table sizes are fixed by the compiled P4 program")
        self.exe = exe
        self.device_config = BMV2_JSON.read_bytes()  # bmv2 runs nothing without its JSON
        super().__init__(device_id)

    def command(self) -> list[str]:
        return [self.exe, "--no-p4", "--device-id", str(self.device_id), "--thrift-port", str(free_port()),
                "--", "--grpc-server-addr", self.address, "--priority-queues", "8", "--cpu-port", str(CPU_PORT)]


KINDS = {"embedded": EmbeddedTarget, "embedded-process": EmbeddedProcessTarget, "bmv2": Bmv2Target}


@contextlib.contextmanager
def open_target(kind: str, device_id: int = 1, table_sizes: dict | None = None):
    if kind not in KINDS:
        raise ValueError(f"unknown target {kind!r} (allowed: {', '.join(KINDS)})")
    t = KINDS[kind](device_id, table_sizes)
    try:
        yield t
    finally:
        t.stop()


def config_data(addresses: list[str], **over) -> dict:
    """A minimal controller config (as YAML data) for the given switch addresses."""
    data = {
        "api": {"listen": "127.0.0.1:0"},
        "admin": {"listen": "127.0.0.1:0"},
        "gc_timeout_s": 30,
        "poll": {"counters_s": 0.5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "switches": [{"name": f"s{i + 1}", "address": a, "device_id": 1, "election_id": 10,
                      "ports": {1: {"rate_bps": 1e9}, 2: {"rate_bps": 1e9}}} for i, a in enumerate(addresses)],
        "hosts": [{"name": "h1", "address": "10.0.0.1", "token": "token-of-h1", "switch": "s1", "port": 1,
                   "trusted": True, "ceiling": 2},
                  {"name": "h2", "address": "10.0.0.2", "token": "token-of-h2", "switch": "s1", "port": 2}],
        "stage_defaults": [{"stage": 2, "level": 1}],
        "policy": {"scheduler": "mfs", "K": 8, "bandwidth_bps": 1e9},
    }
    data.update(over)
    return data


class LiveController:
    """A controller on its own asyncio loop in a thread, as in production: other clients
    (mfsctl, host agents' threaded reporters) talk to it over the network only."""

    def __init__(self, cfg):
        import asyncio
        import threading

        from controller.main import Controller

        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.c = Controller(cfg)
        try:
            self.call(self.c.start())
            self.call(self.c.engine.wait_ready(15))
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.c.admin_port}"

    def call(self, coro, timeout: float = 30):
        import asyncio
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.c.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
