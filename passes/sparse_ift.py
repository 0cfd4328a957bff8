"""Sparse-IFT (Thangarasa et al., ICML 2024, arXiv 2303.11525): iso-FLOP sparse layer families.

Each family replaces the target layers of *any* model by a sparse construction whose nonzero
MACs (``sparsify_cli.passes.flops.layer_flops``) equal the dense model's, and warm-starts it from
the dense
weights. For a layer ``D_in -> D_out`` (a conv has ``D_in = k^2 C_in``) at ``P`` positions the
dense cost is ``P D_in D_out`` (paper, sec. 3.1):

- **wide** (sec. 3.2, eq. 2): widen by ``k_sw``, train at sparsity ``s``. A module swap cannot
  widen the residual stream, so this widens the *private hidden dimension* of every chain
  ``producer -> [BatchNorm] -> act -> consumer`` between two targets
  (:func:`sparsify_cli.passes.chains.hidden_chains`: ``conv1 -> bn1 -> relu -> conv2`` inside a
  residual block,
  ``fc1 -> act -> fc2`` of a transformer MLP, and in a plain CNN ``conv -> relu -> maxpool ->
  flatten -> fc``, where widening a conv's channels by ``k`` widens the Linear's inputs by ``k``
  at every pooled position); block input / output widths, the stem's input and the classifier
  do not change. A layer widened on both sides costs ``(1-s) k^2 F``, on one side ``(1-s) k F``,
  not at all ``(1-s) F``; ``k`` solves ``(1-s)(A k^2 + B k + C) = A + B + C`` (``A``, ``B``,
  ``C``: dense FLOPs of targets widened on two, one, no side). With only two-sided layers this
  is the paper's ``k_sw = sqrt(1/(1-s))``, with only one-sided ``1/(1-s)``; targets that cannot be
  widened (shortcut convs, attention projections) are sparsified too and the chains make up
  their FLOPs. New rows / columns get the layer's default init; old weights are copied.
- **parallel** (eq. 3): ``B = round(1/(1-s))`` copies of the layer, outputs summed; a conv
  followed by a BatchNorm gets one BatchNorm per copy. Each copy has density ``1/B`` (``= 1-s``
  when ``1/(1-s)`` is an integer), so FLOPs are exactly dense. Warm start: a random partition of
  ``W`` into ``B`` disjoint parts, one per copy, biases and BN shifts divided by ``B``: the sum is
  the dense layer exactly (eval mode).
- **factorized** (eq. 4): ``U`` (the layer's kernel / stride, ``C_in -> d``) then ``V``
  (``1x1``, ``d -> C_out``), both sparse, ``d = ceil(D_in D_out / ((1-s)(D_in + D_out)))``;
  warm start from the truncated SVD of ``W``. Because ``d`` is rounded up, both factors get
  density ``D_in D_out / (d (D_in + D_out))`` (``<= 1-s``) so FLOPs equal dense exactly.
- **doped** (eq. 5): ``sparse(W) + U V`` with dense rank ``d = floor(s D_in D_out / (D_in +
  D_out))``; warm start ``U V`` = rank-``d`` SVD of ``W`` and the sparse part = the residual
  ``W - U V``. ``d`` is rounded down, so the sparse part gets density
  ``1 - d (D_in + D_out) / (D_in D_out)`` (``>= 1-s``), again exactly dense FLOPs.

The pass attaches magnitude masks (pattern ``"unstructured"``) at those densities and sets
``ctx.targets`` to the new sparse layers, so the ``dst`` pass trains them. Weight decay on the
product ``V U`` (paper, sec. 3) is not applied: the fine-tuning recipe uses no weight decay.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparsify_cli.passes.chains import hidden_chains, norm_after, resize_chain, set_module
from sparsify_cli.passes.dst import unstructured_mask
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.flops import layer_flops
from sparsify_cli.passes.inputs import Example
from sparsify_cli.passes.masks import WeightMask, attach_mask, masked_modules
from sparsify_cli.passes.registry import PassContext, register_pass
from sparsify_cli.passes.selection import Selection, select_layers
from sparsify_cli.passes.trace import ModelTrace, trace_model

log = logging.getLogger(__name__)

FAMILIES = ("wide", "parallel", "factorized", "doped")


@dataclass(frozen=True)
class SparseIFTConfig:
    """Replace the target layers by an iso-FLOP sparse family at sparsity ``sparsity``.

    >>> SparseIFTConfig(family="parallel", sparsity=0.75).branches
    4
    """

    name: ClassVar[str] = "sparse_ift"
    next_passes: ClassVar[tuple[str, ...]] = ("dst", "fold")
    group_size: ClassVar[int] = 1
    """Unstructured masks fit any layer width."""
    family: str = "wide"
    sparsity: float = 0.75

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SparsifyError(f"unknown --ift {self.family!r}", expected=f"one of {FAMILIES}")
        if not 0.0 < self.sparsity < 1.0:
            raise SparsifyError("--sparsity must be in (0, 1)", found=str(self.sparsity))

    @property
    def branches(self) -> int:
        return max(1, round(1 / (1 - self.sparsity)))


class SparseParallel(nn.Module):
    """Sum of parallel branches (Sparse Parallel, eq. 3)."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class SparseDoped(nn.Module):
    """``sparse(x) + lowrank(x)`` (Sparse Doped, eq. 5)."""

    def __init__(self, sparse: nn.Module, lowrank: nn.Module) -> None:
        super().__init__()
        self.sparse = sparse
        self.lowrank = lowrank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse(x) + self.lowrank(x)


