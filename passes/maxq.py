"""MaxQ: multi-axis query soft N:M masks with incremental sparsity (Xiang et al., CVPR 2024,
arXiv 2312.07061; authors' code JingyangXiang/MaxQ, ``mullt_axis_query_v2_pro.py``).

Per target layer, at every training forward and without gradient (paper Sec. 3, "Multi-Axis
Query" and "Incremental N:M sparsity"):

1. ``mask_local``: magnitude N:M, 0 on the M-N smallest ``|w|`` of each group of M input
   channels; then the ``int(p(e) * groups)`` groups with the *smallest* block L1 norm are left
   dense (incremental sparsity, preserve rate ``p(e)``).
2. Soft factors queried along two more axes (:func:`axis_soft`): per output filter
   (``m_filter``) and, for k x k kernels with k > 1, per kernel position (``m_position``).
3. ``mask = mask_local * (1 + m_filter + m_position)``: 0 on pruned weights, 1 to ~3 on kept
   ones. The forward uses ``W * mask`` with a straight-through gradient; after backward
   ``grad += lam * (1 - clamp(mask, 0, 1)) * W`` (SR-STE decay, ``lam = 2e-4``).

In eval the mask is frozen; folding multiplies it into the weight, which keeps the N:M pattern
exact because the soft factors only scale nonzeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.finetune import (
    DecayedMask,
    FinetuneConfig,
    SparseDecay,
    finetune,
    straight_through,
)
from sparsify_cli.passes.magnitude import ensure_nm
from sparsify_cli.passes.masks import (
    attach_mask,
    dense_weight,
    get_mask,
    magnitude_nm_mask,
    masked_modules,
)
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.registry import PassContext, register_pass
from sparsify_cli.passes.sparsifier import Callbacks, Plan, register_attach

SCHEDULES = ("linear", "cubic", "cos", "exp")
EXP_RATE = 0.05
"""``b`` of the authors' exponential schedule, ``1 - exp(-b t)``."""


