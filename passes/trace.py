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


@dataclass(frozen=True)
class ModelTrace:
    """``order``: layers in the order the forward pass first ran them; ``head``: the layer whose
    output tensor the model returns (``None`` if no layer's output is returned as is);
    ``positions``: per layer, output positions per sample, summed over every call (a conv's
    spatial size, a Linear's token count), which times the weights gives its MACs."""

    order: tuple[str, ...]
    head: str | None
    positions: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def trace_model(model: nn.Module, example: Example) -> ModelTrace:
    """Run ``example`` through ``model`` once, in eval mode (the mode is restored)."""
    order: list[str] = []
    positions: dict[str, int] = {}
    produced: dict[int, str] = {}
    batch = batch_size(example)

    def hook(name: str):
        def record(mod: nn.Module, _inp, out: torch.Tensor) -> None:
            if name not in positions:
                order.append(name)
            channels = out.shape[1 if isinstance(mod, nn.Conv2d) else -1]
            positions[name] = positions.get(name, 0) + out.numel() // (batch * channels)
            produced[id(out)] = name

        return record

    hooks = [
        mod.register_forward_hook(hook(name))
        for name, mod in model.named_modules()
        if isinstance(mod, TRACED)
    ]
    was_training = model.training
    model.eval()
    try:
        result = call(model, example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    head = produced.get(id(result)) if isinstance(result, torch.Tensor) else None
    return ModelTrace(tuple(order), head, positions)
