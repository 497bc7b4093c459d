"""Low-level Linux plumbing for the emulation: network namespaces, veth pairs, tc.

Everything the builder creates carries the prefix ``mfs-`` (namespaces and the
root-namespace ends of veth pairs), so :func:`cleanup` can find and remove
leftovers after a crash. Runs ``ip``/``tc``/``sysctl`` as subprocesses; every
failure raises :class:`NetError` with the command and its stderr. Offloads are
turned off with the SIOCETHTOOL ioctl (no ``ethtool`` binary needed): a veth
with its default checksum offload hands the frames the switch reads a partial
UDP checksum, and the receiver drops every datagram the switch forwards.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import threading

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


_preflight_ok = False


def preflight() -> str | None:
    """Why namespaces cannot be built here, or None when they can (namespaces, veth pairs,
    and checksum offloads that can be turned off: without that no UDP datagram arrives)."""
    global _preflight_ok
    if _preflight_ok:
        return None
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth pairs): run as root, e.g. `sudo make demo`"
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2")):
        if not shutil.which(tool):
            return f"`{tool}` is not installed (Debian package {pkg}; `make sysdeps` installs it)"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns` does not work here: {r.stderr.strip()}"
    probe = f"{PREFIX}pf{os.getpid() % 100000}"
    why = None
    for _attempt in range(2):  # a concurrent `mfs-topo stop` may remove the probe under us: retry once
        subprocess.run(["ip", "link", "del", probe], capture_output=True)  # a leftover of a killed run
        r = subprocess.run(["ip", "link", "add", probe, "type", "veth", "peer", "name", probe + "b"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            why = f"cannot create a veth pair: {r.stderr.strip() or r.stdout.strip()}"
            continue
        try:
            offloads_off(probe)
            why = None
            break
        except NetError as e:
            why = str(e)
        finally:
            subprocess.run(["ip", "link", "del", probe], capture_output=True)
    if why:
        return why
    _preflight_ok = True
    return None


# ---------------------------------------------------------------- offloads (SIOCETHTOOL)
SIOCETHTOOL = 0x8946
CLONE_NEWNET = 0x40000000
# (get, set) legacy ethtool commands; the kernel maps them onto its feature flags
_ETHTOOL = {"rx": (0x14, 0x15), "tx": (0x16, 0x17), "sg": (0x18, 0x19), "tso": (0x1E, 0x1F),
            "gso": (0x23, 0x24), "gro": (0x2B, 0x2C)}
OFFLOADS = ("tx", "rx", "tso", "gso", "gro", "sg")  # tx first: sg/tso depend on it


def in_ns(ns: str | None, fn):
    """``fn()`` run inside network namespace ``ns`` (None: ours), in a short-lived thread that
    setns()es into it (only that thread changes namespace). Its result or its exception."""
    if ns is None:
        return fn()
    out: dict = {}

    def enter():
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        except OSError as e:
            out["err"] = NetError(f"network namespace {ns!r}: {e.strerror}")
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["err"] = NetError(f"setns into {ns!r}: {os.strerror(ctypes.get_errno())}")
                return
            out["ok"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["err"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=enter, name=f"setns {ns}")
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]
    return out["ok"]


def _socket_in(ns: str | None) -> socket.socket:
    """A datagram socket living in network namespace ``ns``; ioctls on it name that namespace's
    interfaces."""
    return in_ns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))


def _ethtool(sock: socket.socket, ifname: str, cmd: int, data: int = 0) -> int:
    buf = array.array("I", [cmd, data])  # struct ethtool_value {u32 cmd; u32 data}
    addr, _n = buf.buffer_info()
    ifreq = struct.pack("16sP", ifname.encode(), addr)
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return buf[1]


def offloads(ifname: str, ns: str | None = None) -> dict[str, bool]:
    """Which offloads of ``ifname`` are on (SIOCETHTOOL; those the driver cannot report are left out)."""
    with _socket_in(ns) as s:
        out = {}
        for name in OFFLOADS:
            try:
                out[name] = bool(_ethtool(s, ifname, _ETHTOOL[name][0]))
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise NetError(f"{ifname}{' in ' + ns if ns else ''}: reading offload {name}: "
                                   f"{e.strerror}") from None
        return out


def offloads_off(ifname: str, ns: str | None = None) -> None:
    """Turn checksum and segmentation offloads of ``ifname`` off with the SIOCETHTOOL ioctl, as
    ``ethtool -K IF tx off rx off tso off gso off gro off sg off`` would, without the binary.
    Raises NetError when the checksum offloads are still on afterwards (UDP would not arrive)."""
    where = f"{ifname}{' in namespace ' + ns if ns else ''}"
    with _socket_in(ns) as s:
        for name in OFFLOADS:
            try:
                _ethtool(s, ifname, _ETHTOOL[name][1], 0)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL) and name not in ("tx", "rx"):
                    continue
                if e.errno == errno.EOPNOTSUPP:
                    continue  # a driver without checksum offload has nothing to turn off
                raise NetError(f"cannot turn offload {name} off on {where} (SIOCETHTOOL): {e.strerror}") from None
    still = [k for k, on in offloads(ifname, ns).items() if on and k in ("tx", "rx")]
    if still:
        raise NetError(f"checksum offload {'/'.join(still)} is still on for {where}: UDP through the "
                       f"switch would arrive with bad checksums")


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


def sysctl(key: str, value: str, ns: str | None = None) -> bool:
    """Write /proc/sys/<key> (in namespace ``ns``) without the sysctl binary; False if it failed."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write():
        with open(path, "w") as f:
            f.write(value)

    try:
        in_ns(ns, write)
        return True
    except (OSError, NetError):  # NetError: the namespace could not be entered
        return False


def quiet_iface(name: str, ns: str | None = None) -> None:
    """No IPv6 chatter, no offloads (frames stay <= MTU and carry full checksums on the wire
    the switch reads). Raises NetError when the checksum offloads cannot be turned off."""
    sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "1", ns=ns)
    offloads_off(name, ns=ns)


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


# ---------------------------------------------------------------- VLAN tags on packet sockets
SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
_AUXDATA = struct.Struct("IIIHHHH")  # struct tpacket_auxdata


def keep_vlan_tags(sock: socket.socket) -> None:
    """Ask the kernel for each frame's stripped VLAN tag (PACKET_AUXDATA): a veth with rx VLAN
    offload (the default) removes the outer 802.1Q/802.1ad tag from the frame a packet socket
    reads and hands it over out of band; :func:`recv_frame` puts it back."""
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)


def recv_frame(sock: socket.socket, bufsize: int = 65535) -> tuple[bytes, tuple]:
    """``recvfrom`` on a packet socket set up by :func:`keep_vlan_tags`, with the outer VLAN tag
    the kernel stripped re-inserted after the MAC addresses (as libpcap does)."""
    data, anc, _flags, addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(_AUXDATA.size))
    for level, kind, raw in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(raw) >= _AUXDATA.size:
            status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(raw)
            if status & TP_STATUS_VLAN_VALID and len(data) >= 12:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data, addr