def preserve_rate(schedule: str, epoch: int, start: int, end: int) -> float:
    """Share ``p(e)`` of N:M groups left dense at ``epoch`` (MaxQ incremental sparsity).

    linear ``clip(1 - (e - e_s)/(e_end - e_s), 0, 1)`` (authors' default), cubic
    ``clip((1 - (e - e_s)/(e_end - e_s))^3, 0, 1)``, cos ``cos(pi/2 * (e - e_s)/(e_end - e_s))``
    and exp (normalised ``1 - exp(-b t)``, reaching 0 at ``e_end - 1``) as in the authors' code.
    ``start == end`` means fully N:M from the first epoch.

    >>> [preserve_rate("linear", e, 0, 4) for e in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if schedule not in SCHEDULES:
        raise SparsifyError(f"unknown MaxQ schedule {schedule!r}", expected=f"one of {SCHEDULES}")
    if end <= start:
        return 1.0 if epoch < start else 0.0
    t = (epoch - start) / (end - start)
    if schedule == "linear":
        return min(max(1.0 - t, 0.0), 1.0)
    if schedule == "cubic":
        return min(max((1.0 - t) ** 3, 0.0), 1.0)
    if epoch < start:
        return 1.0
    if epoch >= end:
        return 0.0
    if schedule == "cos":
        return math.cos(t * math.pi / 2)
    span = end - start - 1
    if span <= 0:
        return 0.0
    return 1.0 - (1.0 - math.exp(-EXP_RATE * (epoch - start))) / (1.0 - math.exp(-EXP_RATE * span))


def dense_groups(weight: torch.Tensor, m: int, rate: float) -> torch.Tensor:
    """Bool ``[groups]``: the ``int(rate * groups)`` N:M groups with the smallest block L1 norm
    (groups ordered as in :func:`sparsify_cli.passes.masks.magnitude_nm_mask`: M consecutive input
    channels at each output and kernel position). Ties go to the earlier group."""
    l1 = weight.detach().abs().movedim(1, -1).reshape(-1, m).sum(-1)
    keep = int(rate * l1.numel())
    out = torch.zeros_like(l1, dtype=torch.bool)
    if keep:
        out[torch.sort(l1, stable=True).indices[:keep]] = True
    return out


def axis_soft(a: torch.Tensor, r: float, tau: float) -> torch.Tensor:
    """Parameter-free soft query of each row of ``a`` (rows = query groups, columns = members).

    ``K = int(r * columns)``; ``thr`` = midpoint of the K-th and (K+1)-th smallest value of the
    row; result ``hard * sigmoid((a - thr) / tau)`` with ``hard`` 0 on the K smallest members.
    One ``topk`` of the ``columns - K + 1`` largest gives both neighbours of the threshold and the
    kept members (half the cost of the authors' full sort; equal values at the threshold are
    split arbitrarily, as with an unstable sort).
    """
    k = int(r * a.shape[1])  # >= 1: r >= 1/M and every row has at least M members
    keep = a.shape[1] - k
    values, order = torch.topk(a, keep + 1, dim=1)
    thr = values[:, keep - 1 : keep + 1].mean(dim=1, keepdim=True)
    hard = torch.zeros_like(a).scatter_(1, order[:, :keep], 1.0)
    return hard * torch.sigmoid((a - thr) / tau)


@torch.no_grad()
def maxq_soft_mask(
    weight: torch.Tensor, pattern: NMPattern, rate: float, tau: float = 1e-2
) -> torch.Tensor:
    """``mask_local * (1 + m_filter + m_position)`` for a Linear or Conv2d weight.

    ``mask_local`` is magnitude N:M with the ``int(rate * groups)`` smallest-L1 groups dense;
    ``m_filter = axis_soft(|W|.flatten(1))``; ``m_position = axis_soft(|W| as [k*k, out*in])``
    for kernels larger than 1x1, else 0.
    """
    a = weight.detach().abs().float()
    local = magnitude_nm_mask(a, pattern).float()
    dense = dense_groups(a, pattern.m, rate)
    moved = local.movedim(1, -1)
    groups = moved.reshape(-1, pattern.m)
    groups[dense] = 1.0
    local = groups.reshape(moved.shape).movedim(-1, 1)
    r = (pattern.m - pattern.n) / pattern.m
    soft = 1.0 + axis_soft(a.flatten(1), r, tau).reshape(a.shape)
    if a.ndim == 4 and a.shape[2] * a.shape[3] > 1:
        positions = a.reshape(a.shape[0] * a.shape[1], -1).T
        soft = soft + axis_soft(positions, r, tau).T.reshape(a.shape)
    return (local * soft).to(weight.dtype)


class MaxQMask(DecayedMask):
    """Soft N:M mask: recomputed from the dense weight at each training forward, frozen in eval.

    ``soft`` (float) is what multiplies the weight; ``mask`` (bool, ``soft != 0``) is the hard
    pattern the manifest records. ``rate`` is the preserve rate the current ``soft`` was built
    with (0 means exact N:M).
    """

    def __init__(self, weight: torch.Tensor, pattern: NMPattern, rate: float, tau: float) -> None:
        soft = maxq_soft_mask(weight, pattern, rate, tau)
        super().__init__(soft != 0, str(pattern))
        self.nm = pattern
        self.tau = tau
        self.register_buffer("soft", soft)
        self.register_buffer("rate", torch.tensor(float(rate)))
        self.target_rate = float(rate)

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor, rate: float) -> None:
        self.soft.copy_(maxq_soft_mask(weight, self.nm, rate, self.tau))
        self.mask.copy_(self.soft != 0)
        self.rate.fill_(rate)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.refresh(weight, self.target_rate)
        return straight_through(weight, self.soft)

    def decay_factor(self) -> torch.Tensor:
        return 1.0 - self.soft.clamp(0, 1)

    def folded(self, weight: torch.Tensor) -> torch.Tensor:
        """``W * mask``; checks exactly N nonzeros in every group of ``clamp(mask, max=1)``."""
        counts = self.mask.movedim(1, -1).reshape(-1, self.nm.m).sum(-1)
        if bool((counts != self.nm.n).any()):
            raise SparsifyError(
                f"MaxQ mask is not exact {self.nm} at folding",
                expected=f"{self.nm.n} nonzeros in every group of {self.nm.m}",
                found=f"{int((counts != self.nm.n).sum())} groups otherwise (preserve rate "
                f"{float(self.rate):g})",
            )
        return weight * self.soft


@dataclass(frozen=True)
class MaxQConfig(FinetuneConfig):
    """MaxQ fine-tuning. ``schedule_start`` / ``schedule_end`` are fractions of the epochs
    (authors: epochs 0 -> 30 of 120, i.e. 0 -> 0.25); the last epoch is always fully N:M."""

    name: ClassVar[str] = "maxq"
    next_passes: ClassVar[tuple[str, ...]] = ("fold",)
    decay: float = 2e-4
    tau: float = 1e-2
    schedule: str = "linear"
    schedule_start: float = 0.0
    schedule_end: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in SCHEDULES:
            raise SparsifyError(
                f"unknown MaxQ schedule {self.schedule!r}", expected=f"one of {SCHEDULES}"
            )
        if not 0 <= self.schedule_start <= self.schedule_end <= 1:
            raise SparsifyError(
                "invalid MaxQ schedule window",
                expected="0 <= schedule_start <= schedule_end <= 1",
                found=f"{self.schedule_start}, {self.schedule_end}",
            )

    def epoch_window(self) -> tuple[int, int]:
        """``(e_s, e_end)`` in epochs, with ``e_end <= epochs - 1`` so training ends at N:M."""
        last = max(self.epochs - 1, 0)
        end = min(round(self.schedule_end * self.epochs), last)
        return min(round(self.schedule_start * self.epochs), end), end

    def rate(self, epoch: int) -> float:
        start, end = self.epoch_window()
        return preserve_rate(self.schedule, epoch, start, end)


class MaxQSchedule(SparseDecay):
    """Sets each mask's preserve rate at epoch start; the SR-STE decay is its gradient hook.

    :meth:`close` ends training: a mask still short of N:M (training stopped before the
    schedule's end, e.g. a non-finite loss or a user loop with fewer epochs) is projected to
    exact N:M from its current weight.
    """

    def __init__(self, config: MaxQConfig, model: nn.Module) -> None:
        super().__init__(config.decay, model)
        self.config = config
        self.model = model

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        for mask in _maxq_masks(model):
            mask.target_rate = self.config.rate(epoch)

    def close(self) -> None:
        super().close()
        for _, module in masked_modules(self.model):
            mask = get_mask(module)
            if isinstance(mask, MaxQMask) and float(mask.rate) > 0:
                mask.refresh(dense_weight(module), 0.0)
                mask.target_rate = 0.0


def _maxq_masks(model: nn.Module) -> list[MaxQMask]:
    return [m for m in model.modules() if isinstance(m, MaxQMask)]


def _ensure(model: nn.Module, config: MaxQConfig, ctx: PassContext) -> None:
    ensure_nm(model, config.pattern, ctx.targets)


@register_attach(MaxQConfig)
def attach_maxq(model: nn.Module, config: MaxQConfig, plan: Plan) -> Callbacks:
    """:class:`MaxQMask` on every target, at the schedule's first preserve rate."""
    modules = dict(model.named_modules())
    rate = config.rate(0) if config.epochs else 0.0
    for name in plan.targets:
        module = modules[name]
        attach_mask(module, MaxQMask(dense_weight(module), config.pattern, rate, config.tau))
    return MaxQSchedule(config, model)


@register_pass(MaxQConfig, ensures=_ensure)
def maxq(model: nn.Module, config: MaxQConfig, ctx: PassContext) -> nn.Module:
    """Attach :class:`MaxQMask` to every target and fine-tune; returns the model in eval mode."""
    return finetune(model, config, ctx)
