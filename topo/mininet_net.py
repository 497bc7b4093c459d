"""Mininet front end of the emulation builder (see docs/emulation.md, "Mininet").

    from topo.mininet_net import MininetNetwork
    from topo.topology import load

    with MininetNetwork(load("line2"), controller=False, agents=False) as net:
        print(net.mn["h1"].cmd("ping -c1", net.ip("h2")))   # Mininet's own node API
        net.exec("h1", ["ping", "-c1", net.ip("h2")])        # same API as topo.net.Network

It is :class:`topo.net.Network` with the plumbing done by Mininet 2.3 instead of raw
namespaces: Mininet hosts (``mnexec`` shells in their own network namespace) and Mininet
switches whose ``start()`` launches our switch process on the switch's interfaces
(``-i P@SW-ethP``), as the p4lang tutorials' ``P4RuntimeSwitch`` does: per-switch log
file, wait for the gRPC port. Targets:

* ``embedded`` (default): ``python -m topo.embedded.main`` (``mfs-switch``), ports
  shaped to the link rates with 8 strict-priority queues;
* ``bmv2``: ``simple_switch_grpc ... --thrift-port T --log-file ... p4src/build/mfs.json
  -- --grpc-server-addr 127.0.0.1:G --priority-queues 8 --cpu-port 510`` when installed;
* ``lxbr``: Mininet's ``LinuxBridge`` (no pipeline, plumbing check only).

Everything after the plumbing is the namespace builder's code, reused as is: the switch
command lines, static ARP and routes (``Network.host_routes``), forwarding entries
written directly over P4Runtime without a controller (``Network.program_direct``) or
the controller config, host agents. Each Mininet host's namespace is also given a name
with ``ip netns attach`` (``mfs-[TAG-]HOST``), so ``ip netns exec`` tools, the agents
and ``mfs-topo stop`` work on it as on a builder namespace.

Mininet's Python package is installed by Debian for /usr/bin/python3; the project venv
(another Python 3.11) loads only the ``mininet`` package from there (:func:`load_mininet`),
never the rest of that dist-packages directory.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import sys

from topo import netns
from topo.net import BuildError, Network, Proc, kill_group
from topo.topology import Topology

# where Debian's python3-mininet lives; MFS_MININET_PATH overrides (a directory holding mininet/)
DEBIAN_DIST = "/usr/lib/python3/dist-packages"
TARGETS = ("embedded", "bmv2", "lxbr")


class MininetMissing(RuntimeError):
    """Mininet cannot be used here; the message says why and how to install it."""


def _search_path() -> list[str]:
    return [os.environ["MFS_MININET_PATH"]] if os.environ.get("MFS_MININET_PATH") else [DEBIAN_DIST]


def load_mininet():
    """Import the ``mininet`` package: normally when importable; else only that package from
    Debian's dist-packages (a foreign site directory is never put on ``sys.path``)."""
    if "mininet" in sys.modules:
        return sys.modules["mininet"]
    if os.environ.get("MFS_MININET_PATH") is None:
        try:
            import mininet
            return mininet
        except ImportError:
            pass
    where = _search_path()
    spec = importlib.machinery.PathFinder.find_spec("mininet", where)
    if spec is None or spec.loader is None:
        raise MininetMissing(f"Mininet is not installed: no `mininet` package importable nor in {', '.join(where)} "
                             f"(Debian: `apt-get install mininet bridge-utils`, or `make sysdeps`; "
                             f"MFS_MININET_PATH=DIR points at another directory holding mininet/)")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mininet"] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        del sys.modules["mininet"]
        raise MininetMissing(f"Mininet found in {spec.origin} but it does not import: {e}") from e
    return mod


def missing_reason() -> str | None:
    """Why a Mininet network cannot be built here, or None when it can."""
    try:
        load_mininet()
    except MininetMissing as e:
        return str(e)
    if not shutil.which("mnexec"):
        return "Mininet's `mnexec` is not on PATH (Debian package mininet installs /usr/bin/mnexec)"
    return netns.preflight()


