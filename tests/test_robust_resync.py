"""Resync of a desired state much larger than the switch's flow table (issue 10, item 2).

75k desired flows against a 4,096-entry table made one resync Write whose per-update error
list (6.3 MB) exceeded the gRPC metadata limit: the Write failed, the controller reconnected,
and did the same again, never ready. Here the same proportions, scaled down: the client's
metadata limit is lowered to 160 kB and 3,000 flows meet a 16-entry table. Resync Writes are
chunked and no more inserts are sent than the table has room for: the switch is ready after
one reconnect, holds 16 entries, and the other flows wait on their stage default (overflow).
"""

from __future__ import annotations

import asyncio

import pytest

from controller.p4rt import client as p4rt_client
from controller.switches import FLOW_TABLE, WRITE_CHUNK
from tests.test_controller import _target, running, run, switch_flows, until

N_FLOWS = 3000
TABLE = 16


@pytest.fixture
def small_metadata(monkeypatch):
    opts = [(k, 160 << 10 if k == "grpc.max_metadata_size" else v) for k, v in p4rt_client.CHANNEL_OPTIONS]
    monkeypatch.setattr(p4rt_client, "CHANNEL_OPTIONS", opts)


def test_resync_of_a_desired_state_far_beyond_the_table_does_not_livelock(small_metadata):
    with _target("embedded", table_sizes={FLOW_TABLE: TABLE}) as t:
        async def go():
            async with running(t, limits={"max_flows_per_host": N_FLOWS}) as (c, sup, (h,)):
                sizes: list[int] = []
                real_write = type(sup.client).write

                async def write(self, updates, timeout=10.0):
                    updates = list(updates)
                    sizes.append(len(updates))
                    return await real_write(self, updates, timeout)
                type(sup.client).write = write
                try:
                    for first in range(0, N_FLOWS, 1000):
                        ack = await h.report(*[h.start(i) for i in range(first, first + 1000)])
                        assert not ack.rejected
                    assert len(sup.installed) == TABLE and len(sup.overflow) == N_FLOWS - TABLE
                    connects, resyncs = sup.connects, sup.resyncs
                    await asyncio.get_running_loop().run_in_executor(None, t.restart)
                    await until(lambda: sup.resyncs > resyncs and sup.ready.is_set(), timeout=20, what="resync")
                    await asyncio.sleep(1.0)  # a livelock would reconnect again meanwhile
                    assert sup.ready.is_set() and sup.connects == connects + 1, (sup.connects, sup.last_error)
                    flows = await switch_flows(t.address)
                    assert len(flows) == TABLE and len(sup.overflow) == N_FLOWS - TABLE
                    assert len(c.engine.flows) == N_FLOWS  # nothing accepted is lost
                    assert max(sizes) <= WRITE_CHUNK
                    # room frees: overflowed flows get their entries
                    ended = sorted(k[1] for k in flows)[:4]
                    assert not (await h.report(*[h.end(i - h.reg.flow_id_base) for i in ended])).rejected
                    flows = await switch_flows(t.address)
                    assert len(flows) == TABLE and len(sup.overflow) == N_FLOWS - TABLE - 4
                finally:
                    type(sup.client).write = real_write
        run(go(), timeout=90)
