"""The Dask runner against one process, on the same store, measured side by side in one run.

Runs ``analyze`` (one process, the compiled kernels on every core) and ``analyze_dask`` on a local cluster
of N single-threaded worker processes, alternately, and prints each time, their ratio, and checks that the
results are bit-identical (they must be: both merge the same tasks' analyzer states in task order). The cluster is started
before the clock; its workers load the plugins on their first task, which a warm-up run absorbs.

The workers are started without Dask's default ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``):
setting it turns off glibc's adaptive mmap threshold, so every array above 128 KiB is a fresh mmap whose pages fault
in on first touch — the analysis's per-group work ran 1.5x slower per worker with it (measured: the same 20 tasks
7.3 s in a plain process, 10.7 s with that variable set). ``analyze_dask``'s docstring recommends the same.

Usage: python benchmarks/bench_dask.py STORE [--workers 4] [--repeat 2] [--analyzers topk,magnitude,diversity]
       (a 1M-row store: ``python benchmarks/bench_analyze.py --store-dir DIR`` generates DIR/bench-1000000-0.fragility)
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--analyzers", default="topk,magnitude,diversity")
    args = ap.parse_args()
    import dask
    from dask.distributed import Client, LocalCluster

    from fragility.analysis import analyze, registry
    from fragility.analysis._dask import analyze_dask
    from fragility.testing import assert_results_equal

    registry()
    dask.config.set({"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}})
    names = args.analyzers.split(",")
    saved = dict(os.environ)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        os.environ.clear()  # starting the cluster leaves its workers' OMP_NUM_THREADS=1 here: one process keeps all cores
        os.environ.update(saved)
        analyze_dask(args.store, names, client=client)  # warm-up: workers import fragility and its plugins
        one, many = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ref = analyze(args.store, names)
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = analyze_dask(args.store, names, client=client)
            many.append(time.perf_counter() - t0)
        for name in names:
            assert_results_equal(ref[name], got[name], rtol=0, atol=0)
    print(f"{', '.join(names)}: one process {min(one):.1f} s, Dask with {args.workers} single-threaded workers "
          f"{min(many):.1f} s ({min(one) / min(many):.2f}x the speed of one process); results bit-identical (rtol 0, atol 0)")


if __name__ == "__main__":
    main()
