"""Would reading one chunk ahead (a helper thread, while the kernels work on the current chunk) bring topk
and topk + magnitude nearer a warm raw read? A/B of this tree against a copy with the prototype applied,
side by side in one run (issue 20; the prototype was measured and not kept).

Each round runs the analysis once with each tree first on ``PYTHONPATH`` and re-measures the warm plain read
between runs; the best of ``--repeat`` rounds of each side is reported as a ratio to the best read, as
``bench_analyze.py`` does. Set up the other tree with::

    git worktree add /tmp/ra HEAD && (cd /tmp/ra && git apply benchmarks/readahead-prototype.patch)
    cp fragility/analysis/_ckernels*.so /tmp/ra/fragility/analysis/

Usage: python benchmarks/ab_readahead.py --readahead /tmp/ra STORE [STORE ...] [--repeat 5] [--chunk-rows 16384]
(stores: e.g. those of ``bench_analyze.py --store-dir DIR``)
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from bench_analyze import plain_read, run_analysis  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--readahead", required=True, help="a copy of this tree with readahead-prototype.patch applied")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--chunk-rows", type=int, default=16384, help="as bench_analyze.py's default")
    args = ap.parse_args()
    cols = ["fe", "ce_pred", "logits", "label", "pred"]
    for path in args.stores:
        plain_read(path, cols, args.chunk_rows)
        for names in (["topk"], ["topk", "magnitude"]):
            runs: dict[str, list[float]] = {HERE: [], args.readahead: []}
            reads = [plain_read(path, cols, args.chunk_rows)]
            for _ in range(args.repeat):
                for tree in runs:
                    os.environ["PYTHONPATH"] = tree
                    runs[tree].append(run_analysis(path, args.chunk_rows, names)["seconds"])
                    reads.append(plain_read(path, cols, args.chunk_rows))
            os.environ.pop("PYTHONPATH", None)
            r = min(reads)
            b, a = min(runs[HERE]), min(runs[args.readahead])
            print(f"{os.path.basename(path)}: {' + '.join(names):<17} read {r:.3f} s; without read-ahead {b:.3f} s = {b / r:.2f}x, "
                  f"with {a:.3f} s = {a / r:.2f}x ({b / a:.2f}x the speed)", flush=True)


if __name__ == "__main__":
    main()
