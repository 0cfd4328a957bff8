"""Folding: masks (binary or soft) become constants with exact zeros."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.masks import fold, manifest_entries, masked_modules
from sparsify_cli.passes.registry import PassContext, register_pass


@dataclass(frozen=True)
class FoldConfig:
    """Fold every mask into its weight; the model leaves with no parametrizations."""

    name: ClassVar[str] = "fold"
    next_passes: ClassVar[tuple[str, ...]] = ()


def _ensure(model: nn.Module, config: FoldConfig, ctx: PassContext) -> None:
    left = [name for name, _ in masked_modules(model)]
    if left:
        raise SparsifyError("masks left after folding", found=", ".join(left))


@register_pass(FoldConfig, ensures=_ensure)
def fold_pass(model: nn.Module, config: FoldConfig, ctx: PassContext) -> nn.Module:
    """Record the manifest entries of every mask in ``ctx.manifest``, then fold them."""
    ctx.manifest.update(manifest_entries(model))
    return fold(model)
