"""The emulation builder: a topology file -> a running cluster (see docs/emulation.md).

    from topo.net import Network
    from topo.topology import load

    with Network(load("line2"), tag=unique_tag()) as net:
        net.exec("h1", ["ping", "-c1", net.ip("h2")])

What ``start()`` does, in order (and ``stop()`` undoes, also after a failure half way):

1. one network namespace per host (``mfs-[TAG-]HOST``), a veth pair per link; the
   host end is ``eth0`` inside the namespace, the switch end stays in the root
   namespace (``mfs-[TAG]sIpP``: switch index I, port P); offloads off, IPv6 off;
   addresses, a default route on eth0 and static ARP for every other host (no ARP
   traffic, one flat L3 view whatever the subnets);
2. the switches (embedded by default, bmv2 when asked and installed), waiting for
   their P4Runtime port;
3. the controller, with a generated config (rundir/controller.yaml): routes
   (``ipv4_lpm`` per host), flood group 1, trust + ceilings, port rates;
4. one host agent per host, inside its namespace, on a unix control socket.

Logs go to ``logs/[TAG/]`` (one file per process), the run state (pids, names) to
``/run/mfs/TAG|main/state.json`` so that ``mfs-topo stop`` can clean up after a crash.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from mfs.p4info import CPU_PORT, DEFAULT_P4INFO, bmv2_unavailable
from mfs.tools import find_tool
from topo import netns
from topo.topology import Topology

ROOT = Path(__file__).resolve().parents[1]
RUN_BASE = Path(os.environ.get("MFS_RUN_DIR", "/run/mfs"))
BMV2_JSON = ROOT / "p4src" / "build" / "mfs.json"
STATE = "state.json"


class BuildError(RuntimeError):
    """The network could not be built; the message says what and where to look."""


def unique_tag() -> str:
    """A short random tag so that concurrent networks (tests) never share a name."""
    return secrets.token_hex(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, proc: "Proc | None" = None, interval: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.popen.poll() is not None:
            raise BuildError(f"{proc.name} exited with code {proc.popen.returncode} while {what}; "
                             f"last lines of {proc.log}:\n{tail(proc.log)}")
        if pred():
            return
        time.sleep(interval)
    extra = f"; last lines of {proc.log}:\n{tail(proc.log)}" if proc else ""
    raise BuildError(f"timed out after {timeout:.0f}s {what}{extra}")


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def unix_open(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(0.2)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    cmd: list[str]

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


def kill_group(pid: int, timeout: float = 5.0, sig: int = signal.SIGTERM,
               popen: subprocess.Popen | None = None) -> None:
    """Signal the process group of ``pid`` (started with its own session), SIGKILL after ``timeout``.
    Pass ``popen`` when the process is our child, so that it is reaped (a zombie still counts)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if popen is not None and popen.poll() is not None:
            return
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Network:
    def __init__(self, topo: Topology, *, tag: str = "", target: str | None = None, policy: str = "mfs",
                 controller: bool = True, agents: bool = True, logdir: str | Path | None = None,
                 pcap: bool = False, policy_options: dict | None = None, controller_extra: dict | None = None,
                 switch_args: list[str] | None = None, python: str = sys.executable, program: bool = True,
                 policy_stage_defaults: bool = False):
        if tag and not (tag.isalnum() and tag.islower() or tag.isdigit()) or len(tag) > 4:
            raise ValueError(f"tag {tag!r}: up to 4 lowercase letters/digits")
        self.topo, self.tag = topo, tag
        self.target = target
        self.policy, self.policy_options = policy, dict(policy_options or {})
        self.want_controller, self.want_agents = controller, agents
        self.controller_extra = dict(controller_extra or {})
        # stage_defaults derived from the policy (controller.engine.stage_defaults_from_policy) unless
        # controller_extra gives them; off: packets of flows without an entry take classify_default_level
        self.policy_stage_defaults = policy_stage_defaults
        self.switch_args = list(switch_args or [])
        self.pcap = pcap
        self.program = program  # without a controller: install routes directly over P4Runtime
        self.python = python
        self.logdir = Path(logdir) if logdir else ROOT / "logs" / (tag or "")
        self.rundir = RUN_BASE / (tag or "main")
        self.procs: dict[str, Proc] = {}
        self.grpc_ports: dict[str, int] = {}
        self.tokens = {h: secrets.token_hex(12) for h in topo.hosts}
        self.made_ns: list[str] = []
        self.made_links: list[str] = []
        self.started = False
        self._stopping = False
        self._old_handlers: dict[int, object] = {}

    # ------------------------------------------------------------ names
    def ns(self, host: str) -> str:
        return f"{netns.PREFIX}{self.tag}-{host}" if self.tag else f"{netns.PREFIX}{host}"

    def sw_iface(self, switch: str, port: int) -> str:
        idx = list(self.topo.switches).index(switch) + 1
        return f"{netns.PREFIX}{self.tag}s{idx}p{port}"

    def ip(self, host: str) -> str:
        return self.topo.hosts[host].address

    def grpc_addr(self, switch: str) -> str:
        return f"127.0.0.1:{self.grpc_ports[switch]}"

    def target_of(self, switch: str) -> str:
        return self.target or self.topo.switches[switch].target

    @property
    def controller_sock(self) -> Path:
        return self.rundir / "controller.sock"

    def agent_sock(self, host: str) -> Path:
        return self.rundir / f"{host}.sock"

    @property
    def controller_config_path(self) -> Path:
        return self.rundir / "controller.yaml"

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Network":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Network":
        reason = netns.preflight()
        if reason:
            raise BuildError(reason)
        for sw in self.topo.switches:
            if self.target_of(sw) == "lxbr" and self.want_controller:
                raise BuildError(f"switch {sw}: target lxbr (a plain Linux bridge) has no P4Runtime, so no "
                                 f"controller can run on it; use it with controller=False (--no-controller)")
            if self.target_of(sw) == "bmv2" and (why := bmv2_unavailable(BMV2_JSON)):
                raise BuildError(f"switch {sw}: target bmv2 asked for, but {why}")
        clash = [self.ns(h) for h in self.topo.hosts if self.ns(h) in netns.namespaces()]
        if clash:
            raise BuildError(f"namespaces already exist: {', '.join(clash)} (a previous run was not stopped: "
                             f"run `mfs-topo stop{' --tag ' + self.tag if self.tag else ''}`)")
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._install_cleanup()
        self.started = True
        try:
            self._save_state()
            self._build_links()
            for sw in self.topo.switches:
                self.start_switch(sw)
            if self.want_controller:
                self.start_controller()
            elif self.program:
                for sw in self.topo.switches:
                    if self.target_of(sw) != "lxbr":
                        self.program_direct(sw)
            if self.want_agents:
                for h in self.topo.hosts:
                    self.start_agent(h)
            self._save_state()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self.started or self._stopping:
            return
        self._stopping = True
        try:
            for name in reversed(list(self.procs)):
                p = self.procs[name]
                if p.alive:
                    kill_group(p.popen.pid, popen=p.popen)
                p.popen.wait(timeout=10) if p.popen.poll() is None else None
            for ln in reversed(self.made_links):
                netns.del_link(ln)
            for n in self.made_ns:
                netns.del_ns(n)
            shutil.rmtree(self.rundir, ignore_errors=True)
        finally:
            self.started = False
            self._stopping = False
            self._restore_handlers()

    def _install_cleanup(self) -> None:
        atexit.register(self.stop)
        import threading
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old = signal.getsignal(sig)
            self._old_handlers[sig] = old

            def handler(signum, frame, _old=old):
                self.stop()
                if callable(_old):
                    _old(signum, frame)
                else:
                    raise SystemExit(128 + signum)
            signal.signal(sig, handler)
        # SIGINT stays Python's KeyboardInterrupt, which unwinds through `with`/`finally`.

    def _restore_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old_handlers.clear()
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    def _save_state(self) -> None:
        state = {
            "tag": self.tag, "owner": os.getpid(), "topology": self.topo.source, "name": self.topo.name,
            "namespaces": self.made_ns, "links": self.made_links,
            "procs": {n: {"pid": p.popen.pid, "cmd": p.cmd, "log": str(p.log)} for n, p in self.procs.items()},
            "grpc": {s: self.grpc_addr(s) for s in self.grpc_ports},
            "controller_socket": str(self.controller_sock) if "controller" in self.procs else None,
            "agents": {h: str(self.agent_sock(h)) for h in self.topo.hosts if f"agent-{h}" in self.procs},
            "hosts": {h: {"ns": self.ns(h), "ip": self.ip(h), "role": x.role} for h, x in self.topo.hosts.items()},
            "logs": str(self.logdir),
        }
        tmp = self.rundir / (STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.rundir / STATE)

    # ------------------------------------------------------------ links
    def _build_links(self) -> None:
        t = self.topo
        for h in t.hosts:
            netns.add_ns(self.ns(h))
            self.made_ns.append(self.ns(h))
            self._save_state()
        for i, ln in enumerate(t.links):
            ends = []
            for ep in (ln.a, ln.b):
                if ep.node in t.hosts:
                    ends.append(f"{netns.PREFIX}{self.tag}h{list(t.hosts).index(ep.node) + 1}")
                else:
                    ends.append(self.sw_iface(ep.node, ep.port))
            netns.veth(ends[0], ends[1])
            # remember the end that stays in the root namespace: deleting it removes the pair at once
            self.made_links.append(ends[1] if ln.a.node in t.hosts else ends[0])
            self._save_state()
            for ep, iface in zip((ln.a, ln.b), ends):
                if ep.node in t.hosts:
                    host = t.hosts[ep.node]
                    ns = self.ns(ep.node)
                    netns.move_into(iface, ns, "eth0")
                    netns.quiet_iface("eth0", ns=ns)
                    netns.up("eth0", ns=ns, mac=host.mac)
                    netns.run(["ip", "addr", "add", str(host.ip), "dev", "eth0"], ns=ns)
                    if t.shape_hosts or ln.latency_s:
                        netns.shape("eth0", ln.bandwidth_bps if t.shape_hosts else None, ln.latency_s / 2, ns=ns)
                else:
                    netns.quiet_iface(iface)
                    netns.up(iface, mac=t.switches[ep.node].port_mac(ep.port))
                    if ln.latency_s:
                        netns.shape(iface, None, ln.latency_s / 2)
        self.host_routes()

    def host_routes(self) -> None:
        """In every host namespace: ``default dev eth0`` and a permanent ARP entry per other host."""
        t = self.topo
        for h in t.hosts:
            ns = self.ns(h)
            netns.run(["ip", "route", "replace", "default", "dev", "eth0"], ns=ns)
            for other, o in t.hosts.items():
                if other != h:
                    netns.run(["ip", "neigh", "replace", o.address, "lladdr", o.mac, "dev", "eth0",
                               "nud", "permanent"], ns=ns)

    # ------------------------------------------------------------ processes
    def popen(self, name: str, cmd: list[str], ns: str | None = None, env: dict | None = None) -> Proc:
        """Start a logged process (own session, so stop() can kill its whole group)."""
        log = self.logdir / f"{name}.log"
        full = (["ip", "netns", "exec", ns] if ns else []) + cmd
        e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH", "")]))
        with open(log, "ab") as f:
            f.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(full)}\n".encode())
            f.flush()
            p = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=ROOT, env=e, start_new_session=True)
        proc = Proc(name, p, log, full)
        self.procs[name] = proc
        self._save_state()
        return proc

    def switch_command(self, sw: str) -> list[str]:
        s = self.topo.switches[sw]
        ports = self.topo.switch_ports(sw)
        port = self.grpc_ports[sw]
        log = self.logdir / f"{sw}-switch.log"
        if self.target_of(sw) == "bmv2":
            cmd = [find_tool("simple_switch_grpc"), "--device-id", str(s.device_id)]
            for p in ports:
                cmd += ["-i", f"{p}@{self.sw_iface(sw, p)}"]
            cmd += ["--thrift-port", str(s.thrift_port or free_port()), "--log-file", str(log.with_suffix("")),
                    "--log-flush"]
            if self.pcap:
                cmd += ["--pcap", str(self.logdir / "pcaps")]
            cmd += [str(BMV2_JSON) if BMV2_JSON.exists() else "--no-p4", "--",
                    "--grpc-server-addr", f"127.0.0.1:{port}", "--priority-queues", str(s.priority_queues),
                    "--cpu-port", str(CPU_PORT)]  # controller operations arrive as PacketOut
            return cmd
        cmd = [self.python, "-m", "topo.embedded.main", "--device-id", str(s.device_id)]
        for p, (ln, _) in ports.items():
            cmd += ["-i", f"{p}@{self.sw_iface(sw, p)}", "--port-rate", f"{p}={int(ln.bandwidth_bps)}bit"]
        cmd += ["--grpc-server-addr", f"127.0.0.1:{port}", "--queue-buffer", str(s.queue_buffer),
                "--p4info", str(DEFAULT_P4INFO), "--log-file", str(log)]
        if self.pcap:
            cmd += ["--pcap", str(self.logdir / "pcaps")]
        return cmd + self.switch_args

    def start_switch(self, sw: str, timeout: float = 60) -> Proc | None:
        s = self.topo.switches[sw]
        if self.target_of(sw) == "lxbr":  # plumbing check only: no pipeline, no priorities
            br = f"{netns.PREFIX}{self.tag}br{list(self.topo.switches).index(sw) + 1}"
            netns.run(["ip", "link", "add", br, "type", "bridge"])
            self.made_links.append(br)
            for p in self.topo.switch_ports(sw):
                netns.run(["ip", "link", "set", self.sw_iface(sw, p), "master", br])
            netns.up(br)
            self._save_state()
            return None
        if sw not in self.grpc_ports:
            self.grpc_ports[sw] = s.grpc_port or free_port()
        if self.pcap:
            (self.logdir / "pcaps").mkdir(exist_ok=True)
        proc = self.popen(f"{sw}", self.switch_command(sw))
        port = self.grpc_ports[sw]
        wait_for(lambda: tcp_open("127.0.0.1", port), timeout, f"waiting for switch {sw} on 127.0.0.1:{port}", proc)
        return proc

    def restart_switch(self, sw: str, down_s: float = 0.0, crash: bool = True) -> Proc:
        """Kill a switch process (SIGKILL when ``crash``: it loses all its state) and start it
        again on the same ports and P4Runtime address."""
        p = self.procs.get(sw)
        if p is not None and p.alive:
            kill_group(p.popen.pid, sig=signal.SIGKILL if crash else signal.SIGTERM, popen=p.popen)
            p.popen.wait(timeout=10)
        time.sleep(down_s)
        return self.start_switch(sw)

    def static_entries(self, sw: str) -> list[dict]:
        """Routes of one switch by P4Info names: ``ipv4_lpm`` /32 per host -> port toward it."""
        t, s = self.topo, self.topo.switches[sw]
        out = []
        for h, host in t.hosts.items():
            p = t.next_port(sw, h)
            out.append({"table": "MfsIngress.ipv4_lpm", "match": {"dst_addr": f"{host.address}/32"},
                        "action": "MfsIngress.route",
                        "params": {"port": p, "src_mac": s.port_mac(p), "dst_mac": host.mac}})
        return out

    def controller_config(self) -> dict:
        """The controller YAML for this network (see docs/controller.md)."""
        t = self.topo
        switches = []
        for sw, s in t.switches.items():
            ports = self.topo.switch_ports(sw)
            cfg = {"name": sw, "address": self.grpc_addr(sw), "device_id": s.device_id,
                   "ports": {p: {"rate_bps": ln.bandwidth_bps} for p, (ln, _) in ports.items()},
                   "entries": self.static_entries(sw), "multicast_ports": list(ports)}
            if self.target_of(sw) == "bmv2" and BMV2_JSON.exists():
                cfg["device_config"] = str(BMV2_JSON)
            switches.append(cfg)
        hosts = []
        for h, host in t.hosts.items():
            _, attach = t.host_link(h)
            e = {"name": h, "address": host.address, "token": self.tokens[h], "switch": attach.node,
                 "port": attach.port}
            if host.ceiling is not None:
                e.update(trusted=True, ceiling=host.ceiling)
            hosts.append(e)
        cfg = {"switches": switches, "hosts": hosts,
               "policy": {"scheduler": self.policy, **self.policy_options},
               # host agents in namespaces reach the controller over a unix socket; without agents, loopback TCP
               "api": {"listen": f"unix:{self.controller_sock}" if self.want_agents else f"127.0.0.1:{free_port()}"},
               "admin": {"listen": f"127.0.0.1:{free_port()}"}}
        if self.policy_stage_defaults:
            from controller.engine import stage_defaults_from_policy
            from mfs.policy import PolicyConfig
            cfg["stage_defaults"] = stage_defaults_from_policy(PolicyConfig.from_dict(cfg["policy"], "policy"))
        for k, v in self.controller_extra.items():
            cfg[k] = v
        return cfg

    def start_controller(self, timeout: float = 60) -> Proc:
        cfg = self.controller_config()
        self.controller_config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.admin_addr = cfg["admin"]["listen"]
        proc = self.popen("controller", [self.python, "-m", "controller.main", "--config",
                                         str(self.controller_config_path)])
        api = cfg["api"]["listen"]
        if api.startswith("unix:"):
            wait_for(lambda: unix_open(api[5:]), timeout, f"waiting for the controller API on {api}", proc)
        else:
            host, _, port = api.rpartition(":")
            wait_for(lambda: tcp_open(host, int(port)), timeout, f"waiting for the controller API on {api}", proc)
        return proc

    def admin_get(self, path: str, timeout: float = 5.0) -> dict:
        """GET the controller's admin HTTP API (JSON), e.g. ``/api/status``."""
        import urllib.request
        with urllib.request.urlopen(f"http://{self.admin_addr}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def start_agent(self, host: str, timeout: float = 60) -> Proc:
        sock = self.agent_sock(host)
        cmd = [self.python, "-m", "hostagent.cli", "serve", "--host", host, "--address", self.ip(host),
               "--controller", f"unix:{self.controller_sock}", "--token", self.tokens[host],
               "--control", f"unix:{sock}"]
        proc = self.popen(f"agent-{host}", cmd, ns=self.ns(host))
        wait_for(lambda: unix_open(str(sock)), timeout, f"waiting for the host agent of {host} on {sock}", proc)
        return proc

    def program_direct(self, sw: str, extra: list[dict] | None = None) -> None:
        """Without a controller: push the pipeline and install routes, DSCP rewrite on every
        port and the default level->DSCP map directly over P4Runtime (one batch)."""
        import asyncio

        from controller.p4rt.client import SwitchClient, update
        from mfs.levels import NUM_QUEUES, default_dscp
        from mfs.p4info import P4Schema

        schema = P4Schema.load(DEFAULT_P4INFO)
        entries = self.static_entries(sw)
        entries += [{"table": "MfsEgress.dscp_rewrite", "match": {"egress_port": p},
                     "action": "MfsEgress.rewrite_dscp", "params": {}} for p in self.topo.switch_ports(sw)]
        entries += [{"table": "MfsEgress.level_dscp", "match": {"level": lv}, "action": "MfsEgress.set_dscp",
                     "params": {"dscp": default_dscp(lv)}} for lv in range(NUM_QUEUES)]
        entries += list(extra or [])
        device = BMV2_JSON.read_bytes() if self.target_of(sw) == "bmv2" and BMV2_JSON.exists() else b""

        async def go():
            c = SwitchClient(self.grpc_addr(sw), self.topo.switches[sw].device_id, election_id=1, name=sw)
            if not await c.open():
                raise BuildError(f"switch {sw}: no P4Runtime primary session on {self.grpc_addr(sw)}")
            try:
                await c.set_pipeline(schema.info, device)
                errs = await c.write([update("insert", schema.table_entry(e["table"], e["match"], e["action"],
                                                                           e["params"])) for e in entries])
                if errs:
                    raise BuildError(f"switch {sw}: {len(errs)} static entries refused, first: {errs[0]}")
            finally:
                await c.close()
        asyncio.run(go())

    # ------------------------------------------------------------ using the network
    def exec(self, host: str, cmd: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a command inside a host's namespace."""
        r = subprocess.run(["ip", "netns", "exec", self.ns(host), *cmd], capture_output=True, text=True,
                           timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise BuildError(f"{host}: `{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        return r

    def host_popen(self, host: str, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *cmd], **kw)

    def check_processes(self) -> list[str]:
        """Names of processes that have died."""
        return [n for n, p in self.procs.items() if not p.alive]

    def status(self) -> dict:
        return {"tag": self.tag, "procs": {n: ("running" if p.alive else f"exited {p.popen.returncode}")
                                           for n, p in self.procs.items()},
                "grpc": {s: self.grpc_addr(s) for s in self.grpc_ports}, "logs": str(self.logdir)}


# ---------------------------------------------------------------- stop from another process
def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def stop_all(tag: str | None = None, everything: bool = False) -> list[str]:
    """Kill the processes recorded in run state files and remove ``mfs-`` namespaces/links.

    ``tag="x"``: only that run's processes and names.
    ``tag=None``: every run whose owning process is gone (detached or crashed runs) and every
    unrecorded ``mfs-`` leftover; runs whose owner is still alive (a demo or a test in another
    shell) are left alone unless ``everything`` is set.
    """
    said = []
    dirs = [RUN_BASE / (tag or "main")] if tag is not None else (sorted(RUN_BASE.glob("*")) if RUN_BASE.exists() else [])
    keep: set[str] = set()
    for d in dirs:
        f = d / STATE
        if not f.exists():
            continue
        try:
            st = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            st = {}
        if tag is None and not everything and st.get("owner") != os.getpid() and _alive(st.get("owner")):
            keep.update(st.get("namespaces", []), st.get("links", []))
            said.append(f"left running: cluster {st.get('tag') or d.name!r} of live process {st['owner']} "
                        f"(stop it with --tag {st.get('tag') or d.name} or --all)")
            continue
        for name, p in reversed(list(st.get("procs", {}).items())):
            kill_group(int(p["pid"]))
            said.append(f"stopped {name} (pid {p['pid']})")
        # recorded links need not start with mfs- (Mininet names switch ports s1-eth1)
        present_ns, present_links = set(netns.namespaces()), set(netns.links(prefix=""))
        for ln in reversed(st.get("links", [])):
            if ln in present_links:
                netns.del_link(ln)
                said.append(f"removed link {ln}")
        for n in st.get("namespaces", []):
            if n in present_ns:
                netns.del_ns(n)
                said.append(f"removed namespace {n}")
        shutil.rmtree(d, ignore_errors=True)
    if tag is None:
        gone_ns, gone_links = netns.cleanup(keep=keep)
    else:
        gone_ns, gone_links = netns.cleanup(f"{netns.PREFIX}{tag}") if tag else ([], [])
    said += [f"removed namespace {n}" for n in gone_ns] + [f"removed link {n}" for n in gone_links]
    return said


def read_states() -> list[dict]:
    out = []
    if RUN_BASE.exists():
        for f in sorted(RUN_BASE.glob(f"*/{STATE}")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                pass
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
