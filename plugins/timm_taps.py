"""Built-in tap resolution: timm's ``get_classifier()`` contract, or an explicit ``classifier=``."""

from __future__ import annotations

from typing import Any

from torch import nn

import fragility
from fragility import Head, HeadError, model_name


def _leaves(classifier: Any) -> list[nn.Module]:
    if isinstance(classifier, (tuple, list, nn.ModuleList)):
        out: list[nn.Module] = []
        for c in classifier:
            out.extend(_leaves(c))
        return out
    return [classifier]


def _qualname(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name or "<model>"
    return type(module).__name__


@fragility.hookimpl(trylast=True)
def fragility_resolve_head(model: nn.Module, classifier: Any) -> Head | None:
    name = model_name(model)
    if classifier is None:
        get_classifier = getattr(model, "get_classifier", None)
        if get_classifier is None:
            return None
        classifier = get_classifier()
    leaves = _leaves(classifier)
    for leaf in leaves:
        if not isinstance(leaf, nn.Module):
            raise HeadError(f"model {name}: classifier {leaf!r} is not a torch module; pass classifier=<nn.Linear>")
        if isinstance(leaf, nn.Identity) or not any(True for _ in leaf.parameters()):
            raise HeadError(
                f"model {name} has no classifier ({_qualname(model, leaf)} is {type(leaf).__name__}, as with "
                f"num_classes=0); create the model with num_classes>0 or pass classifier=<the nn.Linear>"
            )
    label = "+".join(f"{_qualname(model, leaf)}({type(leaf).__name__})" for leaf in leaves)
    return Head(leaves, name=f"{name}.{label}")
