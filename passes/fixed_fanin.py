"""Fixed fan-in sparse output layer and its SET rewiring (Ullah et al., NeurIPS 2024,
arXiv 2411.03171, "Navigating Extremes: Dynamic Sparsity in Large Output Spaces").

With millions of labels the classifier ``d_in -> L`` dominates memory: dense it needs ``L * d_in``
weights, as many gradients and twice as many Adam moments. The paper's layer keeps, for every
label ``j``, exactly ``f`` inputs (*fixed fan-in*, Sec. 3 "semi-structured sparsity"):

* ``indices [L, f]`` int32 -- distinct, sorted input ids of each row,
* ``weight  [L, f]`` and ``bias [L]``,

so memory is ``2 L f`` plus optimizer state on ``L f``; no dense mask, no dense gradient.
The kernel semantics (Sec. 3, the forward/backward of the fixed fan-in product) are

    y[b, j]  = sum_t W[j, t] * x[b, idx[j, t]] + bias[j]
    dW[j, t] = sum_b g[b, j] * x[b, idx[j, t]]
    dx[b, i] = sum_{(j, t): idx[j, t] = i} g[b, j] * W[j, t]        (scatter-add)

The authors use a CUDA kernel; here the same semantics run in PyTorch ops, chunked over labels so
the gathered ``[c, f, B]`` block (the only temporary larger than the output) stays within a fixed
element budget whatever ``L`` is.

Connectivity evolves with SET (Mocanu et al. 2018) as the paper does (Sec. 3 "DST with fixed
fan-in"): every ``interval`` steps until 66% of training, weak connections are pruned and each
freed slot stays in its row -- fan-in is kept exactly -- and receives a uniformly random new input
not already in that row, with weight 0 and reset optimizer moments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sparsify_cli.passes.sparsifier import Callbacks

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # 16M gathered elements: 64 MiB in fp32 per chunk


def _chunk_labels(num_labels: int, fan_in: int, batch: int, chunk_elements: int) -> int:
    """Labels per chunk so that the gathered ``[c, f, B]`` block holds <= ``chunk_elements``."""
    return max(1, min(num_labels, chunk_elements // max(1, fan_in * batch)))


class _FixedFanInFunction(torch.autograd.Function):
    """The fixed fan-in product with the paper's backward (see module docstring), chunked.

    Inputs are read transposed (``x.T`` is ``[d_in, B]``) so ``index_select`` copies contiguous
    rows of length ``B``; ``dx`` is accumulated with ``index_add_`` into ``[d_in, B]``.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        indices: torch.Tensor,
        chunk_elements: int,
    ) -> torch.Tensor:
        num_labels, fan_in = weight.shape
        batch = x.shape[0]
        xt = x.t().contiguous()
        out_t = torch.empty(num_labels, batch, dtype=x.dtype, device=x.device)
        step = _chunk_labels(num_labels, fan_in, batch, chunk_elements)
        for s in range(0, num_labels, step):
            e = min(num_labels, s + step)
            gathered = xt.index_select(0, indices[s:e].reshape(-1)).view(e - s, fan_in, batch)
            torch.bmm(weight[s:e].unsqueeze(1), gathered, out=out_t[s:e].unsqueeze(1))
        if bias is not None:
            out_t += bias.unsqueeze(1)
        ctx.save_for_backward(xt, weight, indices)
        ctx.has_bias = bias is not None
        ctx.chunk_elements = chunk_elements
        return out_t.t()

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        xt, weight, indices = ctx.saved_tensors
        num_labels, fan_in = weight.shape
        batch = xt.shape[1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_xt = torch.zeros_like(xt) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        step = _chunk_labels(num_labels, fan_in, batch, ctx.chunk_elements)
        for s in range(0, num_labels, step):
            e = min(num_labels, s + step)
            g = grad_out[:, s:e].t().contiguous()  # [c, B]
            idx = indices[s:e].reshape(-1)
            if grad_w is not None:
                gathered = xt.index_select(0, idx).view(e - s, fan_in, batch)
                torch.bmm(gathered, g.unsqueeze(2), out=grad_w[s:e].unsqueeze(2))
            if grad_xt is not None:
                contrib = weight[s:e].unsqueeze(2) * g.unsqueeze(1)  # [c, f, B]
                grad_xt.index_add_(0, idx, contrib.view(-1, batch))
        grad_x = grad_xt.t() if grad_xt is not None else None
        grad_b = grad_out.sum(0) if (need_b and ctx.has_bias) else None
        return grad_x, grad_w, grad_b, None, None


def random_indices(
    d_in: int, num_labels: int, fan_in: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[L, f]`` int32: per row ``f`` distinct inputs drawn uniformly, sorted ascending.

    Drawn in row chunks (top-f of uniform keys) so peak memory stays ~64 MiB at any ``L``.
    """
    if not 0 < fan_in <= d_in:
        raise ValueError(f"fan_in must be in [1, {d_in}], got {fan_in}")
    out = torch.empty(num_labels, fan_in, dtype=torch.int32)
    step = max(1, (1 << 24) // d_in)
    for s in range(0, num_labels, step):
        e = min(num_labels, s + step)
        keys = torch.rand(e - s, d_in, generator=generator)
        out[s:e] = keys.topk(fan_in, dim=1).indices.sort(dim=1).values.to(torch.int32)
    return out


class FixedFanInLinear(nn.Module):
    """``d_in -> num_labels`` with exactly ``fan_in`` inputs per output (paper Sec. 3).

    Example::

        layer = FixedFanInLinear(768, 1_000_000, fan_in=32)   # 96% sparse, 2 * 32M floats
        logits = layer(features)                               # [B, 1_000_000]

    ``chunk_elements`` bounds the temporary gathered block of forward and backward.
    """

    def __init__(
        self,
        d_in: int,
        num_labels: int,
        fan_in: int,
        bias: bool = True,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if fan_in >= d_in:
            raise ValueError(f"fan_in ({fan_in}) must be below d_in ({d_in}) for a sparse layer")
        self.d_in, self.num_labels, self.fan_in = d_in, num_labels, fan_in
        self.chunk_elements = chunk_elements
        self.register_buffer("indices", random_indices(d_in, num_labels, fan_in, generator))
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's init with the true fan-in
        self.weight = nn.Parameter(torch.empty(num_labels, fan_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(num_labels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        out = _FixedFanInFunction.apply(
            x.reshape(-1, self.d_in), self.weight, self.bias, self.indices, self.chunk_elements
        )
        return out.reshape(*lead, self.num_labels)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense ``[L, d_in]`` matrix (for tests and small exports only)."""
        dense = torch.zeros(self.num_labels, self.d_in, dtype=self.weight.dtype)
        return dense.scatter_(1, self.indices.long(), self.weight.detach())

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, num_labels={self.num_labels}, fan_in={self.fan_in}, "
            f"sparsity={1 - self.fan_in / self.d_in:.1%}"
        )


def fixed_fanin_layers(model: nn.Module) -> Iterator[tuple[str, FixedFanInLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, FixedFanInLinear):
            yield name, module


@dataclass(frozen=True)
class RewireConfig:
    """SET schedule of the paper (Sec. 3; ALGORITHMS.md "Large output spaces").

    ``mode="threshold"`` prunes ``|W| < tau_t`` with ``tau_t`` cosine-decayed from ``tau_start``
    to ``tau_end`` over the rewiring period; ``mode="fraction"`` prunes the ``fraction`` smallest
    ``|W|`` of the layer. Rewiring happens every ``interval`` steps while
    ``step < stop_fraction * total_steps``.
    """

    interval: int = 500
    stop_fraction: float = 0.66
    mode: str = "threshold"
    tau_start: float = 0.02
    tau_end: float = 1e-4
    fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.mode not in ("threshold", "fraction"):
            raise ValueError(f"mode must be 'threshold' or 'fraction', got {self.mode!r}")
        if self.interval < 1 or not 0 < self.stop_fraction <= 1 or not 0 < self.fraction < 1:
            raise ValueError("interval >= 1, 0 < stop_fraction <= 1, 0 < fraction < 1 required")

    def tau(self, step: int, total_steps: int) -> float:
        """Cosine decay ``tau_end + (tau_start - tau_end) (1 + cos(pi t / T)) / 2``."""
        period = max(1.0, self.stop_fraction * total_steps)
        t = min(1.0, step / period)
        return self.tau_end + 0.5 * (self.tau_start - self.tau_end) * (1 + math.cos(math.pi * t))


def _draw_new_inputs(
    indices: torch.Tensor, fresh: torch.Tensor, d_in: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Fill the ``fresh`` slots with uniform inputs so that no row holds an input twice.

    Rejection sampling: draw all fresh slots, find duplicates within each row (sort + compare
    neighbours), redraw only the fresh slots involved; kept slots never move. Terminates with
    probability 1 because ``f < d_in``.
    """
    idx = indices.long().clone()
    redraw = fresh.clone()
    while bool(redraw.any()):
        n = int(redraw.sum())
        idx[redraw] = torch.randint(0, d_in, (n,), generator=generator)
        values, order = idx.sort(dim=1)
        dup = values[:, 1:] == values[:, :-1]
        clash = torch.zeros(idx.shape, dtype=torch.int32)
        clash.scatter_add_(1, order[:, 1:], dup.to(torch.int32))
        clash.scatter_add_(1, order[:, :-1], dup.to(torch.int32))
        redraw = clash.bool() & fresh
    return idx


@torch.no_grad()
def rewire(
    layer: FixedFanInLinear,
    prune: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One SET update of ``layer``: slots where ``prune`` is True get new random inputs.

    Each freed slot stays in its row (fan-in is exact), its new input is not already in the row,
    its weight is 0 and its optimizer state (every state tensor shaped like the weight: Adam's
    ``exp_avg``/``exp_avg_sq``, SGD's momentum) is zeroed. Rows are re-sorted by input id and the
    weight and optimizer state are permuted with them, so kept connections keep their values.
    Returns the number of rewired slots.
    """
    fresh = prune.to(torch.bool)
    new_idx = _draw_new_inputs(layer.indices, fresh, layer.d_in, generator)
    new_idx, order = new_idx.sort(dim=1)
    fresh = fresh.gather(1, order)
    tensors = [layer.weight]
    if optimizer is not None:
        state = optimizer.state.get(layer.weight, {})
        tensors += [
            v for v in state.values() if torch.is_tensor(v) and v.shape == layer.weight.shape
        ]
    for t in tensors:
        t.copy_(t.gather(1, order).masked_fill_(fresh, 0.0))
    layer.indices.copy_(new_idx.to(torch.int32))
    return int(fresh.sum())


def prune_mask(layer: FixedFanInLinear, cfg: RewireConfig, step: int, total: int) -> torch.Tensor:
    """Which slots SET frees at ``step`` (threshold or fraction mode, see :class:`RewireConfig`)."""
    magnitude = layer.weight.detach().abs()
    if cfg.mode == "threshold":
        return magnitude < cfg.tau(step, total)
    k = int(cfg.fraction * magnitude.numel())
    mask = torch.zeros(magnitude.numel(), dtype=torch.bool)
    mask[magnitude.view(-1).topk(k, largest=False).indices] = True
    return mask.view_as(magnitude)


class SETRewiring(Callbacks):
    """:func:`sparsify_cli.passes.training.fit` callback: SET every ``cfg.interval`` steps until
    66%.

    Runs in ``after_step`` so the optimizer state already exists and its moments can be reset
    for the changed slots -- no patching of ``optimizer.step``.
    """

    def __init__(self, cfg: RewireConfig, total_steps: int, seed: int = 0) -> None:
        self.cfg, self.total_steps = cfg, total_steps
        self.generator = torch.Generator().manual_seed(seed)
        self.rewired: list[tuple[int, int]] = []  # (step, slots) history

    def active(self, step: int) -> bool:
        return step < self.cfg.stop_fraction * self.total_steps

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        if step == 0 or step % self.cfg.interval or not self.active(step):
            return
        for name, layer in fixed_fanin_layers(model):
            mask = prune_mask(layer, self.cfg, step, self.total_steps)
            n = rewire(layer, mask, optimizer, self.generator)
            self.rewired.append((step, n))
            log.info("SET step %d: %s rewired %d of %d slots", step, name, n, mask.numel())
