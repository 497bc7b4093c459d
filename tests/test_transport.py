"""The host-agent transport on loopback: completion, loss recovery, host priority queue, DSCP mode."""

import socket
import time

import pytest

from mfs import header as H
from mfs.levels import default_dscp
from hostagent import wire
from hostagent.testing import wait_for, loopback_addresses
from hostagent.transport import Transport



@pytest.fixture
def pair(request):
    drop = getattr(request, "param", 0)
    a_ip, b_ip = loopback_addresses(2)
    got = []
    a = Transport(a_ip, drop_every=drop, name="a")
    b = Transport(b_ip, on_received=got.append, drop_every=drop, name="b")
    a.start()
    b.start()
    yield a, b, got
    a.close()
    b.close()


def _hdr(fid, stage=2, req=1, layer=0):
    return H.MfsHeader(stage=stage, flow_id=fid, request_id=req, target_layer=layer, rli=0)


def test_transfers_complete_and_are_delivered_once(pair):
    a, b, got = pair
    sizes = {1: 0, 2: 1, 3: 1400, 4: 1401, 5: 300_000}
    done = []
    ts = [a.send(_hdr(f, stage=1 + f % 3, req=100 + f, layer=f), (b.address, b.port), n, on_done=done.append)
          for f, n in sizes.items()]
    assert wait_for(lambda: len(done) == len(ts) and len(got) == len(ts))
    assert all(t.done and t.bytes_acked() == t.total for t in ts)
    by_flow = {d.flow_id: d for d in got}
    assert set(by_flow) == set(sizes)
    for f, n in sizes.items():
        d = by_flow[f]
        assert (d.total, d.stage, d.request_id, d.target_layer, d.src) == (n, 1 + f % 3, 100 + f, f, a.address)
    assert a.stats["retransmits"] == 0
    time.sleep(0.1)
    assert len(got) == len(ts)  # no late duplicate completions


@pytest.mark.parametrize("pair", [5, 13], indirect=True)
def test_loss_recovery_drop_every_kth(pair):
    a, b, got = pair
    done = []
    ts = [a.send(_hdr(f), (b.address, b.port), 500_000 + f, on_done=done.append) for f in (10, 11, 12)]
    assert wait_for(lambda: len(done) == 3 and len(got) == 3, timeout=60)
    assert a.stats["dropped_by_hook"] > 0 and b.stats["dropped_by_hook"] > 0  # data and acks were lost
    assert a.stats["retransmits"] >= a.stats["dropped_by_hook"] * 0.9  # lost data was resent
    assert sorted(d.total for d in got) == [500_010, 500_011, 500_012]
    assert all(t.bytes_acked() == t.total for t in ts)


def _first_finish(priority_queue):
    """Two equal transfers queued together (low level first); return which finished first and
    how far the other one was (fraction of its bytes acked) at that moment."""
    a_ip, b_ip = loopback_addresses(2)
    a = Transport(a_ip, priority_queue=priority_queue, window=64 * 1024, name="a")
    b = Transport(b_ip, name="b")
    first = []
    ts = {}

    def done(t):
        if not first:
            other = ts["high" if t is ts["low"] else "low"]
            first.append(("low" if t is ts["low"] else "high", other.bytes_acked() / other.total))
    try:
        b.start()
        # queue both before the I/O thread runs, so both are pending from the first pick
        ts["low"] = a.send(_hdr(1, stage=3), (b_ip, b.port), 3_000_000, rank=7, on_done=done)
        ts["high"] = a.send(_hdr(2, stage=2), (b_ip, b.port), 3_000_000, rank=0, on_done=done)
        a.start()
        assert wait_for(lambda: ts["low"].done and ts["high"].done, timeout=60)
        return first[0]
    finally:
        a.close()
        b.close()


def test_host_priority_queue_serves_higher_level_first():
    who, other_progress = _first_finish(True)
    # low was queued first: only strict priority lets high overtake it. Low still uses the
    # gaps while high waits for acks (work-conserving), so it is partly done.
    assert who == "high"
    assert other_progress < 0.95, other_progress


