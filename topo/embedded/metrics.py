"""Prometheus /metrics of the embedded switch (``mfs-switch --metrics-addr HOST:PORT``).

Read at scrape time from ``SwitchHandle.stats()``: per port rx/tx packets, tx bytes, drops
per level (tail drops and frames whose send failed, e.g. larger than the MTU: those are not
in ``queue_counter``), and the P4Runtime server's streams and dropped digest lists (a
primary that does not read). See docs/embedded-switch.md.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class SwitchCollector(Collector):
    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self):
        st = self.stats()
        p = st["p4runtime"]
        yield GaugeMetricFamily("mfs_switch_p4rt_streams", "open StreamChannel streams", value=p["streams"])
        yield GaugeMetricFamily("mfs_switch_p4rt_arbitrated_streams", "streams that sent a MasterArbitrationUpdate",
                                value=p["arbitrated_streams"])
        yield CounterMetricFamily("mfs_switch_digest_lists_dropped", "digest lists dropped from a full stream "
                                  "queue (a primary that does not read)", value=p["digest_lists_dropped"])
        yield CounterMetricFamily("mfs_switch_digest_unacked_dropped", "digest lists forgotten unacknowledged "
                                  "(more than MAX_UNACKED outstanding)", value=p["digest_unacked_dropped"])
        yield CounterMetricFamily("mfs_switch_digests_unconfigured", "digests with no DigestEntry configured",
                                  value=p["digests_unconfigured_dropped"])
        yield GaugeMetricFamily("mfs_switch_stream_queue_max", "most digest lists queued at once for a stream",
                                value=p["stream_queue_max"])
        ports = st.get("ports", {})
        rx = CounterMetricFamily("mfs_switch_port_rx_packets", "frames received", labels=["port"])
        tx = CounterMetricFamily("mfs_switch_port_tx_packets", "frames sent", labels=["port"])
        txb = CounterMetricFamily("mfs_switch_port_tx_bytes", "bytes sent", labels=["port"])
        drops = CounterMetricFamily("mfs_switch_port_drops", "frames dropped at egress (queue full or send "
                                    "failed)", labels=["port", "level"])
        for num, s in sorted(ports.items()):
            rx.add_metric([str(num)], s["rx"])
            tx.add_metric([str(num)], s["tx"])
            txb.add_metric([str(num)], s["tx_bytes"])
            for level, n in enumerate(s["drops"]):
                drops.add_metric([str(num), str(level)], n)
        yield from (rx, tx, txb, drops)


def serve(stats: Callable[[], dict], address: str):
    """Serve /metrics on ``address`` (HOST:PORT; port 0 picks one). Returns (server, port)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"metrics address {address!r} is not HOST:PORT")
    reg = CollectorRegistry()
    reg.register(SwitchCollector(stats))
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=reg)
    return server, server.server_address[1]
