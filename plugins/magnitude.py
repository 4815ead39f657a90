"""Built-in analyzer ``magnitude``: how the magnitudes at each class's training top-K features drift
between training rows, correctly classified and misclassified test rows, and across epochs (docs/analyzers.md)."""

from __future__ import annotations

import numpy as np

import fragility
from fragility.analysis import Analyzer, Chunk, Result, Table
from fragility.analysis.records import MagnitudeClass, MagnitudeGroup, TrajectoryPoint, as_data
from fragility.functional import (
    bootstrap_mean_ratio,
    chunk_topk_sums,
    class_row_means,
    class_sums,
    class_topk,
    overlap,
    resample_means,
    wilson,
)


def row_magnitudes(v: np.ndarray, labels: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """``m_n`` = mean of ``v_n`` over its true class's training top-K indices."""
    fast = class_row_means(v, labels, identity)  # float16 rows: the compiled gather, the same numbers
    if fast is not None:
        return fast
    idx = identity[labels]  # (N, K)
    return np.take_along_axis(v, idx, axis=1).astype(np.float64).mean(axis=1)  # gather first, then widen


#: the state key of the reference rows measured at the reference's top-K (not a split@epoch group)
REFERENCE = "reference rows"


class Magnitude(Analyzer):
    """Magnitude at the training top-K features: train vs correct/incorrect test, percentiles, trajectory."""

    name = "magnitude"
    finish_in_parts = True  # finish_group runs in each task (in parallel on Dask workers); merge carries its results
    uses_k = True
    uses_reference = True
    reference_states = {"sum": "sum", "n": "sum"}
    states = {"keys": "cat", "label": "cat", "correct": "cat", "m": "cat", "sum": "sum", "n": "sum"}

    def columns(self) -> set[str]:
        return {self.spec.embedding, "label", "pred"}

    def reference_columns(self) -> set[str]:
        return {self.spec.embedding, "label"}

    def update_reference(self, chunk: Chunk) -> None:
        C = self.spec.num_classes
        self.accumulate_reference("sum", class_sums(chunk.labels, chunk[self.spec.embedding], C))
        self.accumulate_reference("n", np.bincount(chunk.labels, minlength=C))

    def end_reference(self) -> None:
        self.identity = class_topk(self.ref["sum"], self.ref["n"], self.spec.k)[0]

    def _magnitudes(self, chunk: Chunk) -> np.ndarray:
        ident = np.where(self.identity < 0, 0, self.identity)  # classes absent from the reference: masked later
        return row_magnitudes(chunk[self.spec.embedding], chunk.labels, ident)  # stored values: K per row are widened

    def update_reference_rows(self, chunk: Chunk) -> None:
        # the training distribution: every reference row (a --correct/--incorrect selection never filters it)
        self.accumulate(REFERENCE, "keys", chunk.keys)
        self.accumulate(REFERENCE, "label", chunk.labels)
        self.accumulate(REFERENCE, "m", self._magnitudes(chunk))

    def update(self, chunk: Chunk) -> None:
        C, g = self.spec.num_classes, chunk.group
        self.accumulate(g, "keys", chunk.keys)
        self.accumulate(g, "label", chunk.labels)
        self.accumulate(g, "correct", chunk.correct)
        self.accumulate(g, "m", self._magnitudes(chunk))
        fast = chunk_topk_sums(chunk)  # topk's kernel sums of this chunk (exact), when it ran
        self.accumulate(g, "sum", fast["sum_correct"] + fast["sum_incorrect"] if fast is not None
                        else class_sums(chunk.labels, chunk[self.spec.embedding], C))
        self.accumulate(g, "n", np.bincount(chunk.labels, minlength=C))

    def merge(self, other: Analyzer) -> Analyzer:
        self.resampled.update(other.resampled)  # groups a part finished (a task of whole groups)
        return super().merge(other)

    def reset(self) -> None:
        super().reset()
        self.resampled: dict[str, list] = {}  # finished groups: each class's bootstrap resample means (correct, misclassified)

    def _draws(self) -> int:
        return int(self.spec.options.get("bootstrap", 200))  # replicates of the ratio intervals (options={"bootstrap": n})

    def _selections(self, group: str):
        """Per class: the group's magnitudes, and the masks of its correct and misclassified rows that have a reference."""
        empty = np.zeros(0)
        lab, ok, m = (self.gathered(group, s) if group in self.state else empty for s in ("label", "correct", "m"))
        lab, ok = lab.astype(np.int64), ok.astype(bool)
        ref_ok = self.ref["n"] > 0
        return lab, ok, m, [(lab == c) & ref_ok[c] for c in range(self.spec.num_classes)]

    def finish_group(self, group: str) -> None:
        # the bootstrap's resampled means need only this group's rows: computed now, while later groups are still
        # being read (on a Dask cluster, while the workers fold them); compute() divides them by the training mean
        if group == self.spec.reference.name:
            return
        _, ok, m, sels = self._selections(group)
        draws = self._draws()
        self.resampled[group] = [(resample_means(m[sel & ok], draws, seed=c), resample_means(m[sel & ~ok], draws, seed=c))
                                 for c, sel in enumerate(sels)]

    def compute(self) -> Result:
        spec = self.spec
        C, k, names = spec.num_classes, spec.k, spec.class_names
        ref = spec.reference
        result = Result(self.name)
        ref_ok = self.ref["n"] > 0
        rl, rm = self.gathered(REFERENCE, "label"), self.gathered(REFERENCE, "m")
        if rl is None:
            rl, rm = np.zeros(0, dtype=np.int64), np.zeros(0)
        train_mean = np.array([rm[rl == c].mean() if ref_ok[c] and (rl == c).any() else np.nan for c in range(C)])
        p5 = np.array([np.percentile(rm[rl == c], 5) if ref_ok[c] and (rl == c).any() else np.nan for c in range(C)])
        data: dict = {
            "embedding": spec.embedding,
            "k": k,
            "reference": ref.name,
            "identity": [self.identity[c] if ref_ok[c] else None for c in range(C)],
            "train_n": self.ref["n"],
            "train_mean": train_mean,
            "train_p5": p5,
            "groups": {},
        }
        no_ref = f"no training rows of this class in the reference {ref.name}, so it has no training top-{k} to measure"
        draws = self._draws()
        for g in spec.groups:
            if g.name == ref.name:  # the reference against itself says nothing
                continue
            lab, ok, m, sels = self._selections(g.name)
            early = self.resampled.get(g.name) or [(None, None)] * C
            classes, rows = [], []
            for c in range(C):
                in_c = lab == c
                n = int(in_c.sum())
                sel = sels[c]

                def mean(mask):
                    return float(m[mask].mean()) if mask.any() else None

                mc, mi = mean(sel & ok), mean(sel & ~ok)
                below = sel & (m < p5[c])
                record = MagnitudeClass(
                    name=names[c],
                    n=n,
                    n_train=int(self.ref["n"][c]),
                    mean=mean(sel),
                    mean_correct=mc,
                    mean_incorrect=mi,
                    ratio_correct=None if mc is None or not train_mean[c] else mc / train_mean[c],
                    # seeded percentile bootstrap over the class's correct rows (the training mean held fixed)
                    ratio_correct_ci=bootstrap_mean_ratio(m[sel & ok], train_mean[c], draws=draws, seed=c, means=early[c][0]),
                    ratio_incorrect_ci=bootstrap_mean_ratio(m[sel & ~ok], train_mean[c], draws=draws, seed=c, means=early[c][1]),
                    ratio_incorrect=None if mi is None or not train_mean[c] else mi / train_mean[c],
                    share_below_p5=float(below.sum() / n) if sel.any() else None,
                    # 95 % Wilson interval; with no drift the share is 0.05 (the training rows' own share)
                    share_below_p5_ci=wilson(int(below.sum()), n) if sel.any() else None,
                    accuracy_below_p5=float(ok[below].mean()) if below.any() else None,
                    accuracy_below_p5_ci=wilson(int(ok[below].sum()), int(below.sum())) if below.any() else None,
                    accuracy_above_p5=float(ok[sel & ~below].mean()) if (sel & ~below).any() else None,
                    accuracy_above_p5_ci=wilson(int(ok[sel & ~below].sum()), int((sel & ~below).sum())) if (sel & ~below).any() else None,
                    reason=None if ref_ok[c] or not n else no_ref,
                )
                classes.append(record)
                ci, rci = record.share_below_p5_ci, record.ratio_correct_ci
                rows.append([record.name, n, record.n_train, train_mean[c], mc, mi, record.ratio_correct,
                             None if rci is None else f"{rci[0]:.2f}–{rci[1]:.2f}", record.ratio_incorrect,
                             record.share_below_p5, None if ci is None else f"{ci[0]:.2f}–{ci[1]:.2f}", record.accuracy_below_p5])
            data["groups"][g.name] = as_data(MagnitudeGroup(g.split, g.epoch, classes))
            result.tables.append(
                Table(
                    f"{g.name}: magnitude at training ({ref.name}) top-{k} {spec.embedding} features",
                    ["class", "n", "n train", "train", "correct", "misclassified", "correct/train", "95% CI (bootstrap)",
                     "misclassified/train", "share < train p5", "95% CI", "accuracy < p5"],
                    rows,
                )
            )
            if any(e.reason for e in classes):
                missing = ", ".join(e.name for e in classes if e.reason)
                result.notes.append(f"{g.name}: classes {missing} have rows but {no_ref}")
        # trajectory across the reference split's epochs
        traj_groups = sorted((g for g in spec.groups if g.split == ref.split and g.name in self.state), key=lambda g: g.epoch)
        if traj_groups:
            rows = []
            traj = {}
            for g in traj_groups:
                st = self.state[g.name]
                ident_e = class_topk(st["sum"], st["n"], k)[0]
                lab, m = self.gathered(g.name, "label"), self.gathered(g.name, "m")
                ov = [overlap(ident_e[c], self.identity[c], k) if st["n"][c] and ref_ok[c] else None for c in range(C)]
                mag = [float(m[lab == c].mean()) if (lab == c).any() and ref_ok[c] else None for c in range(C)]
                traj[g.name] = as_data(TrajectoryPoint(g.epoch, ov, mag))
                for c in range(C):
                    rows.append([names[c], int(st["n"][c]), g.epoch, ov[c], mag[c]])
            data["trajectory"] = traj
        if len(traj_groups) > 1:  # one epoch is no trajectory (its overlap with itself is 1 by definition)
            result.tables.append(
                Table(
                    f"trajectory over {ref.split} epochs: overlap with the final top-{k} and magnitude there",
                    ["class", "n", "epoch", "identity overlap", "magnitude"],
                    rows,
                )
            )
        result.data = data
        return result


@fragility.hookimpl
def fragility_register_analyzers(registrar):
    registrar.add("magnitude", Magnitude, description="train vs test magnitudes at the training top-K, percentiles, epoch trajectory")
