"""The thread count of the analysis kernels, chosen by measurement: each workload with 1 and with N threads
(torch's intra-op threads, which the compiled kernels follow too), interleaved and repeated on this machine,
results checked identical (rtol 0, atol 0).

Workloads, on a CIFAR-10-LT-shaped store (one 12,406-row eval sweep of the training set and one 10,000-row
test sweep, D = 64 — or D = --dim):
* ``knn``: ``diversity``'s k-NN archetypes on its 10,000-row sample (``knn_same_class``: Gram blocks);
* ``topk+magnitude``: the fused float16 kernels and the per-class sums;
* ``diversity``: float64 moments, size-matched participation ratios and the k-NN.

Usage: python benchmarks/bench_threads.py [--dir DIR] [--dim 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import torch

    from fragility.analysis import analyze
    from fragility.analysis._maths import knn_same_class
    from fragility.testing import assert_results_equal

    base = args.dir or tempfile.mkdtemp(prefix="bench-threads-")
    path = os.path.join(base, f"lt-{args.dim}.fragility")
    if not os.path.exists(path):
        import sys

        sys.path.insert(0, os.path.dirname(__file__))
        from bench_remedy import build

        build(path, sum(COUNTS), 10_000, args.dim, 10, np.array(COUNTS))
    most = torch.get_num_threads()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10_000, args.dim)).astype(np.float32)
    y = rng.integers(0, 10, size=10_000)
    work = {
        "knn": lambda: knn_same_class(x, y, 5),
        "topk+magnitude": lambda: analyze(path, ["topk", "magnitude"]),
        "diversity": lambda: analyze(path, ["diversity"]),
    }
    for name, fn in work.items():
        times: dict[int, list[float]] = {1: [], most: []}
        out: dict[int, object] = {}
        for _ in range(args.repeat):
            for t in (1, most):
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                out[t] = fn()
                times[t].append(time.perf_counter() - t0)
        torch.set_num_threads(most)
        if isinstance(out[1], dict):
            for k in out[1]:
                assert_results_equal(out[1][k], out[most][k], rtol=0, atol=0)
        else:
            assert np.array_equal(out[1], out[most])
        one, many = min(times[1]), min(times[most])
        print(f"{name:15s} 1 thread {one:.3f} s, {most} threads {many:.3f} s: {one / many:.2f}x faster with {most}; identical results")


if __name__ == "__main__":
    main()
