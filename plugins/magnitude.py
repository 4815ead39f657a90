"""Built-in analyzer ``magnitude``: how the magnitudes at each class's training top-K features drift
between training rows, correctly classified and misclassified test rows, and across epochs (DESIGN §5.5)."""

from __future__ import annotations

import numpy as np

import fragility
from fragility.analysis import Analyzer, Chunk, Result, Table
from fragility.analysis._maths import class_sums, class_topk, overlap


def row_magnitudes(v: np.ndarray, labels: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """``m_n`` = mean of ``v_n`` over its true class's training top-K indices."""
    idx = identity[labels]  # (N, K)
    return np.take_along_axis(v, idx, axis=1).astype(np.float64).mean(axis=1)  # gather first, then widen


class Magnitude(Analyzer):
    """Magnitude at the training top-K features: train vs correct/incorrect test, percentiles, trajectory."""

    name = "magnitude"
    uses_reference = True
    reference_states = {"sum": "sum", "n": "sum"}
    states = {"keys": "cat", "label": "cat", "correct": "cat", "m": "cat", "sum": "sum", "n": "sum"}

    def columns(self) -> set[str]:
        return {self.spec.embedding, "label", "pred"}

    def reference_columns(self) -> set[str]:
        return {self.spec.embedding, "label"}

    def update_reference(self, chunk: Chunk) -> None:
        C = self.spec.num_classes
        self.accumulate_reference("sum", class_sums(chunk.labels, chunk.v, C))
        self.accumulate_reference("n", np.bincount(chunk.labels, minlength=C))

    def end_reference(self) -> None:
        self.identity = class_topk(self.ref["sum"], self.ref["n"], self.spec.k)[0]

    def update(self, chunk: Chunk) -> None:
        C, g = self.spec.num_classes, chunk.group
        ident = np.where(self.identity < 0, 0, self.identity)  # classes absent from the reference: masked later
        self.accumulate(g, "keys", chunk.keys)
        self.accumulate(g, "label", chunk.labels)
        self.accumulate(g, "correct", chunk.correct)
        self.accumulate(g, "m", row_magnitudes(chunk.v, chunk.labels, ident))
        self.accumulate(g, "sum", class_sums(chunk.labels, chunk.v, C))
        self.accumulate(g, "n", np.bincount(chunk.labels, minlength=C))

    def compute(self) -> Result:
        spec = self.spec
        C, k, names = spec.num_classes, spec.k, spec.class_names
        ref = spec.reference
        result = Result(self.name)
        ref_ok = self.ref["n"] > 0
        rl, rm = self.gathered(ref.name, "label"), self.gathered(ref.name, "m")
        train_mean = np.array([rm[rl == c].mean() if ref_ok[c] and (rl == c).any() else np.nan for c in range(C)])
        p5 = np.array([np.percentile(rm[rl == c], 5) if (rl == c).any() else np.nan for c in range(C)])
        data: dict = {
            "embedding": spec.embedding,
            "k": k,
            "reference": ref.name,
            "identity": [self.identity[c] if ref_ok[c] else None for c in range(C)],
            "train_mean": train_mean,
            "train_p5": p5,
            "groups": {},
        }
        for g in [x for x in spec.groups if x.name != ref.name] + [ref]:
            if g.name not in self.state:
                continue
            lab, ok, m = (self.gathered(g.name, s) for s in ("label", "correct", "m"))
            classes, rows = [], []
            for c in range(C):
                sel = (lab == c) & ref_ok[c]
                n = int(sel.sum())

                def mean(mask):
                    return float(m[mask].mean()) if mask.any() else None

                mc, mi = mean(sel & ok), mean(sel & ~ok)
                below = sel & (m < p5[c])
                entry = {
                    "class": names[c],
                    "n": n,
                    "n_train": int(self.ref["n"][c]),
                    "mean": mean(sel),
                    "mean_correct": mc,
                    "mean_incorrect": mi,
                    "ratio_correct": None if mc is None or not train_mean[c] else mc / train_mean[c],
                    "ratio_incorrect": None if mi is None or not train_mean[c] else mi / train_mean[c],
                    "share_below_p5": float(below.sum() / n) if n else None,
                    "accuracy_below_p5": float(ok[below].mean()) if below.any() else None,
                    "accuracy_above_p5": float(ok[sel & ~below].mean()) if (sel & ~below).any() else None,
                }
                classes.append(entry)
                rows.append([names[c], n, entry["n_train"], train_mean[c], mc, mi, entry["ratio_correct"], entry["ratio_incorrect"],
                             entry["share_below_p5"], entry["accuracy_below_p5"]])
            data["groups"][g.name] = {"split": g.split, "epoch": g.epoch, "classes": classes}
            if g.name != ref.name:
                result.tables.append(
                    Table(
                        f"{g.name}: magnitude at training ({ref.name}) top-{k} {spec.embedding} features",
                        ["class", "n", "n train", "train", "correct", "misclassified", "correct/train", "misclassified/train",
                         "share < train p5", "accuracy < p5"],
                        rows,
                    )
                )
        # trajectory across the reference split's epochs
        traj_groups = sorted((g for g in self._all_groups() if g[0] == ref.split), key=lambda g: g[1])
        if traj_groups:
            rows = []
            traj = {}
            for split, epoch, name in traj_groups:
                st = self.state[name]
                ident_e = class_topk(st["sum"], st["n"], k)[0]
                lab, m = self.gathered(name, "label"), self.gathered(name, "m")
                ov = [overlap(ident_e[c], self.identity[c], k) if st["n"][c] and ref_ok[c] else None for c in range(C)]
                mag = [float(m[lab == c].mean()) if (lab == c).any() and ref_ok[c] else None for c in range(C)]
                traj[name] = {"epoch": epoch, "identity_overlap": ov, "magnitude": mag}
                for c in range(C):
                    rows.append([names[c], int(st["n"][c]), epoch, ov[c], mag[c]])
            data["trajectory"] = traj
            result.tables.append(
                Table(
                    f"trajectory over {ref.split} epochs: overlap with the final top-{k} and magnitude there",
                    ["class", "n", "epoch", "identity overlap", "magnitude"],
                    rows,
                )
            )
        result.data = data
        return result

    def _all_groups(self):
        seen = {g.name: (g.split, g.epoch, g.name) for g in self.spec.groups}
        ref = self.spec.reference
        seen.setdefault(ref.name, (ref.split, ref.epoch, ref.name))
        return [v for name, v in seen.items() if name in self.state]


@fragility.hookimpl
def fragility_register_analyzers(registrar):
    registrar.add("magnitude", Magnitude, description="train vs test magnitudes at the training top-K, percentiles, epoch trajectory")
