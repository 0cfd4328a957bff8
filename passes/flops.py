"""Multiply-accumulate counts per layer: dense MACs and sparse MACs (nonzero weights only).

For a masked layer (a :class:`sparsify_cli.passes.masks.WeightMask`) the sparse count is the mask's
active entries: the weights that train and are stored, even where one currently holds an exact zero
(a weight regrown at 0 by dynamic sparse training still costs its MAC).

Counted by running the example input once with hooks on Linear and Conv2d, so the spatial size
of every conv output and the token count of every Linear are the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsify_cli.passes.inputs import Example, batch_size, call
from sparsify_cli.passes.masks import get_mask, is_masked


@dataclass(frozen=True)
class LayerFlops:
    dense: int
    sparse: int


@torch.no_grad()
def layer_flops(model: nn.Module, example: Example) -> dict[str, LayerFlops]:
    """MACs per sample of each Linear / Conv2d in ``model`` (the batch axis is divided out)."""
    counts: dict[str, LayerFlops] = {}
    batch = batch_size(example)

    def hook(name: str):
        def record(mod: nn.Module, _inp, out: torch.Tensor) -> None:
            weight = mod.weight
            positions = out.numel() // (batch * out.shape[1 if isinstance(mod, nn.Conv2d) else -1])
            per_output = weight[0].numel()
            outputs = weight.shape[0]
            dense = positions * outputs * per_output
            active = get_mask(mod).mask if is_masked(mod) else weight
            sparse = positions * int(torch.count_nonzero(active))
            prev = counts.get(name, LayerFlops(0, 0))
            counts[name] = LayerFlops(prev.dense + dense, prev.sparse + sparse)

        return record

    hooks = [
        mod.register_forward_hook(hook(name))
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.Linear, nn.Conv2d))
    ]
    was_training = model.training
    model.eval()
    try:
        call(model, example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return counts
