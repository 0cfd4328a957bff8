"""Data-aware one-shot pruning: SparseGPT (with weight update) and Wanda (mask only).

Both prune layer by layer from calibration inputs, *sequentially*: the calibration batch runs
once through the model and each target layer is pruned in its forward pre-hook, from the input
it receives there, so every layer sees the outputs of the layers before it already pruned (and,
for SparseGPT, updated) and corrects the error they left (SparseGPT, Frantar & Alistarh 2023,
arXiv 2301.00774, Sec. 3-4; Wanda, Sun et al. 2023, arXiv 2306.11695, Sec. 3). Layers that
read the very same input tensor (a transformer's query, key and value projections) share one
statistic; only that one statistic is held at a time (SparseGPT: the ``cols x cols``
Hessian). ``--calib-size`` bounds the activation memory of the one forward.

Layout: every weight is viewed as a matrix ``[out, cols]`` whose columns are the reduction
axis. Linear: ``cols = in`` as stored. Conv2d: im2col columns ordered ``(kh, kw, in)`` (input
channel fastest), so M consecutive columns are M consecutive input channels at one kernel
position, the project's N:M layout (DESIGN.md); masks and weights are mapped back to
``[out, in, kh, kw]`` afterwards.

Patterns: N:M (``n``, ``m``: at most N kept per group of M columns) or constant fan-in
(``sparsity``: every output row keeps the same ``k = max(1, int((1 - s) * cols))`` weights, the
``"fanin"`` pattern that condensed export takes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cli.passes.dst import _row_top
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import Example, call
from sparsify_cli.passes.magnitude import ensure_nm
from sparsify_cli.passes.masks import (
    WeightMask,
    attach_mask,
    dense_weight,
    get_mask,
    magnitude_nm_mask,
)
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.registry import PassContext, register_pass

log = logging.getLogger(__name__)

CalibBatch = tuple[Example, torch.Tensor | None]
"""The calibration batch: the model's inputs and an optional token mask ``[batch, seq]`` (the
attention mask): rows of a layer input shaped ``[batch, seq, ...]`` where it is 0 are padding
and are left out of the statistics."""


# --- configs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OneShotConfig:
    n: int = 2
    m: int = 4
    sparsity: float | None = None
    """Constant fan-in sparsity instead of N:M when set (``n`` and ``m`` are then unused)."""

    def __post_init__(self) -> None:
        if self.sparsity is None:
            NMPattern(self.n, self.m)  # validates
        elif not 0.0 < self.sparsity < 1.0:
            raise SparsifyError(
                f"invalid sparsity {self.sparsity}", expected="0 < s < 1, e.g. 0.75"
            )

    @property
    def pattern(self) -> NMPattern | None:
        return None if self.sparsity is not None else NMPattern(self.n, self.m)

    @property
    def group_size(self) -> int:
        """A layer is eligible when its reduction size divides by M (any size for fan-in)."""
        return 1 if self.sparsity is not None else self.m

    @property
    def label(self) -> str:
        return (
            f"sparsity {self.sparsity:g} (constant fan-in)"
            if self.pattern is None
            else str(self.pattern)
        )


@dataclass(frozen=True)
class SparseGPTConfig(_OneShotConfig):
    """SparseGPT: OBS mask selection and weight update from the layer Hessian ``H = 2 X X^T``.

    ``percdamp`` adds ``percdamp * mean(diag H)`` to the diagonal (the authors' 0.01);
    ``blocksize`` columns are processed per lazy-update block (the authors' 128).

    >>> SparseGPTConfig(n=2, m=4).pattern
    NMPattern(n=2, m=4)
    """

    name: ClassVar[str] = "sparsegpt"
    next_passes: ClassVar[tuple[str, ...]] = ("fold",)
    percdamp: float = 0.01
    blocksize: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.percdamp < 0 or self.blocksize < 1:
            raise SparsifyError(
                "invalid SparseGPT settings",
                expected="percdamp >= 0 and blocksize >= 1",
                found=f"percdamp={self.percdamp}, blocksize={self.blocksize}",
            )


@dataclass(frozen=True)
class WandaConfig(_OneShotConfig):
    """Wanda: score ``|W_ij| * ||X_j||_2`` (input feature norms on calibration data), no update."""

    name: ClassVar[str] = "wanda"
    next_passes: ClassVar[tuple[str, ...]] = ("fold",)


# --- weight <-> matrix layout ------------------------------------------------------------------


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``[out, cols]`` view of a Linear / Conv2d weight, conv columns ordered ``(kh, kw, in)``."""
    if weight.ndim == 2:
        return weight
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def from_matrix(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`as_matrix` for a weight of ``shape``."""
    if len(shape) == 2:
        return matrix.reshape(shape)
    out, cin, kh, kw = shape
    return matrix.reshape(out, kh, kw, cin).permute(0, 3, 1, 2).contiguous()


def _conv_padding(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """``x`` padded as ``conv`` pads it (any mode, ``"same"``), and the padding left to unfold."""
    if isinstance(conv.padding, str):  # "valid" or "same"
        if conv.padding == "valid":
            return x, (0, 0)
        pads = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        return F.pad(x, pads, mode=mode), (0, 0)
    if conv.padding_mode != "zeros":
        return F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), (0, 0)
    return x, tuple(conv.padding)


def layer_rows(module: nn.Module, x: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """The layer's input as rows ``[samples, cols]`` in :func:`as_matrix`'s column order.

    Linear: every leading position is a row (padding tokens dropped when ``tokens`` matches the
    leading axes). Conv2d: im2col, one row per output pixel.
    """
    if isinstance(module, nn.Conv2d):
        x, padding = _conv_padding(module, x)
        cols = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
        batch, _, positions = cols.shape
        kernel = module.kernel_size[0] * module.kernel_size[1]
        cols = cols.reshape(batch, module.in_channels, kernel, positions)
        return cols.permute(0, 3, 2, 1).reshape(batch * positions, -1)
    rows = x.reshape(-1, x.shape[-1])
    if tokens is not None and tuple(tokens.shape) == tuple(x.shape[:-1]):
        rows = rows[tokens.reshape(-1).to(rows.device) != 0]
    return rows


# --- the statistics --------------------------------------------------------------------------

CHUNK = 16
"""Calibration samples turned into rows at a time (im2col of a large conv input is big)."""


class _Statistic:
    """``sum x x^T`` (``full``, SparseGPT) or ``sum x^2`` per column (Wanda) over the rows of
    one layer input."""

    def __init__(self, module: nn.Module, x: torch.Tensor, tokens: torch.Tensor | None, full: bool):
        self.total: torch.Tensor | None = None
        self.rows = 0
        for start in range(0, x.shape[0], CHUNK):
            part = tokens[start : start + CHUNK] if tokens is not None else None
            rows = layer_rows(module, x[start : start + CHUNK], part).float()
            value = rows.T @ rows if full else rows.square().sum(0)
            self.total = value if self.total is None else self.total + value
            self.rows += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """``H = 2 X X^T / rows`` (the mean over rows; SparseGPT is scale-invariant in H)."""
        return 2.0 * self.total / max(self.rows, 1)

    def norms(self) -> torch.Tensor:
        """``||X_j||_2`` per column over every calibration row (Wanda's activation norm)."""
        return self.total.sqrt()


Prune = Callable[[str, nn.Module, _Statistic], None]


def prune_sequentially(
    model: nn.Module,
    targets: Sequence[str],
    batch: CalibBatch,
    full: bool,
    prune: Prune,
    steps: Iterator[object],
) -> None:
    """One forward of ``model`` over the whole calibration ``batch``; each target is pruned in
    its forward pre-hook, from the input it receives there, before it computes.

    So every layer sees the outputs of the layers before it *already pruned* (and, for SparseGPT,
    updated): the sequential scheme of SparseGPT Sec. 3.3, at the granularity of single layers,
    in one pass instead of one per layer. Consecutive targets that read the identical input
    tensor (query, key, value) share one statistic; only that statistic is held. A layer called
    several times in one forward is pruned at its first call. ``steps`` is advanced once per
    pruned layer (progress).
    """
    example, tokens = batch
    modules = dict(model.named_modules())
    remaining = set(targets)
    shared: list = []  # [input tensor, statistic] of the last layer pruned

    def hook(module: nn.Module, args: tuple, name: str) -> None:
        if name not in remaining:
            return
        x = args[0]
        if shared and shared[0] is x:
            stat = shared[1]
        else:
            shared[:] = [x, _Statistic(module, x, tokens, full)]
            stat = shared[1]
        prune(name, module, stat)
        remaining.discard(name)
        next(steps, None)

    handles = [
        modules[name].register_forward_pre_hook(lambda mod, args, name=name: hook(mod, args, name))
        for name in targets
    ]
    try:
        with torch.no_grad():
            call(model, example)
    finally:
        for handle in handles:
            handle.remove()
        shared.clear()
    if remaining:
        missing = [name for name in targets if name in remaining]
        raise SparsifyError(
            f"layers {missing[:3]} never ran on the calibration data",
            expected="every selected layer to be called by the model's forward",
            fix="exclude those layers with --exclude",
        )


def calibration_batch(x: object, calib_size: int, device: torch.device) -> CalibBatch:
    """The first ``calib_size`` rows of ``x`` (one array or ``name -> array``) as one batch on
    ``device``, with its token mask (the ``attention_mask`` input, when there is one).

    One batch, because the layers are pruned inside one forward (:func:`prune_sequentially`):
    ``calib_size`` bounds the activation memory of that forward.
    """
    import numpy as np

    from sparsify_cli.passes.inputs import batch_size, rows

    chunk = rows(x, slice(0, min(batch_size(x), calib_size)))
    if isinstance(chunk, np.ndarray):
        return torch.as_tensor(chunk).to(device), None
    example = {k: torch.as_tensor(v).to(device) for k, v in chunk.items()}
    return example, example.get("attention_mask")


# --- the algorithms on one matrix --------------------------------------------------------------


def _prune_counts(cols: int, sparsity: float) -> int:
    """Columns each row loses under constant fan-in: ``cols - max(1, int((1 - s) * cols))``."""
    return cols - max(1, int((1.0 - sparsity) * cols))


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: NMPattern | None,
    sparsity: float | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one ``[rows, cols]`` matrix: ``(updated weight, keep mask)``.

    Paper Algorithm 1: with ``U`` the upper Cholesky factor of ``(H + lambda I)^-1``, columns are
    visited left to right; at the start of each group of M the ``M - N`` weights of lowest OBS
    saliency ``w^2 / [H^-1]_jj = w^2 / U_jj^2`` (Eq. 3, using the already-updated weights) are
    pruned; each visited column's error ``(w - q) / U_jj`` is spread over the remaining columns
    of its block along ``U_j,:`` (the OBS update, Eq. 2), and over later blocks lazily, once per
    block. Constant fan-in selects per row and block the ``c`` lowest-saliency weights, ``c``
    spread over the blocks so every row loses the same total. Inputs that never fired
    (``H_jj = 0``) get ``H_jj = 1`` so ``H`` is invertible.
    """
    w = weight.detach().clone().float()
    rows, cols = w.shape
    h = hessian.detach().clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    damp = percdamp * torch.mean(torch.diag(h))
    h += damp * torch.eye(cols, device=h.device)
    factor = torch.linalg.cholesky(h)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    budget = _prune_counts(cols, sparsity) if pattern is None else 0
    if pattern is not None and blocksize % pattern.m:
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        diag = torch.diag(hinv1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if pattern is None:
            count = round(budget * i2 / cols) - round(budget * i1 / cols)
            if count:
                mask1 = _row_top(-(w1.square() / diag.square()), count)
        for i in range(i2 - i1):
            if pattern is not None and i % pattern.m == 0:
                scores = w1[:, i : i + pattern.m].square() / diag[i : i + pattern.m].square()
                lowest = torch.sort(scores, dim=1, stable=True).indices[:, : pattern.m - pattern.n]
                mask1[:, i : i + pattern.m].scatter_(1, lowest, True)
            col = w1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            q1[:, i] = q
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype), ~pruned


def wanda_mask(
    weight: torch.Tensor, norms: torch.Tensor, pattern: NMPattern | None, sparsity: float | None
) -> torch.Tensor:
    """Keep mask of one ``[rows, cols]`` matrix from Wanda's scores ``|W_ij| * ||X_j||_2``.

    N:M: the N highest scores of each group of M columns. Constant fan-in: the ``k`` highest
    of each row (Wanda compares weights per output row, paper Eq. 1). Ties to the lower index.
    """
    scores = weight.detach().abs().float() * norms.float().unsqueeze(0)
    if pattern is not None:
        return magnitude_nm_mask(scores, pattern)
    return _row_top(scores, weight.shape[1] - _prune_counts(weight.shape[1], sparsity))


# --- the passes ------------------------------------------------------------------------------


def _calibration(ctx: PassContext, method: str) -> CalibBatch:
    if ctx.calibration is None:
        raise SparsifyError(
            f"--method {method} needs calibration data",
            fix="pass --data (a dataset name such as digits, an .npz, or for Hugging Face text "
            "models a .txt / .jsonl file); --calib-size sets how many rows are used",
        )
    return ctx.calibration


def _prune(model: nn.Module, config: _OneShotConfig, ctx: PassContext, full: bool) -> None:
    pattern = "fanin" if config.pattern is None else str(config.pattern)

    def prune(name: str, module: nn.Module, stat: _Statistic) -> None:
        original = dense_weight(module)
        matrix = as_matrix(original.detach())
        if full:
            new, keep = sparsegpt_prune(
                matrix,
                stat.hessian(),
                config.pattern,
                config.sparsity,
                config.blocksize,
                config.percdamp,
            )
            original.data.copy_(from_matrix(new, original.shape))
        else:
            keep = wanda_mask(matrix, stat.norms(), config.pattern, config.sparsity)
        attach_mask(module, WeightMask(from_matrix(keep, original.shape), pattern))
        log.debug("%s: pruned %s from %d calibration rows", config.name, name, stat.rows)

    batch = _calibration(ctx, config.name)
    steps = iter(
        ctx.track(range(len(ctx.targets)), f"{config.name} {config.label}", len(ctx.targets))
    )
    prune_sequentially(model, ctx.targets, batch, full, prune, steps)
    for _ in steps:  # close the progress display
        pass


def ensure_pattern(model: nn.Module, config: _OneShotConfig, ctx: PassContext) -> None:
    """N:M holds in every target, or every row's mask keeps exactly the same fan-in ``k``."""
    if config.pattern is not None:
        ensure_nm(model, config.pattern, ctx.targets)
        return
    modules = dict(model.named_modules())
    for name in ctx.targets:
        mask = get_mask(modules[name]).mask
        counts = torch.count_nonzero(mask.reshape(mask.shape[0], -1), dim=1)
        k = mask[0].numel() - _prune_counts(mask[0].numel(), config.sparsity)
        if bool((counts != k).any()):
            raise SparsifyError(
                f"layer {name} breaks constant fan-in after {config.name}",
                expected=f"{k} kept weights in every output row",
                found=f"{int(counts.min())} to {int(counts.max())}",
            )


@register_pass(SparseGPTConfig, ensures=ensure_pattern)
def sparsegpt(model: nn.Module, config: SparseGPTConfig, ctx: PassContext) -> nn.Module:
    """Prune every target with SparseGPT, sequentially, in place (masks + updated weights)."""
    _prune(model.to(ctx.device).eval(), config, ctx, full=True)
    return model


@register_pass(WandaConfig, ensures=ensure_pattern)
def wanda(model: nn.Module, config: WandaConfig, ctx: PassContext) -> nn.Module:
    """Prune every target with Wanda, sequentially, in place (masks only)."""
    _prune(model.to(ctx.device).eval(), config, ctx, full=False)
    return model


__all__ = [
    "SparseGPTConfig",
    "WandaConfig",
    "as_matrix",
    "calibration_batch",
    "from_matrix",
    "layer_rows",
    "prune_sequentially",
    "sparsegpt_prune",
    "wanda_mask",
]
