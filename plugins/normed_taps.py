"""Tap plugin for normalised (cosine) classifiers: :class:`fragility.paper.models.NormedLinear`, LDAM-DRW's head.

Its logits are ``scale · (x/‖x‖) @ (W/‖W‖_col)``: an affine map of the *normalised* input, with weight
``scale · (W/‖W‖_col)ᵀ`` and no bias. The Head records that FE and that weight, so the CE identity and the
recorder's self-check hold exactly as for an ``nn.Linear``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import fragility

if TYPE_CHECKING:
    from torch import nn

    from fragility import Head


@fragility.hookimpl
def fragility_resolve_head(model: nn.Module, classifier: Any) -> Head | None:
    models = sys.modules.get("fragility.paper.models")  # a NormedLinear exists only once that module was imported
    if models is None:
        return None
    from fragility import Head, model_name

    if classifier is None:
        get = getattr(model, "get_classifier", None)
        classifier = get() if get is not None else None
    if not isinstance(classifier, models.NormedLinear):
        return None
    where = next((n for n, m in model.named_modules() if m is classifier), type(classifier).__name__)
    return Head([classifier], name=f"{model_name(model)}.{where}(NormedLinear)", maps=[models.NormedLinearMap()])
