"""SR-STE (Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From
Scratch", ICLR 2021, arXiv 2102.04010).

Dense weights are kept; every training forward recomputes the magnitude N:M mask from them and
uses ``W~ = W * mask``; the gradient of ``W~`` passes straight through to every weight (the STE
update ``W <- W - lr * g(W~)``), and SR-STE's sparse-refined term adds
``lambda_w * (1 - mask) * W`` to the gradient of the pruned ones (``W <- W - lr * (g(W~) +
lambda_w * (E_bar . W))``, paper Sec. 4, ``lambda_w = 2e-4``). The mask is frozen in eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparsify_cli.passes.finetune import (
    DecayedMask,
    FinetuneConfig,
    SparseDecay,
    finetune,
    straight_through,
)
from sparsify_cli.passes.magnitude import ensure_nm
from sparsify_cli.passes.masks import attach_mask, dense_weight, magnitude_nm_mask
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.registry import PassContext, register_pass
from sparsify_cli.passes.sparsifier import Callbacks, Plan, register_attach


class SRSTEMask(DecayedMask):
    """Magnitude N:M recomputed from the dense weight at each training forward."""

    def __init__(self, weight: torch.Tensor, pattern: NMPattern) -> None:
        super().__init__(magnitude_nm_mask(weight, pattern), str(pattern))
        self.nm = pattern

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.mask.copy_(magnitude_nm_mask(weight, self.nm))
        return straight_through(weight, self.mask)


@dataclass(frozen=True)
class SRSTEConfig(FinetuneConfig):
    """SR-STE fine-tuning with decay ``lambda_w`` on the pruned weights."""

    name: ClassVar[str] = "srste"
    next_passes: ClassVar[tuple[str, ...]] = ("fold",)
    decay: float = 2e-4


def _ensure(model: nn.Module, config: SRSTEConfig, ctx: PassContext) -> None:
    ensure_nm(model, config.pattern, ctx.targets)


@register_attach(SRSTEConfig)
def attach_srste(model: nn.Module, config: SRSTEConfig, plan: Plan) -> Callbacks:
    """:class:`SRSTEMask` on every target; the SR-STE decay as gradient hooks."""
    modules = dict(model.named_modules())
    for name in plan.targets:
        module = modules[name]
        attach_mask(module, SRSTEMask(dense_weight(module), config.pattern))
    return SparseDecay(config.decay, model)


@register_pass(SRSTEConfig, ensures=_ensure)
def srste(model: nn.Module, config: SRSTEConfig, ctx: PassContext) -> nn.Module:
    """Attach :class:`SRSTEMask` to every target and fine-tune; returns the model in eval mode."""
    return finetune(model, config, ctx)
