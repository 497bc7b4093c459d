"""What the emulation needs from this machine, checked one need at a time.

    python -m topo.preflight        # prints each need: ok, or what is missing and what skips

The test suite's conftest.py skips exactly the tests marked with a need that is unmet,
with that need's reason (pytest markers of the same names); `make sysdeps` prints this
table after installing, so what it says matches what the tests do.
"""

from __future__ import annotations

import shutil
import sys


def _netns() -> str | None:
    from topo import netns
    return netns.preflight()


def _ping() -> str | None:
    if shutil.which("ping"):
        return None
    return "`ping` is not installed (Debian package iputils-ping; `make sysdeps` installs it)"


# need (= pytest marker) -> (what it is, check returning why it is unmet or None)
NEEDS = {
    "netns": ("root, network namespaces, veth pairs, tc, checksum offloads that can be turned off", _netns),
    "ping": ("the ping command inside host namespaces", _ping),
}

_cache: dict[str, str | None] = {}


def reason(need: str) -> str | None:
    """Why ``need`` is unmet here, or None (checked once per process)."""
    if need not in _cache:
        _cache[need] = NEEDS[need][1]()
    return _cache[need]


def main() -> int:
    for need, (what, _check) in NEEDS.items():
        why = reason(need)
        if why:
            print(f"{need + ':':8} MISSING: {why} -> tests marked `{need}` will be skipped with this reason")
        else:
            print(f"{need + ':':8} ok ({what})")
    try:
        from topo.mininet_net import missing_reason
        why = missing_reason()
    except ImportError as e:  # run without the project's venv
        why = f"cannot check ({e})"
    print(f"{'mininet:':8} " + (f"MISSING: {why} -> the Mininet tests will be skipped with this reason" if why
                               else "ok"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
