"""Every data-plane case (tests/dataplane/cases) against bmv2 simple_switch_grpc.

Skips, saying why, when simple_switch_grpc or p4src/build/mfs.json is absent
(build them from p4lang sources and run `make p4`, docs/bmv2.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mfs.tools import find_tool, missing_reason
from tests.dataplane import runner

ROOT = Path(__file__).resolve().parents[1]
BMV2_JSON = ROOT / "p4src" / "build" / "mfs.json"
P4INFO = ROOT / "p4src" / "build" / "mfs.p4info.txtpb"

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

CASES = runner.load_cases()


@pytest.fixture(scope="module")
def bmv2():
    if not find_tool("simple_switch_grpc"):
        pytest.skip(missing_reason("simple_switch_grpc"))
    if not BMV2_JSON.exists():
        pytest.skip(f"{BMV2_JSON.relative_to(ROOT)} is absent: run `make p4` with p4c installed")
    from tests.dataplane.bmv2_target import Bmv2Target
    target = Bmv2Target(BMV2_JSON, P4INFO)
    try:
        yield target
    finally:
        target.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_on_bmv2(bmv2, case):
    runner.run_case(bmv2, case)
