"""Which layers a pass sparsifies, and why every other layer is left dense.

Eligible: ``nn.Linear`` and ``nn.Conv2d`` with ``groups == 1`` whose reduction dimension
(``in_features`` / ``in_channels``) divides by M. ``include`` / ``exclude`` are fnmatch patterns
on the fully qualified module name (exclude wins). The model's output head (the layer whose
output *is* the model's output, found by running the example input, not by name) stays dense
unless ``sparsify_head`` is set, as MaxQ and Sparse-IFT keep their classifiers dense.

Every parameter-holding leaf module appears in the result, selected (``reason is None``) or with
the reason it was skipped, so the report can list them all.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsify_cli.passes.inputs import Example
from sparsify_cli.passes.trace import ModelTrace, trace_model

SPARSIFIABLE = (nn.Linear, nn.Conv2d)


def op_name(mod: nn.Module) -> str:
    """The layer kind reports and exporters key on: ``Linear`` / ``Conv2d`` for those classes
    and their subclasses (nn.MultiheadAttention's ``out_proj``, GPT-2's Conv1D read as a Linear, a
    user's own Linear subclass, a parametrized layer), else the class name."""
    for kind in SPARSIFIABLE:
        if isinstance(mod, kind):
            return kind.__name__
    return type(mod).__name__


@dataclass(frozen=True)
class Selection:
    """The user's choice of layers (``--include``, ``--exclude``, ``--sparsify-head``)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sparsify_head: bool = False
    head: tuple[str, ...] = ()
    """Name patterns of layers that belong to the head besides the one that returns the output
    (a transformer's pooler, an LM head tied to the word embeddings): kept dense with it."""


@dataclass(frozen=True)
class LayerChoice:
    """One layer and the verdict: ``reason is None`` means it is sparsified."""

    name: str
    op: str
    shape: tuple[int, ...]
    reason: str | None

    @property
    def selected(self) -> bool:
        return self.reason is None


def output_head(model: nn.Module, example: Example) -> str | None:
    """Name of the sparsifiable layer whose output tensor is returned by the model, if any."""
    return trace_model(model, example).head


def _reason(
    name: str, mod: nn.Module, m: int, selection: Selection, head: str | None
) -> str | None:
    if not isinstance(mod, SPARSIFIABLE):
        return f"{type(mod).__name__} is not sparsified (only Linear and Conv2d)"
    if isinstance(mod, nn.Conv2d) and mod.groups != 1:
        kind = "depthwise" if mod.groups == mod.in_channels else "grouped"
        return f"{kind} conv (groups={mod.groups}) is not sparsified"
    reduction = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
    label = "in_features" if isinstance(mod, nn.Linear) else "in_channels"
    if reduction % m:
        return f"{label} {reduction} not divisible by {m}"
    for pattern in selection.exclude:
        if fnmatch.fnmatchcase(name, pattern):
            return f"excluded by --exclude {pattern!r}"
    if selection.include and not any(fnmatch.fnmatchcase(name, p) for p in selection.include):
        return "not matched by --include"
    in_head = name == head or any(fnmatch.fnmatchcase(name, p) for p in selection.head)
    if in_head and not selection.sparsify_head and not selection.include:
        return "output head kept dense (--sparsify-head to include it)"
    return None


def select_layers(
    model: nn.Module,
    m: int,
    example: Example,
    selection: Selection = Selection(),
    trace: ModelTrace | None = None,
) -> list[LayerChoice]:
    """Classify every parameter-holding leaf module of ``model`` for grouping size ``m``
    (``trace``: a :func:`~sparsify_cli.passes.trace.trace_model` of it, to skip a forward)."""
    head = (trace or trace_model(model, example)).head
    choices = []
    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False)]
        if not own or not name:
            continue
        weight = getattr(mod, "weight", None)
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else tuple(own[0].shape)
        choices.append(
            LayerChoice(name, op_name(mod), shape, _reason(name, mod, m, selection, head))
        )
    return choices


def selected_names(choices: Sequence[LayerChoice]) -> list[str]:
    return [c.name for c in choices if c.selected]