def _dims(layer: nn.Module) -> tuple[int, int]:
    """``(D_in, D_out)`` of a Linear / Conv2d (``D_in = k_h k_w C_in``)."""
    return layer.weight[0].numel(), layer.weight.shape[0]


def solve_width(a: float, b: float, c: float, sparsity: float) -> float:
    """Positive root of ``(1-s)(a k^2 + b k + c) = a + b + c`` (see the module docstring).

    >>> round(solve_width(1.0, 0.0, 0.0, 0.75), 6)  # both sides widened: sqrt(1/(1-s))
    2.0
    >>> round(solve_width(0.0, 1.0, 0.0, 0.75), 6)  # one side: 1/(1-s)
    4.0
    """
    total, keep = a + b + c, 1 - sparsity
    rhs = total / keep - c
    if a == 0:
        return rhs / b
    return (-b + math.sqrt(b * b + 4 * a * rhs)) / (2 * a)


def _factors(layer: nn.Module, rank: int, bias: bool) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """Empty ``U`` (C_in -> rank, the layer's kernel / stride) and ``V`` (rank -> C_out, 1x1)."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        u = nn.Linear(layer.in_features, rank, bias=False)
        v = nn.Linear(rank, layer.out_features, bias=bias)
    else:
        u = nn.Conv2d(
            layer.in_channels,
            rank,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            bias=False,
            padding_mode=layer.padding_mode,
        )
        v = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
    u.to(weight.device, weight.dtype)
    v.to(weight.device, weight.dtype)
    return u, v, weight.reshape(weight.shape[0], -1)


@torch.no_grad()
def _svd_into(u: nn.Module, v: nn.Module, matrix: torch.Tensor, rank: int, fill: bool) -> None:
    """``V U`` = the rank-``rank`` truncated SVD of ``matrix``; extra rank gets ``U`` default
    init with ``V`` columns zero (so the product is unchanged) when ``fill``."""
    left, sing, right = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, len(sing))
    root = sing[:r].sqrt()
    u.weight[:r] = (root[:, None] * right[:r]).reshape(u.weight[:r].shape)
    v.weight.zero_()
    v.weight[:, :r] = (left[:, :r] * root).reshape(v.weight[:, :r].shape)
    if not fill:
        u.weight[r:] = 0


def _wide(model, targets, sparsity, example, generator) -> tuple[dict[str, float], list[str]]:
    chains = [
        c
        for c in hidden_chains(model, through_pooling=True)
        if c.producer in targets and c.consumer in targets
    ]
    if not chains:
        raise SparsifyError(
            "Sparse Wide found no hidden dimension to widen",
            expected="producer -> [BatchNorm] -> activation / pooling / flatten -> consumer "
            "chains between targets",
            fix="use --ift parallel, factorized or doped for this model",
        )
    flops = layer_flops(model, example)
    outs = {c.producer for c in chains}
    ins = {c.consumer for c in chains}
    sides = {t: (t in outs) + (t in ins) for t in targets}
    a, b, c = (sum(flops[t].dense for t in targets if sides[t] == n) for n in (2, 1, 0))
    factor = solve_width(a, b, c, sparsity)
    log.info("Sparse Wide: hidden widths x%.3f (A=%d, B=%d, C=%d FLOPs)", factor, a, b, c)
    for chain in chains:
        width = model.get_submodule(chain.producer).weight.shape[0]
        grown = int(round(width * factor)) - width
        index = torch.cat([torch.arange(width), torch.full((grown,), -1)])
        resize_chain(model, chain, index)
    return {t: 1 - sparsity for t in targets}, list(targets)


def _parallel(model, targets, sparsity, example, generator) -> tuple[dict[str, float], list[str]]:
    branches = max(1, round(1 / (1 - sparsity)))
    norms = norm_after(model)
    densities, names = {}, []
    for name in targets:
        layer = model.get_submodule(name)
        norm = model.get_submodule(norms[name]) if name in norms else None
        weight = layer.weight.detach()
        owner = torch.randperm(weight.numel(), generator=generator) % branches
        owner = owner.reshape(weight.shape).to(weight.device)
        copies = []
        for i in range(branches):
            part = copy.deepcopy(layer)
            part.weight.data = weight * (owner == i)
            if part.bias is not None:
                part.bias.data /= branches
            if norm is not None:
                bn = copy.deepcopy(norm)
                # sum_i gamma (y_i - mu/B) / sigma + beta/B == gamma (sum_i y_i - mu) / sigma + beta
                bn.running_mean.data /= branches
                if bn.bias is not None:
                    bn.bias.data /= branches
                part = nn.Sequential(part, bn)
            copies.append(part)
        set_module(model, name, SparseParallel(copies))
        if norm is not None:
            set_module(model, norms[name], nn.Identity())
        for i in range(branches):
            sub = f"{name}.branches.{i}" + (".0" if norm is not None else "")
            densities[sub] = 1 / branches
            names.append(sub)
    return densities, names


def _factorized(model, targets, sparsity, example, generator) -> tuple[dict[str, float], list[str]]:
    densities, names = {}, []
    for name in targets:
        layer = model.get_submodule(name)
        d_in, d_out = _dims(layer)
        rank = math.ceil(d_in * d_out / ((1 - sparsity) * (d_in + d_out)))
        u, v, matrix = _factors(layer, rank, bias=layer.bias is not None)
        _svd_into(u, v, matrix, rank, fill=True)
        if layer.bias is not None:
            v.bias.data.copy_(layer.bias.detach())
        set_module(model, name, nn.Sequential(u, v))
        density = d_in * d_out / (rank * (d_in + d_out))
        for sub in (f"{name}.0", f"{name}.1"):
            densities[sub] = density
            names.append(sub)
    return densities, names


def _doped(model, targets, sparsity, example, generator) -> tuple[dict[str, float], list[str]]:
    densities, names = {}, []
    for name in targets:
        layer = model.get_submodule(name)
        d_in, d_out = _dims(layer)
        rank = math.floor(sparsity * d_in * d_out / (d_in + d_out))
        sparse = copy.deepcopy(layer)
        if rank > 0:
            u, v, matrix = _factors(layer, rank, bias=False)
            _svd_into(u, v, matrix, rank, fill=False)
            low = v.weight.reshape(d_out, rank) @ u.weight.reshape(rank, d_in)
            sparse.weight.data = (matrix - low).reshape(layer.weight.shape)
            lowrank: nn.Module = nn.Sequential(u, v)
        else:
            lowrank = _Zero()
        set_module(model, name, SparseDoped(sparse, lowrank))
        densities[f"{name}.sparse"] = 1 - rank * (d_in + d_out) / (d_in * d_out)
        names.append(f"{name}.sparse")
    return densities, names


class _Zero(nn.Module):
    """The rank-0 low-rank term of a doped layer (``s`` too small for one rank)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=x.dtype, device=x.device)


