"""Low-level Linux plumbing for the emulation: network namespaces, veth pairs, tc.

Everything the builder creates carries the prefix ``mfs-`` (namespaces and the
root-namespace ends of veth pairs), so :func:`cleanup` can find and remove
leftovers after a crash. Runs ``ip``/``tc``/``ethtool``/``sysctl`` as
subprocesses; every failure raises :class:`NetError` with the command and its
stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess

PREFIX = "mfs-"


class NetError(RuntimeError):
    """A network command failed; the message names the command and its error output."""


def run(cmd: list[str], check: bool = True, ns: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NetError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def preflight() -> str | None:
    """Why namespaces cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth pairs): run as root, e.g. `sudo make demo`"
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2")):
        if not shutil.which(tool):
            return f"`{tool}` is not installed (Debian package {pkg}; `make sysdeps` installs it)"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns` does not work here: {r.stderr.strip()}"
    return None


def namespaces() -> list[str]:
    r = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def links(prefix: str = PREFIX) -> list[str]:
    r = run(["ip", "-o", "link", "show"], check=False)
    out = []
    for line in r.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                out.append(name)
    return out


def add_ns(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "link", "set", "lo", "up"], ns=name)
    sysctl("net.ipv6.conf.all.disable_ipv6", "1", ns=name)


def del_ns(name: str) -> None:
    run(["ip", "netns", "del", name], check=False)


def del_link(name: str) -> None:
    run(["ip", "link", "del", name], check=False)


def sysctl(key: str, value: str, ns: str | None = None) -> None:
    run(["sysctl", "-q", "-w", f"{key}={value}"], check=False, ns=ns)


def quiet_iface(name: str, ns: str | None = None) -> None:
    """No IPv6 chatter, no offloads (frames stay <= MTU on the wire the switch reads)."""
    sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "1", ns=ns)
    if shutil.which("ethtool"):
        for feats in (["tx", "off", "rx", "off"], ["tso", "off", "gso", "off", "gro", "off"], ["sg", "off"]):
            run(["ethtool", "-K", name, *feats], check=False, ns=ns)


def veth(a: str, b: str, mtu: int = 1500) -> None:
    run(["ip", "link", "add", a, "mtu", str(mtu), "type", "veth", "peer", "name", b, "mtu", str(mtu)])


def move_into(iface: str, ns: str, new_name: str) -> None:
    run(["ip", "link", "set", iface, "netns", ns])
    run(["ip", "link", "set", iface, "name", new_name], ns=ns)


def up(iface: str, ns: str | None = None, mac: str | None = None) -> None:
    if mac:
        run(["ip", "link", "set", iface, "address", mac], ns=ns)
    run(["ip", "link", "set", iface, "up"], ns=ns)


def shape(iface: str, rate_bps: float | None, delay_s: float = 0.0, ns: str | None = None,
          limit_bytes: int = 1_000_000) -> None:
    """Limit an interface's egress to ``rate_bps`` (tc tbf: a NIC's line rate) and/or delay it
    (tc netem, which only a delay needs); nothing when neither is asked.

    tbf: ``burst`` two full frames or 200 us of the rate, whichever is larger (a NIC sends at
    its line rate, not in bursts); ``limit`` ``limit_bytes`` of queue (the senders' own buffers
    are what should be short, see docs/demo.md)."""
    if not rate_bps and not delay_s:
        return
    if rate_bps is not None and not rate_bps > 0:
        raise ValueError(f"shape {iface}: rate_bps={rate_bps!r} must be > 0")
    if delay_s < 0:
        raise ValueError(f"shape {iface}: delay_s={delay_s!r} must be >= 0")
    if not delay_s:
        burst = max(2 * 1514, int(rate_bps / 8 * 200e-6))
        run(["tc", "qdisc", "replace", "dev", iface, "root", "tbf", "rate", f"{int(rate_bps)}bit",
             "burst", str(burst), "limit", str(limit_bytes)], ns=ns)
        return
    args = ["tc", "qdisc", "replace", "dev", iface, "root", "netem", "limit", "10000", "delay", f"{delay_s * 1e6:.0f}us"]
    if rate_bps:
        args += ["rate", f"{int(rate_bps)}bit"]
    try:
        run(args, ns=ns)
    except NetError as e:
        raise NetError(f"{e} (link latency needs the sch_netem kernel module; rate limits alone use tbf)") from None


def cleanup(prefix: str = PREFIX, keep: frozenset[str] | set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Remove every namespace and root-namespace link whose name starts with ``prefix``,
    except the names in ``keep`` (those of clusters still running)."""
    gone_links = [ln for ln in links(prefix) if ln not in keep]
    for ln in gone_links:
        del_link(ln)  # deleting one end of a veth deletes its peer too
    gone_ns = [n for n in namespaces() if n.startswith(prefix) and n not in keep]
    for n in gone_ns:
        del_ns(n)
    return gone_ns, gone_links