def test_without_priority_queue_round_robin():
    who, other_progress = _first_finish(False)
    # served alternately: whichever finishes first (ack timing decides that, not the queue order),
    # the other one is nearly done too. A strict-priority sender leaves the other far behind.
    assert other_progress > 0.85, (who, other_progress)


def test_dscp_mode_sets_tos_and_omits_shim():
    a_ip, b_ip = loopback_addresses(2)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    rx.bind((b_ip, wire.DSCP_PORT))
    rx.settimeout(10)
    a = Transport(a_ip, name="a")
    a.start()
    try:
        a.send(_hdr(5, stage=2), (b_ip, H.MFS_UDP_PORT), 100, dscp_mode=True, level=1)
        data, anc, _flags, src = rx.recvmsg(2048, socket.CMSG_SPACE(4))
        tos = [c[2] for c in anc if c[0] == socket.IPPROTO_IP and c[1] == socket.IP_TOS]
        assert tos and tos[0][0] == default_dscp(1) << 2
        assert wire.parse(data) == (wire.T_DATA, a.chunk, 5, 0, 100)  # transport header first: no shim
        assert len(data) == wire.TH_LEN + 100
    finally:
        a.close()
        rx.close()


def test_dscp_mode_transfer_completes():
    a_ip, b_ip = loopback_addresses(2)
    got = []
    a, b = Transport(a_ip, name="a"), Transport(b_ip, on_received=got.append, name="b")
    a.start(); b.start()
    try:
        t = a.send(_hdr(6), (b_ip, b.port), 200_000, dscp_mode=True, level=2)
        assert wait_for(lambda: t.done and got)
        assert got[0].total == 200_000 and got[0].flow_id == 6
    finally:
        a.close(); b.close()


def test_malformed_datagrams_are_counted_not_fatal(pair):
    a, b, got = pair
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for junk in (b"", b"\x10", b"\x20" + bytes(60), _hdr(1).pack() + b"\x07" * 24):
        s.sendto(junk, (b.address, b.port))
    s.close()
    assert wait_for(lambda: b.stats["malformed"] >= 3)
    t = a.send(_hdr(9), (b.address, b.port), 5000)
    assert wait_for(lambda: t.done)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="chunk=0"):
        Transport("127.0.0.1", 0, 0, chunk=0)
    with pytest.raises(ValueError, match="window=10"):
        Transport("127.0.0.1", 0, 0, window=10)


def test_paced_transfer_never_runs_ahead_of_its_rate(pair):
    """``pace``: a transfer capped at ``rate`` bytes/s has at most rate x elapsed + 2 chunks acked at any
    moment (an upper bound: a slow machine only makes it later), and it takes at least total / rate;
    ``rate=None`` lifts the cap. An unpaced transfer beside it is not held back by its pacing."""
    a, b, got = pair
    rate, total = 200_000.0, 200_000
    seen: list[tuple[float, int]] = []
    done = []
    t0 = time.monotonic()
    t = a.send(_hdr(21), (b.address, b.port), total, rate=rate, on_done=done.append,
               on_progress=lambda tx, n: seen.append((time.monotonic(), n)))
    free = a.send(_hdr(22), (b.address, b.port), 300_000, on_done=done.append)
    assert wait_for(lambda: len(done) == 2, timeout=60)
    t1 = time.monotonic()
    assert seen and seen[-1][1] == total
    slack = 2 * a.chunk
    over = [(round(s - t0, 4), n) for s, n in seen if n > rate * (s - t0) + slack]
    assert not over, over
    assert t1 - t0 >= (total - slack) / rate
    assert done[0] is free  # the unpaced one used the time the paced one waited
    # lifting the cap: 2 MB at 20 kB/s would take 100 s
    done.clear()
    slow = a.send(_hdr(23), (b.address, b.port), 2_000_000, rate=20_000.0, on_done=done.append)
    time.sleep(0.2)
    assert not done and slow.bytes_acked() <= 20_000 * (time.monotonic() - t1) + slack
    a.pace(23, None)
    assert wait_for(lambda: len(done) == 1, timeout=60)


def test_pace_rejects_a_bad_rate(pair):
    a, _, _ = pair
    with pytest.raises(ValueError, match="rate=0"):
        a.pace(1, 0)
