"""Connection guard in front of the host API: caps connections per peer and in total.

gRPC's server caps connections only all together (``grpc.max_allowed_incoming_connections``), so
one peer opening connections that never finish their HTTP/2 preface held every slot for the
handshake timeout and locked out a legitimate host that had to reconnect. The guard owns the
listening socket (TCP or unix): it accepts a connection only while its peer holds fewer than
``max_per_peer`` and all peers together fewer than ``max_total``; anything else is closed at
once (counted ``rejected_connections{reason="per_peer"|"total"}``, one rate-limited log line).
An accepted connection is relayed, bytes as they come, to the gRPC server listening on a unix
socket in a private directory (mode 0700: nothing else can reach it); gRPC's handshake and idle
timeouts close the backend side, and the guard then closes the client's (and frees its slot).
Each relayed connection's backend socket is bound to a name of its own in the private directory
(unlinked at once: the name stays the socket's), so gRPC's ``context.peer()`` (``unix:<name>``)
maps back to the client's peer key (:meth:`ConnGuard.peer_of`): logs name the real peer.

A peer is the source address for TCP, and the uid from ``SO_PEERCRED`` for a unix socket (the
processes of one uid share its cap; where ``SO_PEERCRED`` is not available, every unix peer is
one peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import tempfile
from pathlib import Path

log = logging.getLogger("mfs.hostapi")

HIGH_WATER = 256 * 1024  # bytes buffered towards one side before the other side's reading pauses


def peer_key(transport: asyncio.BaseTransport) -> str:
    """``ip:<address>`` for TCP, ``uid:<uid>`` for a unix socket (``unix`` without SO_PEERCRED)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        opt = getattr(socket, "SO_PEERCRED", None)
        if opt is None:
            return "unix"
        try:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i")))
        except OSError:
            return "unix"
        return f"uid:{uid}"
    peer = transport.get_extra_info("peername")
    return f"ip:{peer[0]}" if isinstance(peer, tuple) and peer else "unknown"


class _Side(asyncio.Protocol):
    """One end of a relayed connection; ``other`` is the opposite end."""

    def __init__(self, on_lost=None):
        self.t: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.on_lost = on_lost

    def connection_made(self, transport):
        self.t = transport
        transport.set_write_buffer_limits(HIGH_WATER)

    def data_received(self, data):
        if self.other is not None and self.other.t is not None:
            self.other.t.write(data)

    def eof_received(self):
        return False  # close this side; connection_lost closes the other

    def connection_lost(self, exc):
        if self.other is not None and self.other.t is not None:
            self.other.t.close()  # after what is buffered towards it
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None

    # flow control: the other side reads only as fast as this side writes
    def pause_writing(self):
        if self.other is not None and self.other.t is not None:
            self.other.t.pause_reading()

    def resume_writing(self):
        if self.other is not None and self.other.t is not None:
            self.other.t.resume_reading()


class ConnGuard:
    """Listen on ``listen`` (``host:port`` or ``unix:/path``), relay to a private unix socket.

    ``backend`` is the gRPC address to bind (``unix:<private dir>/api.sock``, created by the
    guard); ``start`` returns the listening port (0 for a unix socket)."""

    def __init__(self, listen: str, max_total: int, max_per_peer: int, metrics, limited):
        self.listen, self.max_total, self.max_per_peer = listen, max_total, max_per_peer
        self.metrics, self.limited = metrics, limited
        self.held: dict[str, int] = {}
        self.total = 0
        self._dir = tempfile.mkdtemp(prefix="mfs-hostapi-")  # 0700: the backend is reachable only here
        self.backend_path = str(Path(self._dir) / "api.sock")
        self.backend = f"unix:{self.backend_path}"
        self.server: asyncio.AbstractServer | None = None
        self.peers: dict[str, str] = {}  # gRPC peer of a relayed connection ("unix:<name>") -> peer key
        self._names = itertools.count(1)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        if self.listen.startswith("unix:"):
            sock = Path(self.listen[len("unix:"):])
            sock.parent.mkdir(parents=True, exist_ok=True)
            sock.unlink(missing_ok=True)  # a stale socket from a crashed controller
            self.server = await loop.create_unix_server(self._accept, str(sock))
            return 0
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]") or None
        try:
            self.server = await loop.create_server(self._accept, host, int(port), reuse_address=True)
        except OSError as e:
            raise OSError(f"host API cannot listen on {self.listen} ({e.strerror or e})") from None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None

    def remove(self) -> None:
        """Remove the private directory of the backend socket (after the gRPC server stopped)."""
        with contextlib.suppress(OSError):
            os.unlink(self.backend_path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    # ------------------------------------------------------------------ accepting
    def _accept(self) -> asyncio.Protocol:
        return _Client(self)

    def admit(self, key: str) -> str | None:
        """Take a slot for ``key``; returns None, or the reason it is refused."""
        if self.held.get(key, 0) >= self.max_per_peer:
            return "per_peer"
        if self.total >= self.max_total:
            return "total"
        self.held[key] = self.held.get(key, 0) + 1
        self.total += 1
        return None

    def peer_of(self, grpc_peer: str) -> str:
        """The client's peer key for the gRPC peer of a relayed connection (``grpc_peer`` itself
        if it is not one of them)."""
        return self.peers.get(grpc_peer, grpc_peer)

    def release(self, key: str) -> None:
        self.total -= 1
        self.held[key] -= 1
        if not self.held[key]:
            del self.held[key]


class _Client(_Side):
    def __init__(self, guard: ConnGuard):
        super().__init__()
        self.guard = guard

    def connection_made(self, transport):
        super().connection_made(transport)
        g = self.guard
        key = peer_key(transport)
        why = g.admit(key)
        if why is not None:
            g.metrics.count("rejected_connections", reason=why)
            limit = (f"{g.max_per_peer} from one peer (limits.max_connections_per_peer)" if why == "per_peer"
                     else f"{g.max_total} in all (limits.max_connections)")
            g.limited.warning(f"conn-{why}", "host API: refused a connection from %s: %s held", key, limit)
            transport.abort()
            return
        self.key = key
        self.on_lost = lambda: g.release(key)
        transport.pause_reading()  # until the backend is connected
        asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        g = self.guard
        name = f"{g._dir}/c{next(g._names)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                sock.bind(name)  # gRPC sees this name as the connection's peer
            except OSError:
                name = ""  # (a path too long for sun_path: the peer stays unnamed)
            try:
                await loop.sock_connect(sock, g.backend_path)
            finally:
                if name:
                    with contextlib.suppress(OSError):
                        os.unlink(name)
            _, backend = await loop.create_unix_connection(_Side, sock=sock)
        except OSError as e:
            sock.close()
            g.limited.warning("conn-backend", "host API: cannot reach the gRPC server (%s)", e)
            self.t.abort()
            return
        if self.t.is_closing():  # the client left meanwhile
            backend.t.close()
            return
        if name:
            grpc_peer, release = f"unix:{name}", self.on_lost
            g.peers[grpc_peer] = self.key

            def lost():
                g.peers.pop(grpc_peer, None)
                if release is not None:
                    release()
            self.on_lost = lost
        backend.other, self.other = self, backend
        self.t.resume_reading()