_CLASSES: dict[str, type] = {}


def switch_classes() -> dict[str, type]:
    """target -> Mininet ``Switch`` class (defined on first use: Mininet is imported lazily)."""
    if _CLASSES:
        return _CLASSES
    load_mininet()
    from mininet.node import Switch
    from mininet.nodelib import LinuxBridge

    class P4RuntimeSwitch(Switch):
        """A Mininet switch in the root namespace that runs one of our switch processes on its
        interfaces. ``owner`` is the :class:`MininetNetwork` whose topology describes it: the
        command line, log file and gRPC port come from there (one implementation,
        ``Network.switch_command``/``Network.start_switch``)."""

        target = ""

        def __init__(self, name, owner: "MininetNetwork", **params):
            params.setdefault("inNamespace", False)
            super().__init__(name, **params)
            self.owner = owner
            self.proc: Proc | None = None

        def start(self, controllers) -> None:
            # launch (own session, log file), then wait for the P4Runtime port or the process's death
            self.proc = Network.start_switch(self.owner, self.name)

        def stop(self, deleteIntfs: bool = True) -> None:
            if self.proc is not None and self.proc.alive:
                kill_group(self.proc.popen.pid, popen=self.proc.popen)
            super().stop(deleteIntfs)

        @property
        def grpc_addr(self) -> str:
            return self.owner.grpc_addr(self.name)

    class EmbeddedSwitch(P4RuntimeSwitch):
        """``mfs-switch`` (topo/embedded): the default target."""
        target = "embedded"

    class Bmv2Switch(P4RuntimeSwitch):
        """``simple_switch_grpc ... --priority-queues 8`` (needs it installed)."""
        target = "bmv2"

    _CLASSES.update(embedded=EmbeddedSwitch, bmv2=Bmv2Switch, lxbr=LinuxBridge)
    return _CLASSES


