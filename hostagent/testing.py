"""A minimal in-memory HostReports server, for tests and for running agents without
the real controller. It implements the report.proto contract literally: token check,
sessions, per-host ``last_seq``, events applied in seq order, duplicates (seq <=
last applied) acknowledged and ignored, a gap-free check (an event whose seq is not
last+1 after the first is recorded in ``gaps``).

Fault hooks: ``fail_next_reports`` (apply the batch, then fail the RPC as if the ack
was lost) and ``reject`` (a predicate returning a reason for an event to reject).
"""

from __future__ import annotations

import threading
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from typing import Callable

import grpc

from mfs.proto import report_pb2, report_pb2_grpc


@dataclass
class HostState:
    host_id: int
    last_seq: int = 0
    events: list = field(default_factory=list)  # applied events in order
    batches: list = field(default_factory=list)  # sizes of the Report batches received
    gaps: list = field(default_factory=list)


class FakeHostReports(report_pb2_grpc.HostReportsServicer):
    def __init__(self, tokens: dict[str, str], flow_id_bits: int = 12):
        self.tokens = tokens
        self.flow_id_bits = flow_id_bits
        self.hosts: dict[str, HostState] = {}
        self.sessions: dict[str, str] = {}
        self.lock = threading.Lock()
        self.fail_next_reports = 0
        self.reject: Callable[[report_pb2.Event], str | None] | None = None
        self.registers = 0

    def Register(self, request, context):
        if self.tokens.get(request.host) != request.token or not request.token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"bad token for host {request.host!r}")
        with self.lock:
            st = self.hosts.get(request.host)
            if st is None:
                st = self.hosts[request.host] = HostState(host_id=len(self.hosts) + 1)
            session = uuid.uuid4().hex
            self.sessions[session] = request.host
            self.registers += 1
            return report_pb2.RegisterResponse(session=session, host_id=st.host_id,
                                               flow_id_base=st.host_id << self.flow_id_bits,
                                               flow_id_bits=self.flow_id_bits, last_seq=st.last_seq)

    def Report(self, request, context):
        with self.lock:
            host = self.sessions.get(request.session)
            if host is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown session (register again)")
            st = self.hosts[host]
            st.batches.append(len(request.events))
            rejected = []
            for ev in request.events:
                if ev.seq <= st.last_seq:
                    continue
                if st.last_seq and ev.seq != st.last_seq + 1:
                    st.gaps.append((st.last_seq, ev.seq))
                reason = self.reject(ev) if self.reject else None
                if reason:
                    rejected.append(report_pb2.Rejection(seq=ev.seq, reason=reason))
                else:
                    st.events.append(ev)
                st.last_seq = ev.seq
            ack = report_pb2.ReportAck(acked_seq=st.last_seq, rejected=rejected)
            if self.fail_next_reports > 0:
                self.fail_next_reports -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected: ack lost")
            return ack

    def applied(self, host: str) -> list:
        with self.lock:
            st = self.hosts.get(host)
            return list(st.events) if st else []


class FakeController:
    """A FakeHostReports served on ``target`` (``unix:/path`` or ``127.0.0.1:0``)."""

    def __init__(self, target: str, servicer: FakeHostReports):
        self.servicer = servicer
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        report_pb2_grpc.add_HostReportsServicer_to_server(servicer, self.server)
        port = self.server.add_insecure_port(target)
        if port == 0 and not target.startswith("unix:"):
            raise OSError(f"cannot listen on {target}")
        self.target = target if target.startswith("unix:") or not target.endswith(":0") \
            else f"{target.rsplit(':', 1)[0]}:{port}"

    def start(self) -> "FakeController":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=0).wait()


def loopback_addresses(n: int, seed: int | None = None) -> list[str]:
    """``n`` distinct random 127.x.y.z addresses (Linux routes all of 127/8 to lo), so
    agents can bind the standard ports without clashing with other tests on this machine."""
    import random

    rng = random.Random(seed)
    a, b = rng.randrange(16, 250), rng.randrange(1, 250)
    first = rng.randrange(1, 250 - n)
    return [f"127.{a}.{b}.{first + i}" for i in range(n)]


def wait_for(pred, timeout: float = 20.0, step: float = 0.005) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds pass; returns whether it became true."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
