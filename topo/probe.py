"""Time Stage-2-like transfers on the demo's cluster: what one exchange costs beyond its wire time.

``python -m topo.probe`` builds the demo's default cluster (``topo.demo.network``: namespaces, the
embedded switch, the controller running ``--policy``, an agent per host, hosts shaped to the link
rate) and times, for each size, ``--rounds`` transfers p1 → p2 alone and then p1 ⇄ p2 both ways at
once (a Stage-2 all-to-all of a 2-host instance), from the driver's submit to the last completion
event. Prints the median and minimum beside the wire time (payload + headers at the link rate) and
the agents' transport counters over the run (datagrams sent, received twice, declared lost by
timeout and by RACK). docs/demo.md ("Fixed costs") quotes it. Needs root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

WIRE = 1482 / 1400  # frame bytes per payload byte (Ethernet + IP + UDP + MFS + transport headers)
COUNTERS = ("tx_packets", "duplicates", "lost_rto", "lost_rack")


def main(argv: list[str] | None = None) -> int:
    from mfs import header as H
    from topo import demo as D, net as N
    ap = argparse.ArgumentParser(prog="python -m topo.probe", description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="mfs", help="scheduler of the cluster's controller (default %(default)s)")
    ap.add_argument("--bandwidth", type=float, default=40.0, help="link rate, Mb/s (default %(default)s, the demo's)")
    ap.add_argument("--sizes", default="1400,50000,200000", help="payload bytes per transfer (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=8, help="transfers per size and mode (default %(default)s)")
    a = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in a.sizes.split(",")]
    except ValueError:
        print(f"probe: --sizes {a.sizes!r}: expected comma-separated byte counts", file=sys.stderr)
        return 2
    if a.rounds < 1 or not sizes or min(sizes) < 1:
        print("probe: --rounds and every size must be >= 1", file=sys.stderr)
        return 2
    reason = D.check_environment()
    if reason:
        print(f"probe: cannot run here: {reason}", file=sys.stderr)
        return 2
    topo = D.load_topology("testbed", a.bandwidth, 128)
    bps = a.bandwidth * 1e6
    from hostagent.control import connect_all
    with D.network(topo, a.policy, bps, logdir=N.ROOT / "logs" / "probe", tag=N.unique_tag()) as net:
        hs = connect_all({h: (str(net.agent_sock(h)), net.ip(h)) for h in ("p1", "p2")}, pipeline=True)
        try:
            for both in (False, True):
                for size in sizes:
                    took = []
                    for k in range(a.rounds):
                        t0 = time.monotonic()
                        futs = [hs["p1"].submit(H.STAGE_COLLECTIVE, net.ip("p2"), size, 1000 + k)]
                        if both:
                            futs.append(hs["p2"].submit(H.STAGE_COLLECTIVE, net.ip("p1"), size, 1000 + k, owner="p1"))
                        for f in futs:
                            f.result(30)
                        took.append(time.monotonic() - t0)
                        time.sleep(0.02)
                    print(f"{'both ways' if both else 'one way  '} {size:8d} B: median {statistics.median(took) * 1e3:7.1f} ms, "
                          f"min {min(took) * 1e3:7.1f} ms; wire time {size * 8 * WIRE / bps * 1e3:7.1f} ms", flush=True)
            tot = dict.fromkeys(COUNTERS, 0)
            for c in hs.values():
                st = c.status()["transport"]
                for k in COUNTERS:
                    tot[k] += st.get(k, 0)
            print("transport: " + ", ".join(f"{k} {v}" for k, v in tot.items()))
        finally:
            for c in hs.values():
                c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
