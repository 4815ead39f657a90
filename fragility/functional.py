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

__all__ = [
    "as_float32",
    "bootstrap_mean_cosine",
    "bootstrap_mean_ratio",
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
