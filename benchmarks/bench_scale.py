"""Costs that must not grow with a run's history, measured side by side in one run on a 6-epoch and a
60-epoch CIFAR-10-LT-shaped store (per epoch a training pass of 12,406 rows — LDAM-DRW's 100:1 counts — and a
10,000-row test sweep; D = 64, C = 10), both recorded through the public Recorder API.

For each store, interleaved and repeated (the minimum is kept; this machine is shared):
* ``Store()`` open in a fresh process state (the process cache cleared, the user-cache file present) and
  in a process that opened it before, and with no cache at all (every pass file validated);
* one ``LiveMetrics`` call at the last epoch, on a store kept open and refreshed (as during training);
* ``analyze`` over all epochs: topk + magnitude, and all three analyzers (k-NN for each split's last epoch,
  the default) — their ratio.
Prints each figure and the 60-epoch / 6-epoch ratios (targets: open and LiveMetrics ≤ 2.5x; all three
analyzers ≤ 2.5x topk + magnitude).

Usage: python benchmarks/bench_scale.py [--dir DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def build(path: str, epochs: int) -> None:
    import torch
    from torch import nn

    import fragility

    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Linear(64, 10)).eval()
    y_train = torch.repeat_interleave(torch.arange(10), torch.tensor(COUNTS))
    x_train = torch.randn(len(y_train), 64).abs() + torch.nn.functional.one_hot(y_train, 64).float() * 2
    y_test = torch.arange(10000) % 10
    x_test = torch.randn(10000, 64).abs() + torch.nn.functional.one_hot(y_test, 64).float() * 2
    with torch.no_grad(), fragility.Recorder(model, path, classifier=model[1], overwrite=True) as rec:
        for e in range(epochs):
            model[1].weight.add_(torch.randn_like(model[1].weight) * 0.01)  # the weights move between epochs
            with rec.capture("train", epoch=e, mode="eval"):
                for i in range(0, len(y_train), 1024):
                    model(x_train[i : i + 1024])
                    rec.record(y_train[i : i + 1024])
            rec.evaluate([(x_test[i : i + 1024], y_test[i : i + 1024]) for i in range(0, 10000, 1024)], split="test", epoch=e)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="where the stores are built (default: a temporary folder)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="bench-scale-")
    os.environ.setdefault("FRAGILITY_CACHE_DIR", os.path.join(base, "cache"))
    from fragility import Store, analyze
    from fragility.live import LiveMetrics
    from fragility.store import _reader

    stores = {}
    for epochs in (6, 60):
        path = os.path.join(base, f"cifar-lt-{epochs}.fragility")
        if not os.path.isdir(path):
            t = timed(lambda p=path, e=epochs: build(p, e))
            print(f"built {path} ({epochs} epochs, {epochs * 22406:,} rows) in {t:.1f} s")
        stores[epochs] = path
    figures: dict[str, dict[int, list[float]]] = {}

    def add(name: str, epochs: int, seconds: float) -> None:
        figures.setdefault(name, {}).setdefault(epochs, []).append(seconds)

    live = {e: LiveMetrics(log=lambda *a: None) for e in stores}
    for r in range(args.repeat):
        for epochs, path in stores.items():
            saved = os.environ["FRAGILITY_CACHE_DIR"]
            os.environ["FRAGILITY_CACHE_DIR"] = "none"
            _reader._VALIDATED.clear()
            add("Store() open, no cache (every pass validated)", epochs, timed(lambda: Store(path).close()))
            os.environ["FRAGILITY_CACHE_DIR"] = saved
            Store(path).close()  # writes the user-cache file
            _reader._VALIDATED.clear()
            add("Store() open, new process (user-cache file)", epochs, timed(lambda: Store(path).close()))
            add("Store() open, opened before in this process", epochs, timed(lambda: Store(path).close()))
            with Store(path) as s:
                last = s.passes[-1]
                info = {"mode": "eval", "rows": last.rows, "store": path, "name": last.name, "split": last.split, "epoch": last.epoch}
            live[epochs].fragility_pass_end(pass_info=info)  # opens the store once, as the first call of a run does
            add("LiveMetrics call at the last epoch (store kept open)", epochs, timed(lambda: live[epochs].fragility_pass_end(pass_info=info)))
            add("analyze all epochs: topk + magnitude", epochs, timed(lambda: analyze(path, ["topk", "magnitude"], epoch=None)))
            add("analyze all epochs: all three (k-NN last epoch)", epochs, timed(lambda: analyze(path, epoch=None)))
    width = max(map(len, figures))
    print(f"{'':{width}}   6 epochs  60 epochs   ratio 60/6   (min of {args.repeat})")
    for name, by in figures.items():
        a, b = min(by[6]), min(by[60])
        print(f"{name:{width}} {a:9.3f} s {b:9.3f} s {b / a:9.2f}x")
    for epochs in stores:
        three = min(figures["analyze all epochs: all three (k-NN last epoch)"][epochs])
        two = min(figures["analyze all epochs: topk + magnitude"][epochs])
        print(f"{epochs} epochs: all three analyzers / topk + magnitude = {three / two:.2f}x")


if __name__ == "__main__":
    main()
