"""What tests/test_controller.py does not combine: a full flow table across a switch restart.

After the reboot the switch's table is refilled to its size, the flows that did not fit stay
scheduled on their stage default (overflow) and get their entries as soon as space frees.
"""

from __future__ import annotations

import asyncio

from controller.switches import FLOW_TABLE
from tests.test_controller import _target, running, run, switch_flows, target_kind, until  # noqa: F401


def test_full_table_survives_a_switch_restart(target_kind):  # noqa: F811 - the fixture
    with _target(target_kind, table_sizes={FLOW_TABLE: 4}) as t:
        async def go():
            async with running(t) as (c, sup, (h,)):
                ack = await h.report(*[h.start(i) for i in range(6)])
                assert not ack.rejected
                before = await switch_flows(t.address)
                assert len(before) == 4 and len(sup.overflow) == 2
                resyncs = sup.resyncs
                await asyncio.get_running_loop().run_in_executor(None, t.restart)
                await until(lambda: sup.resyncs > resyncs and sup.ready.is_set(), timeout=20, what="resync")
                after = await switch_flows(t.address)
                assert len(after) == 4 and len(sup.overflow) == 2, (after, sup.overflow)
                assert len(c.engine.flows) == 6  # nothing accepted is lost
                ended = sorted(k[1] for k in after)[:2]
                ack = await h.report(*[h.end(i) for i in ended])
                assert not ack.rejected
                flows = await switch_flows(t.address)
                assert set(flows) == {(1, i) for i in range(6) if i not in ended} and not sup.overflow
        run(go())
