"""The host API's transport under hostile clients (issue 10, item 12): garbage bytes and
truncated protobufs answer INVALID_ARGUMENT with one rate-limited log line (not UNKNOWN and a
traceback each); a connection that sends its HTTP/2 preface a byte at a time is closed after
the handshake timeout; connections beyond the cap are refused at once, and a legitimate host
still registers once the hostile ones are gone."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from mfs.proto import report_pb2 as pb
from mfs.proto import report_pb2_grpc as pbg
from tests.test_hostapi import Env, ev, fs, run

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def closed(s: socket.socket) -> bool:
    """True if the peer closed ``s`` (everything it sent is drained)."""
    s.setblocking(False)
    try:
        while True:
            if s.recv(4096) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_garbage_and_truncated_protobufs_are_invalid_argument_with_one_log_line(caplog):
    caplog.set_level(logging.INFO)

    async def go():
        async with Env() as e:
            reg = await e.register()
            good = pb.ReportBatch(session=reg.session, events=[ev(1, flow_start=fs(reg.flow_id_base + 1))])
            blob = good.SerializeToString()
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{e.c.api_port}",  # a connection of its own
                                           options=[("grpc.use_local_subchannel_pool", 1)])
            calls = {m: ch.unary_unary(f"/mfs.report.v1.HostReports/{m}") for m in ("Report", "Register")}
            bad = [b"\xff" * 16, blob[:-3], blob[:7], b"\x0a\xff\xff\xff\xff\x0f", b"\x08"]
            for i in range(60):
                with_method = "Report" if i % 3 else "Register"
                try:
                    await calls[with_method](bad[i % len(bad)])
                    raise AssertionError("garbage accepted")
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
                    assert "not a valid mfs.report.v1." in err.details()
            guard = e.c.hostapi.guard
            n = len(guard.peers)
            assert n >= 2 and set(guard.peers.values()) == {"ip:127.0.0.1"}  # this channel and e's
            await ch.close()
            for _ in range(250):  # the relayed connection's name is forgotten with it
                if len(guard.peers) < n:
                    break
                await asyncio.sleep(0.02)
            assert len(guard.peers) == n - 1
            assert e.c.metrics.total("rejected_reports", reason="decode") == 60
            ack = await e.report(reg, list(good.events))  # the API still works
            assert not ack.rejected
    run(go())
    lines = [r for r in caplog.records if "not a" in r.getMessage() or r.exc_info or "Traceback" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]  # rate limited: one line per 10 s
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
    assert " from ip:127.0.0.1 are not a " in lines[0].getMessage()  # the real peer, behind the guard


def test_slow_preface_is_closed_and_connections_are_capped():
    limits = {"max_connections": 8, "handshake_timeout_s": 1.0}

    async def go():
        async with Env(limits=limits) as e:
            loop = asyncio.get_running_loop()
            port = e.c.api_port

            def slow_preface() -> float:
                s = socket.create_connection(("127.0.0.1", port))
                t0 = time.monotonic()
                try:
                    for b in PREFACE:  # a byte every 0.3 s: 7.2 s for the preface
                        try:
                            s.send(bytes([b]))
                        except OSError:
                            return time.monotonic() - t0
                        time.sleep(0.3)
                        if closed(s):
                            return time.monotonic() - t0
                        s.setblocking(True)
                    return float("inf")
                finally:
                    s.close()
            took = await loop.run_in_executor(None, slow_preface)
            assert took < 5, f"a connection sending its preface a byte at a time stayed open {took:.1f} s"

            def flood() -> tuple[int, list[socket.socket]]:
                socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
                time.sleep(0.5)
                return sum(not closed(s) for s in socks), socks
            held, socks = await loop.run_in_executor(None, flood)
            try:
                assert held <= 8, f"{held} idle connections held (cap 8)"
                await asyncio.sleep(2.5)  # the handshake timeout frees the slots
                reg = await asyncio.wait_for(e.register(), 10)
                assert reg.session
            finally:
                for s in socks:
                    s.close()
    run(go())


def hold(port: int, source: str, n: int) -> list[socket.socket]:
    """``n`` connections from ``source`` that never send their HTTP/2 preface (those refused are closed)."""
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), source_address=(source, 0)))
        except OSError:
            pass
    return socks


def test_a_hostile_peer_cannot_take_every_connection_slot():
    """A hostile peer (127.0.0.2) opens 40 connections that never finish their handshake (the
    timeout is long: it holds its slots for the whole test): it holds at most
    max_connections_per_peer of them, the rest are refused at once and counted, and a
    legitimate host (127.0.0.1) that must reconnect registers and reports meanwhile (with the
    global cap alone, the hostile peer held all 8 slots and locked it out)."""
    limits = {"max_connections": 8, "max_connections_per_peer": 3, "handshake_timeout_s": 30.0}

    async def go():
        async with Env(limits=limits) as e:
            loop = asyncio.get_running_loop()
            socks = await loop.run_in_executor(None, hold, e.c.api_port, "127.0.0.2", 40)
            try:
                await asyncio.sleep(0.5)
                held = await loop.run_in_executor(None, lambda: sum(not closed(s) for s in socks))
                assert held == 3, f"the hostile peer holds {held} connections (limit 3)"
                assert e.c.hostapi.guard.held == {"ip:127.0.0.2": 3}
                assert e.c.metrics.total("rejected_connections", reason="per_peer") == 37
                for _ in range(2):  # a fresh channel each time: the host reconnects
                    ch = grpc.aio.insecure_channel(f"127.0.0.1:{e.c.api_port}")
                    try:
                        stub = pbg.HostReportsStub(ch)
                        reg = await stub.Register(pb.RegisterRequest(host="h1", token="token-of-h1",
                                                                     address="10.0.0.1"), timeout=5)
                        ack = await stub.Report(pb.ReportBatch(session=reg.session, events=[]), timeout=5)
                        assert ack.acked_seq == 0 and not ack.rejected
                    finally:
                        await ch.close()
            finally:
                for s in socks:
                    s.close()
    run(go())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to open connections as another uid (setuid)")
def test_on_a_unix_socket_peers_are_told_apart_by_uid():
    """On a unix socket the peer is the uid (SO_PEERCRED): a process of uid 65534 holding its
    maximum does not lock out the host agent's uid."""
    d = Path(tempfile.mkdtemp(prefix="mfs-conn-"))
    d.chmod(0o755)
    path = d / "api.sock"
    limits = {"max_connections": 8, "max_connections_per_peer": 3, "handshake_timeout_s": 30.0}
    child = textwrap.dedent(f"""
        import os, socket, sys
        os.setgid(65534); os.setuid(65534)
        socks = []
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect({str(path)!r})
                socks.append(s)
            except OSError:
                pass
        print(len(socks), flush=True)
        sys.stdin.read()  # hold them until the test is done
    """)

    async def go():
        async with Env(limits=limits, api={"listen": f"unix:{path}"}) as e:
            path.chmod(0o777)
            loop = asyncio.get_running_loop()
            p = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            try:
                assert (await loop.run_in_executor(None, p.stdout.readline)).strip()
                await asyncio.sleep(0.5)
                assert e.c.hostapi.guard.held == {"uid:65534": 3}
                assert e.c.metrics.total("rejected_connections", reason="per_peer") >= 37
                ch = grpc.aio.insecure_channel(f"unix:{path}")
                try:
                    reg = await pbg.HostReportsStub(ch).Register(
                        pb.RegisterRequest(host="h1", token="token-of-h1", address="10.0.0.1"), timeout=5)
                    assert reg.session
                    assert e.c.hostapi.guard.held == {"uid:65534": 3, f"uid:{os.getuid()}": 1}
                finally:
                    await ch.close()
            finally:
                p.stdin.close()
                p.wait(10)
    try:
        run(go())
    finally:
        shutil.rmtree(d, ignore_errors=True)
