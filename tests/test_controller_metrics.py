"""/metrics is prometheus_client's exposition of the controller's metrics (issue 10, "Also"):
the same metric names as before (counters ``mfs_<name>_total``, gauges, summaries with
``quantile`` 0.5/0.99, ``_sum``, ``_count``), parseable by Prometheus' own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from controller.metrics import Metrics


def test_exposition_is_prometheus_client_text_with_the_same_names():
    m = Metrics()
    m.count("promotions", 3)
    m.count("rejected_reports", reason="bad_stage")
    m.count("rejected_reports", 2, reason='odd "quoted"\nreason')
    m.gauge("port_rho", 0.25, switch="s1", port="1")
    for v in (0.001, 0.002, 0.003, 0.010):
        m.observe("report_to_installed_seconds", v)
    text = m.prometheus()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["mfs_promotions"].type == "counter" and fams["mfs_promotions"].documentation
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("mfs_promotions_total", ())] == 3
    assert samples[("mfs_rejected_reports_total", (("reason", "bad_stage"),))] == 1
    assert samples[("mfs_rejected_reports_total", (("reason", 'odd "quoted"\nreason'),))] == 2
    assert samples[("mfs_port_rho", (("port", "1"), ("switch", "s1")))] == 0.25
    assert fams["mfs_report_to_installed_seconds"].type == "summary"
    assert samples[("mfs_report_to_installed_seconds", (("quantile", "0.5"),))] == 0.0025
    assert samples[("mfs_report_to_installed_seconds_count", ())] == 4
    assert abs(samples[("mfs_report_to_installed_seconds_sum", ())] - 0.016) < 1e-12
