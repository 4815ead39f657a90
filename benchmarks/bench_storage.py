"""Bytes on disk per pass size, and what compacting finished passes costs — side by side in one run.

For each pass length, one pass of D=512 rows (float16, 1,024-row chunks, 10 classes) is recorded twice,
interleaved: *as before* (no compaction, eval sweeps not sized) and *now* (short passes sized or compacted
when they end). Printed: payload (the bytes of the stored values), bytes on disk, their ratio, and the
recording time of the whole pass (start to ``end_pass`` returned), best of ``--repeat``.

Usage: python benchmarks/bench_storage.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch

import fragility
from fragility import recorder as recorder_mod
from fragility.store import _writer

D, C, BATCH = 512, 10, 64
SIZES = (128, 500, 1000, 1500, 5000, 20000)


def record(path: str, n: int, sweep: bool) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.ReLU(), torch.nn.Linear(D, C)).eval()
    x, y = torch.randn(n, D), torch.randint(0, C, (n,))
    with fragility.Recorder(model, path, classifier=model[2], overwrite=True) as rec, torch.no_grad():
        t0 = time.perf_counter()
        if sweep:
            rec.evaluate(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH), split="test")
        else:
            with rec.capture("train", 0, mode="eval"):
                for s in range(0, n, BATCH):
                    model(x[s : s + BATCH])
                    rec.record(y[s : s + BATCH])
        return time.perf_counter() - t0


def sizes(path: str) -> tuple[int, int]:
    with fragility.Store(path) as s:
        (p,) = s.passes
        payload = sum(v.nbytes for v in s.read(p, list(p.columns)).values())
    return payload, os.path.getsize(os.path.join(path, "passes", f"{p.name}.h5"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    slack, sweep_rows = _writer.COMPACT_SLACK, recorder_mod._sweep_rows
    print(f"{'pass':>14} | {'payload MB':>10} | {'before: disk MB':>15} {'ratio':>6} {'time s':>7} | "
          f"{'now: disk MB':>12} {'ratio':>6} {'time s':>7} | time now/before")
    try:
        for n in SIZES:
            for sweep in (False, True):
                best = {"before": float("inf"), "now": float("inf")}
                out = {}
                for _ in range(args.repeat):
                    for side in ("before", "now"):  # interleaved: the machine's noise hits both alike
                        if side == "before":
                            _writer.COMPACT_SLACK, recorder_mod._sweep_rows = float("inf"), (lambda loader: None)
                        else:
                            _writer.COMPACT_SLACK, recorder_mod._sweep_rows = slack, sweep_rows
                        path = os.path.join(tmp, f"{side}.fragility")
                        best[side] = min(best[side], record(path, n, sweep))
                        out[side] = sizes(path)
                payload = out["now"][0]
                b, w = out["before"][1], out["now"][1]
                label = f"{n} rows {'eval' if sweep else 'train'}"
                print(f"{label:>14} | {payload / 1e6:10.3f} | {b / 1e6:15.3f} {b / payload:6.3f} {best['before']:7.3f} | "
                      f"{w / 1e6:12.3f} {w / payload:6.3f} {best['now']:7.3f} | {best['now'] / best['before']:.3f}")
    finally:
        _writer.COMPACT_SLACK, recorder_mod._sweep_rows = slack, sweep_rows
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
