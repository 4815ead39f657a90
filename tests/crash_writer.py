"""Recording subprocess for tests/test_crash.py: records forever, prints each acknowledged flush."""

import sys

import torch
from torch import nn

import fragility

BATCH, BATCHES_PER_PASS, D, C = 32, 60, 8, 3


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, C)).eval()


def batch(b):
    g = torch.Generator().manual_seed(1000 + b)
    return torch.randn(BATCH, D, generator=g), torch.randint(0, C, (BATCH,), generator=g)


def main(path, pause_at=None):
    """``pause_at="NAME:ROWS"``: once pass NAME has ROWS acknowledged rows, print PAUSED and wait for stdin to
    close (a test then kills the process at a known moment inside that pass, whatever the machine's load)."""
    model = make_model()
    # 1,920-row passes in 1,500-row chunks: every finished pass is compacted (2 chunks hold 3,000 rows), so kills land in
    # compactions too, while most of the time is still spent inside passes
    rec = fragility.Recorder(model, path, classifier=model[1], dtype="float32", flush_interval=0.02, chunk_rows=1500)
    print("READY", flush=True)
    b = 0
    with torch.no_grad():
        while True:
            with rec.capture("train", epoch=b // BATCHES_PER_PASS, mode="eval") as name:
                print("BEGIN", name, flush=True)
                for _ in range(BATCHES_PER_PASS):
                    x, y = batch(b)
                    model(x)
                    rec.record(y, index=torch.arange(b * BATCH, (b + 1) * BATCH))
                    b += 1
                    if b % 3 == 0:
                        rows = rec.flush()[name]
                        print("ACK", name, rows, flush=True)
                        if pause_at == f"{name}:{rows}":
                            print("PAUSED", flush=True)
                            sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--pause-at" else None)