def ift_targets(
    model: nn.Module,
    example: Example,
    selection: Selection = Selection(),
    trace: ModelTrace | None = None,
) -> list[str]:
    """Layers Sparse-IFT transforms: the selected Linear / Conv2d minus the stem.

    The output head is already kept dense by :func:`sparsify_cli.passes.selection.select_layers`;
    the stem (the first layer the forward pass runs: a conv stem, a patch / token embedding)
    stays dense too, as in the paper, found by execution order rather than by name.
    """
    trace = trace or trace_model(model, example)
    stem = trace.order[0] if trace.order else None
    chosen = [c.name for c in select_layers(model, 1, example, selection, trace) if c.selected]
    return [n for n in chosen if n != stem or selection.include]


_BUILDERS = {"wide": _wide, "parallel": _parallel, "factorized": _factorized, "doped": _doped}


def _ensure(model: nn.Module, config: SparseIFTConfig, ctx: PassContext) -> None:
    masked = {n for n, _ in masked_modules(model)}
    missing = [t for t in ctx.targets if t not in masked]
    if missing:
        raise SparsifyError("Sparse-IFT left target layers unmasked", found=", ".join(missing))


@register_pass(SparseIFTConfig, ensures=_ensure)
@torch.no_grad()
def sparse_ift(model: nn.Module, config: SparseIFTConfig, ctx: PassContext) -> nn.Module:
    """Swap ``ctx.targets`` for the configured family, mask it, point ``ctx.targets`` at it.

    >>> # run_passes(model, [SparseIFTConfig("wide", 0.75), DSTConfig("rigl")], ctx)
    """
    if ctx.example is None:
        raise SparsifyError("Sparse-IFT needs an example input to count FLOPs")
    generator = torch.Generator().manual_seed(ctx.seed)
    dense = sum(f.dense for f in layer_flops(model, ctx.example).values())
    builder = _BUILDERS[config.family]
    densities, names = builder(model, list(ctx.targets), config.sparsity, ctx.example, generator)
    for name in names:
        module = model.get_submodule(name)
        mask = unstructured_mask(module.weight, densities[name], "magnitude", generator)
        attach_mask(module, WeightMask(mask, "unstructured"))
    ctx.targets = names
    sparse = sum(f.sparse for f in layer_flops(model, ctx.example).values())
    ctx.metrics["sparse_ift"] = {
        "family": config.family,
        "sparsity": config.sparsity,
        "flops_dense_model": dense,
        "flops_sparse_model": sparse,
        "layers": len(names),
    }
    log.info(
        "Sparse-IFT %s: FLOPs %d -> %d (%+.2f%%)",
        config.family,
        dense,
        sparse,
        100 * (sparse / dense - 1),
    )
    return model
