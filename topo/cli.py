"""``mfs-topo``: start, inspect and stop an emulated MFS cluster (see docs/emulation.md).

    mfs-topo run topo/topologies/demo.yaml            # foreground; Ctrl-C stops and cleans up
    mfs-topo run demo --detach                        # leave it running; `mfs-topo stop` later
    mfs-topo status
    mfs-topo stop                                     # every mfs- process, namespace and link
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from mfs.configutil import ConfigError
from topo import net as N
from topo import topology as T

TARGETS = ("embedded", "bmv2", "lxbr")


def _policies() -> list[str]:
    try:
        from mfs.policy import switch_schedulers
        return sorted(switch_schedulers())
    except ImportError:
        return ["mfs", "fair", "fifo", "sjf", "edf", "karuna", "pias"]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mfs-topo", description="Emulated MFS clusters in network namespaces.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="build a topology and start switches, controller and host agents")
    r.add_argument("topology", help="YAML or tutorials topology.json, or a shipped name (demo, line2, two_switch)")
    r.add_argument("--target", choices=TARGETS, default=None,
                   help="override every switch's target: embedded (default, the MFS pipeline in Python), "
                        "bmv2 (simple_switch_grpc, needs it installed), lxbr (plain Linux bridge, plumbing "
                        "check only, implies --no-controller)")
    r.add_argument("--policy", default="mfs", help=f"controller scheduler (one of {', '.join(_policies())})")
    r.add_argument("--tag", default="", help="name prefix for a second concurrent cluster (<= 4 chars)")
    r.add_argument("--logs", default=None, help="log directory (default logs/)")
    r.add_argument("--pcap", action="store_true", help="write per-port pcaps under the log directory")
    r.add_argument("--no-controller", action="store_true", help="start only namespaces and switches")
    r.add_argument("--no-agents", action="store_true", help="do not start host agents")
    r.add_argument("--detach", action="store_true", help="return once everything is up; stop with `mfs-topo stop`")
    r.add_argument("--mininet", action="store_true",
                   help="build it with Mininet (topo/mininet_net.py): Mininet hosts and switches; drops into "
                        "Mininet's CLI when stdin is a TTY, else runs until SIGTERM")
    s = sub.add_parser("stop", help="stop detached or crashed clusters and remove mfs- leftovers "
                                    "(clusters whose owning process still runs are left alone)")
    s.add_argument("--tag", default=None, help="only the cluster started with this tag")
    s.add_argument("--all", action="store_true", help="also clusters of live processes (e.g. a running demo)")
    sub.add_parser("status", help="what runs now")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "stop":
        reason = N.netns.preflight()
        if reason:
            print(f"mfs-topo stop: {reason}", file=sys.stderr)
            return 2
        said = N.stop_all(args.tag, everything=args.all)
        print("\n".join(said) if said else "nothing to stop")
        return 0
    if args.cmd == "status":
        return _status()
    return _run(args)


def _status() -> int:
    states = N.read_states()
    if not states:
        print("no emulated cluster is recorded as running")
    for st in states:
        print(f"cluster {st.get('name')} (tag {st.get('tag') or '-'}) from {st.get('topology')}, logs in {st.get('logs')}")
        for name, p in st.get("procs", {}).items():
            print(f"  {name:14s} pid {p['pid']:>7}  {'running' if N.pid_alive(p['pid']) else 'DEAD'}  log {p['log']}")
        for sw, addr in st.get("grpc", {}).items():
            print(f"  switch {sw} P4Runtime {addr}")
        if st.get("controller_socket"):
            print(f"  controller API unix:{st['controller_socket']}")
        for h, info in st.get("hosts", {}).items():
            print(f"  host {h:6s} {info['ip']:15s} {info['role']:8s} netns {info['ns']}")
    left = [n for n in N.netns.namespaces() if n.startswith(N.netns.PREFIX)]
    known = {ns for st in states for ns in st.get("namespaces", [])}
    stray = sorted(set(left) - known)
    if stray:
        print(f"unrecorded mfs- namespaces (another run or a crash; `mfs-topo stop` removes them): {' '.join(stray)}")
    return 0


def _run(args) -> int:
    try:
        topo = T.load(args.topology)
    except ConfigError as e:
        print(f"mfs-topo: {e}", file=sys.stderr)
        return 2
    for note in topo.notes:
        print(f"note: {note}")
    controller = not args.no_controller and args.target != "lxbr"
    cls = N.Network
    if args.mininet:
        if args.detach:
            print("mfs-topo: --detach does not go with --mininet (Mininet's host shells end with this command); "
                  "run without --mininet to detach", file=sys.stderr)
            return 2
        from topo.mininet_net import MininetNetwork
        cls = MininetNetwork
    net = cls(topo, tag=args.tag, target=args.target, policy=args.policy, controller=controller,
                    agents=controller and not args.no_agents, logdir=args.logs, pcap=args.pcap)
    try:
        print(f"building {topo.name}: {len(topo.hosts)} hosts, {len(topo.switches)} switches, {len(topo.links)} links")
        net.start()
    except (N.BuildError, N.netns.NetError) as e:
        print(f"mfs-topo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    print(json.dumps(net.status(), indent=1))
    print(f"namespaces: {' '.join(net.ns(h) for h in topo.hosts)}  (e.g. `ip netns exec {net.ns(next(iter(topo.hosts)))} ping "
          f"{net.ip(list(topo.hosts)[-1])}`)")
    if args.detach:
        net._restore_handlers()  # the processes outlive us; `mfs-topo stop` cleans up
        net.started = False
        print("detached; stop with `mfs-topo stop`")
        return 0
    if args.mininet and sys.stdin.isatty():
        from mininet.cli import CLI
        from mininet.log import setLogLevel
        setLogLevel("output")  # the CLI prints command output at this level (the build ran at "warning")
        try:
            CLI(net.mn)
        finally:
            net.stop()
        return 0
    print("running; Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while True:
            dead = net.check_processes()
            if dead:
                print(f"process(es) died: {', '.join(dead)}; see {net.logdir}; stopping", file=sys.stderr)
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping")
        return 0
    finally:
        net.stop()


if __name__ == "__main__":
    sys.exit(main())
