"""Per-layer view of a torch model: eligibility, the pattern its zeros hold, MACs and params.

What a user looks at before converting (which layers can be sparsified, and why not) and after
(did every target layer come out N:M, with constant fan-in). The pattern is read from the
weight values along the reduction axis (:func:`sparsify_cli.passes.pattern.weight_pattern`), never
from a declaration, so the same analysis of the exported ONNX file must agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsify_cli.passes.flops import layer_flops
from sparsify_cli.passes.inputs import Example
from sparsify_cli.passes.masks import fold
from sparsify_cli.passes.pattern import LayerStats, weight_pattern
from sparsify_cli.passes.selection import SPARSIFIABLE, Selection, op_name, select_layers


@dataclass(frozen=True, kw_only=True)
class LayerInfo(LayerStats):
    """One weight-bearing layer of a torch model, by its qualified module name."""

    name: str


@torch.no_grad()
def inspect_model(
    model: nn.Module, example: Example, m: int = 4, selection: Selection = Selection()
) -> list[LayerInfo]:
    """One :class:`LayerInfo` per Linear / Conv2d of ``model`` (masks, if any, are folded first).

    Eligibility is :func:`sparsify_cli.passes.selection.select_layers` for group size ``m``, so
    inspect says
    exactly what ``convert`` would do with the same ``--nm``, ``--include`` and ``--exclude``.

    >>> from sparsify_cli.samples.models import DigitsResNet
    >>> rows = inspect_model(DigitsResNet(), torch.zeros(1, 1, 8, 8))
    >>> rows[0].name, rows[0].reason
    ('stem.0', 'in_channels 1 not divisible by 4')
    """
    fold(model)
    choices = {c.name: c for c in select_layers(model, m, example, selection)}
    flops = layer_flops(model, example)
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, SPARSIFIABLE):
            continue
        weight = mod.weight.detach().cpu().numpy()
        found = weight_pattern(weight, in_axis=1, out_axis=0)
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        nonzero = sum(int(torch.count_nonzero(p)) for p in mod.parameters(recurse=False))
        f = flops.get(name)
        rows.append(
            LayerInfo(
                name=name,
                op=op_name(mod),
                shape=tuple(weight.shape),
                in_axis=1,
                reason=choices[name].reason,
                density=found.density,
                nm=found.nm,
                fan_in=found.fan_in,
                ablated=found.ablated,
                params=params,
                nonzero_params=nonzero,
                flops_dense=f.dense if f else 0,
                flops_sparse=f.sparse if f else 0,
            )
        )
    return rows
