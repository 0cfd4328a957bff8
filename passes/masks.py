"""Masks as parametrizations with a saved bool buffer, and folding them away.

A masked layer is an ordinary module whose ``weight`` is parametrized by :class:`WeightMask`:
``module.weight`` reads ``original * mask`` and the bool mask is a buffer, so it travels in
``state_dict`` (unlike ``torch.ao.pruning.FakeSparsity``). Passes that need a different forward
(MaxQ's soft masks, SR-STE) subclass :class:`WeightMask` and keep the same buffer, so manifest
building and folding serve every pass.

Lifecycle (as in torch.ao.pruning): attach -> update ``mask`` in place -> :func:`fold`, after
which the model is a plain ``nn.Module`` with exact zeros and no mask machinery.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsify_cli.passes.manifest import TensorEntry
from sparsify_cli.passes.pattern import NMPattern, fan_in
from sparsify_cli.passes.selection import op_name


class WeightMask(nn.Module):
    """``weight = original * mask``; ``mask`` is a bool buffer saved in ``state_dict``.

    ``pattern`` is the declared pattern (``"2:4"``, ``"fanin"`` or ``"unstructured"``); it is
    metadata for the manifest, not state.
    """

    def __init__(self, mask: torch.Tensor, pattern: str) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().bool())
        self.pattern = pattern

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def folded(self, weight: torch.Tensor) -> torch.Tensor:
        """The constant that replaces ``weight`` when the mask is folded (exact zeros off-mask)."""
        return self.forward(weight)


def attach_mask(module: nn.Module, mask: WeightMask) -> None:
    """Parametrize ``module.weight`` with ``mask`` (replacing any mask already attached)."""
    if is_masked(module):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    parametrize.register_parametrization(module, "weight", mask)


def is_masked(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and isinstance(
        module.parametrizations["weight"][0], WeightMask
    )


def get_mask(module: nn.Module) -> WeightMask:
    return module.parametrizations["weight"][0]


def masked_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every module whose weight carries a :class:`WeightMask`."""
    return [(name, mod) for name, mod in model.named_modules() if is_masked(mod)]


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The trainable tensor under the mask (the weight itself when unmasked)."""
    if is_masked(module):
        return module.parametrizations["weight"].original
    return module.weight


@torch.no_grad()
def fold(model: nn.Module) -> nn.Module:
    """Replace every mask by its folded constant, in place; returns ``model`` for chaining.

    After folding, ``weight`` is a plain ``Parameter`` holding exact zeros where the mask was off.
    """
    for _, module in masked_modules(model):
        mask = get_mask(module)
        value = mask.folded(dense_weight(module)).detach().clone()
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        module.weight.data.copy_(value)
    return model


def magnitude_nm_mask(weight: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Bool mask keeping the N largest ``|w|`` of each group of M along the reduction axis (dim 1).

    Ties are broken by index (the earlier weight is kept), so the mask is deterministic.

    >>> magnitude_nm_mask(torch.arange(1., 9.).reshape(1, 8), NMPattern(2, 4)).int().tolist()
    [[0, 0, 1, 1, 0, 0, 1, 1]]
    """
    m = pattern.m
    moved = weight.detach().movedim(1, -1)
    groups = moved.abs().reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, : pattern.n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def manifest_entries(model: nn.Module) -> dict[str, TensorEntry]:
    """Describe every masked weight of ``model`` (call before :func:`fold`)."""
    entries = {}
    for name, module in masked_modules(model):
        wmask = get_mask(module)
        mask = wmask.mask.cpu().numpy()
        counts = fan_in(mask)
        active = counts[counts > 0]
        constant = active.size > 0 and bool((active == active[0]).all())
        entries[f"{name}.weight"] = TensorEntry(
            name=f"{name}.weight",
            module=name,
            op=op_name(module),
            shape=tuple(mask.shape),
            pattern=wmask.pattern,
            density=float(mask.mean()),
            fan_in=int(active[0]) if constant else None,
            ablated=tuple(int(i) for i in np.flatnonzero(counts == 0)),
            mask=mask,
        )
    return entries
