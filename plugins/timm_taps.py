"""Built-in tap resolution: timm's ``get_classifier()`` contract, or an explicit ``classifier=``.

The tapped layers are the final affine layers of what the classifier module holds
(:func:`fragility.taps.final_affine`); the recorder's self-check verifies on the first batch of every pass
that they reproduce the model's logits, and refuses the head otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fragility

if TYPE_CHECKING:  # torch, timm and the taps load when a head is resolved (a Recorder), never for store commands
    from torch import nn

    from fragility import Head


def _modules(classifier: Any) -> list[Any]:
    from torch import nn

    if isinstance(classifier, (tuple, list, nn.ModuleList)):
        out: list[Any] = []
        for c in classifier:
            out.extend(_modules(c))
        return out
    return [classifier]


def _qualname(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name or "<model>"
    return type(module).__name__


@fragility.hookimpl(trylast=True)
def fragility_resolve_head(model: nn.Module, classifier: Any) -> Head | None:
    from torch import nn

    from fragility import Head, HeadError, model_name
    from fragility.taps import final_affine

    name = model_name(model)
    if classifier is None:
        get_classifier = getattr(model, "get_classifier", None)
        if get_classifier is None:
            return None
        classifier = get_classifier()
    num_classes = getattr(model, "num_classes", None)
    num_classes = num_classes if isinstance(num_classes, int) and num_classes > 0 else None
    leaves: list[nn.Module] = []
    for module in _modules(classifier):
        if not isinstance(module, nn.Module):
            raise HeadError(f"model {name}: classifier {module!r} is not a torch module; pass classifier=<nn.Linear>")
        where = _qualname(model, module)
        if isinstance(module, nn.Identity) or not any(True for _ in module.parameters()):
            raise HeadError(
                f"model {name} has no classifier ({where} is {type(module).__name__}, as with "
                f"num_classes=0); create the model with num_classes>0 or pass classifier=<the nn.Linear>"
            )
        try:
            leaves.extend(m for _, m in final_affine(module, num_classes))
        except HeadError as exc:
            raise HeadError(f"model {name}: classifier {where}: {exc}") from None
    leaves = list(dict.fromkeys(leaves))  # a layer listed twice is tapped once
    label = "+".join(f"{_qualname(model, leaf)}({type(leaf).__name__})" for leaf in leaves)
    return Head(leaves, name=f"{name}.{label}")
