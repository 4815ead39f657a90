"""Fingerprints that say whether two stores' feature indices mean the same thing.

Feature ``j`` of one network has nothing to do with feature ``j`` of another: top-K identities of two runs can
be compared index by index only when both networks have the same architecture *and* started from the same
initial weights (as ``fragility reproduce`` arranges with one seed). The Recorder stores both fingerprints
when it is created — before training, that is the initialisation — and ``compare`` checks them.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only fingerprints() needs torch: comparing stores does not load it
    from torch import nn

#: root attributes of a store (docs/format.md)
ARCHITECTURE = "architecture_fingerprint"
INITIAL_WEIGHTS = "initial_weights_fingerprint"


def fingerprints(model: nn.Module) -> dict[str, str]:
    """``{ARCHITECTURE: …, INITIAL_WEIGHTS: …}``: BLAKE2b of the model class and every state tensor's name,
    shape and dtype; and of those plus the tensors' bytes (the weights at this moment)."""
    import torch

    arch = hashlib.blake2b(digest_size=16)
    weights = hashlib.blake2b(digest_size=16)
    cls = type(model)
    arch.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    for name, t in model.state_dict().items():
        desc = f"|{name}:{tuple(t.shape)}:{t.dtype}".encode()
        arch.update(desc)
        weights.update(desc)
        weights.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {ARCHITECTURE: arch.hexdigest(), INITIAL_WEIGHTS: arch.hexdigest() + weights.hexdigest()}


def incomparable(meta_a: dict[str, Any], meta_b: dict[str, Any]) -> str | None:
    """Why the two stores' feature indices cannot be compared, or None when they can."""
    for key, what in ((ARCHITECTURE, "architecture"), (INITIAL_WEIGHTS, "initial weights")):
        a, b = meta_a.get(key), meta_b.get(key)
        if a is None or b is None:
            return (f"a store does not record its network's {what} (recorded before fragility 0.3), so feature j of one "
                    f"run cannot be matched to feature j of the other")
        if a != b:
            return (f"the runs have different {what}: feature j of one network has nothing to do with feature j of the "
                    f"other; index-free quantities only")
    if meta_a.get("feature_dim") != meta_b.get("feature_dim"):
        return "the runs have different feature dimensions"
    return None
