"""`make bench`: run every bench/bench_*.py module's main() and print its figures.

Each benchmark prints its own figures and compares against a baseline measured in
the same run (a ratio), because these machines are noisy. Select with
`python -m bench NAME...` (e.g. `python -m bench sim controller`).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = [a for a in argv if not a.startswith("-")] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    failed = 0
    for name in wanted:
        print(f"\n=== bench {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            rc = importlib.import_module(f"bench.bench_{name}").main() or 0
        except Exception as e:  # keep going: one broken benchmark must not hide the others
            print(f"bench {name} failed: {type(e).__name__}: {e}")
            rc = 1
        failed += rc != 0
        print(f"--- {name}: {time.perf_counter() - t0:.1f} s wall", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
