"""One rank of the DDP recording test (tests/test_ddp.py): gloo, DistributedSampler, one store per rank."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import fragility

N, D, C = 11, 6, 3  # 11 samples over 2 ranks: DistributedSampler pads one duplicate


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    return TensorDataset(x, y, torch.arange(N))


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, C))


def run(rank: int, world: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        ds = data()
        train = DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, world, rank, shuffle=True, seed=0))
        test = DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, world, rank, shuffle=False))
        # the inner module carries the classifier; DDP's forward calls it, so the taps fire
        with fragility.Recorder(model, os.path.join(tmp, "run.fragility"), classifier=model[2], dtype="float32") as rec:
            for epoch in range(2):
                test.sampler.set_epoch(epoch)
                train.sampler.set_epoch(epoch)
                with rec.capture("train", epoch=epoch):
                    for x, y, idx in train:
                        loss = nn.functional.cross_entropy(ddp(x), y)
                        rec.record(y, index=idx)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                model.eval()
                with rec.capture("test", epoch=epoch, mode="eval"), torch.no_grad():
                    for x, y, idx in test:
                        ddp(x)
                        rec.record(y, index=idx)
                model.train()
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(tmp, "final.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
