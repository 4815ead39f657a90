"""Recording overhead and writer throughput, measured side by side in one run.

1. Tap + write overhead: a bare training step of timm resnet18 (32x32, batch 128, CPU) against the same
   step with ``Recorder.record`` (FE + CE pred/target + logits, float16, background writer). Bare and
   recorded steps alternate in blocks on two identical models so machine noise hits both alike.
2. Writer throughput: the same arrays appended by ``StoreWriter`` (thread, queue, SWMR, commits) against
   raw h5py chunked appends (same chunks, dtype, no flushes), alternating rounds.

Usage: python benchmarks/bench_record.py [--rounds 6] [--steps 4]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import tempfile
import time
import zlib

import h5py
import numpy as np
import timm
import torch
from torch import nn

import fragility
from fragility.store import StoreWriter


def step(model, opt, x, y, rec=None):
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    if rec is not None:
        rec.record(y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def bench_overhead(rounds: int, steps: int, tmp: str) -> dict:
    torch.manual_seed(0)
    bare = timm.create_model("resnet18", pretrained=False, num_classes=10)
    recd = copy.deepcopy(bare)
    opt_b = torch.optim.SGD(bare.parameters(), lr=0.01)
    opt_r = torch.optim.SGD(recd.parameters(), lr=0.01)
    x = torch.randn(128, 3, 32, 32)
    y = torch.randint(0, 10, (128,))
    rec = fragility.Recorder(recd, os.path.join(tmp, "overhead.fragility"))
    rec.start_pass("train")
    for _ in range(2):  # warm-up both
        step(bare, opt_b, x, y)
        step(recd, opt_r, x, y, rec)
    t_bare, t_rec = [], []
    for _ in range(rounds):
        for model, opt, r, acc in ((bare, opt_b, None, t_bare), (recd, opt_r, rec, t_rec)):
            t0 = time.perf_counter()
            for _ in range(steps):
                step(model, opt, x, y, r)
            acc.append((time.perf_counter() - t0) / steps)
    rec.close()
    ratios = [r / b for r, b in zip(t_rec, t_bare)]
    # the writer's per-block CRC-32 (part of the recorded step above), measured alone on one step's rows
    batch = _arrays(1)[0]
    t_crc = []
    for _ in range(50):
        t0 = time.perf_counter()
        crc = 0
        for v in batch.values():
            crc = zlib.crc32(np.ascontiguousarray(v), crc)
        t_crc.append(time.perf_counter() - t0)
    return {"bare_s": statistics.median(t_bare), "recorded_s": statistics.median(t_rec), "ratio": statistics.median(ratios),
            "crc_s": statistics.median(t_crc), "crc_share": statistics.median(t_crc) / statistics.median(t_bare)}


def bench_live_metrics(tmp: str, steps: int = 20, test_rows: int = 1024) -> dict:
    """One epoch (``steps`` training steps + a test sweep) against LiveMetrics' work at the sweep's end."""
    from fragility.live import LiveMetrics

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    xt, yt = torch.randn(test_rows, 3, 32, 32), torch.randint(0, 10, (test_rows,))
    path = os.path.join(tmp, "live.fragility")
    t0 = time.perf_counter()
    with fragility.Recorder(model, path) as rec:
        with rec.capture("train", epoch=0):
            for _ in range(steps):
                step(model, opt, x, y, rec)
        name = rec.evaluate([(xt[i : i + 256], yt[i : i + 256]) for i in range(0, test_rows, 256)], split="test", epoch=0)
    epoch = time.perf_counter() - t0
    live = LiveMetrics(log=lambda tag, value, step: None)
    times = []
    for _ in range(4):  # the first call of a process also pays imports and the plugin manager
        t0 = time.perf_counter()
        live.fragility_pass_end({"name": name, "split": "test", "epoch": 0, "mode": "eval", "rows": test_rows, "store": path})
        times.append(time.perf_counter() - t0)
    metrics = statistics.median(times[1:])
    return {"epoch_s": epoch, "metrics_s": metrics, "first_s": times[0], "share": metrics / epoch, "scalars": len(live.last)}


def _arrays(n_batches: int, rows: int = 128, d: int = 512, c: int = 10):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_batches):
        out.append(
            {
                "fe": rng.standard_normal((rows, d)).astype(np.float16),
                "ce_pred": rng.standard_normal((rows, d)).astype(np.float16),
                "ce_target": rng.standard_normal((rows, d)).astype(np.float16),
                "logits": rng.standard_normal((rows, c)).astype(np.float16),
                "bias_pred": rng.standard_normal(rows).astype(np.float32),
                "label": rng.integers(0, c, rows),
                "pred": rng.integers(0, c, rows),
                "index": np.arange(rows),
                "step": np.zeros(rows, dtype=np.int64),
                "rank": np.zeros(rows, dtype=np.int32),
            }
        )
    return out


def raw_h5py(path: str, batches: list, chunk_rows: int) -> float:
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        g = f.create_group("p")
        ds = {}
        for k, v in batches[0].items():
            ds[k] = g.create_dataset(k, shape=(0, *v.shape[1:]), maxshape=(None, *v.shape[1:]), chunks=(chunk_rows, *v.shape[1:]), dtype=v.dtype)
        n = 0
        for b in batches:
            m = len(b["pred"])
            for k, d in ds.items():
                d.resize(n + m, axis=0)
                d[n : n + m] = b[k]
            n += m
    return time.perf_counter() - t0


def raw_h5py_blocks(path: str, batches: list, chunk_rows: int) -> float:
    """Raw h5py, but appending chunk-aligned blocks (the best a hand-written loop does)."""
    t0 = time.perf_counter()
    per = max(1, chunk_rows // len(batches[0]["pred"]))
    blocks = []
    for i in range(0, len(batches), per):
        group = batches[i : i + per]
        blocks.append({k: np.concatenate([b[k] for b in group]) for k in group[0]})
    t_concat = time.perf_counter() - t0  # concatenation is part of the cost, as in the writer
    return raw_h5py(path, blocks, chunk_rows) + t_concat


def fragility_writer(path: str, batches: list, chunk_rows: int) -> float:
    t0 = time.perf_counter()
    w = StoreWriter(path, {"model_name": "bench"}, dtype="float16", chunk_rows=chunk_rows, flush_interval=1.0)
    w.begin_pass("0000", {"split": "train", "epoch": 0, "mode": "train", "rank": 0})
    flags = np.zeros(len(batches[0]["pred"]), dtype=bool)  # the Recorder computes these in torch (overhead bench)
    for b in batches:
        w.append("0000", {**b, "nonfinite": flags})
    w.end_pass("0000", np.zeros((10, 512), np.float32), np.zeros(10, np.float32))
    w.close()
    return time.perf_counter() - t0


def bench_writer(rounds: int, tmp: str, n_batches: int = 400, chunk_rows: int = 1024) -> dict:
    batches = _arrays(n_batches)
    nbytes = sum(v.nbytes for b in batches for v in b.values())
    t_raw, t_blk, t_frag = [], [], []
    for i in range(rounds):
        for fn, acc in ((raw_h5py, t_raw), (raw_h5py_blocks, t_blk), (fragility_writer, t_frag)):
            path = os.path.join(tmp, f"w{i}-{fn.__name__}.h5")
            acc.append(fn(path, batches, chunk_rows))
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    ratios = [r / f for r, f in zip(t_raw, t_frag)]  # fragility throughput / raw throughput
    return {
        "mb": nbytes / 2**20,
        "raw_mb_s": nbytes / 2**20 / statistics.median(t_raw),
        "fragility_mb_s": nbytes / 2**20 / statistics.median(t_frag),
        "throughput_ratio": statistics.median(ratios),
        "blocks_mb_s": nbytes / 2**20 / statistics.median(t_blk),
        "blocks_ratio": statistics.median([r / f for r, f in zip(t_blk, t_frag)]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        w = bench_writer(args.rounds, tmp)
        print(
            f"writer: {w['mb']:.0f} MB per round; raw h5py {w['raw_mb_s']:.0f} MB/s, fragility writer "
            f"{w['fragility_mb_s']:.0f} MB/s; throughput ratio {w['throughput_ratio']:.2f} (target >= 0.80)\n"
            f"writer vs raw h5py chunk-aligned block appends ({w['blocks_mb_s']:.0f} MB/s): ratio {w['blocks_ratio']:.2f}"
        )
        o = bench_overhead(args.rounds, args.steps, tmp)
        print(
            f"overhead: resnet18 32x32 batch 128 CPU ({torch.get_num_threads()} threads); bare step {o['bare_s'] * 1e3:.0f} ms, "
            f"recorded step {o['recorded_s'] * 1e3:.0f} ms; ratio {o['ratio']:.3f} (target <= 1.05)\n"
            f"checksums: CRC-32 of one step's rows {o['crc_s'] * 1e6:.0f} us = {o['crc_share'] * 100:.3f}% of a bare step "
            f"(target <= 1%)"
        )
        m = bench_live_metrics(tmp)
        print(
            f"live metrics: one epoch (20 steps + a 1024-row test sweep) {m['epoch_s']:.1f} s; LiveMetrics at the sweep's end "
            f"{m['metrics_s'] * 1e3:.0f} ms ({m['scalars']} scalars; first call of the process {m['first_s'] * 1e3:.0f} ms) = "
            f"{m['share'] * 100:.2f}% of the epoch (target <= 2%)"
        )


if __name__ == "__main__":
    main()
