"""The agent's control socket: newline-delimited JSON over a unix stream socket.

File-system sockets cross network namespaces, so the workload driver (root
namespace) reaches every host's agent without an IP route. Protocol (one JSON
object per line, UTF-8; see docs/hostagent.md):

requests (client → agent), each may carry an ``"id"`` echoed in the reply::

    {"op": "submit", "stage": 1|2|3, "peer": "10.0.0.2", "bytes": N, "request_id": R,
     "batch_id": B, "deadline": unix_s|null, "target_layer": L, "current_layer": C|null, "level": P|null}
        → {"id":…, "ok": true, "flow_id": F}
    {"op": "layer", "request_id": R, "current_layer": C, "prefill_done": false} → {"ok": true}
    {"op": "request_start", "request_id", "deadline", "arrival", "num_layers",
     "batch_id", "remaining_compute", "remaining_bytes", "peers": [host, ...]} → {"ok": true}
    {"op": "request_end", "request_id": R}                                      → {"ok": true}
    {"op": "batch", "batch_id": B, "kind": "arrival"|"departure"}              → {"ok": true}
    {"op": "status"}                                  → {"ok": true, "status": {...}}
    {"op": "subscribe"}   also stream "received" events of this agent to this connection
    {"op": "ping"}                                    → {"ok": true, "time": unix_s}

errors: ``{"id":…, "ok": false, "error": "what was wrong"}`` (the connection stays open).

events (agent → client, no ``id``):

* ``{"event": "done", "flow_id", "stage", "request_id", "bytes", "submit_time", "end_time",
  "packets", "retransmits"}`` — a transfer submitted on this connection is fully delivered
  (acknowledged by the receiver);
* ``{"event": "received", "src", "flow_id", "stage", "request_id", "target_layer", "bytes",
  "first_time", "time"}`` — after ``subscribe``: a transfer to this agent fully arrived.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
from concurrent.futures import Future
from typing import Any, Callable

from mfs.header import MFS_UDP_PORT
from hostagent.agent import HostAgent, Transfer
from hostagent.transport import Delivered

log = logging.getLogger("mfs.hostagent.control")

MAX_LINE = 1 << 20


def unix_path(spec: str) -> str:
    """``unix:/run/mfs/h1.sock`` or a plain path → the path."""
    path = spec[len("unix:"):] if spec.startswith("unix:") else spec
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise ValueError(f"control socket {spec!r}: empty path")
    return path


def _int(req: dict, key: str, default: Any = ...) -> int:
    v = req.get(key, default)
    if v is ...:
        raise ValueError(f"{key} is required")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key}={v!r} is not an integer")
    return v


def _opt_num(req: dict, key: str) -> float | None:
    v = req.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key}={v!r} is not a number")
    return float(v)


def _names(req: dict, key: str) -> list[str]:
    v = req.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{key}={v!r} is not a list of host names")
    return v


def _num(req: dict, key: str, default: Any = ...) -> float:
    v = _opt_num(req, key)
    if v is None:
        if default is ...:
            raise ValueError(f"{key} is required")
        return float(default)
    return v


def transfer_event(tr: Transfer) -> dict:
    return {"event": "done", "flow_id": tr.flow_id, "stage": tr.stage, "request_id": tr.request_id,
            "bytes": tr.size, "submit_time": tr.submit_time, "end_time": tr.end_time, "packets": tr.packets,
            "retransmits": tr.retransmits}


def received_event(d: Delivered) -> dict:
    return {"event": "received", "src": d.src, "flow_id": d.flow_id, "stage": d.stage, "request_id": d.request_id,
            "target_layer": d.target_layer, "bytes": d.total, "first_time": d.first_time, "time": d.time}


class LineTooLong(ValueError):
    pass


def read_lines(sock: socket.socket):
    """Yield the non-empty newline-terminated lines of a stream socket until EOF."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk
        if len(buf) > MAX_LINE and b"\n" not in buf:
            raise LineTooLong(f"line longer than {MAX_LINE} bytes")
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line


