"""Reliability: SIGKILL a recording process N times at random moments and count unreadable stores.

Each kill is checked like tests/test_crash.py: the store opens, every acknowledged row is intact and equal
to what was fed, the interrupted pass reads incomplete.

Usage: python benchmarks/crash_kills.py [--kills 30] [--max-delay 3.0]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_crash import kill_and_check  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--max-delay", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    failures = []
    rows = passes = interrupted = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.kills):
            try:
                s = kill_and_check(Path(tmp) / f"k{k}.fragility", rnd.uniform(0, args.max_delay))
                passes += len(s.passes)
                interrupted += not s.passes[-1].complete
                rows += sum(p.rows for p in s.passes)
                s.close()
            except Exception as exc:  # noqa: BLE001 - counted and printed
                failures.append(f"kill {k}: {type(exc).__name__}: {exc}")
    print(f"{args.kills} SIGKILLs: {len(failures)} unreadable or inconsistent stores; {passes} passes, {rows} rows verified; "
          f"{interrupted} kills landed inside a pass and read as incomplete")
    for f in failures:
        print("  " + f)


if __name__ == "__main__":
    main()
