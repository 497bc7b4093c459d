"""A throw-away two-host network for tests and benchmarks of a switch process.

    with TwoHosts() as net:      # h1 --veth-- net.sw_if[1] | net.sw_if[2] --veth-- h2
        subprocess.Popen(["mfs-switch", "-i", f"1@{net.sw_if[1]}", "-i", f"2@{net.sw_if[2]}", ...])
        net.run(net.h2, "python3", "-c", ...)

Hosts live in their own network namespaces (10.9.0.1 and 10.9.0.2, static ARP,
offloads off); the switch-side veth ends stay in the caller's namespace. Every
namespace and link is removed on exit, also on failure. Needs root and iproute2.
"""

from __future__ import annotations

import subprocess
import uuid

from topo import netns

HOSTS = {1: ("10.9.0.1", "02:00:00:09:00:01"), 2: ("10.9.0.2", "02:00:00:09:00:02")}


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r


class TwoHosts:
    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.ns = {1: f"mfs-h1-{tag}", 2: f"mfs-h2-{tag}"}
        self.sw_if = {1: f"mfs{tag}p1", 2: f"mfs{tag}p2"}
        self.h1, self.h2 = self.ns[1], self.ns[2]
        self.ip = {n: ip for n, (ip, _mac) in HOSTS.items()}
        self.mac = {n: mac for n, (_ip, mac) in HOSTS.items()}

    def __enter__(self) -> "TwoHosts":
        try:
            for n, (ip, mac) in HOSTS.items():
                ns, swif = self.ns[n], self.sw_if[n]
                _sh("ip", "netns", "add", ns)
                _sh("ip", "link", "add", swif, "type", "veth", "peer", "name", "eth0", "netns", ns)
                for cmd in (("ip", "link", "set", "eth0", "address", mac),
                            ("ip", "addr", "add", f"{ip}/24", "dev", "eth0"),
                            ("ip", "link", "set", "eth0", "up"), ("ip", "link", "set", "lo", "up")):
                    _sh("ip", "netns", "exec", ns, *cmd)
                netns.offloads_off("eth0", ns=ns)  # SIOCETHTOOL: no ethtool binary needed
                netns.sysctl(f"net.ipv6.conf.{swif}.disable_ipv6", "1")
                _sh("ip", "link", "set", swif, "up")
            for a, b in ((1, 2), (2, 1)):
                _sh("ip", "netns", "exec", self.ns[a], "ip", "neigh", "add", self.ip[b], "lladdr", self.mac[b],
                    "dev", "eth0")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in self.ns.values():
            _sh("ip", "netns", "del", ns, check=False)
        for swif in self.sw_if.values():
            _sh("ip", "link", "del", swif, check=False)

    def cmd(self, host: int, *argv: str) -> list[str]:
        """argv prefixed to run inside host ``host``'s namespace."""
        return ["ip", "netns", "exec", self.ns[host], *argv]
