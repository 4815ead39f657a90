"""Recording subprocess for tests/test_diskfull.py: records until the disk (or the file-size limit) is full,
then checks every acknowledged row from this same process and exits 1.

argv: STORE [--fsize BYTES]. Prints ``ACK <pass> <rows>`` per flush, then ``ERROR <message>`` and
``INPROCESS <rows checked>``.
"""

import resource
import signal
import sys

import numpy as np
import torch

import fragility
from fragility import Store

try:
    from . import crash_writer as cw  # imported by the tests
except ImportError:
    import crash_writer as cw  # run as a script


def expected(pass_no, rows):
    model = cw.make_model()
    fe, logits = [], []
    with torch.no_grad():
        for b in range(pass_no * cw.BATCHES_PER_PASS, pass_no * cw.BATCHES_PER_PASS + -(-rows // cw.BATCH)):
            x, _ = cw.batch(b)
            fe.append(x)
            logits.append(model(x))
    return torch.cat(fe)[:rows].numpy(), torch.cat(logits)[:rows].numpy()


def main(path, fsize=None):
    if fsize:  # a per-file size limit: writes past it fail with EFBIG, which no free-space check foresees
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    model = cw.make_model()
    acked = {}
    rec = fragility.Recorder(model, path, classifier=model[1], dtype="float32", flush_interval=0.02, chunk_rows=128)
    b = 0
    try:
        with torch.no_grad():
            for epoch in range(1000):
                with rec.capture("train", epoch=epoch, mode="eval") as name:
                    for _ in range(cw.BATCHES_PER_PASS):
                        x, y = cw.batch(b)
                        model(x)
                        rec.record(y, index=torch.arange(b * cw.BATCH, (b + 1) * cw.BATCH))
                        b += 1
                        if b % 3 == 0:
                            acked[name] = rec.flush()[name]
                            print("ACK", name, acked[name], flush=True)
    except fragility.StoreError as exc:
        print("ERROR", str(exc).replace("\n", " "), flush=True)
    try:
        rec.close()
    except fragility.StoreError:
        pass  # the same error again
    checked = 0
    with Store(path) as s:  # the same process reads every acknowledged row back
        assert not s.damaged, s.damaged
        for name, rows in acked.items():
            p = s.pass_info(name)
            assert p.rows >= rows, (name, p.rows, rows)
            got = s.read(p, ["fe", "logits"], 0, rows)
            fe, logits = expected(int(name), rows)
            np.testing.assert_array_equal(got["fe"], fe)
            np.testing.assert_array_equal(got["logits"], logits)
            checked += rows
    print("INPROCESS", checked, flush=True)
    sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--fsize" else None)
