"""One forward pass of the example input, recorded: what selection, Sparse-IFT and the MAC
counts need to know about a model's Linear / Conv2d layers.

Before this, the pipeline ran the example through the model once per question (which layer
returns the output, which runs first, how many output positions each has) with hooks each time;
now :func:`trace_model` answers all three at once and the callers take the trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sparsify_cli.passes.inputs import Example, batch_size, call

TRACED = (nn.Linear, nn.Conv2d)

SHAPE_ONLY_NODES = (
    "ViewBackward",
    "UnsafeViewBackward",
    "ReshapeAliasBackward",
    "SqueezeBackward",
    "UnsqueezeBackward",
    "PermuteBackward",
    "TransposeBackward",
    "TBackward",
    "CloneBackward",
    "AliasBackward",
    "ToCopyBackward",
)
"""Autograd nodes that only reshape, copy or cast: a head followed by them is still the head."""


@dataclass(frozen=True)
class ModelTrace:
    """``order``: layers in the order the forward pass first ran them; ``head``: the layer whose
    output tensor the model returns (``None`` if no layer's output is returned as is);
    ``positions``: per layer, output positions per sample, summed over every call (a conv's
    spatial size, a Linear's token count), which times the weights gives its MACs."""

    order: tuple[str, ...]
    head: str | None
    positions: dict[str, int] = field(default_factory=dict)


def trace_model(model: nn.Module, example: Example) -> ModelTrace:
    """Run ``example`` through ``model`` once, in eval mode (the mode is restored).

    The head is read from the autograd graph of the output, not from tensor ids: Python reuses
    the id of a freed tensor, so an id-keyed lookup once named an attention projection of a
    6-layer BERT encoder as its head (issue 16). Each layer's output node is held alive while
    the model runs, and the output's graph is followed back through shape-only nodes (view,
    squeeze, flatten, cast) to the node that computed it; the layer owning that node is the head.
    """
    order: list[str] = []
    positions: dict[str, int] = {}
    produced: list[tuple[str, object]] = []  # strong references: nodes cannot be recycled
    batch = batch_size(example)

    def hook(name: str):
        def record(mod: nn.Module, _inp, out: torch.Tensor) -> None:
            if name not in positions:
                order.append(name)
            channels = out.shape[1 if isinstance(mod, nn.Conv2d) else -1]
            positions[name] = positions.get(name, 0) + out.numel() // (batch * channels)
            produced.append((name, out.grad_fn))

        return record

    layers = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, TRACED)]
    frozen = [p for _, m in layers for p in m.parameters(recurse=False) if not p.requires_grad]
    hooks = [mod.register_forward_hook(hook(name)) for name, mod in layers]
    was_training = model.training
    model.eval()
    try:
        for param in frozen:  # a graph needs a leaf that requires grad
            param.requires_grad_(True)
        with torch.enable_grad():
            result = call(model, example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
        for param in frozen:
            param.requires_grad_(False)
    return ModelTrace(tuple(order), _head(result, produced), positions)


def _head(result: object, produced: list[tuple[str, object]]) -> str | None:
    """The layer whose output node computed ``result`` (through shape-only nodes), if any."""
    node = result.grad_fn if isinstance(result, torch.Tensor) else None
    chain = []
    while node is not None:
        chain.append(node)
        if not node.name().startswith(SHAPE_ONLY_NODES):
            break
        node = next((fn for fn, _ in node.next_functions if fn is not None), None)
    return next(
        (name for name, fn in produced if fn is not None and any(fn is c for c in chain)), None
    )