class _Conn:
    """One driver connection. Replies and events go out through a writer thread, so that the
    agent's transport I/O thread (which completes transfers and so emits events) never blocks
    on a slow reader of this socket: it only enqueues."""

    def __init__(self, server: "ControlServer", sock: socket.socket):
        self.server, self.sock = server, sock
        self.closed = False
        self.subscribed = False
        self._out: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="mfs-control-writer", daemon=True)
        self._writer.start()

    def send(self, obj: dict) -> None:
        if not self.closed:
            self._out.put((json.dumps(obj, separators=(",", ":")) + "\n").encode())

    def _write(self) -> None:
        while True:
            data = self._out.get()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True
                return

    def on_received(self, d: Delivered) -> None:
        self.send(received_event(d))

    def serve(self) -> None:
        agent = self.server.agent
        try:
            for line in read_lines(self.sock):
                self.handle(line)
            log.info("control connection closed by the client")
        except LineTooLong as e:
            self.send({"ok": False, "error": f"request {e}"})
            log.warning("control connection dropped: request %s", e)
        except OSError as e:
            log.info("control connection closed: %s", e)
        except Exception:
            log.exception("control connection failed")
        finally:
            if self.subscribed:
                agent.remove_receive_listener(self.on_received)
            self._out.put(None)  # the writer sends what is queued (e.g. a last error reply), then stops
            self._writer.join(timeout=5)
            self.closed = True
            self.sock.close()

    def handle(self, line: bytes) -> None:
        rid = None
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request must be a JSON object")
            rid = req.get("id")
            reply = self.dispatch(req)
        except (ValueError, TypeError, RuntimeError) as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:  # a bug in the agent must not silently drop the driver's connection
            log.exception("control request failed: %.200r", line)
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        reply["id"] = rid
        self.send(reply)

    def dispatch(self, req: dict) -> dict:
        agent = self.server.agent
        op = req.get("op")
        if op == "submit":
            cur = req.get("current_layer")
            lvl = req.get("level")
            tr = agent.submit(_int(req, "stage"), str(req.get("peer", "")), _int(req, "bytes"),
                              _int(req, "request_id"), batch_id=_int(req, "batch_id", 0),
                              deadline=_opt_num(req, "deadline"), target_layer=_int(req, "target_layer", 0),
                              current_layer=None if cur is None else _int(req, "current_layer"),
                              level=None if lvl is None else _int(req, "level"),
                              on_done=lambda t: self.send(transfer_event(t)), owner=str(req.get("owner") or ""))
            return {"ok": True, "flow_id": tr.flow_id}
        if op == "layer":
            agent.layer_boundary(_int(req, "request_id"), _int(req, "current_layer"), bool(req.get("prefill_done")),
                                 owner=str(req.get("owner") or ""))
        elif op == "request_start":
            agent.request_start(_int(req, "request_id"), _num(req, "deadline"), _num(req, "arrival"),
                                _int(req, "num_layers"), batch_id=_int(req, "batch_id", 0),
                                remaining_compute=_num(req, "remaining_compute", 0.0),
                                remaining_bytes=_int(req, "remaining_bytes", 0), peers=_names(req, "peers"))
        elif op == "request_end":
            agent.request_end(_int(req, "request_id"))
        elif op == "batch":
            agent.batch_event(_int(req, "batch_id"), str(req.get("kind")))
        elif op == "status":
            return {"ok": True, "status": agent.status()}
        elif op == "subscribe":
            if not self.subscribed:
                self.subscribed = True
                agent.add_receive_listener(self.on_received)
        elif op == "ping":
            import time
            return {"ok": True, "time": time.time()}
        else:
            raise ValueError(f"unknown op {op!r} (known: submit, layer, request_start, request_end, batch, "
                             f"status, subscribe, ping)")
        return {"ok": True}


