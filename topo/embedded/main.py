"""``mfs-switch``: the embedded MFS switch as a process, shaped like simple_switch_grpc.

    mfs-switch --device-id 1 -i 1@veth1 -i 2@veth2 --grpc-server-addr 127.0.0.1:9559 \\
               --port-rate 2=100mbit --queue-buffer 64 [--p4info FILE] [--log-file F] [--pcap DIR]

Ready when the gRPC port listens; it then prints a line ``ready`` (with the
address) on stdout. SIGTERM / SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading

from mfs.p4info import DEFAULT_P4INFO, P4InfoError

_UNITS = {"": 1, "bit": 1, "bps": 1, "k": 1e3, "kbit": 1e3, "m": 1e6, "mbit": 1e6, "g": 1e9, "gbit": 1e9}


def parse_rate(text: str) -> float:
    """'100mbit' / '1gbit' / '500kbit' / '2.5e6' -> bits per second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"rate {text!r} is not a number with an optional unit "
                         f"({', '.join(u for u in _UNITS if u)}), e.g. 100mbit")
    v = float(m.group(1)) * _UNITS[m.group(2)]
    if v <= 0:
        raise ValueError(f"rate {text!r} must be > 0")
    return v


def _kv(text: str, sep: str, what: str) -> tuple[int, str]:
    num, s, rest = text.partition(sep)
    if not s or not num.strip().isdigit() or not rest:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected PORT{sep}VALUE, e.g. 1{sep}"
                                         f"{'veth1' if sep == '@' else '100mbit'}")
    return int(num), rest


def _interface(text: str) -> tuple[int, str]:
    return _kv(text, "@", "interface")


def _port_rate(text: str) -> tuple[int, float]:
    port, rate = _kv(text, "=", "port rate")
    try:
        return port, parse_rate(rate)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _table_size(text: str) -> tuple[str, int]:
    name, s, n = text.partition("=")
    if not s or not n.isdigit():
        raise argparse.ArgumentTypeError(f"table size {text!r}: expected TABLE=N, e.g. mfs_flow=100")
    return name, int(n)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mfs-switch", description=(
        "Embedded MFS software switch: the p4src/ pipeline served over P4Runtime (gRPC), "
        "8 strict-priority queues per port on a rate-limited port."))
    ap.add_argument("--device-id", type=int, default=1, help="P4Runtime device id (default 1)")
    ap.add_argument("-i", "--interface", type=_interface, action="append", default=[], metavar="PORT@IFNAME",
                    help="bind switch port PORT to Linux interface IFNAME (repeatable)")
    ap.add_argument("--grpc-server-addr", default="0.0.0.0:9559", help="P4Runtime listen address (default 0.0.0.0:9559)")
    ap.add_argument("--port-rate", type=_port_rate, action="append", default=[], metavar="PORT=RATE",
                    help="shape egress PORT to RATE (e.g. 100mbit, 1gbit, 500kbit; repeatable); default: unshaped")
    ap.add_argument("--queue-buffer", type=int, default=64, metavar="PKTS",
                    help="tail-drop limit per queue in packets (default 64)")
    ap.add_argument("--queue-buffer-bytes", type=int, default=None, metavar="BYTES",
                    help="additional tail-drop limit per queue in bytes")
    ap.add_argument("--p4info", default=str(DEFAULT_P4INFO), help="P4Info the switch serves (default: committed one)")
    ap.add_argument("--table-size", type=_table_size, action="append", default=[], metavar="TABLE=N",
                    help="override a table's size (e.g. to test a full table)")
    ap.add_argument("--pcap", metavar="DIR", help="write <port>_in.pcap / <port>_out.pcap into DIR")
    ap.add_argument("--log-file", help="log to this file instead of stderr")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--metrics-addr", metavar="HOST:PORT",
                    help="serve Prometheus /metrics (port rx/tx/drops, dropped digest lists) on HOST:PORT")
    ap.add_argument("--keep-offloads", action="store_true",
                    help="leave the interfaces' checksum/segmentation offloads as they are (default: turned off "
                         "with the SIOCETHTOOL ioctl, as 'ethtool -K IF tx off rx off tso off gso off gro off')")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(filename=args.log_file, level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ports: dict[int, str] = {}
    for num, ifname in args.interface:
        if num in ports:
            print(f"mfs-switch: port {num} given twice ({ports[num]}, {ifname})", file=sys.stderr)
            return 2
        ports[num] = ifname
    rates = dict(args.port_rate)
    if set(rates) - set(ports):
        print(f"mfs-switch: --port-rate for port(s) {sorted(set(rates) - set(ports))} that no -i binds",
              file=sys.stderr)
        return 2
    if args.queue_buffer < 1:
        print("mfs-switch: --queue-buffer must be >= 1", file=sys.stderr)
        return 2
    from topo.embedded.server import start_server

    opts = {}
    if ports:
        opts = dict(port_rates=rates, buffer_packets=args.queue_buffer, buffer_bytes=args.queue_buffer_bytes,
                    pcap_dir=args.pcap, offloads_off=not args.keep_offloads)
    try:
        h = start_server(address=args.grpc_server_addr, device_id=args.device_id, p4info_path=args.p4info,
                         ports=ports or None, table_sizes=dict(args.table_size) or None, **opts)
    except (OSError, ValueError, P4InfoError) as e:
        print(f"mfs-switch: {e}", file=sys.stderr)
        return 1
    metrics = None
    if args.metrics_addr:
        from topo.embedded.metrics import serve
        try:
            metrics, mport = serve(h.stats, args.metrics_addr)
        except (OSError, ValueError) as e:
            print(f"mfs-switch: --metrics-addr: {e}", file=sys.stderr)
            h.stop()
            return 1
        logging.getLogger("mfs.switch").info("metrics on %s (port %d)", args.metrics_addr, mport)
    done = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger("mfs.switch").info("signal %d: stopping", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger("mfs.switch").info("device %d listening on %s, ports %s, rates %s", args.device_id,
                                         h.address, ports, rates)
    print(f"ready {h.address}", flush=True)
    while not done.wait(0.5):
        pass
    if metrics is not None:
        metrics.shutdown()
    h.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
