"""Finding the external tools (p4c, bmv2) that no registry packages.

Each is looked up in an environment variable first, then on PATH. Callers that
cannot run without one skip (tests) or stop with :func:`missing_reason`.
"""

from __future__ import annotations

import os
import shutil

TOOLS = {
    "p4c": ("P4C", "p4c"),
    "p4c-bm2-ss": ("P4C_BM2_SS", "p4c-bm2-ss"),
    "simple_switch_grpc": ("BMV2_SWITCH", "simple_switch_grpc"),
    "simple_switch_CLI": ("BMV2_CLI", "simple_switch_CLI"),
    "bf-p4c": ("BF_P4C", "bf-p4c"),  # Tofino back end (p4lang/p4c backends/tofino), docs/tofino.md
}


def find_tool(name: str) -> str | None:
    env, exe = TOOLS.get(name, (None, name))
    if env and os.environ.get(env):
        path = os.environ[env]
        return path if os.access(path, os.X_OK) else None
    return shutil.which(exe)


def missing_reason(name: str) -> str:
    env, exe = TOOLS.get(name, (None, name))
    how = f" and ${env} is not set" if env else ""
    doc = "docs/tofino.md" if name == "bf-p4c" else "docs/bmv2.md"
    return (f"{exe} not found on PATH{how}; it is not packaged in any registry this project "
            f"uses, build it from p4lang sources (see {doc})")
