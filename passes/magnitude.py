"""One-shot magnitude N:M: the baseline every trained pass must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.masks import WeightMask, attach_mask, dense_weight, magnitude_nm_mask
from sparsify_cli.passes.pattern import NMPattern, nm_violations
from sparsify_cli.passes.registry import PassContext, register_pass


@dataclass(frozen=True)
class NMConfig:
    """Keep the N largest |w| of every M consecutive weights along the reduction axis.

    >>> NMConfig(n=2, m=4).pattern
    NMPattern(n=2, m=4)
    """

    name: ClassVar[str] = "magnitude"
    next_passes: ClassVar[tuple[str, ...]] = ("fold",)
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        NMPattern(self.n, self.m)  # validates

    @property
    def pattern(self) -> NMPattern:
        return NMPattern(self.n, self.m)

    @property
    def group_size(self) -> int:
        """A layer is eligible when its reduction size divides by M."""
        return self.m


def ensure_nm(model: nn.Module, pattern: NMPattern, targets: list[str] | tuple[str, ...]) -> None:
    """Postcondition of every N:M pass: each target's effective weight holds the pattern."""
    modules = dict(model.named_modules())
    for name in targets:
        weight = modules[name].weight.detach().cpu().numpy()
        bad = nm_violations(weight, pattern)
        if bad:
            raise SparsifyError(
                f"layer {name} breaks {pattern} after sparsification",
                expected=f"at most {pattern.n} nonzeros per group of {pattern.m}",
                found=f"{bad} groups with more",
            )


def _ensure(model: nn.Module, config: NMConfig, ctx: PassContext) -> None:
    ensure_nm(model, config.pattern, ctx.targets)


@register_pass(NMConfig, ensures=_ensure)
@torch.no_grad()
def magnitude_nm(model: nn.Module, config: NMConfig, ctx: PassContext) -> nn.Module:
    """Attach a magnitude N:M :class:`WeightMask` to every target layer, in place."""
    modules = dict(model.named_modules())
    for name in ctx.targets:
        module = modules[name]
        mask = magnitude_nm_mask(dense_weight(module), config.pattern)
        attach_mask(module, WeightMask(mask, str(config.pattern)))
    return model
