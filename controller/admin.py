"""Admin HTTP listener: Prometheus /metrics and the JSON API used by mfsctl.

stdlib http.server in a thread; every handler that needs controller state runs
a coroutine on the controller's asyncio loop (run_coroutine_threadsafe), so
the loop stays the only place that touches the engine.

    GET /metrics            Prometheus text
    GET /api/status         controller summary
    GET /api/switches       per-switch supervision state
    GET /api/flows          live flows (level, laxity, MLU, RLI, bytes left)
    GET /api/queues         per-port per-level counters/registers read from the switches
    GET /api/policy         current policy config
    PUT /api/policy         {"key": value, ...} applied live; returns the new config
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from mfs.configutil import ConfigError

if TYPE_CHECKING:
    from controller.main import Controller

log = logging.getLogger("mfs.admin")
MAX_BODY = 1 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class AdminServer:
    def __init__(self, controller: "Controller", loop: asyncio.AbstractEventLoop):
        self.controller, self.loop = controller, loop
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    def start(self, address: str) -> int:
        host, _, port = address.rpartition(":")
        handler = type("Handler", (_Handler,), {"admin": self})
        self.httpd = ThreadingHTTPServer((host, int(port)), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="mfs-admin", daemon=True)
        self.thread.start()
        return self.port

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class _Handler(BaseHTTPRequestHandler):
    admin: AdminServer
    server_version = "mfs-controller"

    def log_message(self, fmt, *args):  # route to logging, not stderr
        log.debug("admin %s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def _route(self, method: str) -> None:
        c = self.admin.controller
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if method == "GET" and path == "/metrics":
                self.admin.call(c.refresh_gauges())
                return self._send(200, c.metrics.prometheus().encode(), "text/plain; version=0.0.4")
            if method == "GET" and path == "/api/status":
                return self._json(200, self.admin.call(c.status()))
            if method == "GET" and path == "/api/switches":
                return self._json(200, self.admin.call(c.switches()))
            if method == "GET" and path == "/api/flows":
                return self._json(200, self.admin.call(c.flows()))
            if method == "GET" and path == "/api/queues":
                return self._json(200, self.admin.call(c.queues()))
            if method == "GET" and path == "/api/policy":
                return self._json(200, self.admin.call(c.policy()))
            if method == "PUT" and path == "/api/policy":
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    raise ApiError(413, f"body of {n} bytes is too large")
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except json.JSONDecodeError as e:
                    raise ApiError(400, f"body is not JSON: {e}") from None
                if not isinstance(body, dict):
                    raise ApiError(400, "body must be a JSON object {key: value}")
                return self._json(200, self.admin.call(c.set_policy(body)))
            raise ApiError(404, f"no such endpoint: {method} {path} (see docs/mfsctl.md)")
        except ApiError as e:
            self._json(e.status, {"error": str(e)})
        except (ConfigError, ValueError, KeyError) as e:
            self._json(400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - report, keep serving
            log.exception("admin %s %s", method, path)
            self._json(500, {"error": f"{type(e).__name__}: {e}"})

    def do_GET(self):  # noqa: N802
        self._route("GET")

    def do_PUT(self):  # noqa: N802
        self._route("PUT")

