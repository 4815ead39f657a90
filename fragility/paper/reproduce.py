"""``fragility reproduce``: the paper's grid of experiments as one command, on the user's own data.

For every loss in ``losses`` — and the balanced-training control — it trains a CIFAR ResNet on an
imbalanced view of the data with the Recorder attached (a train pass and a test sweep every
``record_every`` epochs and at the last one), writes one store per configuration and one comparison report.
A configuration whose store is complete is skipped; a partial one restarts from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from typing import Any

import torch
from rich.console import Console

from .._safe import markup
from .._fingerprint import incomparable
from ..analysis import Result, Table, analyze, compare_results
from ..analysis.records import (
    DiversityClass,
    MagnitudeClass,
    TopkClass,
    compare_records,
    diversity_records,
    magnitude_records,
    topk_records,
)
from .._light import TRAIN_EVAL
from .datasets import DATASETS, ImageData, imbalance, load
from ..errors import DataError, close_matches, output_dir
from .losses import LOSSES, Recipe
from ..recorder import Recorder

BALANCED = "balanced"
#: per data set: whether a horizontal flip is a valid augmentation (digits and house numbers: no)
FLIP = {"digits": False, "svhn": False, "cifar10": True, "cifar100": True, "celeba": True}
#: checkpoint selection -> (score on the recorded test sweeps, its source in the peers' code)
SELECT = {
    "last": (None, "the last epoch (fragility's own choice: no test-set selection)"),
    "best-acc": ("accuracy", "best test top-1 accuracy, first epoch on ties (kaidic/LDAM-DRW cifar_train.py: is_best = acc1 > best_acc1)"),
    "best-f1": ("macro_f1", "best test macro-F1, first epoch on ties (dd1github/EOS cifar_train.py validate(): sklearn "
                "f1_score(average='macro', zero_division=1), saved when fm > best_acc)"),
}
#: the built-in analyzers and the authors' conventions beside them (docs/analyzers.md)
ANALYZERS = ["topk", "magnitude", "diversity", "authors"]
QUICK = {"data": "digits", "imbalance": 20.0, "epochs": 20, "record_every": 5, "model": "cifar_resnet32", "batch_size": 64}
FULL = {"data": "cifar10", "imbalance": 100.0, "epochs": 200, "record_every": 20, "model": "cifar_resnet32", "batch_size": 128}


def augment(x: torch.Tensor, g: torch.Generator, flip: bool, black: torch.Tensor | float = -1.0) -> torch.Tensor:
    """The peers' training transform on normalised images: ``RandomCrop(32, padding=4)`` — a random 32×32
    crop of the image padded by 4 black pixels (``black``: their normalised value per channel, ``(C, 1, 1)``)
    — then ``RandomHorizontalFlip()`` when ``flip``. Cropping and flipping commute with the per-pixel
    normalisation, so the result equals torchvision's pipeline pixel for pixel (tested)."""
    n, ch, h, w = x.shape
    pad = torch.as_tensor(black, dtype=x.dtype).expand(n, ch, h + 8, w + 8).clone()
    pad[:, :, 4 : 4 + h, 4 : 4 + w] = x
    dy, dx = torch.randint(0, 9, (n,), generator=g), torch.randint(0, 9, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, ch, h, w + 8)
    out = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, ch, h, w)
    out = out.gather(3, cols)
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
        out[mask] = out[mask].flip(3)
    return out


def recorded_epochs(epochs: int, every: int) -> list[int]:
    """0-based epochs that get a train pass and a test sweep: every ``every``-th, and always the last."""
    return sorted({e for e in range(epochs) if (e + 1) % every == 0} | {epochs - 1})


