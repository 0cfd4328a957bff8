"""Multiply-accumulate counts per layer: dense MACs and sparse MACs (nonzero weights only).

For a masked layer (a :class:`sparsify_cli.passes.masks.WeightMask`) the sparse count is the mask's
active entries: the weights that train and are stored, even where one currently holds an exact zero
(a weight regrown at 0 by dynamic sparse training still costs its MAC).

Counted from one traced forward pass of the example (:func:`sparsify_cli.passes.trace.trace_model`),
so the spatial size of every conv output and the token count of every Linear are the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsify_cli.passes.inputs import Example
from sparsify_cli.passes.masks import get_mask, is_masked
from sparsify_cli.passes.trace import ModelTrace, trace_model


@dataclass(frozen=True)
class LayerFlops:
    dense: int
    sparse: int


@torch.no_grad()
def layer_flops(
    model: nn.Module, example: Example, trace: ModelTrace | None = None
) -> dict[str, LayerFlops]:
    """MACs per sample of each Linear / Conv2d in ``model`` (the batch axis is divided out);
    ``trace`` (of this model's structure) saves the forward pass."""
    trace = trace or trace_model(model, example)
    modules = dict(model.named_modules())
    counts: dict[str, LayerFlops] = {}
    for name, positions in trace.positions.items():
        mod = modules[name]
        weight = mod.weight
        active = get_mask(mod).mask if is_masked(mod) else weight
        counts[name] = LayerFlops(
            positions * weight.shape[0] * weight[0].numel(),
            positions * int(torch.count_nonzero(active)),
        )
    return counts
