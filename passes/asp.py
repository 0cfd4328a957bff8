"""The ASP recipe (NVIDIA Apex, Mishra et al., arXiv 2104.08378): one-shot magnitude N:M on the
trained dense model, then retraining with the mask fixed under the same optimizer, schedule and
epochs as the other fine-tuning methods. Pruned weights get no gradient (``W * mask``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from sparsify_cli.passes.finetune import FinetuneConfig, finetune
from sparsify_cli.passes.magnitude import NMConfig, ensure_nm, magnitude_nm
from sparsify_cli.passes.registry import PassContext, register_pass
from sparsify_cli.passes.sparsifier import Callbacks, Plan, register_attach


@dataclass(frozen=True)
class ASPConfig(FinetuneConfig):
    """Magnitude N:M, then fine-tune with the mask fixed."""

    name: ClassVar[str] = "asp"
    next_passes: ClassVar[tuple[str, ...]] = ("fold",)


def _ensure(model: nn.Module, config: ASPConfig, ctx: PassContext) -> None:
    ensure_nm(model, config.pattern, ctx.targets)


@register_attach(ASPConfig)
def attach_asp(model: nn.Module, config: ASPConfig, plan: Plan) -> Callbacks:
    """Magnitude N:M masks, fixed for the whole training."""
    magnitude_nm(model, NMConfig(config.n, config.m), PassContext(targets=plan.targets))
    return Callbacks()


@register_pass(ASPConfig, ensures=_ensure)
def asp(model: nn.Module, config: ASPConfig, ctx: PassContext) -> nn.Module:
    """Prune once by magnitude, fine-tune with the fixed masks; returns the model in eval mode."""
    return finetune(model, config, ctx)