class MininetNetwork(Network):
    """:class:`topo.net.Network` built with Mininet. Same constructor and methods; in addition
    ``mn`` is the ``mininet.net.Mininet`` object (``net.mn["h1"]``, ``CLI(net.mn)``).
    ``mininet_log`` is Mininet's log level (``warning`` keeps it quiet, ``info`` as ``mn``)."""

    def __init__(self, topo: Topology, *, mininet_log: str = "warning", **kw):
        super().__init__(topo, **kw)
        self.mininet_log = mininet_log
        self.mn = None

    # ------------------------------------------------------------ names
    def sw_iface(self, switch: str, port: int) -> str:
        return f"{switch}-eth{port}"  # Mininet's naming: s1-eth1 is port 1 of s1

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "MininetNetwork":
        reason = missing_reason()
        if reason:
            raise BuildError(reason)
        for sw in self.topo.switches:
            if self.target_of(sw) not in TARGETS:
                raise BuildError(f"switch {sw}: target {self.target_of(sw)!r} (allowed: {', '.join(TARGETS)})")
        ours = {self.sw_iface(sw, p) for sw in self.topo.switches for p in self.topo.switch_ports(sw)}
        clash = sorted(ours & set(netns.links(prefix="")))
        if clash:
            raise BuildError(f"interfaces already exist: {', '.join(clash)} (another Mininet network with these "
                             f"switch names runs, or a previous one was not cleaned up: `mfs-topo stop` "
                             f"then `mn -c`)")
        super().start()
        return self

    def stop(self) -> None:
        if not self.started or self._stopping:
            return
        mn, self.mn = self.mn, None
        try:
            if mn is not None:
                # Mininet's teardown talks to every node's shell: only while all of them are alive
                dead = [n.name for n in mn.hosts + mn.switches if n.shell is None or n.shell.poll() is not None]
                if dead:
                    print(f"mininet: shells of {', '.join(dead)} are gone; removing our processes, links and "
                          f"namespaces only (`mn -c` removes anything Mininet left)", file=sys.stderr)
                else:
                    mn.stop()  # switch processes, bridges, interfaces, host shells
        except Exception as e:  # never mask the original error; the generic cleanup below still runs
            print(f"mininet stop: {e}; run `mn -c` to remove leftovers", file=sys.stderr)
        finally:
            super().stop()  # the rest: controller, agents, root-side veths, netns names, run state

    # ------------------------------------------------------------ plumbing
    def _build_links(self) -> None:
        load_mininet()
        from mininet.log import setLogLevel
        from mininet.net import Mininet

        setLogLevel(self.mininet_log)
        classes = switch_classes()
        t = self.topo
        self.mn = mn = Mininet(topo=None, build=False, controller=None, autoSetMacs=False, autoStaticArp=False,
                               inNamespace=False)
        for h, host in t.hosts.items():
            mn.addHost(h, ip=str(host.ip), mac=host.mac)
        for sw, s in t.switches.items():
            target = self.target_of(sw)
            extra = {} if target == "lxbr" else {"owner": self}
            mn.addSwitch(sw, cls=classes[target], dpid=f"{s.device_id:016x}", **extra)
        for ln in t.links:
            ends = []
            for ep in (ln.a, ln.b):
                if ep.node in t.hosts:
                    ends.append(dict(node=ep.node, port=0, name="eth0", mac=t.hosts[ep.node].mac))
                else:
                    ends.append(dict(node=ep.node, port=ep.port, name=self.sw_iface(ep.node, ep.port),
                                     mac=t.switches[ep.node].port_mac(ep.port)))
            a, b = ends
            mn.addLink(a["node"], b["node"], port1=a["port"], port2=b["port"], intfName1=a["name"],
                       intfName2=b["name"], addr1=a["mac"], addr2=b["mac"])
            # the root-side end: deleting it removes the pair, also from `mfs-topo stop` after a crash
            for e in ends:
                if e["node"] in t.switches:
                    self.made_links.append(e["name"])
            self._save_state()
        mn.build()  # host shells, veth pairs, host addresses and MACs (Mininet's configHosts)
        for h, host in t.hosts.items():
            node = mn[h]
            # the host shell is its own session: stop()/`mfs-topo stop` kill it like our processes
            self.procs[f"mn-{h}"] = Proc(f"mn-{h}", node.shell, self.logdir / f"mn-{h}.log", ["mininet:" + h])
            ns = self.ns(h)
            netns.run(["ip", "netns", "attach", ns, str(node.pid)])
            self.made_ns.append(ns)
            self._save_state()
            netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1", ns=ns)
            netns.quiet_iface("eth0", ns=ns)
            netns.up("eth0", ns=ns, mac=host.mac)
            ln, _ = t.host_link(h)
            if t.shape_hosts or ln.latency_s:
                netns.shape("eth0", ln.bandwidth_bps if t.shape_hosts else None, ln.latency_s / 2, ns=ns)
        for ln in t.links:
            for ep in (ln.a, ln.b):
                if ep.node in t.switches:
                    iface = self.sw_iface(ep.node, ep.port)
                    netns.quiet_iface(iface)
                    netns.up(iface, mac=t.switches[ep.node].port_mac(ep.port))
                    if ln.latency_s:
                        netns.shape(iface, None, ln.latency_s / 2)
        self.host_routes()

    def start_switch(self, sw: str, timeout: float = 60) -> Proc | None:
        node = self.mn[sw]
        node.start([])
        if self.target_of(sw) == "lxbr":
            return None
        return node.proc

    # ------------------------------------------------------------ using the network
    def mn_exec(self, host: str, cmd: str) -> str:
        """Run a shell command line in a host's Mininet shell (as typed at ``mininet>``); its output."""
        return self.mn[host].cmd(cmd)

    def status(self) -> dict:
        return {**super().status(), "mininet": True}
