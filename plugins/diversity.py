"""Built-in analyzer ``diversity``: latent class diversity (docs/analyzers.md) — unique top-K share, frequency
entropy, participation ratio of the class FE covariance, mean pairwise cosine, k-NN archetypes."""

from __future__ import annotations

import numpy as np
import torch

import fragility
from fragility.analysis import Analyzer, Chunk, Result, Table
from fragility.analysis._kernels import diversity_sums
from fragility.analysis._maths import (
    class_sums,
    instance_counts,
    knn_same_class,
    mean_pairwise_cosine,
    normalized_entropy,
    participation_ratio,
)

ARCHETYPES = ("safe", "border", "rare", "outlier")


def archetype(same: np.ndarray, k: int = 5) -> np.ndarray:
    """Napierala & Stefanowski types from same-class neighbours among k=5: safe ≥4, border 2–3, rare 1, outlier 0.

    For other ``k`` the thresholds scale: safe ≥ 0.8k, border ≥ 0.4k, rare > 0.
    """
    if k == 5:
        return np.select([same >= 4, same >= 2, same == 1], [0, 1, 2], 3)
    return np.select([same >= 0.8 * k, same >= 0.4 * k, same > 0], [0, 1, 2], 3)


def sample_mask(keys: np.ndarray, rate: float) -> np.ndarray:
    """Deterministic row sample from row keys (a hash), the same whatever the chunking."""
    if rate >= 1:
        return np.ones(len(keys), dtype=bool)
    with np.errstate(over="ignore"):
        h = (keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h = h * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 < rate


class Diversity(Analyzer):
    """Latent class diversity: unique share, entropy, participation ratio, cosine, k-NN archetypes."""

    name = "diversity"
    uses_k = True
    states = {
        "n": "sum",
        "count": "sum",
        "sum_fe": "sum",
        "sum_fefe": "sum",
        "sum_unit": "sum",
        "n_unit": "sum",
        "keys": "cat",
        "label": "cat",
        "fe": "cat",
    }

    def columns(self) -> set[str]:
        return {self.spec.embedding, "fe", "label"}

    def update(self, chunk: Chunk) -> None:
        C, g = self.spec.num_classes, chunk.group
        y = chunk.labels
        self.accumulate(g, "n", np.bincount(y, minlength=C))
        fast = chunk.fused()  # topk's kernel results for this chunk when it ran, else computed here
        self.accumulate(g, "count", fast["count"] if fast is not None else instance_counts(y, chunk.topk_mask(), C))
        sums = diversity_sums(chunk["fe"], y, C) or self._sums(chunk["fe"], y)
        for key, value in sums.items():
            self.accumulate(g, key, value)
        rows = self.spec.group(g).rows
        keep = sample_mask(chunk.keys, self.spec.knn_max_rows / max(rows, 1))
        self.accumulate(g, "keys", chunk.keys[keep])
        self.accumulate(g, "label", y[keep])
        self.accumulate(g, "fe", np.asarray(chunk["fe"][keep], dtype=np.float32))

    def _sums(self, fe16: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """The numpy path of :func:`fragility.analysis._kernels.diversity_sums` (float32 stores, no kernels)."""
        C, D = self.spec.num_classes, self.spec.feature_dim
        fe = torch.from_numpy(np.ascontiguousarray(fe16)).double()
        norms = torch.linalg.vector_norm(fe, dim=1)
        nz = (norms > 0).numpy()
        unit = fe[nz] / norms[nz, None]
        # second moments per class: sort rows by class once, then one GEMM per contiguous block
        order = np.argsort(y, kind="stable")
        bounds = np.searchsorted(y[order], np.arange(C + 1))
        xs = fe[torch.from_numpy(order)].numpy()
        sum_fefe = np.zeros((C, D, D))
        for c in range(C):
            x = xs[bounds[c] : bounds[c + 1]]
            if len(x):
                sum_fefe[c] = x.T @ x
        return {"sum_fe": class_sums(y, fe, C), "sum_unit": class_sums(y[nz], unit, C),
                "n_unit": np.bincount(y[nz], minlength=C), "sum_fefe": sum_fefe}

    def compute(self) -> Result:
        spec = self.spec
        C, D, names, kk = spec.num_classes, spec.feature_dim, spec.class_names, spec.knn_k
        result = Result(self.name)
        data: dict = {"embedding": spec.embedding, "k": spec.k, "knn_k": kk, "groups": {}}
        for g in spec.groups:
            if g.name in self.state:
                st = self.state[g.name]
                labels, fe = self.gathered(g.name, "label"), self.gathered(g.name, "fe")
            else:  # a selected group with no usable row (e.g. all unlabelled): every class is empty
                st = {"n": np.zeros(C, dtype=np.int64), "count": np.zeros((C, D), dtype=np.int64)}
                labels, fe = np.zeros(0, dtype=np.int64), np.zeros((0, D), dtype=np.float32)
            n, count = st["n"], st["count"]
            sampled = len(labels)
            types = archetype(knn_same_class(fe, labels, kk), kk) if sampled > 1 else None  # one row has no neighbours
            if sampled < int(n.sum()):
                result.notes.append(
                    f"{g.name}: k-NN archetypes computed on a deterministic sample of {sampled} of {int(n.sum())} rows "
                    f"(knn_max_rows={spec.knn_max_rows})"
                )
            classes, rows = [], []
            for c in range(C):
                empty = n[c] == 0
                unique = int((count[c] > 0).sum())
                in_c = labels == c
                shares = {a: (float((types[in_c] == i).mean()) if types is not None and in_c.any() else None)
                          for i, a in enumerate(ARCHETYPES)}
                entry = {
                    "class": names[c],
                    "n": int(n[c]),
                    "unique_share": None if empty else unique / D,
                    "entropy": None if empty else normalized_entropy(count[c], D),
                    "participation_ratio": None if empty else participation_ratio(st["sum_fe"][c], st["sum_fefe"][c], int(n[c])),
                    "mean_cosine": None if empty else mean_pairwise_cosine(st["sum_unit"][c], int(st["n_unit"][c])),
                    "knn_rows": int(in_c.sum()),
                    "archetypes": shares,
                }
                classes.append(entry)
                rows.append([names[c], int(n[c]), entry["unique_share"], entry["entropy"], entry["participation_ratio"],
                             entry["mean_cosine"], *(shares[a] for a in ARCHETYPES)])
            data["groups"][g.name] = {"split": g.split, "epoch": g.epoch, "knn_sampled": sampled, "classes": classes}
            result.tables.append(
                Table(
                    f"{g.name}: diversity (unique/D and entropy of top-{spec.k} {spec.embedding}; PR, cosine, k={kk} NN of fe)",
                    ["class", "n", "unique/D", "entropy", "participation ratio", "mean cosine", *ARCHETYPES],
                    rows,
                )
            )
        result.data = data
        return result


@fragility.hookimpl
def fragility_register_analyzers(registrar):
    registrar.add("diversity", Diversity, description="unique top-K share, entropy, participation ratio, cosine, k-NN archetypes")