def _check_data_model(data: str, model: str) -> None:
    """A known data set and a timm model (the CIFAR ResNets registered), else one line naming the choices."""
    import timm

    from . import models  # noqa: F401 - registers the CIFAR ResNets

    if data not in DATASETS:
        raise DataError(f"--data {data!r} is unknown{close_matches(data, list(DATASETS))}; use {', '.join(DATASETS)}")
    if not timm.is_model(model):
        raise DataError(f"--model {model!r} is not a timm model{close_matches(model, timm.list_models())}")


def select_epoch(store: str, how: str) -> tuple[int, list[dict[str, float]]]:
    """The recorded epoch ``how`` keeps, and per recorded epoch its test ``accuracy`` and ``macro_f1`` —
    computed from the stored test sweep (labels and predictions of the forward that was recorded), with
    scikit-learn's ``f1_score(average="macro", zero_division=1)`` as the peers call it."""
    import numpy as np
    from sklearn.metrics import f1_score

    from ..store import Store

    scores = []
    with Store(store) as s:
        tests = [p for p in s.select(complete_only=True) if p.split == "test"]
        for e in sorted({p.epoch for p in tests}):
            rows = [s.read(p, ["label", "pred"]) for p in tests if p.epoch == e]
            y, pred = (np.concatenate([r[c] for r in rows]) for c in ("label", "pred"))
            scores.append({"epoch": e, "accuracy": float((y == pred).mean()),
                           "macro_f1": float(f1_score(y, pred, average="macro", zero_division=1))})
    if not scores:
        raise DataError(f"store {store} holds no complete test sweep to select a checkpoint from; delete it to train again")
    key = SELECT[how][0]
    best = scores[-1] if key is None else max(scores, key=lambda r: r[key])  # max keeps the first of equal scores
    return best["epoch"], scores


def data_rows(data: str, stats: tuple, seed: int | str, profile: str, ratio: float) -> list[list[str]]:
    """The data settings of a run (which images, which normalisation) with their sources."""
    cifar = data in ("cifar10", "cifar100")
    return [
        ["imbalanced images", f"{profile}, imbalance {ratio:g} (imb_factor {1 / ratio:g}), rand_number {seed}",
         "kaidic/LDAM-DRW imbalance_cifar.py IMBALANCECIFAR10/100: np.random.seed(rand_number), per class in class order "
         "np.random.shuffle, the first int(img_max * imb_factor ** (c / (C - 1.0)))"],
        ["normalisation", f"mean {stats[0]}, std {stats[1]}",
         "LDAM-DRW and dd1github/EOS cifar_train.py transforms.Normalize" if cifar
         else "(x - 0.5) / 0.5: the peers' code has no reader for this data set"],
    ]


def recipe_table(recipe: Recipe, data: str, model: str, select: str, stats: tuple, seed: int, profile: str, ratio: float) -> Table:
    """Every setting of the run with its value and where the default comes from (the paper's code base)."""
    rows = [
        *data_rows(data, stats, seed, profile, ratio),
        ["augmentation", f"RandomCrop(32, padding=4){' + RandomHorizontalFlip' if FLIP[data] else ''}",
         "cifar_train.py transform_train" + ("" if FLIP[data] else " (no flip: digits and house numbers are not mirror-symmetric)")],
        ["model", model, "LDAM-DRW models/resnet_cifar.py resnet32 (published checkpoints load strictly)"],
        ["optimiser", f"SGD lr {recipe.lr:g}, momentum {recipe.momentum:g}, weight decay {recipe.weight_decay:g}, batch {recipe.batch_size}",
         "cifar_train.py defaults"],
        ["schedule", f"{recipe.epochs} epochs, {recipe.warmup} warm-up, lr x0.01 after epoch {int(0.8 * recipe.epochs)}, "
         f"x0.0001 after {int(0.9 * recipe.epochs)}", "cifar_train.py adjust_learning_rate (160 and 180 of 200), scaled to --epochs"],
        ["DRW epoch", str(recipe.drw_epoch), "cifar_train.py DRW: idx = epoch // 160 (160 of 200), scaled to 80 % of --epochs; --drw-epoch"],
        ["focal gamma", f"{recipe.focal_gamma:g}", "dd1github/EOS cifar_train.py FocalLoss(gamma=2), the authors' code "
         "(LDAM-DRW uses 1); --focal-gamma"],
        ["checkpoint", select, SELECT[select][1] + ("; among the recorded epochs, on the test set (a test-set selection, as "
                                                     "in the peers' code)" if SELECT[select][0] else "") + "; --select"],
    ]
    return Table("recipe: each setting, its value in this run, and its source", ["setting", "value", "source"], rows)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)


