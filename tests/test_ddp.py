"""DDP with gloo and 2 processes: one store per rank, read back as one store without padded duplicates."""

from __future__ import annotations

import numpy as np
import torch
import torch.multiprocessing as mp

import fragility
from fragility.analysis import analyze
from fragility.store import RankedStore

from . import ddp_worker as w


def test_two_rank_recording_reads_as_one_store(tmp_path):
    mp.spawn(w.run, args=(2, str(tmp_path)), nprocs=2, join=True)
    path = tmp_path / "run.fragility"
    assert sorted(p.name for p in path.iterdir()) == ["rank0", "rank1"]
    s = fragility.Store(path)
    assert isinstance(s, RankedStore) and s.metadata["ranks"] == [0, 1]
    assert {(p.name, p.rank, p.rows) for p in s.select(split="test", epoch=1)} == {("r0/0003", 0, 6), ("r1/0003", 1, 6)}
    # test sweep of the last epoch, both ranks together: 12 rows recorded, 11 unique samples
    rows = {}
    for p, chunk in s.iter_rows(s.select(split="test", epoch=1), ["fe", "logits", "index", "rank"]):
        for k, v in chunk.items():
            rows.setdefault(k, []).append(v)
    rows = {k: np.concatenate(v) for k, v in rows.items()}
    assert sorted(rows["index"].tolist()) == list(range(w.N))
    assert s.duplicates["test@1"] == 1
    # equal to the final model's own outputs on every sample
    model = w.make_model()
    model.load_state_dict(torch.load(tmp_path / "final.pt"))
    model.eval()
    x = w.data().tensors[0]
    with torch.no_grad():
        fe = model[1](model[0](x))
        logits = model(x)
    order = np.argsort(rows["index"])
    np.testing.assert_allclose(rows["fe"][order], fe.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rows["logits"][order], logits.numpy(), rtol=1e-6, atol=1e-6)
    # and the analyzers count each sample once
    r = analyze(path, ["topk"], k=2, split="test")["topk"]
    y = w.data().tensors[1].numpy()
    assert [c["n"] for c in r.data["groups"]["test@1"]["classes"]] == np.bincount(y, minlength=w.C).tolist()