class ControlServer:
    """Serves an agent on a unix socket path (removed on close)."""

    def __init__(self, agent: HostAgent, path: str):
        self.agent, self.path = agent, unix_path(path)
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a previous run
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(64)
        self._thread: threading.Thread | None = None
        self._stop = False

    def start(self) -> "ControlServer":
        self._thread = threading.Thread(target=self._accept, name="mfs-control", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stop:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            c = _Conn(self, s)
            threading.Thread(target=c.serve, name="mfs-control-conn", daemon=True).start()

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class ControlError(RuntimeError):
    pass


class ControlClient:
    """Client side of the control socket, with the same runtime API as :class:`HostAgent`.

    ``submit`` returns a Future resolved with the agent's ``done`` event (a dict).

    ``pipeline=True``: ``submit``, ``layer_boundary``, ``batch_event`` and ``request_end`` do not wait
    for the agent's reply (the request is written and the call returns; a refused request is logged,
    and a refused ``submit`` fails its Future). The agent handles one connection's lines in order, so
    the sequence is the same; the caller (the workload driver, once per layer) no longer pays a
    socket round trip through two busy processes per call. ``request_start`` and ``status`` always wait.
    """

    def __init__(self, path: str, address: str = "", timeout: float = 10.0, pipeline: bool = False):
        self.path = unix_path(path)
        self.address = address
        self.timeout = timeout
        self.pipeline = pipeline
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            raise ControlError(f"cannot connect to agent control socket {self.path}: {e.strerror}") from None
        self._wlock = threading.Lock()
        self._lock = threading.Lock()
        self._next = 0
        self._replies: dict[int, Future] = {}
        self._flows: dict[int, Future] = {}
        self._early: dict[int, dict] = {}
        self.on_received: Callable[[dict], None] | None = None
        self._reader = threading.Thread(target=self._read, name="mfs-control-client", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        why = "closed by the agent"
        try:
            for line in read_lines(self.sock):
                try:
                    self._dispatch(json.loads(line))
                except Exception:  # a bad line or a failing callback must not stop the reader
                    log.exception("control client %s: cannot handle %.200r", self.path, line)
        except OSError as e:
            why = f"broken: {e}"
        except LineTooLong as e:
            why = f"broken: agent sent a {e}"
        err = ControlError(f"agent control connection {self.path} {why}")
        with self._lock:
            for f in list(self._replies.values()) + list(self._flows.values()):
                if not f.done():
                    f.set_exception(err)

    def _dispatch(self, msg: dict) -> None:
        ev = msg.get("event")
        if ev == "done":
            with self._lock:
                f = self._flows.pop(msg["flow_id"], None)
                if f is None:
                    self._early[msg["flow_id"]] = msg  # the event overtook the submit reply
            if f is not None:
                f.set_result(msg)
        elif ev == "received":
            if self.on_received is not None:
                self.on_received(msg)
        else:
            with self._lock:
                f = self._replies.pop(msg.get("id"), None)
            if f is not None:
                f.set_result(msg)

    def _send(self, op: str, fields: dict) -> tuple[int, Future]:
        with self._lock:
            self._next += 1
            rid = self._next
            f: Future = Future()
            self._replies[rid] = f
        data = (json.dumps({"op": op, "id": rid, **fields}) + "\n").encode()
        with self._wlock:
            self.sock.sendall(data)
        return rid, f

    def request(self, op: str, **fields) -> dict:
        rid, f = self._send(op, fields)
        try:
            reply = f.result(self.timeout)
        except TimeoutError:
            with self._lock:
                self._replies.pop(rid, None)
            raise TimeoutError(f"agent {self.path}: no reply to {op!r} within {self.timeout:g} s") from None
        if not reply.get("ok"):
            raise ControlError(f"agent {self.path}: {op}: {reply.get('error')}")
        return reply

    def notify(self, op: str, **fields) -> None:
        """``op`` without waiting for the reply when pipelining (a refusal is logged), else :meth:`request`."""
        if not self.pipeline:
            self.request(op, **fields)
            return
        _, f = self._send(op, fields)

        def check(f: Future) -> None:
            try:
                reply = f.result()
            except Exception as e:  # the connection broke: the next waiting call reports it
                log.debug("agent %s: %s: %s", self.path, op, e)
                return
            if not reply.get("ok"):
                log.error("agent %s: %s refused: %s", self.path, op, reply.get("error"))
        f.add_done_callback(check)

    def _flow_future(self, fid: int, f: Future) -> None:
        with self._lock:
            early = self._early.pop(fid, None)
            if early is None:
                self._flows[fid] = f
        if early is not None:
            f.set_result(early)

    # ---- the runtime API (mirrors HostAgent) ----------------------------
    def submit(self, stage: int, peer: str, nbytes: int, request_id: int, *, batch_id: int = 0,
               deadline: float | None = None, target_layer: int = 0, current_layer: int | None = None,
               level: int | None = None, owner: str = "") -> Future:
        fields = dict(stage=stage, peer=peer, bytes=nbytes, request_id=request_id, batch_id=batch_id,
                      deadline=deadline, target_layer=target_layer, current_layer=current_layer, level=level,
                      owner=owner)
        f: Future = Future()
        if not self.pipeline:
            self._flow_future(self.request("submit", **fields)["flow_id"], f)
            return f
        _, rf = self._send("submit", fields)

        def on_reply(rf: Future) -> None:  # on the reader thread, before any later line is read
            try:
                reply = rf.result()
            except Exception as e:
                f.set_exception(e)
                return
            if not reply.get("ok"):
                f.set_exception(ControlError(f"agent {self.path}: submit: {reply.get('error')}"))
                return
            self._flow_future(reply["flow_id"], f)
        rf.add_done_callback(on_reply)
        return f

    def layer_boundary(self, request_id: int, current_layer: int, prefill_done: bool = False,
                       owner: str = "") -> None:
        self.notify("layer", request_id=request_id, current_layer=current_layer, prefill_done=prefill_done,
                    owner=owner)

    def request_start(self, request_id: int, deadline: float, arrival: float, num_layers: int, *, batch_id: int = 0,
                      remaining_compute: float = 0.0, remaining_bytes: int = 0, peers: list[str] = ()) -> None:
        self.request("request_start", request_id=request_id, deadline=deadline, arrival=arrival,
                     num_layers=num_layers, batch_id=batch_id, remaining_compute=remaining_compute,
                     remaining_bytes=remaining_bytes, peers=list(peers))

    def request_end(self, request_id: int) -> None:
        self.notify("request_end", request_id=request_id)

    def batch_event(self, batch_id: int, kind: str) -> None:
        self.notify("batch", batch_id=batch_id, kind=kind)

    def status(self) -> dict:
        return self.request("status")["status"]

    def subscribe(self, cb: Callable[[dict], None]) -> None:
        self.on_received = cb
        self.request("subscribe")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv with EOF
        except OSError:
            pass
        # release the descriptor only once the reader is out of recv(): a number freed while another
        # thread may still use it can be reused by the next socket, whose data that thread would take
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        self.sock.close()


class LocalHandle:
    """In-process agent behind the same interface as :class:`ControlClient`."""

    def __init__(self, agent: HostAgent):
        self.agent = agent
        self.address = agent.config.address if agent.transport.port == MFS_UDP_PORT else \
            f"{agent.config.address}:{agent.transport.port}"

    def submit(self, stage: int, peer: str, nbytes: int, request_id: int, **kw) -> Future:
        out: Future = Future()
        tr = self.agent.submit(stage, peer, nbytes, request_id, **kw)
        tr.future.add_done_callback(lambda f: out.set_result(transfer_event(f.result())))
        return out

    def layer_boundary(self, *a, **kw) -> None:
        self.agent.layer_boundary(*a, **kw)

    def request_start(self, *a, **kw) -> None:
        self.agent.request_start(*a, **kw)

    def request_end(self, *a, **kw) -> None:
        self.agent.request_end(*a, **kw)

    def batch_event(self, *a, **kw) -> None:
        self.agent.batch_event(*a, **kw)

    def status(self) -> dict:
        return self.agent.status()

    def close(self) -> None:
        pass


def connect_all(agents: dict[str, tuple[str, str]], timeout: float = 10.0,
                pipeline: bool = False) -> dict[str, ControlClient]:
    """``{host: (control socket, address)}`` → ``{host: ControlClient}`` (closes them all on failure)."""
    out: dict[str, ControlClient] = {}
    try:
        for host, (path, address) in agents.items():
            out[host] = ControlClient(path, address=address, timeout=timeout, pipeline=pipeline)
    except BaseException:
        for c in out.values():
            c.close()
        raise
    return out
