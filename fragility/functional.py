"""The exact maths of the built-in analyzers, public: what a third-party analyzer needs to compute the same
quantities the same way — top-K with the tie rule, minimal sufficient sets, class sums and counts, size
control, intervals, moments, k-NN — without importing private modules.

Every function is the one the built-ins call (the same object, not a copy), works on numpy arrays and is
exact: ties are broken by the lower index everywhere, sums are float64. Where a compiled kernel exists it is
chosen inside (``fused_topk``, ``class_row_means``, ``moment_sums`` return ``None`` where the kernel cannot be
exact or is unavailable — then use the numpy functions, which give the same results).

Example (a per-class count of each feature's presence in the rows' own top-K, as ``topk`` keeps it):

    >>> from fragility.functional import topk_mask, instance_counts
    >>> counts = instance_counts(chunk.labels, topk_mask(chunk.v, 10), spec.num_classes)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .analysis import _kernels
from .analysis._kernels import diversity_sums as moment_sums
from .analysis._kernels import row_means as class_row_means
from .analysis._kernels import topk_update as fused_topk
from .analysis._maths import (
    as_float32,
    bootstrap_mean_cosine,
    bootstrap_mean_ratio,
    class_sums,
    class_topk,
    instance_counts,
    jaccard,
    knn_same_class,
    mean_pairwise_cosine,
    minimal_sets,
    nearest_rows,
    normalized_entropy,
    overlap,
    participation_ratio,
    participation_ratio_rows,
    rarefied_unique,
    rarefy_size,
    resample_means,
    size_matched,
    topk_mask,
    topk_order,
    wilson,
)

if TYPE_CHECKING:  # pragma: no cover
    from .analysis._base import Chunk


def chunk_topk_mask(chunk: Chunk) -> np.ndarray:
    """Each row's top-K features of ``chunk.v`` (K = ``chunk.spec.k``; :func:`topk_mask`), computed once per chunk
    and shared by every analyzer that asks."""
    return chunk.cached("topk_mask", lambda: topk_mask(chunk.v, chunk.spec.k))


def chunk_topk_sums(chunk: Chunk, bias: np.ndarray | None = None) -> dict[str, np.ndarray] | None:
    """The fused kernel's sums over a chunk (:func:`fused_topk`): per-class top-K counts and class sums of the
    analysed embedding and, given each row's ``bias``, the minimal sufficient sets; computed once per chunk and
    shared by the analyzers (a call without ``bias`` reuses a call with it). ``None`` where the exact numpy
    functions must run instead."""
    emb, C, k = chunk[chunk.spec.embedding], chunk.spec.num_classes, chunk.spec.k
    if bias is None:
        if chunk.is_cached("fused+mscs"):
            return chunk.cached("fused+mscs", lambda: None)
        return chunk.cached("fused", lambda: _kernels.topk_update(emb, None, chunk.labels, chunk.correct, k, C))
    return chunk.cached("fused+mscs", lambda: _kernels.topk_update(emb, chunk["ce_pred"], chunk.labels, chunk.correct, k, C,
                                                        chunk["logits"], chunk["pred"], bias))


__all__ = [
    "as_float32",
    "bootstrap_mean_cosine",
    "bootstrap_mean_ratio",
    "chunk_topk_mask",
    "chunk_topk_sums",
    "class_row_means",
    "class_sums",
    "class_topk",
    "fused_topk",
    "instance_counts",
    "jaccard",
    "knn_same_class",
    "mean_pairwise_cosine",
    "minimal_sets",
    "moment_sums",
    "nearest_rows",
    "normalized_entropy",
    "overlap",
    "participation_ratio",
    "participation_ratio_rows",
    "rarefied_unique",
    "rarefy_size",
    "resample_means",
    "size_matched",
    "topk_mask",
    "topk_order",
    "wilson",
]
