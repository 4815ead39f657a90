"""Would reading one chunk ahead (a helper thread, while the kernels work on the current chunk) bring topk
and topk + magnitude nearer a warm raw read? A/B of this tree against a copy with the prototype applied,
side by side in one run (issue 20; the prototype was measured and not kept).

Each round runs the analysis once in each tree (a child process started in the tree's folder, so its
``fragility`` and ``fragility_plugins`` are imported from there) and re-measures the warm plain read between
runs; the best of ``--repeat`` rounds of each side is reported as a ratio to the best read, as
``bench_analyze.py`` does. Set up the other tree with::

    git worktree add /tmp/ra HEAD && (cd /tmp/ra && git apply benchmarks/readahead-prototype.patch)
    cp fragility/analysis/_ckernels*.so /tmp/ra/fragility/analysis/ && ln -s plugins /tmp/ra/fragility_plugins

(``--readahead`` can name any other tree set up that way, e.g. an earlier commit, to compare the two.)

Usage: python benchmarks/ab_readahead.py --readahead /tmp/ra STORE [STORE ...] [--repeat 5] [--chunk-rows 16384]
(stores: e.g. those of ``bench_analyze.py --store-dir DIR``)
"""

from __future__ import annotations

import argparse
import os
import subprocess
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
    args.readahead = os.path.abspath(args.readahead)
    check = "import fragility, fragility_plugins.topk as t; print(fragility.__file__, t.__file__)"
    for tree in (HERE, args.readahead):  # each side really runs its own code
        os.chdir(tree)
        where = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.split()
        assert all(w.startswith(tree + os.sep) for w in where), (tree, where)
    os.chdir(HERE)
    for path in args.stores:
        path = os.path.abspath(path)
        plain_read(path, cols, args.chunk_rows)
        for names in (["topk"], ["topk", "magnitude"]):
            runs: dict[str, list[float]] = {HERE: [], args.readahead: []}
            reads = [plain_read(path, cols, args.chunk_rows)]
            for _ in range(args.repeat):
                for tree in runs:
                    os.chdir(tree)  # the child imports the tree in its working folder first
                    runs[tree].append(run_analysis(path, args.chunk_rows, names)["seconds"])
                    reads.append(plain_read(path, cols, args.chunk_rows))
            os.chdir(HERE)
            r = min(reads)
            b, a = min(runs[HERE]), min(runs[args.readahead])
            print(f"{os.path.basename(path)}: {' + '.join(names):<17} read {r:.3f} s; this tree {b:.3f} s = {b / r:.2f}x, "
                  f"{args.readahead} {a:.3f} s = {a / r:.2f}x (the other tree runs at {b / a:.2f}x this one's speed)", flush=True)


if __name__ == "__main__":
    main()
