"""Lightning DDP on CPU (gloo, 2 processes) with the FragilityCallback; run by tests/test_lightning.py as
``python -m tests.lightning_ddp_worker OUT``. Each rank saves what its classifier saw, for the test to compare."""

import sys

import torch

import lightning.pytorch as pl

from fragility.integrations.lightning import FragilityCallback
from tests.test_lightning import Classifier, _loader


def main(out: str) -> None:
    module = Classifier()
    callback = FragilityCallback(f"{out}/run.fragility", dtype="float32")
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=out,
        callbacks=[callback],
    )
    trainer.fit(module, _loader(24, seed=1), _loader(8, seed=2))
    torch.save(module.seen, f"{out}/seen{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
