"""Built-in analyzer ``diversity``: latent class diversity (docs/analyzers.md) — unique top-K share, frequency
entropy, participation ratio of the class FE covariance, mean pairwise cosine, k-NN archetypes."""

from __future__ import annotations

import numpy as np

import fragility
from fragility.analysis import Analyzer, Chunk, Result, Table, check_memory
from fragility.analysis.records import Archetypes, DiversityClass, DiversityGroup, MatchedRatio, as_data
from fragility.errors import AnalyzerError
from fragility.functional import (
    chunk_topk_mask,
    chunk_topk_sums,
    moment_sums,
    class_sums,
    instance_counts,
    knn_same_class,
    mean_pairwise_cosine,
    normalized_entropy,
    participation_ratio,
    bootstrap_mean_cosine,
    participation_ratio_rows,
    rarefy_size,
    size_matched,
    wilson,
)

ARCHETYPES = ("safe", "border", "rare", "outlier")
#: which groups get k-NN archetypes (``options["knn"]``, ``--knn``)
KNN_MODES = ("last", "all", "none")
#: work budget of a group's size-matched participation ratios (floating-point operations)
MATCHED_FLOPS = 4e9


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
    finish_in_parts = True  # finish_group runs in each task (in parallel on Dask workers); merge carries its results
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
        fast = chunk_topk_sums(chunk)  # topk's kernel results for this chunk when it ran, else computed here
        self.accumulate(g, "count", fast["count"] if fast is not None else instance_counts(y, chunk_topk_mask(chunk), C))
        sums = moment_sums(chunk["fe"], y, C) or self._sums(chunk["fe"], y)
        for key, value in sums.items():
            self.accumulate(g, key, value)
        rows = self.spec.group(g).rows
        keep = sample_mask(chunk.keys, self.spec.knn_max_rows / max(rows, 1))
        self.accumulate(g, "keys", chunk.keys[keep])
        self.accumulate(g, "label", y[keep])
        self.accumulate(g, "fe", np.asarray(chunk["fe"][keep], dtype=np.float32))

    def _sums(self, fe16: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """The numpy path of :func:`fragility.functional.moment_sums` (float32 stores, no kernels)."""
        import torch  # the fallback only: the kernels need no torch

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

    def __init__(self, spec) -> None:
        super().__init__(spec)
        C, D = spec.num_classes, spec.feature_dim
        if spec.options.get("knn", "last") not in KNN_MODES:
            raise AnalyzerError(f"knn={spec.options.get('knn')!r} is not one of {', '.join(KNN_MODES)} (which groups get k-NN archetypes)")
        check_memory(f"diversity's per-class {D} x {D} float64 moments ({C} classes; a group's state and one chunk's)",
                     2 * C * D * D * 8, "leave diversity out (-a topk -a magnitude) or analyze on a machine with more memory")

    def reset(self) -> None:
        super().reset()
        self.summaries: dict[str, dict] = {}  # finished groups: their results; the large state is dropped

    def merge(self, other: Analyzer) -> Analyzer:
        finished = set(self.summaries) | set(other.summaries)
        if set(self.summaries) & set(other.summaries) or (set(other.state) | set(self.state)) & finished:
            raise AnalyzerError("diversity: a finished group cannot take more rows (merge a group's parts before finish_group)")
        self.summaries.update(other.summaries)  # groups a part finished (a task of whole groups)
        return super().merge(other)

    def finish_group(self, group: str) -> None:
        """The group's moments, sample and counts become its results: the state of finished groups is
        not kept (C x D x D float64 moments and a 10k-row sample per group)."""
        if group in self.state:
            self.summaries[group] = self._summary(group)
            del self.state[group]

    def _knn(self, group: str) -> bool:
        """Whether ``group`` gets k-NN archetypes: ``options["knn"]`` ``"last"`` (default: each split's last
        selected epoch — the k-NN costs most of an all-epoch analysis), ``"all"`` or ``"none"``."""
        mode = self.spec.options.get("knn", "last")
        if mode != "last":
            return mode == "all"
        g = self.spec.group(group)
        return g.epoch == max(h.epoch for h in self.spec.groups if h.split == g.split)

    def _summary(self, group: str) -> dict:
        spec = self.spec
        C, D, names, kk = spec.num_classes, spec.feature_dim, spec.class_names, spec.knn_k
        if group in self.state:
            st = self.state[group]
            labels, fe = self.gathered(group, "label"), self.gathered(group, "fe")
        else:  # a selected group with no usable row (e.g. all unlabelled): every class is empty
            st = {"n": np.zeros(C, dtype=np.int64), "count": np.zeros((C, D), dtype=np.int64)}
            labels, fe = np.zeros(0, dtype=np.int64), np.zeros((0, D), dtype=np.float32)
        n, count = st["n"], st["count"]
        sampled = len(labels)
        knn = self._knn(group)
        types = archetype(knn_same_class(fe, labels, kk), kk) if sampled > 1 and knn else None  # one row has no neighbours
        note = None
        if sampled < int(n.sum()) and knn:
            note = (f"{group}: k-NN archetypes computed on a deterministic sample of {sampled} of {int(n.sum())} rows "
                    f"(knn_max_rows={spec.knn_max_rows})")
        # size-matched participation ratio: the PR is bounded by a class's rows, so classes are compared on
        # seeded subsamples of m rows each (m: the smallest class, or options["rarefy_m"]) from the sample
        m = rarefy_size(spec.options.get("rarefy_m"), n)
        whole = sampled == int(n.sum())
        # 20 draws per class, fewer when they would cost more than ~4 GFLOP for the group (large m and D), none
        # below 5 (then a note says so): the size-matched value matters where classes differ in size
        per_draw = max(1, m * D * min(m, D) * int((n > m).sum()))  # a class of exactly m rows is its own PR: no draws
        draws = min(20, int(MATCHED_FLOPS // per_draw))
        if m >= 2 and draws < 5:
            note = ((note + "; ") if note else "") + (f"{group}: size-matched participation ratios skipped: {m}-row subsamples "
                                                       f"of {D} features would cost too much (pass options rarefy_m to choose m)")
            m = 0
        classes, rows = [], []
        for c in range(C):
            empty = n[c] == 0
            unique = int((count[c] > 0).sum())
            in_c = labels == c
            pr = None if empty else participation_ratio(st["sum_fe"][c], st["sum_fefe"][c], int(n[c]))
            if m >= 2 and n[c] == m and pr is not None:  # the class is the subsample: its own PR, no draws
                matched = {"m": m, "draws": 1, "mean": pr, "interval": [pr, pr]}
            elif m and (whole or in_c.sum() >= m):
                matched = size_matched(fe[in_c], m, participation_ratio_rows, draws=draws, seed=c)
            else:
                matched = None
            shares = {a: (float((types[in_c] == i).mean()) if types is not None and in_c.any() else None)
                      for i, a in enumerate(ARCHETYPES)}
            shares_ci = {a: (wilson(int((types[in_c] == i).sum()), int(in_c.sum())) if types is not None and in_c.any() else None)
                         for i, a in enumerate(ARCHETYPES)}
            record = DiversityClass(
                name=names[c],
                n=int(n[c]),
                unique_share=None if empty else unique / D,
                entropy=None if empty else normalized_entropy(count[c], D),
                participation_ratio=pr,
                participation_ratio_matched=None if matched is None else MatchedRatio(**matched),
                mean_cosine=None if empty else mean_pairwise_cosine(st["sum_unit"][c], int(st["n_unit"][c])),
                # over the class's rows in the k-NN sample (all its rows in groups within knn_max_rows)
                mean_cosine_ci=None if empty else bootstrap_mean_cosine(fe[in_c], draws=int(spec.options.get("bootstrap", 200)), seed=c),
                knn_rows=int(in_c.sum()),
                archetypes=Archetypes(**shares),
                archetypes_ci=Archetypes(**shares_ci),
            )
            classes.append(as_data(record))
            pm = record.participation_ratio_matched
            rows.append([record.name, record.n, record.unique_share, record.entropy, record.participation_ratio,
                         None if pm is None else pm.mean,
                         None if pm is None else f"{pm.interval[0]:.3g}–{pm.interval[1]:.3g}",
                         record.mean_cosine, *(getattr(record.archetypes, a) for a in ARCHETYPES)])
        return {"sampled": sampled, "note": note, "classes": classes, "rows": rows, "m": m}

    def compute(self) -> Result:
        spec = self.spec
        result = Result(self.name)
        data: dict = {"embedding": spec.embedding, "k": spec.k, "knn_k": spec.knn_k, "groups": {}}
        skipped = [g.name for g in spec.groups if not self._knn(g.name)]
        if skipped:
            mode = spec.options.get("knn", "last")
            which = "each split's last epoch" if mode == "last" else "no group"
            result.notes.append(f"k-NN archetypes not computed for {len(skipped)} groups ({', '.join(skipped[:4])}"
                                f"{' …' if len(skipped) > 4 else ''}): knn={mode!r} computes them for {which} "
                                f"(options knn='all' / --knn all: every group)")
        for g in spec.groups:
            summary = self.summaries.get(g.name) or self._summary(g.name)
            if summary["note"]:
                result.notes.append(summary["note"])
            data["groups"][g.name] = as_data(DiversityGroup(g.split, g.epoch, summary["sampled"], summary["classes"], summary["m"] or None))
            result.tables.append(
                Table(
                    f"{g.name}: diversity (unique/D and entropy of top-{spec.k} {spec.embedding}; PR, cosine, k={spec.knn_k} NN of fe; "
                    f"PR@m = mean PR of up to 20 seeded subsamples of m={summary['m']} rows, the size-matched value to compare classes)",
                    ["class", "n", "unique/D", "entropy", "participation ratio", "PR@m", "PR@m 95%", "mean cosine", *ARCHETYPES],
                    summary["rows"],
                )
            )
        result.data = data
        return result


@fragility.hookimpl
def fragility_register_analyzers(registrar):
    registrar.add("diversity", Diversity, description="unique top-K share, entropy, participation ratio, cosine, k-NN archetypes")
