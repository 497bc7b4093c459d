"""``mfs-hostagent``: run a host agent, or talk to one.

    mfs-hostagent serve --host NAME --address IP --controller TARGET --token T \\
                        --control unix:/run/mfs/NAME.sock [--dscp-mode] [--priority-queue]
    mfs-hostagent status --control unix:/run/mfs/NAME.sock
    mfs-hostagent send --control unix:/run/mfs/NAME.sock --peer IP --bytes N --stage 2 [--request-id R]

``--controller`` is ``unix:/path`` or ``host:port`` (omit it to run without reporting).
The token may also come from ``$MFS_TOKEN`` (keeps it out of ``ps``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from mfs.header import MFS_UDP_PORT


def _serve(a: argparse.Namespace) -> int:
    from hostagent.agent import AgentConfig, HostAgent
    from hostagent.control import ControlServer

    token = a.token if a.token is not None else os.environ.get("MFS_TOKEN", "")
    if a.controller and not token:
        print("mfs-hostagent: --token (or $MFS_TOKEN) is required with --controller", file=sys.stderr)
        return 2
    try:
        cfg = AgentConfig(host=a.host, address=a.address, controller=a.controller, token=token, port=a.port,
                          dscp_port=a.port + 1, dscp_mode=a.dscp_mode, priority_queue=a.priority_queue,
                          chunk=a.chunk, window=a.window)
        agent = HostAgent(cfg)
        server = ControlServer(agent, a.control)
    except (ValueError, OSError) as e:
        print(f"mfs-hostagent: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("mfs.hostagent").info("agent %s stopping on %s", a.host, signal.Signals(signum).name)
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    agent.start()
    server.start()
    logging.getLogger("mfs.hostagent").info("agent %s on %s:%d, control %s, controller %s", a.host, a.address,
                                            agent.transport.port, server.path, a.controller or "(none)")
    stop.wait()
    server.close()
    agent.close(flush_timeout=1.0)
    return 0


def _client(a: argparse.Namespace):
    from hostagent.control import ControlClient
    return ControlClient(a.control, timeout=a.timeout)


def _status(a: argparse.Namespace) -> int:
    c = _client(a)
    print(json.dumps(c.status(), indent=1))
    c.close()
    return 0


def _send(a: argparse.Namespace) -> int:
    c = _client(a)
    f = c.submit(a.stage, a.peer, a.bytes, a.request_id, target_layer=a.target_layer)
    print(json.dumps(f.result(a.timeout)))
    c.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mfs-hostagent", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the agent of one host")
    s.add_argument("--host", required=True, help="host name (as in the topology / controller config)")
    s.add_argument("--address", required=True, help="IPv4 address to bind and send from")
    s.add_argument("--controller", default=None, help="HostReports target: unix:/path or host:port")
    s.add_argument("--token", default=None, help="controller token (default $MFS_TOKEN)")
    s.add_argument("--control", required=True, help="control socket, unix:/run/mfs/NAME.sock")
    s.add_argument("--port", type=int, default=MFS_UDP_PORT, help="UDP port (DSCP-mode traffic uses port+1)")
    s.add_argument("--dscp-mode", action="store_true", help="send without the MFS shim, level in the DSCP bits")
    s.add_argument("--priority-queue", action="store_true", help="host-side strict-priority send queue")
    s.add_argument("--chunk", type=int, default=1400, help="payload bytes per datagram")
    s.add_argument("--window", type=int, default=128 * 1024, help="in-flight bytes per transfer")
    s.set_defaults(fn=_serve)
    for name, fn, helptext in (("status", _status, "print an agent's status"),
                               ("send", _send, "submit one transfer and wait for it")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--control", required=True)
        c.add_argument("--timeout", type=float, default=60.0)
        if name == "send":
            c.add_argument("--peer", required=True)
            c.add_argument("--bytes", type=int, required=True)
            c.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
            c.add_argument("--request-id", type=int, default=0)
            c.add_argument("--target-layer", type=int, default=0)
        c.set_defaults(fn=fn)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return a.fn(a)
    except Exception as e:  # a clear one-line error for operators
        if a.verbose:
            raise
        print(f"mfs-hostagent: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
