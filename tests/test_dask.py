"""The analyzer merge is the reduction: a 2-worker local Dask cluster gives the single-process result."""

from __future__ import annotations

import pytest

from fragility.analysis import analyze, analyze_dask
from fragility.testing import assert_results_equal, make_random_store


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


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
