"""The ``fragility`` command line: results on stdout (``--json`` for programs), progress and diagnostics on
stderr. Errors are one line on stderr with exit code 2; no tracebacks for bad input."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from ._safe import markup
from ._light import DATASET_NAMES as DATASETS, LOSSES
from .errors import output_dir

EXIT_ERROR = 2
#: printed under `analyze`'s tables: what their labels mean
GLOSSARY = (
    "labels: train@9 = the passes of split train at epoch 9 (train_eval: an eval sweep of the training set); ce_pred = CE of "
    "the predicted class (ce_target: of the true class; fe: the features); top-K = the K largest mean CE features; "
    "unique = features in any row's own top-K; @m = expected in m rows of the class (size-controlled); mscs = minimal "
    "sufficient CE set; p5 = the training 5th percentile; PR = participation ratio. Definitions: docs/analyzers.md"
)


def _consoles() -> tuple[Console, Console]:
    # $COLUMNS first (also when piped), then the terminal, else 160 columns
    width = shutil.get_terminal_size((160, 40)).columns
    # emoji codes off: ":b:" in a name or a message from a store is text, never a picture
    # stderr: progress and messages never hard-wrapped (a log file or CI would get lines cut at 80 columns)
    return Console(width=width, soft_wrap=False, emoji=False), Console(stderr=True, emoji=False, soft_wrap=True)


def _json_out(command: str, results: dict[str, Any]) -> None:
    """Every command's --json: one envelope, ``{"fragility_version", "schema_version", "command", "results"}``,
    ``results`` keyed by what produced each part (an analyzer's name, ``compare``, ``inspect``, …); the layout
    is ``fragility/schemas/output.schema.json``."""
    from ._version import __version__
    from ._light import SCHEMA_VERSION, jsonable  # no torch: store commands stay light

    doc = {"fragility_version": __version__, "schema_version": SCHEMA_VERSION, "command": command, "results": results}
    sys.stdout.write(json.dumps(jsonable(doc), indent=1, allow_nan=False) + "\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_ERROR)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fragility",
        description="Record FE/CE of timm models and analyze why they fail on minority classes.",
        epilog="examples:\n  fragility demo\n  fragility inspect run.fragility\n  fragility analyze run.fragility -a topk --split test --k 5\n"
        "  fragility report imbalanced.fragility --compare balanced.fragility --out report/\n\n"
        "Results go to stdout, progress and errors to stderr; NO_COLOR disables colours.",
        formatter_class=_Formatter,
    )
    from ._version import __version__

    p.add_argument("--version", action="version", version=f"fragility {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser(
        "demo", help="train on imbalanced vs balanced digits, analyze, write a report", formatter_class=_Formatter,
        description="Train a timm backbone on an exponentially imbalanced data set and on its balanced control with the "
        "Recorder attached, run every built-in analyzer, print per-class findings and write a report folder.",
        epilog="examples:\n  fragility demo\n  fragility demo --epochs 20 --imbalance 50 --out demo-report\n"
        "  fragility demo --data cifar10 --root ~/data --model resnet18 --epochs 30",
    )
    d.add_argument("--data", dest="dataset", default="digits", choices=list(DATASETS), help="data set (default: digits, bundled)")
    d.add_argument("--root", default=None, help="folder with a local CIFAR-10/100, SVHN or CelebA copy in torchvision's layout")
    d.add_argument("--model", default="resnet10t", help="any timm model name (default: resnet10t)")
    d.add_argument("--epochs", type=int, default=10, help="training epochs per run (default: 10)")
    d.add_argument("--imbalance", type=float, default=20.0, help="imbalance ratio largest/smallest class (default: 20)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the data split, sampling and training (default: 0)")
    d.add_argument("--k", type=int, default=10, help="top-K size (default: 10)")
    d.add_argument("--out", default="demo-report", help="report folder (default: demo-report)")

    r = sub.add_parser(
        "reproduce", help="the paper's grid: losses vs a balanced control, one store each, one comparison report",
        formatter_class=_Formatter,
        description="Train a CIFAR ResNet (registered as a timm model) on an imbalanced view of the data once per loss, "
        "and on the balanced control, with the Recorder attached (a train pass and a test sweep every --record-every "
        "epochs and at the last); write one store per configuration into OUT/stores and one comparison report into "
        "OUT/report. Run it again to resume: complete configurations are skipped, a partial one restarts from its last "
        "checkpoint. CUDA (with bf16 autocast) is used when present.",
        epilog="examples:\n  fragility reproduce --quick\n"
        "  fragility reproduce --data cifar10 --root ~/data --imbalance 100 --losses ce,focal,ldam-drw --epochs 200 --out results/\n"
        "  fragility reproduce --data svhn --root ~/data --profile step --imbalance 50 --out svhn-results/\n"
        "  fragility reproduce --checkpoints ~/authors-ckpts --data cifar10 --root ~/data --imbalance 100 --out authors/",
    )
    r.add_argument("--checkpoints", metavar="DIR", default=None,
                   help="train nothing: analyse the checkpoints in DIR (*.pth, *.pth.tar, *.pt; e.g. the paper authors') on the "
                   "images each was trained on (rand_number = the _N at the end of its name, else --seed) and the test set, "
                   "with the same stores, tables and report; uses --data, --root, --imbalance, --profile, --model")
    r.add_argument("--quick", action="store_true",
                   help="the same grid on the bundled digits with a small budget (imbalance 20, 20 epochs, batch 64, recorded every 5; "
                   "under 10 minutes on a 2-core CPU); other options still override")
    r.add_argument("--data", dest="dataset", choices=list(DATASETS), default=None, help="data set (default: cifar10; digits with --quick)")
    r.add_argument("--root", default=None, help="folder with the data set in torchvision's on-disk layout (never downloaded)")
    r.add_argument("--imbalance", type=float, default=None, help="largest/smallest class ratio (default: 100; 20 with --quick)")
    r.add_argument("--profile", choices=["exp", "step"], default="exp", help="imbalance profile (default: exp)")
    r.add_argument("--losses", default="ce,focal,ldam-drw",
                   help=f"comma-separated losses, each one configuration: {', '.join(LOSSES)} (default: ce,focal,ldam-drw)")
    r.add_argument("--no-balanced", action="store_true", help="leave out the balanced-training control")
    r.add_argument("--epochs", type=int, default=None, help="training epochs (default: 200; 20 with --quick)")
    r.add_argument("--record-every", type=int, default=None, help="record a train pass and a test sweep every N epochs "
                   "and at the last (default: 20; 5 with --quick)")
    r.add_argument("--model", default=None, help="timm model (default: cifar_resnet32)")
    r.add_argument("--batch-size", type=int, default=None, help="training batch size (default: 128; 64 with --quick)")
    r.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (default: 0.1; momentum 0.9, weight decay 2e-4, "
                   "5 warm-up epochs, x0.01 after 80%% and x0.0001 after 90%% of the epochs: LDAM-DRW's cifar_train.py)")
    r.add_argument("--focal-gamma", type=float, default=2.0,
                   help="gamma of the focal loss (default: 2, the paper's authors' code dd1github/EOS cifar_train.py; LDAM-DRW uses 1)")
    r.add_argument("--drw-epoch", type=int, default=None,
                   help="0-based epoch from which DRW weights the loss (default: 80%% of --epochs = 160 of 200, cifar_train.py's "
                   "idx = epoch // 160)")
    r.add_argument("--select", choices=["best-f1", "best-acc", "last"], default="best-f1",
                   help="which recorded epoch is the run's checkpoint for the analysis: best-f1 = best test macro-F1 (default; "
                   "dd1github/EOS cifar_train.py), best-acc = best test top-1 (LDAM-DRW cifar_train.py), last; best-* select on "
                   "the test set, as the peers do, and the report says so")
    r.add_argument("--seed", type=int, default=0, help="seed of the subset, the initial weights and the batches (default: 0)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train (default: auto = CUDA if present)")
    r.add_argument("--k", type=int, default=10, help="top-K size (default: 10)")
    r.add_argument("--out", default="results", help="output folder: stores/, checkpoints/, report/ (default: results)")

    i = sub.add_parser(
        "inspect", help="what a store holds", formatter_class=_Formatter,
        description="Schema version, model, classes with counts, passes, datasets (shape, dtype, compression), size on disk.",
        epilog="examples:\n  fragility inspect run.fragility\n  fragility inspect run.fragility --json | jq .passes",
    )
    i.add_argument("store", help="the store folder")
    i.add_argument("--json", action="store_true", help="print JSON on stdout (always with every dataset)")
    i.add_argument("--datasets", action="store_true", help="also list every dataset (shape, dtype, chunks, compression)")

    a = sub.add_parser(
        "analyze", help="run analyzers over a store", formatter_class=_Formatter,
        description="Run analyzers (built-in and third-party) in one read of the store.",
        epilog="examples:\n  fragility analyze run.fragility\n  fragility analyze run.fragility -a topk -a magnitude --split test --epoch last\n"
        "  fragility analyze run.fragility --embedding fe --k 5 --json > results.json\n  fragility analyze run.fragility --out results/\n"
        "  fragility analyze run.fragility -a topk --class 8 --class 9 --incorrect",
    )
    a.add_argument("store", help="the store folder")
    _analysis_options(a)
    a.add_argument("-a", "--analyzer", action="append", dest="analyzers", metavar="NAME",
                   help="analyzer to run (repeatable; default: topk, magnitude, diversity)")
    a.add_argument("--split", action="append", help="split(s) to analyze (repeatable; default: all)")
    a.add_argument("--epoch", default=None, help="epoch number, 'last', 'all' or a range A:B[:S] of the recorded epochs, e.g. "
                   "0:200:20 (default: last, or all with --pass)")
    a.add_argument("--pass", action="append", dest="passes", metavar="NAME", help="only this pass, e.g. 0003 (repeatable; see inspect)")
    a.add_argument("--class", action="append", dest="classes", metavar="CLASS",
                   help="only rows of this true class, by name or index (repeatable)")
    which = a.add_mutually_exclusive_group()
    which.add_argument("--correct", action="store_const", const=True, dest="correct", help="only correctly classified rows")
    which.add_argument("--incorrect", action="store_const", const=False, dest="correct", help="only misclassified rows")
    a.add_argument("--tau", type=float, default=0.0, help="frequency floor for unique_c(tau) (default: 0)")
    a.add_argument("--rarefy-m", type=int, default=None, metavar="M",
                   help="rows per class of the size-controlled unique counts (unique@m; default: the smallest class)")
    _knn_options(a)
    a.add_argument("--reference-split", default=None, help="reference split for magnitude (default: train_eval, an eval sweep of "
                   "the training split, when the store holds one; else train, with a note)")
    a.add_argument("--json", action="store_true", help="print JSON on stdout")
    a.add_argument("--out", default=None, help="write CSV/JSON, plots and index.html into this folder")
    a.add_argument("--verify", action="store_true", help="check the selected rows against the writer's checksums first")

    c = sub.add_parser(
        "compare", help="compare two stores class by class", formatter_class=_Formatter,
        description="Per class: top-K identity overlap between the runs, unique counts, magnitudes, accuracy.",
        epilog="examples:\n  fragility compare imbalanced.fragility balanced.fragility\n"
        "  fragility compare a.fragility b.fragility --labels focal ce --json",
    )
    c.add_argument("store_a", help="the first store (e.g. the imbalanced run)")
    c.add_argument("store_b", help="the second store (e.g. the balanced control)")
    _analysis_options(c)
    c.add_argument("--labels", nargs=2, default=None, metavar=("A", "B"), help="names of the two runs")
    c.add_argument("--force-overlap", action="store_true", help="compute top-K feature overlaps even when the stores do not record "
                   "the same architecture and initial weights (labelled as such: feature j of one network is then unrelated to "
                   "feature j of the other)")
    c.add_argument("--json", action="store_true", help="print JSON on stdout")
    c.add_argument("--out", default=None, help="write CSV/JSON into this folder")

    r = sub.add_parser(
        "report", help="write a self-contained HTML report", formatter_class=_Formatter,
        description="One index.html with embedded plots, PNG and JSON files next to it.",
        epilog="examples:\n  fragility report run.fragility --out report/\n"
        "  fragility report imbalanced.fragility --compare balanced.fragility --out report/",
    )
    r.add_argument("store", help="the store folder to report on")
    r.add_argument("--compare", default=None, metavar="STORE_B", help="a second store shown side by side")
    r.add_argument("--labels", nargs=2, default=None, metavar=("A", "B"), help="names of the two runs (default: folder names)")
    r.add_argument("--k", type=int, default=10, help="top-K size (default: 10)")
    r.add_argument("-a", "--analyzer", action="append", dest="analyzers", metavar="NAME",
                   help="analyzer to run (repeatable; default: topk, magnitude, diversity); every one's tables are in the report")
    r.add_argument("--epoch", default=None, help="epochs to report: 'all' (default), 'last', a number or a range A:B[:S], e.g. 0:200:20")
    _knn_options(r)
    r.add_argument("--out", required=True, help="report folder")

    rm = sub.add_parser(
        "remedy", help="try head-level remedies on a store and show what they change", formatter_class=_Formatter,
        description="Build a new classifier (W, b) from the stored rows for each remedy (tau-norm, logit-adjust, crt, reweight, "
        "eos), re-score the stored test FE with it and show per class, before vs after: test accuracy, distinct top-K CE "
        "features, magnitude ratio and share below the training 5th percentile. Needs an eval sweep of the training set "
        "(split train_eval) and a test sweep. The heads are saved next to the store (<store>.remedies/); the store is not "
        "modified. Load one into your model with fragility.remedies.load_head(model, path).",
        epilog="examples:\n  fragility remedy run.fragility\n  fragility remedy run.fragility -r tau-norm -r eos --seed 1\n"
        "  fragility remedy run.fragility -r logit-adjust --tau 1.5 --json",
    )
    rm.add_argument("store", help="the store folder")
    rm.add_argument("-r", "--remedy", action="append", dest="remedies", metavar="NAME",
                    help="remedy to try (repeatable; default: all of tau-norm, logit-adjust, crt, reweight, eos)")
    rm.add_argument("--tau", type=float, default=None, help="tau of tau-norm (default: swept on a held-out slice) and logit-adjust "
                    "(default: 1)")
    rm.add_argument("--epoch", default="last", help="the epoch whose sweeps to use (default: the last with both)")
    rm.add_argument("--seed", type=int, default=0, help="seed of the held-out slice, the retrained heads and EOS (default: 0)")
    rm.add_argument("--k", type=int, default=None, help="top-K size of the re-analysis (default: 10, or D if smaller)")
    rm.add_argument("--out", default=None, help="folder for the heads and remedy.json (default: <store>.remedies next to the store)")
    rm.add_argument("--json", action="store_true", help="print JSON on stdout")

    v = sub.add_parser(
        "verify", help="check every committed row against the writer's checksums", formatter_class=_Formatter,
        description="Recompute the CRC-32 of every block of rows the writer checksummed and report each corrupt block by "
        "pass and row range (exit 1 if any). Rows of stores written before schema 2 have no checksums and are listed as "
        "unverified.",
        epilog="examples:\n  fragility verify run.fragility\n  fragility verify run.fragility --json",
    )
    v.add_argument("store", help="the store folder")
    v.add_argument("--json", action="store_true", help="print JSON on stdout")

    rp = sub.add_parser(
        "repair", help="salvage the checksummed rows of damaged passes", formatter_class=_Formatter,
        description="For every pass file that is damaged (see inspect) or holds corrupt blocks (see verify): write every block "
        "of rows whose checksum still holds into a new pass file, and keep the original in <store>/damaged/. Nothing is "
        "deleted. Exit 1 if a pass could not be repaired (its attributes are unreadable, or a writer holds the store).",
        epilog="examples:\n  fragility repair run.fragility\n  fragility repair run.fragility --json",
    )
    rp.add_argument("store", help="the store folder")
    rp.add_argument("--json", action="store_true", help="print JSON on stdout")

    w = sub.add_parser(
        "watch", help="a live view of a store while it is being written", formatter_class=_Formatter,
        description="Refreshes a view of a store that a training run is writing: passes, rows per class of the newest pass, "
        "and per-class metrics of the newest complete training and test passes, with the classes that look fragile marked. "
        "It survives the writer ending or being killed. Without a terminal it prints one plain line per refresh.",
        epilog="examples:\n  fragility watch run.fragility\n  fragility watch run.fragility --interval 5 --until-idle",
    )
    w.add_argument("store", help="the store folder (it may not exist yet)")
    w.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default: 2)")
    w.add_argument("--k", type=int, default=10, help="top-K size (default: 10, at most D)")
    w.add_argument("--until-idle", action="store_true", help="exit once no writer holds the store (after a last refresh)")
    w.add_argument("--count", type=int, default=None, help="exit after this many refreshes")

    pl = sub.add_parser(
        "plugins", help="loaded plugins and the hooks each implements", formatter_class=_Formatter,
        epilog="examples:\n  fragility plugins\n  FRAGILITY_DISABLE_PLUGIN_AUTOLOAD=1 fragility plugins --json",
    )
    pl.add_argument("--json", action="store_true", help="print JSON on stdout")
    for cmd in sub.choices.values():
        cmd.add_argument("-v", "--debug", action="store_true", help="on an error, print the full traceback too")
    return p


def _analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedding", default="ce", choices=["ce", "ce_target", "fe"], help="ce = CE of the predicted class (default)")
    p.add_argument("--k", type=int, default=10, help="top-K size (default: 10)")


def _knn_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--knn", choices=["last", "all", "none"], default="last",
                   help="which groups get k-NN archetypes (diversity): each split's last epoch (default; the k-NN costs most of an "
                   "all-epoch analysis), every group, or none")
    p.add_argument("--knn-max-rows", type=int, default=10000, metavar="N",
                   help="rows per group above which the k-NN runs on a deterministic sample (default: 10000)")


def _epoch(value: str | None, default: str | None = None) -> int | str | range | None:
    """``--epoch``: an integer, ``last``, ``all``, or a range ``A:B`` / ``A:B:S`` (Python's slice: from A, before
    B, every S-th; either end may be left out) of the recorded epochs."""
    if value is None:
        return default
    if value == "all":
        return None
    if value == "last":
        return value
    try:
        if ":" in value:
            parts = value.split(":")
            if len(parts) > 3:
                raise ValueError
            start, stop, step = (int(x) if x.strip() else None for x in parts + [""] * (3 - len(parts)))
            if step is not None and step < 1:
                raise ValueError
            return range(start or 0, stop if stop is not None else 2**62, step or 1)
        return int(value)
    except ValueError:
        from .errors import SelectionError

        raise SelectionError(f"--epoch {value!r} must be an integer, 'last', 'all' or a range A:B or A:B:S (e.g. 0:200:20)") from None


# ------------------------------------------------------------------------------------------ commands


def cmd_inspect(args, out: Console, err: Console) -> int:
    from rich.table import Table as RichTable

    from .store import Store

    with Store(args.store) as s:
        counts = s.metadata.get("class_counts")
        info = {
            "path": s.path,
            "schema_version": s.metadata.get("schema_version"),
            "fragility_version": s.metadata.get("fragility_version"),
            "model": s.metadata.get("model_name"),
            "head": s.metadata.get("head"),
            "feature_dim": s.feature_dim,
            "storage_dtype": s.metadata.get("storage_dtype"),
            "classes": [{"name": n, "count": (counts[i] if counts and i < len(counts) else None)} for i, n in enumerate(s.class_names)],
            "passes": [{**p.to_dict(), "superseded_by": s.superseded.get(p.name)} for p in s.passes],
            "damaged": [d.to_dict() for d in s.damaged],
            "writer": _writer(s.path),
            "datasets": s.datasets(),
            "size_bytes": s.size_bytes(),
        }
    if args.json:
        _json_out("inspect", {"inspect": info})
        return 0
    m = markup  # every value below may come from a shared store: shown literally
    out.print(f"[bold]{m(info['path'])}[/]  schema v{info['schema_version']} (fragility {m(info['fragility_version'])}), "
              f"{info['size_bytes'] / 2**20:.1f} MiB on disk")
    out.print(f"model {m(info['model'])}, head {m(info['head'])}, D={info['feature_dim']}, stored as {m(info['storage_dtype'])}")
    if info["writer"] == "writing":
        out.print("a writer is recording into this store now (passes may still grow)", highlight=False)
    t = RichTable(title="classes", title_justify="left")
    t.add_column("class")
    t.add_column("training rows", justify="right")
    for c in info["classes"]:
        t.add_row(m(c["name"]), "–" if c["count"] is None else str(c["count"]))
    out.print(t)
    t = RichTable(title="passes", title_justify="left")
    for col in ("pass", "split", "epoch", "mode", "rows", "complete", "non-finite", "started"):
        t.add_column(col, justify="right" if col in ("epoch", "rows", "non-finite") else "left")
    for p in info["passes"]:
        done = ("yes" if p["complete"] else f"no (superseded by {m(p['superseded_by'])})" if p["superseded_by"]
                else "[yellow]no (being written)[/]" if info["writer"] == "writing" else "[red]no[/]")
        t.add_row(m(p["name"]), m(p["split"]), str(p["epoch"]), m(p["mode"]), str(p["rows"]), done,
                  str(p["nonfinite_rows"]), m(p["started"]))
    out.print(t)
    if info["damaged"]:
        t = RichTable(title="damaged passes (left out of every analysis)", title_justify="left")
        for col in ("pass", "split@epoch", "why"):
            t.add_column(col, style="red" if col == "pass" else None)
        for d in info["damaged"]:
            t.add_row(m(d["name"]), m("?" if d["split"] is None else f"{d['split']}@{'?' if d['epoch'] is None else d['epoch']}"), m(d["reason"]))
        out.print(t)
        out.print(f"{len(info['damaged'])} damaged pass file(s): `fragility repair {m(info['path'])}` salvages their checksummed rows "
                  f"into new pass files (the originals are kept aside)", highlight=False)
    if not args.datasets:
        n = len(info["datasets"])
        out.print(f"{n} datasets in {len(info['passes'])} pass files (--datasets lists them)", highlight=False)
        return 0
    t = RichTable(title="datasets", title_justify="left")
    for col in ("dataset", "shape", "dtype", "chunks", "compression"):
        t.add_column(col)
    for d in info["datasets"]:
        t.add_row(m(d["path"]), "×".join(map(str, d["shape"])), m(d["dtype"]), "×".join(map(str, d["chunks"] or [])) or "–",
                  m(d["compression"] or "–"))
    out.print(t)
    return 0


def _writer(path: str) -> str:
    """``writing`` while a live process holds the store, else ``none`` / ``gone`` (see fragility.watch)."""
    from .watch import writer_state

    return writer_state(path)


def cmd_verify(args, out: Console, err: Console) -> int:
    from ._light import _progress
    from .store import Store

    with Store(args.store) as s:
        total = sum(p.rows for p in s.passes)
        with _progress(True, total, "verifying") as advance:
            found = s.verify(progress=advance)
        rows = sum(p.rows for p in s.passes)
    bad = [f for f in found if f["problem"] in ("corrupt", "damaged")]
    if args.json:
        _json_out("verify", {"verify": {"path": args.store, "rows": rows, "problems": found, "ok": not bad}})
    else:
        for f in found:
            if f["problem"] == "damaged":
                out.print(f"{markup(f['pass'])} ({markup(f['group'])}): DAMAGED, left out of every analysis: {markup(f['reason'])}", highlight=False)
                continue
            what = "CORRUPT" if f["problem"] == "corrupt" else "unverified (no checksums: written before schema 2)"
            out.print(f"{markup(f['pass'])} ({markup(f['group'])}) rows {f['start']}:{f['stop']}: {what}", highlight=False)
        if bad:
            out.print(f"{len(bad)} damaged pass file(s) or corrupt block(s) in {markup(args.store)}: `fragility repair {markup(args.store)}` "
                      f"salvages every block whose checksum holds into a new pass file (the original is kept aside)", highlight=False)
        else:
            out.print(f"{markup(args.store)}: {rows} committed rows, every checksummed block intact", highlight=False)
    return 1 if bad else 0


def cmd_repair(args, out: Console, err: Console) -> int:
    from ._light import _progress
    from .store import Store, repair

    with Store(args.store) as s:
        total = sum(p.rows for p in s.passes)
    with _progress(True, total, "checking") as advance:
        reports = repair(args.store, progress=advance)
    failed = [r for r in reports if r["outcome"] != "repaired"]
    if args.json:
        _json_out("repair", {"repair": {"path": args.store, "passes": reports, "ok": not failed}})
        return 1 if failed else 0
    for r in reports:
        head = f"{markup(r['pass'])} ({markup(r['group'])})"
        if r["outcome"] == "repaired":
            lost = sum(b - a for a, b in r["dropped"])
            drop = "; dropped rows " + ", ".join(f"{a}:{b}" for a, b in r["dropped"][:5]) + (" …" if len(r["dropped"]) > 5 else "") if lost else ""
            of = f" of {r['committed']} committed" if r["committed"] is not None else ""
            out.print(f"{head}: kept {r['kept_rows']}{of} rows whose checksums hold{drop}; original kept as {markup(r['aside'])}", highlight=False)
        else:
            out.print(f"{head}: left in place: {markup(r['why'])}", highlight=False)
    if not reports:
        out.print(f"{markup(args.store)}: no damaged pass and no corrupt block; nothing to repair", highlight=False)
    return 1 if failed else 0


def cmd_analyze(args, out: Console, err: Console) -> int:
    from .analysis import analyze

    if args.out:
        output_dir(args.out)  # before the work, not after it

    results = analyze(
        args.store, args.analyzers, split=args.split, epoch=_epoch(args.epoch, None if args.passes else "last"), passes=args.passes, embedding=args.embedding, k=args.k,
        tau=args.tau, reference_split=args.reference_split, classes=args.classes, correct=args.correct,
        progress=not args.json or err.is_terminal, verify=args.verify,
        knn_max_rows=args.knn_max_rows, options={"knn": args.knn, **({} if args.rarefy_m is None else {"rarefy_m": args.rarefy_m})},
    )
    if args.json:
        _json_out("analyze", {name: r.to_dict() for name, r in results.items()})
    else:
        from .analysis._results import condensed

        for r in results.values():
            out.print(condensed(r))
        out.print(GLOSSARY, style="dim", highlight=False)
    if args.out:
        from .report import build_report, run_label

        for r in results.values():
            r.save(os.path.join(args.out, "results"))
        index = build_report([args.store], args.out, results={run_label(args.store): results}, labels=[run_label(args.store)], k=args.k)
        err.print(f"wrote {markup(index)}")
    return 0


def cmd_compare(args, out: Console, err: Console) -> int:
    from .analysis import compare
    from .report import run_label

    if args.out:
        output_dir(args.out)

    labels = tuple(args.labels) if args.labels else (run_label(args.store_a), run_label(args.store_b))
    if labels[0] == labels[1]:
        labels = (labels[0] + " (A)", labels[1] + " (B)")
    r = compare(args.store_a, args.store_b, k=args.k, embedding=args.embedding, labels=labels, progress=not args.json,
                force_overlap=args.force_overlap)
    if args.json:  # keyed by its name, as `analyze --json` keys each analyzer's result
        _json_out("compare", {r.analyzer: r.to_dict()})
    else:
        out.print(r)
    if args.out:
        r.save(args.out)
        err.print(f"wrote {markup(args.out)}")
    return 0


def cmd_report(args, out: Console, err: Console) -> int:
    from .report import build_report, run_label

    output_dir(args.out)
    stores = [args.store] + ([args.compare] if args.compare else [])
    labels = list(args.labels) if args.labels else [run_label(s) for s in stores]
    index = build_report(stores, args.out, labels=labels, k=args.k, analyzers=args.analyzers, progress=True,  # derives the comparison
                         knn_max_rows=args.knn_max_rows, options={"knn": args.knn}, epoch=_epoch(args.epoch, None))
    out.print(markup(index), highlight=False)
    return 0


def cmd_remedy(args, out: Console, err: Console) -> int:
    from .remedies import remedy

    r = remedy(args.store, args.remedies, tau=args.tau, epoch=args.epoch, seed=args.seed, k=args.k, out=args.out,
               progress=not args.json or err.is_terminal)
    if args.json:
        _json_out("remedy", {r.analyzer: r.to_dict()})
    else:
        out.print(r)
    return 0


def cmd_plugins(args, out: Console, err: Console) -> int:
    from rich.table import Table as RichTable

    from ._manager import make_plugin_manager, plugin_table

    rows = plugin_table(make_plugin_manager())
    if args.json:
        _json_out("plugins", {"plugins": rows})
        return 0
    t = RichTable(title="plugins", title_justify="left")
    for col in ("plugin", "source", "version", "hooks", "analyzers"):
        t.add_column(col)
    for row in rows:
        hooks = "\n".join(row["hooks"]) if row["error"] is None else f"broken: {row['error']}"
        t.add_row(*(markup(v) for v in (row["name"], row["source"], row["version"], hooks, ", ".join(row["analyzers"]) or "–")))
    out.print(t)
    return 0


def cmd_demo(args, out: Console, err: Console) -> int:
    from .paper.demo import run_demo

    run_demo(data=args.dataset, root=args.root, model=args.model, epochs=args.epochs, imbalance_ratio=args.imbalance,
             seed=args.seed, out=args.out, k=args.k, stdout=out, stderr=err)
    return 0


def cmd_reproduce(args, out: Console, err: Console) -> int:
    from .paper.reproduce import FULL, QUICK, run_checkpoints, run_reproduce

    base = QUICK if args.quick else FULL

    def pick(name: str, arg: Any) -> Any:
        return base[name] if arg is None else arg

    if args.checkpoints is not None:
        run_checkpoints(args.checkpoints, data=pick("data", args.dataset), root=args.root, imbalance_ratio=pick("imbalance", args.imbalance),
                        profile=args.profile, model=pick("model", args.model), seed=args.seed, device=args.device, k=args.k,
                        out=args.out, stdout=out, stderr=err)
        return 0

    run_reproduce(
        data=pick("data", args.dataset), root=args.root, imbalance_ratio=pick("imbalance", args.imbalance), profile=args.profile,
        losses=[s.strip() for s in args.losses.split(",") if s.strip()], balanced=not args.no_balanced,
        epochs=pick("epochs", args.epochs), model=pick("model", args.model), record_every=pick("record_every", args.record_every),
        batch_size=pick("batch_size", args.batch_size), lr=args.lr, focal_gamma=args.focal_gamma, drw_epoch=args.drw_epoch,
        select=args.select, seed=args.seed, device=args.device, k=args.k, out=args.out, stdout=out, stderr=err,
    )
    return 0


def cmd_watch(args, out: Console, err: Console) -> int:
    import time

    from .watch import Watcher, render

    if args.interval <= 0:
        from .errors import SelectionError

        raise SelectionError(f"--interval {args.interval} must be a positive number of seconds")
    watcher = Watcher(args.store, k=args.k)
    live = None
    if out.is_terminal:
        from rich.live import Live

        live = Live(console=out, auto_refresh=False, transient=False)
        live.start()
    n = 0
    try:
        while True:
            snap = watcher.snapshot()
            n += 1
            if live is not None:
                live.update(render(snap), refresh=True)
            else:
                out.print(markup(snap.line()), highlight=False, soft_wrap=True)
                out.file.flush()
            if (args.count is not None and n >= args.count) or (args.until_idle and snap.writer != "writing"):
                if snap.error:  # the store never became readable: an error after all
                    from .errors import StoreError

                    raise StoreError(snap.error)
                return 0
            time.sleep(args.interval)
    finally:
        watcher.close()
        if live is not None:
            live.stop()


COMMANDS = {"demo": cmd_demo, "reproduce": cmd_reproduce, "inspect": cmd_inspect, "analyze": cmd_analyze, "compare": cmd_compare,
            "report": cmd_report, "remedy": cmd_remedy, "verify": cmd_verify, "repair": cmd_repair, "watch": cmd_watch,
            "plugins": cmd_plugins}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fragility`` command."""
    from .errors import FragilityError

    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    out, err = _consoles()
    debug = bool(getattr(args, "debug", False))
    from ._bounds import GRACE_S, TRAINING_GRACE_S, bounded

    try:
        with bounded(TRAINING_GRACE_S if args.command in ("demo", "reproduce", "remedy") else GRACE_S):
            return COMMANDS[args.command](args, out, err)
    except FragilityError as exc:
        _error(err, str(exc), debug)
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - a bug (ours or a plugin's): one line, the traceback behind --debug
        _error(err, f"{type(exc).__name__}: {exc} (a bug: please report it with the output of --debug)", debug)
        return 1


def _error(err: Console, message: str, debug: bool) -> None:
    lines = message.strip().splitlines() or [""]
    hint = "" if debug else " (run with --debug for the traceback)"
    cause = sys.exc_info()[1]
    if not debug and cause is not None and cause.__cause__ is not None:
        lines[0] += hint
    err.print(f"[bold red]error:[/] {markup(lines[0])}", highlight=False, soft_wrap=True)
    if debug:
        import traceback

        err.print(markup("".join(traceback.format_exc())), highlight=False, soft_wrap=True)


def _entry() -> None:
    raise SystemExit(main())
