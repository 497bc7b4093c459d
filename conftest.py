import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(config, items):
    """Preflight: a test marked with a need (topo/preflight.py: netns, ping) that this machine
    does not meet is skipped with the reason; the others run (and may fail)."""
    from topo import preflight

    for item in items:
        for need in preflight.NEEDS:
            if need in item.keywords:
                why = preflight.reason(need)
                if why:
                    item.add_marker(pytest.mark.skip(reason=f"{need}: {why}"))
                    break
