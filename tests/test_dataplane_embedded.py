"""Every shared data-plane case (tests/dataplane/cases/*.yaml) on the embedded switch."""

import pytest

from tests.dataplane.embedded_target import EmbeddedTarget
from tests.dataplane.runner import DataplaneTarget, load_cases, run_case

CASES = load_cases()


@pytest.fixture(scope="module")
def target():
    t = EmbeddedTarget()
    assert isinstance(t, DataplaneTarget)
    yield t
    t.close()


@pytest.mark.parametrize("case", CASES, ids=[c.source for c in CASES])
def test_case(target, case):
    run_case(target, case)
