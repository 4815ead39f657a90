"""The analyzer merge is the reduction: a 2-worker local Dask cluster gives the single-process result."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fragility.analysis import analyze, analyze_dask
from fragility.testing import assert_results_equal, make_random_store

ENV_BEFORE = dict(os.environ)  # at collection, before any cluster started


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    saved = dict(os.environ)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    # starting the cluster leaves Dask's worker environment (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_) in this
    # process's os.environ: every later subprocess (the demo, reproduce) would train on one thread, other floats
    os.environ.clear()
    os.environ.update(saved)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()
    os.environ.clear()
    os.environ.update(saved)


def test_dask_cluster_matches_single_process(tmp_path, client):
    path = make_random_store(tmp_path / "d.fragility", nonfinite=2)
    options = {"k": 3, "knn_max_rows": 50}
    want = analyze(path, **options)
    got = analyze_dask(path, client=client, unit_rows=11, **options)
    same = analyze(path, unit_rows=11, **options)  # the same units: the same bits
    assert set(got) == {"topk", "magnitude", "diversity"}
    for name in want:
        assert_results_equal(want[name], got[name])  # other units: equal up to float summation order
        assert_results_equal(same[name], got[name], rtol=0, atol=0)  # the same units: identical
    workers = client.run(lambda: 1)
    assert len(workers) == 2
    sel = {"k": 3, "split": "test", "classes": [0, 2], "correct": True}
    assert_results_equal(analyze(path, ["magnitude"], unit_rows=7, **sel)["magnitude"],
                         analyze_dask(path, ["magnitude"], client=client, unit_rows=7, **sel)["magnitude"], rtol=0, atol=0)


def test_tasks_of_whole_groups_are_finished_where_they_run(tmp_path, client):
    """One group per task: each task finishes its groups (diversity's summaries, magnitude's bootstrap resamples)
    on its worker, and the merged results are the bits of one task for everything — also in one process."""
    from fragility.analysis._engine import make_plan
    from fragility.store import Store

    path = make_random_store(tmp_path / "t.fragility", dtype="float16", passes=[(s, e) for e in range(3) for s in ("train", "test")])
    options = {"k": 3, "knn_max_rows": 50, "unit_rows": 13}
    with Store(path) as st:
        plan = make_plan(st, None, task_rows=1, **options)
        tasks = plan.tasks(plan.units(plan.passes + plan.extra, rows=plan.unit_rows))
    groups = [{f"{p.split}@{p.epoch}" for p, _, _ in task} for task in tasks]
    assert len(tasks) == len({g for gs in groups for g in gs}) > 3 and all(len(g) == 1 for g in groups)
    assert sum(len(task) for task in tasks) > len(tasks)  # groups of several units: merged in order inside a task
    want = analyze(path, **options)
    with Store(path) as st:  # every finished group reached the result: its class counts, brute force from the store
        for p in st.select():
            y = st.read(p, ["label"])["label"]
            n = [c["n"] for c in want["diversity"].data["groups"][f"{p.split}@{p.epoch}"]["classes"]]
            assert n == np.bincount(y[y >= 0], minlength=len(n)).tolist()
    for got in (analyze(path, task_rows=1, **options), analyze_dask(path, client=client, task_rows=1, **options)):
        for name in want:
            assert_results_equal(want[name], got[name], rtol=0, atol=0)
    with pytest.raises(Exception, match=r"task_rows=0 must be a positive number of rows"):
        analyze(path, task_rows=0)


def test_the_cluster_leaves_this_process_environment_as_it_was(client):
    """Subprocesses started after the Dask tests (the demo's training) must see the environment the suite began with."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):
        assert os.environ.get(name) == ENV_BEFORE.get(name), name