def _save(path: str, state: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill leaves the previous checkpoint, never half of one


class Grid:
    """Paths and state of one reproduce run folder."""

    def __init__(self, out: str, options: dict[str, Any]) -> None:
        self.out = out
        self.stores = os.path.join(out, "stores")
        self.checkpoints = os.path.join(out, "checkpoints")
        output_dir(self.stores)
        output_dir(self.checkpoints)
        path = os.path.join(out, "grid.json")
        if os.path.exists(path):  # resuming: only the same grid may continue
            try:
                with open(path) as fh:
                    old = json.load(fh)
            except (OSError, ValueError) as exc:
                raise DataError(f"{path} cannot be read ({exc}); delete it or choose another --out") from None
            # the losses may grow and the selection only changes the analysis
            diff = [f"{k} {old.get(k)!r} vs {v!r}" for k, v in options.items() if old.get(k) != v and k not in ("losses", "select")]
            if diff:
                raise DataError(f"{out} holds a run with other options ({'; '.join(diff)}); use the same options to resume, "
                                f"or choose another --out")
        with open(path, "w") as fh:
            json.dump(options, fh, indent=1)

    def store(self, cfg: str) -> str:
        return os.path.join(self.stores, f"{cfg}.fragility")

    def checkpoint(self, cfg: str) -> str:
        return os.path.join(self.checkpoints, f"{cfg}.pt")

    def done(self, cfg: str) -> str:
        return os.path.join(self.checkpoints, f"{cfg}.done.json")


def train_config(
    cfg: str, loss_name: str, data: ImageData, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, grid: Grid, *,
    model_name: str, recipe: Recipe, record_every: int, seed: int, device: torch.device, flip: bool, log: Console,
    later_rows: int = 0,
) -> dict[str, Any]:
    """Train one configuration with the Recorder attached; resume from its checkpoint when there is one.
    ``later_rows``: training rows × epochs of the configurations still to train after this one, for the
    grid's ETA (at this configuration's time per row)."""
    import timm

    counts = torch.bincount(y, minlength=len(data.classes)).tolist()
    torch.manual_seed(seed)  # every configuration starts from the same backbone weights
    norm_head = LOSSES[loss_name][1]
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=len(data.classes),
                                  **({"norm_head": True} if norm_head else {}))
    except TypeError:
        raise DataError(f"loss {loss_name} needs a model with LDAM's normalised head; use a cifar_resnet model") from None
    except Exception as exc:  # noqa: BLE001 - unknown names, bad kwargs: one line
        raise DataError(f"cannot create timm model {model_name!r}: {exc}") from None
    model.to(device)
    opt = recipe.optimizer(model)
    start, resume = 0, False
    store, ckpt = grid.store(cfg), grid.checkpoint(cfg)
    if os.path.exists(ckpt) and os.path.isdir(store):
        state = torch.load(ckpt, map_location=device, weights_only=True)  # tensors and numbers only: no code from a shared folder
        later = _passes_after(store, state["epoch"])
        if later:
            log.print(f"{markup(cfg)}: the store holds complete passes recorded after the checkpoint ({markup(', '.join(later))}); "
                      f"restarting this configuration from epoch 0", highlight=False)
        else:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start, resume = state["epoch"] + 1, True
            log.print(f"{markup(cfg)}: resuming from the checkpoint of epoch {state['epoch']}", highlight=False)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    record = set(recorded_epochs(recipe.epochs, record_every))
    test = [(data.x_test[i : i + 512].to(device), data.y_test[i : i + 512]) for i in range(0, len(data.y_test), 512)]
    n = len(y)
    sweep = [(x[i : i + 512], y[i : i + 512], ids[i : i + 512]) for i in range(0, n, 512)]  # moved batch by batch
    t0 = time.monotonic()
    with Recorder(model, store, class_names=data.classes, overwrite=not resume, resume=resume) as rec:
        for epoch in range(start, recipe.epochs):
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(epoch)
            loss_fn = recipe.loss(loss_name, counts, epoch).to(device)
            g = torch.Generator().manual_seed(seed * 100003 + epoch)  # the same batches after a resume
            perm = torch.randperm(n, generator=g)
            model.train()
            total, correct = 0.0, 0
            recording = epoch in record
            with rec.capture("train", epoch=epoch) if recording else rec.paused():
                for s in range(0, n, recipe.batch_size):
                    idx = perm[s : s + recipe.batch_size]
                    xb, yb = augment(x[idx], g, flip, data.black).to(device), y[idx].to(device)
                    with amp:
                        logits = model(xb)
                    if recording:
                        rec.record(yb, index=ids[idx])
                    loss = loss_fn(logits.float(), yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    correct += int((logits.argmax(1) == yb).sum())
            if recording:
                with amp:
                    # the training images in eval mode, un-augmented: the magnitude reference (the authors' extraction)
                    rec.evaluate(sweep, split="train_eval", epoch=epoch)
                    rec.evaluate(test, split="test", epoch=epoch)
            _save(ckpt, {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "config": cfg})
            spent = time.monotonic() - t0
            done = epoch + 1 - start
            eta = spent / done * (recipe.epochs - epoch - 1)
            grid_eta = eta + spent / (done * n) * later_rows
            log.print(f"{markup(cfg)}: epoch {epoch + 1}/{recipe.epochs} loss {total / n:.3f} train acc {correct / n:.3f} "
                      f"lr {recipe.lr_at(epoch):.2g}{' recorded' if recording else ''}; {spent:.0f} s, ETA {eta:.0f} s"
                      f"{f' (grid {grid_eta:.0f} s)' if later_rows else ''}", highlight=False)
    model.eval()
    with torch.no_grad(), amp:
        acc = float(sum(int((model(xt).argmax(1).cpu() == yt).sum()) for xt, yt in test) / len(data.y_test))
    summary = {"config": cfg, "loss": loss_name, "store": store, "test_accuracy": acc, "train_counts": counts, "epochs": recipe.epochs}
    with open(grid.done(cfg), "w") as fh:
        json.dump(summary, fh)
    return summary


def _done_summary(path: str) -> dict[str, Any]:
    """A finished configuration's summary (``<cfg>.done.json``), checked before any value of it is used."""
    try:
        with open(path) as fh:
            summary = json.load(fh)
        if not isinstance(summary, dict) or not isinstance(summary.get("test_accuracy"), (int, float)):
            raise ValueError("no numeric test_accuracy")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a summary this command wrote ({exc}); delete it to train that configuration again") from None
    return summary


def _passes_after(store: str, epoch: int) -> list[str]:
    from ..store import Store

    try:
        with Store(store) as s:
            return [p.label for p in s.passes if p.complete and p.epoch > epoch]
    except Exception:  # noqa: BLE001 - an unreadable partial store: restart it
        return ["unreadable store"]


def grid_table(results: dict[str, dict[str, Result]], configs: list[str], k: int, why: dict[str, str | None] | None = None) -> Table:
    """Per class and per configuration: the paper's quantities, with the balanced run as the reference. The
    training side is the training pass, or for stores without one (published checkpoints) the eval sweep of
    the training set."""
    rows = []
    ref = results.get(BALANCED)
    first = results[configs[0]]
    train = "train" if first["topk"].group_names("train") else TRAIN_EVAL
    overlaps = {}
    for cfg in configs:
        if ref is not None and cfg != BALANCED:
            cmp = compare_results(results[cfg], ref, labels=(cfg, BALANCED), train_split=train, incomparable=(why or {}).get(cfg))
            overlaps[cfg] = [c.overlap_train for c in compare_records(cmp).classes]
    # each run's classes, read once: train and test top-K, test magnitude, train diversity
    groups: dict[str, tuple[list[TopkClass], list[TopkClass], list[MagnitudeClass], list[DiversityClass]]] = {}
    for cfg in configs:
        top = topk_records(results[cfg]["topk"])
        groups[cfg] = (top.last(train).classes, top.last("test").classes,
                       magnitude_records(results[cfg]["magnitude"]).last("test").classes,
                       diversity_records(results[cfg]["diversity"]).last(train).classes)
    names = [c.name for c in groups[configs[0]][0]]
    for c, name in enumerate(names):
        for cfg in configs:
            trains, tests, mags, divs = groups[cfg]
            tr, te, mg, dv = trains[c], tests[c], mags[c], divs[c]
            rows.append([name, cfg, tr.n, te.accuracy, tr.unique, overlaps.get(cfg, [None] * len(names))[c],
                         mg.ratio_correct, mg.ratio_incorrect, mg.share_below_p5, dv.participation_ratio])
    cols = ["class", "run", "n train", "test acc", f"unique top-{k}", "overlap w/ balanced", "mag correct", "mag misclassified",
            "<p5", "PR"]
    return Table(
        f"per class and run at the kept checkpoint's epoch (below): n train = training rows; unique top-{k} = distinct top-{k} CE features over "
        f"the class's training rows ({train}); overlap = share of the class top-{k} (train) also in the balanced run's; mag = test/train "
        f"top-{k} magnitude of correct and misclassified test rows; <p5 = share of test rows below the training 5th "
        f"percentile; PR = FE participation ratio ({train})",
        cols, rows,
    )


def run_reproduce(
    *,
    data: str = "cifar10",
    root: str | None = None,
    imbalance_ratio: float = 100.0,
    profile: str = "exp",
    losses: list[str] | None = None,
    balanced: bool = True,
    epochs: int = 200,
    model: str = "cifar_resnet32",
    record_every: int = 20,
    batch_size: int = 128,
    lr: float = 0.1,
    focal_gamma: float = 2.0,
    drw_epoch: int | None = None,
    select: str = "best-f1",
    seed: int = 0,
    device: str = "auto",
    k: int = 10,
    out: str = "results",
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> dict[str, Any]:
    """Run the grid; returns the configurations' summaries, the analyzer results and the report path."""
    stdout, stderr = stdout or Console(), stderr or Console(stderr=True)
    losses = list(losses or ["ce", "focal", "ldam-drw"])
    for name in losses:
        if name not in LOSSES:
            raise DataError(f"--losses: {name!r} is unknown{close_matches(name, list(LOSSES))}; use {', '.join(LOSSES)}")
    _check_data_model(data, model)
    if record_every < 1:
        raise DataError(f"--record-every {record_every} must be >= 1")
    if select not in SELECT:
        raise DataError(f"--select {select!r} is unknown{close_matches(select, list(SELECT))}; use {', '.join(SELECT)}")
    recipe = Recipe(epochs, lr=lr, batch_size=batch_size, drw_epoch=drw_epoch, focal_gamma=focal_gamma)
    dev = _device(device)
    grid = Grid(out, {"data": data, "root": os.path.abspath(root) if root else None, "imbalance": imbalance_ratio,
                      "profile": profile, "epochs": epochs, "model": model, "record_every": record_every, "batch_size": batch_size,
                      "lr": lr, "focal_gamma": recipe.focal_gamma, "drw_epoch": recipe.drw_epoch, "seed": seed, "losses": losses,
                      "select": select})
    t0 = time.perf_counter()
    ds = load(data, root, seed=seed)
    x_imb, y_imb, ids_imb = imbalance(ds.x_train, ds.y_train, imbalance_ratio, seed=seed, profile=profile, return_index=True)
    # the control: every class at the size of the imbalanced view's largest class
    x_bal, y_bal, ids_bal = imbalance(ds.x_train, ds.y_train, 1.0, seed=seed, return_index=True)
    configs = {name: (name, x_imb, y_imb, ids_imb) for name in losses}
    if balanced:
        configs[BALANCED] = ("ce", x_bal, y_bal, ids_bal)
    stderr.print(
        f"[bold]fragility reproduce[/]: {markup(ds.name)} ({profile} imbalance {imbalance_ratio:g}: "
        f"{torch.bincount(y_imb).tolist()}; balanced control {int(torch.bincount(y_bal)[0])} per class), {markup(model)}, {epochs} epochs, "
        f"runs {', '.join(configs)}; device {dev}{' with bf16 autocast' if dev.type == 'cuda' else ''}",
        highlight=False,
    )
    summaries = {}
    todo = [cfg for cfg in configs if not (os.path.exists(grid.done(cfg)) and os.path.isdir(grid.store(cfg)))]
    for cfg, (loss_name, x, y, ids) in configs.items():
        if cfg not in todo:
            summaries[cfg] = _done_summary(grid.done(cfg))
            stderr.print(f"{markup(cfg)}: complete in {markup(grid.store(cfg))}, skipped", highlight=False)
            continue
        later = sum(len(configs[c][2]) for c in todo[todo.index(cfg) + 1 :]) * epochs  # the grid's ETA: rows still to train
        summaries[cfg] = train_config(cfg, loss_name, ds, x, y, ids, grid, model_name=model, recipe=recipe,
                                      record_every=record_every, seed=seed, device=dev, flip=FLIP[data], log=stderr,
                                      later_rows=later)
    chosen = {}
    for cfg in configs:
        epoch, scores = select_epoch(grid.store(cfg), select)
        chosen[cfg] = {**next(r for r in scores if r["epoch"] == epoch), "among": len(scores),
                       "epochs": [r["epoch"] for r in scores]}
    kept = Table(
        f"checkpoint per run ({select}: {SELECT[select][1]}){'; selected on the test set, so these test numbers are optimistic' if SELECT[select][0] else ''}",
        ["run", "epoch", "test acc", "test macro-F1", "among recorded epochs"],
        [[cfg, r["epoch"], r["accuracy"], r["macro_f1"], r["among"]] for cfg, r in chosen.items()],
    )
    recipe_t = recipe_table(recipe, data, model, select, ds.stats, seed, profile, imbalance_ratio)
    results, table, index = _analyse_and_report(grid, list(configs), chosen, [kept, recipe_t], k, stdout, stderr)
    elapsed = time.perf_counter() - t0
    accs = ", ".join(f"{c} {chosen[c]['accuracy']:.3f} (epoch {chosen[c]['epoch']})" for c in configs)
    stdout.print(f"test accuracy: {accs}; device {dev}; report: {markup(index)} ({elapsed:.0f} s)", highlight=False)
    return {"summaries": summaries, "results": results, "table": table, "selected": chosen, "recipe": recipe_t, "report": index,
            "seconds": elapsed, "device": str(dev)}


#: file names of checkpoints (LDAM-DRW saves ``*.pth.tar``, the authors' follow-ups ``*.pth``)
CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")


def checkpoint_files(folder: str) -> list[tuple[str, str, int | None]]:
    """``(name, path, rand_number)`` per checkpoint file in ``folder``, sorted by name. A trailing ``_N`` of
    the name (the authors' ``_0``, ``_10``, ``_100``) is the ``rand_number`` of the images it was trained on."""
    if not os.path.isdir(folder):
        raise DataError(f"--checkpoints {folder} is not a folder; pass the folder holding the checkpoint files")
    found = []
    for name in sorted(os.listdir(folder)):
        suffix = next((x for x in CHECKPOINT_SUFFIXES if name.endswith(x)), None)
        if suffix is None or name.startswith(".") or not os.path.isfile(os.path.join(folder, name)):
            continue
        stem = name[: -len(suffix)]
        m = re.search(r"_(\d+)$", stem)
        found.append((stem, os.path.join(folder, name), int(m.group(1)) if m else None))
    if not found:
        raise DataError(f"--checkpoints {folder} holds no checkpoint file ({', '.join('*' + x for x in CHECKPOINT_SUFFIXES)})")
    return found


def run_checkpoints(
    checkpoints: str,
    *,
    data: str = "cifar10",
    root: str | None = None,
    imbalance_ratio: float = 100.0,
    profile: str = "exp",
    model: str = "cifar_resnet32",
    seed: int = 0,
    device: str = "auto",
    k: int = 10,
    out: str = "results",
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> dict[str, Any]:
    """Analyse published checkpoints (e.g. the paper authors') on the images each was trained on: per file, an
    eval sweep of its imbalanced training view (``rand_number`` from the name's ``_N``, else ``seed``) and
    of the test set into ``OUT/stores/<name>.fragility``, then the same tables and report as a training run."""
    import timm

    from . import models

    stdout, stderr = stdout or Console(), stderr or Console(stderr=True)
    _check_data_model(data, model)
    files = checkpoint_files(checkpoints)
    dev = _device(device)
    grid = Grid(out, {"checkpoints": os.path.abspath(checkpoints), "data": data, "root": os.path.abspath(root) if root else None,
                      "imbalance": imbalance_ratio, "profile": profile, "model": model, "seed": seed})
    t0 = time.perf_counter()
    ds = load(data, root, seed=seed)
    C = len(ds.classes)
    test = [(ds.x_test[i : i + 512].to(dev), ds.y_test[i : i + 512]) for i in range(0, len(ds.y_test), 512)]
    stderr.print(f"[bold]fragility reproduce --checkpoints[/]: {len(files)} checkpoints of {markup(model)} on {markup(ds.name)} "
                 f"({profile} imbalance {imbalance_ratio:g}); device {dev}", highlight=False)
    rows = []
    for cfg, path, rn in files:
        rn = seed if rn is None else rn
        x, y, ids = imbalance(ds.x_train, ds.y_train, imbalance_ratio, seed=rn, profile=profile, return_index=True)
        counts = torch.bincount(y, minlength=C).tolist()
        if os.path.exists(grid.done(cfg)) and os.path.isdir(grid.store(cfg)):
            summary = _done_summary(grid.done(cfg))
            stderr.print(f"{markup(cfg)}: recorded in {markup(grid.store(cfg))}, skipped", highlight=False)
        else:
            state = models.read_checkpoint(path)
            norm = "linear.weight" in state and "linear.bias" not in state  # LDAM's NormedLinear has no bias
            try:
                net = timm.create_model(model, pretrained=False, num_classes=C, **({"norm_head": True} if norm else {}))
                net.load_state_dict(state, strict=True)
            except Exception as exc:  # noqa: BLE001 - wrong model, classes or head: one line
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(f"checkpoint {path} does not fit {model} with {C} classes: {first}; pass the --model and --data "
                                f"it was trained with") from None
            net.to(dev).eval()
            sweep = [(x[i : i + 512], y[i : i + 512], ids[i : i + 512]) for i in range(0, len(y), 512)]
            with Recorder(net, grid.store(cfg), class_names=ds.classes, overwrite=True) as rec:
                rec.evaluate(sweep, split=TRAIN_EVAL, epoch=0)  # the images it was trained on, un-augmented
                rec.evaluate(test, split="test", epoch=0)
            summary = {"config": cfg, "checkpoint": os.path.abspath(path), "rand_number": rn, "norm_head": norm,
                       "train_counts": counts, "store": grid.store(cfg)}
            _, scores = select_epoch(grid.store(cfg), "last")
            summary["test_accuracy"] = scores[-1]["accuracy"]
            with open(grid.done(cfg), "w") as fh:
                json.dump(summary, fh)
            stderr.print(f"{markup(cfg)}: {len(y)} training images (rand_number {rn}) and {len(ds.y_test)} test images recorded",
                         highlight=False)
        rows.append(cfg)
    chosen = {}
    for cfg in rows:
        _, scores = select_epoch(grid.store(cfg), "last")
        chosen[cfg] = {**scores[-1], "epochs": [scores[-1]["epoch"]]}
    summaries = {cfg: _done_summary(grid.done(cfg)) for cfg in rows}
    info = Table(
        "checkpoints: each file, the imbalanced training view it is analysed on (rand_number: the _N of its name, else --seed), its "
        "head, and its test accuracy",
        ["run", "checkpoint", "rand_number", "train images", "head", "test acc", "test macro-F1"],
        [[cfg, os.path.basename(summaries[cfg]["checkpoint"]), summaries[cfg]["rand_number"], sum(summaries[cfg]["train_counts"]),
          "NormedLinear (LDAM)" if summaries[cfg]["norm_head"] else "Linear", chosen[cfg]["accuracy"], chosen[cfg]["macro_f1"]]
         for cfg in rows],
    )
    data_t = Table("data: each setting, its value, and its source", ["setting", "value", "source"],
                   data_rows(data, ds.stats, "the _N of each name, else --seed " + str(seed), profile, imbalance_ratio))
    results, table, index = _analyse_and_report(grid, rows, chosen, [info, data_t], k, stdout, stderr)
    elapsed = time.perf_counter() - t0
    accs = ", ".join(f"{c} {chosen[c]['accuracy']:.3f}" for c in rows)
    stdout.print(f"test accuracy: {markup(accs)}; device {dev}; report: {markup(index)} ({elapsed:.0f} s)", highlight=False)
    return {"summaries": summaries, "results": results, "table": table, "report": index, "seconds": elapsed, "device": str(dev)}


def _analyse_and_report(grid: Grid, configs: list[str], chosen: dict[str, dict[str, Any]], extra: list[Table], k: int,
                        stdout: Console, stderr: Console) -> tuple[dict[str, dict[str, Result]], Table, str]:
    """Analyse each store up to its kept epoch (magnitudes against that epoch's eval sweep of the training
    set), print the grid table, write the report; returns the results, the table and the report's path."""
    from ..report import build_report
    from ..store import Store

    results = {}
    for cfg in configs:
        epoch = chosen[cfg]["epoch"]
        stderr.print(f"analyzing {markup(cfg)} at epoch {epoch} …", highlight=False)
        # the kept checkpoint ends the run: epochs up to it, magnitudes against its own eval sweep of the training set
        results[cfg] = analyze(grid.store(cfg), ANALYZERS, k=k, epoch=[e for e in chosen[cfg]["epochs"] if e <= epoch],
                               reference_epoch=epoch, progress=True)
    metas = {}
    for cfg in configs:
        with Store(grid.store(cfg)) as s:
            metas[cfg] = s.metadata
    # one seed gives every configuration the same initial weights; the fingerprints confirm it (else no overlaps)
    why = {cfg: incomparable(metas[cfg], metas[BALANCED]) if BALANCED in metas else None for cfg in configs}
    table = grid_table(results, configs, k, why)
    stdout.print(table)
    stderr.print("writing report …")
    index = build_report([grid.store(c) for c in configs], os.path.join(grid.out, "report"), labels=configs, results=results,
                         headline=[table, *extra], k=k, progress=True)
    return results, table, index
