"""Dynamic sparse training: static masks, SET, RigL and SRigL, plus removing ablated neurons.

Masks are :class:`sparsify_cli.passes.masks.WeightMask` parametrizations (pattern
``"unstructured"``, or
``"fanin"`` for SRigL), so folding and the manifest work unchanged. Training goes through
:func:`sparsify_cli.passes.training.fit`; the mask updates are
:class:`sparsify_cli.passes.training.Callbacks`
(``before_step`` arms gradient capture, ``after_step`` rewires). Nothing patches the optimizer.

Dense gradients (RigL / SRigL regrowth): the training mask is a straight-through
parametrization (value ``W * mask``, gradient passed to *all* of ``W``), and a tensor hook on the
parametrized original stores that dense gradient ``dL/dW`` and returns ``grad * mask``, so the
optimizer only ever sees masked gradients. After training the plain :class:`WeightMask` returns.

Every epoch is checkpointed (:class:`~sparsify_cli.passes.checkpoint.EpochCheckpoint`, with the
rewiring generator and update count), so ``--resume`` continues an interrupted run exactly.

Schedules (ALGORITHMS.md, "Dynamic sparse training"): an update every ``delta_t`` steps while
``t < T_end = end_fraction * total_steps`` (``delta_t=None``, the default, picks ``T_end /``
:data:`AUTO_UPDATES`: the papers' 100 steps assume ImageNet-length runs, and on a short run such
as the samples' 8 digits epochs (~210 steps) it left one update), drop fraction
``f(t) = alpha/2 (1 + cos(pi t/T_end))`` (RigL, Evci et al. 2020, eq. 1). Grown weights start
at 0 and their optimizer state (momentum, Adam moments) is reset.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparsify_cli.passes import distributed
from sparsify_cli.passes.chains import Chain, hidden_chains, resize_chain
from sparsify_cli.passes.checkpoint import EpochCheckpoint
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.masks import WeightMask, attach_mask, dense_weight, get_mask, is_masked
from sparsify_cli.passes.registry import PassContext, register_pass
from sparsify_cli.passes.sparsifier import Callbacks, Plan, prepare, register_attach
from sparsify_cli.passes.training import TrainConfig, default_objective, fit, make_optimizer

log = logging.getLogger(__name__)

METHODS = ("static", "set", "rigl", "srigl")
MASK_INITS = ("uniform", "erk")
PLACEMENTS = ("magnitude", "random")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class DSTConfig:
    """Train the target layers sparse with a fixed or dynamic mask.

    ``sparsity`` applies to targets that arrive unmasked (a preceding Sparse-IFT pass attaches
    its own iso-FLOP masks, whose total budget is kept). ``mask_init`` distributes the budget over
    layers (``uniform`` or ``erk``); ``placement`` picks which weights start active (``magnitude``
    suits a warm start from a trained model, ``random`` is the papers' from-scratch init).

    >>> DSTConfig(method="rigl", sparsity=0.9).method
    'rigl'
    """

    name: ClassVar[str] = "dst"
    next_passes: ClassVar[tuple[str, ...]] = ("shrink_ablated", "fold")
    group_size: ClassVar[int] = 1
    """Unstructured / constant fan-in masks fit any layer width."""
    method: str = "rigl"
    sparsity: float = 0.75
    mask_init: str = "uniform"
    placement: str = "magnitude"
    epochs: int = 10
    lr: float = 1e-3
    delta_t: int | None = None
    alpha: float = 0.3
    end_fraction: float = 0.75
    gamma_sal: float = 0.3
    optimizer: str = "adamw"
    distill: bool = False

    def __post_init__(self) -> None:
        for key, value, allowed in (
            ("method", self.method, METHODS),
            ("mask_init", self.mask_init, MASK_INITS),
            ("placement", self.placement, PLACEMENTS),
            ("optimizer", self.optimizer, OPTIMIZERS),
        ):
            if value not in allowed:
                raise SparsifyError(f"unknown DST {key} {value!r}", expected=f"one of {allowed}")
        if not 0.0 < self.sparsity < 1.0:
            raise SparsifyError("--sparsity must be in (0, 1)", found=str(self.sparsity))
        if not (self.epochs >= 0 and self.lr > 0 and math.isfinite(self.lr)):
            raise SparsifyError(
                "invalid DST training settings",
                expected="--epochs >= 0, --lr > 0 (finite)",
                found=f"epochs={self.epochs}, lr={self.lr}",
            )
        if (
            (self.delta_t is not None and self.delta_t < 1)
            or not 0 <= self.alpha <= 1
            or not 0 < self.end_fraction <= 1
        ):
            raise SparsifyError(
                "invalid DST schedule",
                expected="delta_t >= 1, 0 <= alpha <= 1, 0 < end_fraction <= 1",
                found=f"delta_t={self.delta_t}, alpha={self.alpha}, end={self.end_fraction}",
            )


AUTO_UPDATES = 10
"""Mask updates a run makes when ``delta_t`` is not given (one every ``T_end / 10`` steps)."""


def drop_fraction(step: int, t_end: int, alpha: float) -> float:
    """RigL's cosine-annealed drop fraction ``alpha/2 (1 + cos(pi t / T_end))`` (0 after T_end).

    >>> drop_fraction(0, 100, 0.3), drop_fraction(100, 100, 0.3)
    (0.3, 0.0)
    """
    if step >= t_end:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * step / t_end))


# --- mask construction ---------------------------------------------------------------------


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Bool mask of the ``n`` largest entries (ties to the lower index: stable sort)."""
    flat = scores.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:n]] = True
    return keep.reshape(scores.shape)


def _row_top(scores: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Per row of ``scores [rows, cols]``: the ``n`` (scalar or per-row) largest, stably."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    )
    limit = n.unsqueeze(1) if isinstance(n, torch.Tensor) else n
    return ranks < limit


def unstructured_mask(
    weight: torch.Tensor, density: float, placement: str, generator: torch.Generator
) -> torch.Tensor:
    """``round(density * numel)`` active weights: the largest ``|w|`` or a random set."""
    n = int(round(density * weight.numel()))
    scores = weight.detach().abs() if placement == "magnitude" else _random_like(weight, generator)
    return _top(scores, n)


def fanin_mask(
    weight: torch.Tensor, density: float, placement: str, generator: torch.Generator
) -> torch.Tensor:
    """Constant fan-in ``k = floor(density * numel / C_out)`` per output neuron (SRigL init)."""
    rows = weight.shape[0]
    flat = weight.detach().reshape(rows, -1)
    k = max(1, int(density * weight.numel()) // rows)
    scores = flat.abs() if placement == "magnitude" else _random_like(flat, generator)
    return _row_top(scores, k).reshape(weight.shape)


def _random_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(t.shape, generator=generator).to(t.device)


def erk_densities(shapes: dict[str, tuple[int, ...]], budget: int) -> dict[str, float]:
    """Erdős–Rényi-Kernel layer densities ``eps * sum(shape) / prod(shape)`` (RigL, sec. 3).

    ``eps`` is solved so the active weights total ``budget``; layers that would exceed density 1
    are made dense and the rest re-solved.
    """
    dense: set[str] = set()
    while True:
        rest = budget - sum(math.prod(shapes[n]) for n in dense)
        raw = {n: sum(s) / math.prod(s) for n, s in shapes.items() if n not in dense}
        eps = rest / sum(raw[n] * math.prod(shapes[n]) for n in raw)
        over = {n for n, r in raw.items() if eps * r > 1}
        if not over:
            return {n: (1.0 if n in dense else eps * raw[n]) for n in shapes}
        dense |= over


# --- training-time mask with dense gradients -----------------------------------------------


class DenseGradMask(WeightMask):
    """Value ``W * mask``; gradient passed straight through to all of ``W``.

    The hook :class:`_Rewirer` registers on the original stores this dense ``dL/dW`` and returns
    ``grad * mask``, so optimizers see the usual masked gradient.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (weight * self.mask - weight).detach()

    def folded(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _reset_state(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, grown: torch.Tensor
) -> None:
    """Zero every per-element optimizer buffer (momentum, exp_avg, exp_avg_sq) at ``grown``."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value[grown] = 0


@torch.no_grad()
def rewire_unstructured(
    weight: torch.Tensor,
    grad: torch.Tensor | None,
    mask: torch.Tensor,
    fraction: float,
    method: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """One SET / RigL update: drop the ``int(n_active * f)`` smallest ``|w|``, grow as many.

    RigL grows the inactive positions with the largest dense ``|grad|``, SET random ones
    (Mocanu et al. 2018). Returns the new mask; the active count is unchanged exactly.
    """
    n = int(int(mask.sum()) * fraction)
    if n == 0:
        return mask.clone()
    drop = _top(torch.where(mask, -weight.abs(), -torch.inf), n)
    kept = mask & ~drop
    grow_scores = grad.abs() if method == "rigl" else _random_like(weight, generator)
    grow = _top(torch.where(kept, -torch.inf, grow_scores), n)
    return kept | grow


@torch.no_grad()
def rewire_fanin(
    weight: torch.Tensor,
    grad: torch.Tensor,
    mask: torch.Tensor,
    fraction: float,
    budget: int,
    gamma_sal: float,
    ablate: bool,
) -> torch.Tensor:
    """One SRigL update (Lasby et al. 2024, Alg. 1), keeping every active neuron at fan-in ``k``.

    1. ``n_prune = int(n_active * f(t))``, ``n_keep = n_active - n_prune``.
    2. Neuron ablation: salient = layer-global top-``n_keep`` ``|W|`` (active) union top-``n_prune``
       ``|grad|`` (inactive); a neuron with fewer than ``max(1, int(gamma_sal * k))`` salient
       weights is ablated, keeping at least ``ceil(budget / fan_in)`` neurons (so ``k <= fan_in``);
       ``k = floor(budget / active neurons)``.
    3. Prune to the layer-global top-``n_keep`` ``|W|``, then at most ``k`` per neuron.
    4. Grow each surviving neuron back to exactly ``k`` by the largest ``|grad|`` it lacks.
    """
    rows = mask.shape[0]
    m = mask.reshape(rows, -1)
    w = weight.abs().reshape(rows, -1)
    g = grad.abs().reshape(rows, -1)
    width = m.shape[1]
    n_active = int(m.sum())
    n_prune = int(n_active * fraction)
    n_keep = n_active - n_prune
    alive = m.any(1)
    k = n_active // max(1, int(alive.sum()))
    keep_sal = _top(torch.where(m, w, -1.0), n_keep)
    if ablate:
        salient = keep_sal | _top(torch.where(m, -1.0, g), n_prune)
        counts = salient.sum(1)
        alive = counts >= max(1, int(gamma_sal * k))
        least = min(rows, math.ceil(budget / width))
        if int(alive.sum()) < least:
            alive = _top(counts.float() + 0.5 * alive.float(), least)
    k = min(width, budget // max(1, int(alive.sum())))
    kept = keep_sal & alive.unsqueeze(1)
    kept &= _row_top(torch.where(kept, w, -1.0), k)
    need = torch.where(alive, k - kept.sum(1), 0)
    grow = _row_top(torch.where(kept, -torch.inf, g), need) & ~kept
    return (kept | grow).reshape(mask.shape)


class _Rewirer(Callbacks):
    """Dense-gradient hooks and the periodic mask update of SET / RigL / SRigL."""

    def __init__(
        self,
        layers: dict[str, nn.Module],
        config: DSTConfig,
        total_steps: int,
        budgets: dict[str, int],
        last: str,
        seed: int,
    ) -> None:
        self.layers = layers
        self.config = config
        self.t_end = max(1, int(config.end_fraction * total_steps))
        self.delta_t = config.delta_t or max(1, self.t_end // AUTO_UPDATES)
        self.budgets = budgets
        self.last = last
        self.generator = torch.Generator().manual_seed(seed)
        self.capture = False
        self.grads: dict[str, torch.Tensor] = {}
        self.updates = 0
        self.handles = [
            dense_weight(mod).register_hook(self._hook(name)) for name, mod in layers.items()
        ]

    def _hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            mask = get_mask(self.layers[name]).mask
            if self.capture:
                self.grads[name] = grad.detach().clone()
            return grad * mask

        return hook

    def due(self, step: int) -> bool:
        return (
            self.config.method != "static"
            and step > 0
            and step % self.delta_t == 0
            and step < self.t_end
        )

    def before_step(self, model: nn.Module, step: int) -> None:
        self.capture = self.due(step) and self.config.method in ("rigl", "srigl")

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        if not self.due(step):
            return
        fraction = drop_fraction(step, self.t_end, self.config.alpha)
        for grad in self.grads.values():  # each rank saw its shard: decide on the global mean
            distributed.all_reduce_mean_(grad)
        for name, module in self.layers.items():
            self.update(name, module, optimizer, fraction)
        self.grads.clear()
        self.capture = False
        self.updates += 1

    @torch.no_grad()
    def update(
        self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer, fraction: float
    ) -> torch.Tensor:
        """Rewire one layer; returns the grown positions (weights zeroed, state reset)."""
        holder = get_mask(module)
        weight = dense_weight(module)
        old = holder.mask.clone()
        grad = self.grads.get(name)
        if self.config.method == "srigl":
            new = rewire_fanin(
                weight,
                grad,
                old,
                fraction,
                self.budgets[name],
                self.config.gamma_sal,
                ablate=name != self.last,
            )
        else:
            new = rewire_unstructured(
                weight, grad, old, fraction, self.config.method, self.generator
            )
        grown = new & ~old
        weight[grown] = 0
        _reset_state(optimizer, weight, grown)
        holder.mask.copy_(new)
        return grown

    def close(self) -> None:
        """Training is over: remove the gradient hooks, leave plain masks."""
        for handle in self.handles:
            handle.remove()
        if self.handles:
            _release(self.layers)
        self.handles = []


def init_masks(
    model: nn.Module, config: DSTConfig, targets: list[str], seed: int
) -> dict[str, int]:
    """Attach a :class:`DenseGradMask` to every target; returns each layer's weight budget.

    Targets already masked (by Sparse-IFT) keep their masks and densities under ``uniform``;
    ``erk`` redistributes the same total. SRigL turns every mask into constant fan-in.
    """
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    layers = {n: modules[n] for n in targets}
    shapes = {n: tuple(m.weight.shape) for n, m in layers.items()}
    densities = {
        n: float(get_mask(m).mask.float().mean()) if is_masked(m) else 1 - config.sparsity
        for n, m in layers.items()
    }
    if config.mask_init == "erk":
        budget = sum(densities[n] * math.prod(shapes[n]) for n in layers)
        densities = erk_densities(shapes, int(round(budget)))
    budgets = {}
    for name, module in layers.items():
        weight = dense_weight(module)
        if config.method == "srigl":
            mask, pattern = (
                fanin_mask(weight, densities[name], config.placement, generator),
                "fanin",
            )
        elif is_masked(module) and config.mask_init == "uniform":
            mask, pattern = get_mask(module).mask, "unstructured"
        else:
            mask = unstructured_mask(weight, densities[name], config.placement, generator)
            pattern = "unstructured"
        budgets[name] = int(mask.sum())
        attach_mask(module, DenseGradMask(mask, pattern))
    return budgets


def _release(layers: dict[str, nn.Module]) -> None:
    """Swap the training masks for plain :class:`WeightMask` (same buffer, masked gradient)."""
    for module in layers.values():
        holder = get_mask(module)
        attach_mask(module, WeightMask(holder.mask, holder.pattern))


def _ensure(model: nn.Module, config: DSTConfig, ctx: PassContext) -> None:
    modules = dict(model.named_modules())
    for name in ctx.targets:
        if not is_masked(modules[name]):
            raise SparsifyError(f"layer {name} left unmasked by dynamic sparse training")
        if config.method == "srigl":
            counts = get_mask(modules[name]).mask.reshape(modules[name].weight.shape[0], -1).sum(1)
            active = counts[counts > 0]
            if len(active) and not bool((active == active[0]).all()):
                raise SparsifyError(
                    f"layer {name} lost constant fan-in",
                    expected=f"every active neuron with {int(active[0])} weights",
                    found=f"fan-in between {int(active.min())} and {int(active.max())}",
                )


@register_pass(DSTConfig, ensures=_ensure)
def dynamic_sparse_training(model: nn.Module, config: DSTConfig, ctx: PassContext) -> nn.Module:
    """Mask the targets, train with the configured rewiring, leave plain masks on the model."""
    targets = list(ctx.targets)
    if config.epochs and ctx.train is None:
        raise SparsifyError(
            f"--dst {config.method} trains the model and needs training data",
            fix="pass --data (a dataset name, an .npz with x[, y], or a text file for a "
            "Hugging Face folder)",
        )
    objective = None
    if config.epochs:
        # the teacher is the model as it arrives (or the dense original the caller kept in
        # ctx.teacher), copied before any training mask is attached
        what = f"--dst {config.method}"
        first = next(iter(ctx.train))
        objective = default_objective(
            model, first, ctx.device, what, config.distill, teacher=ctx.teacher
        )
    steps = len(ctx.train) if objective is not None else 0
    sparsifier = prepare(model, config, targets, ctx.seed, steps_per_epoch=steps)
    if objective is None:
        sparsifier.close()
        return model
    rewirer = sparsifier.callbacks
    cfg = TrainConfig(epochs=config.epochs, lr=config.lr, optimizer=config.optimizer)
    optimizer = make_optimizer(model.to(ctx.device), cfg)
    checkpoint = EpochCheckpoint(ctx, config)
    history, start, extra = checkpoint.resume(model, optimizer)
    if start:
        rewirer.generator.set_state(extra["generator"])
        rewirer.updates = extra["updates"]
        log.info("resuming dst from epoch %d (%s)", start, checkpoint.path)

    def on_epoch_end(model: nn.Module, optimizer, scheduler, epoch: int, hist) -> None:
        state = {"generator": rewirer.generator.get_state(), "updates": rewirer.updates}
        checkpoint.save(model, optimizer, scheduler, epoch, hist, state)

    try:
        history = fit(
            model, ctx.train, cfg, ctx, objective, sparsifier,
            start_epoch=start, on_epoch_end=on_epoch_end, optimizer=optimizer, history=history,
        )  # fmt: skip
    finally:
        sparsifier.close()
    ctx.metrics["dst"] = {
        "loss": history.loss,
        "updates": rewirer.updates,
        "delta_t": rewirer.delta_t,
    }
    return model


@register_attach(DSTConfig)
def attach_dst(model: nn.Module, config: DSTConfig, plan: Plan) -> Callbacks:
    """Training masks on the targets and the rewiring schedule over
    ``epochs * plan.steps_per_epoch`` steps; closing it leaves plain masks."""
    if plan.steps_per_epoch is None:
        raise SparsifyError(
            f"DST ({config.method}) schedules its mask updates over the whole training",
            expected="steps_per_epoch (optimizer steps per epoch)",
            fix="pass steps_per_epoch=len(train_loader) to prepare",
        )
    targets = list(plan.targets)
    budgets = init_masks(model, config, targets, plan.seed)
    modules = dict(model.named_modules())
    layers = {n: modules[n] for n in targets}
    total = config.epochs * plan.steps_per_epoch
    return _Rewirer(layers, config, total, budgets, targets[-1], plan.seed)


# --- removing ablated neurons --------------------------------------------------------------


@dataclass(frozen=True)
class ShrinkConfig:
    """Physically remove ablated (all-masked) neurons where the consumer allows it exactly."""

    name: ClassVar[str] = "shrink_ablated"
    next_passes: ClassVar[tuple[str, ...]] = ("fold",)


@torch.no_grad()
def _constant_output(model: nn.Module, chain: Chain, producer: nn.Module) -> torch.Tensor:
    """What each hidden channel carries when its neuron is ablated: the bias through the path."""
    n = producer.weight.shape[0]
    value = producer.bias.detach().clone() if producer.bias is not None else torch.zeros(n)
    x = value.reshape(1, n, 1, 1) if isinstance(producer, nn.Conv2d) else value.reshape(1, n)
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        for node in chain.path:
            rest = node.args[1:]
            if node.op == "call_module":
                x = modules[node.target](x)
            elif node.op == "call_function":
                x = node.target(x, *rest, **node.kwargs)
            else:
                x = getattr(x, node.target)(*rest, **node.kwargs)
    finally:
        model.train(was_training)
    return x.flatten()


@torch.no_grad()
def _absorb(consumer: nn.Module, channels: torch.Tensor, values: torch.Tensor) -> nn.Module:
    """Fold constant inputs ``values`` on ``channels`` into the consumer's bias (exact)."""
    weight = consumer.weight.detach()  # effective (masked) weight
    dims = tuple(range(2, weight.ndim))
    contribution = weight[:, channels]
    if dims:
        contribution = contribution.sum(dims)
    shift = contribution @ values
    if consumer.bias is None:
        consumer.bias = nn.Parameter(torch.zeros_like(shift))
    consumer.bias.add_(shift)
    return consumer


def _restore_fanin(module: nn.Module) -> None:
    """Re-pad a ``fanin`` mask to its constant ``k`` after input columns were dropped.

    The extra active slots hold zero weights, so the function is unchanged and every active
    neuron again has exactly ``k`` weights (what condensed export relies on).
    """
    holder = get_mask(module)
    if holder.pattern != "fanin":
        return
    rows = holder.mask.shape[0]
    m = holder.mask.reshape(rows, -1)
    counts = m.sum(1)
    k = int(counts.max())
    need = torch.where(counts > 0, k - counts, 0)
    extra = _row_top(torch.where(m, -1.0, 0.0), need) & ~m
    dense_weight(module).data.reshape(rows, -1)[extra] = 0
    holder.mask.copy_((m | extra).reshape(holder.mask.shape))


def shrink_ablated(model: nn.Module, config: ShrinkConfig, ctx: PassContext) -> nn.Module:
    """Drop ablated output rows and the consumer's matching input columns, exactly.

    An ablated neuron outputs a constant (its bias through the norm / activation path). Its
    consumer absorbs that constant into its bias when this is exact (a Linear, or a Conv2d without
    padding); a zero constant needs nothing. Otherwise (a padded conv fed a nonzero constant) the
    zero row stays and the reason is reported in ``ctx.metrics["shrink_ablated"]``.
    """
    results = []
    chains = {c.producer: c for c in hidden_chains(model)}
    for name in [n for n, m in model.named_modules() if is_masked(m)]:
        module = model.get_submodule(name)
        mask = get_mask(module).mask
        dead = torch.nonzero(~mask.reshape(mask.shape[0], -1).any(1)).flatten()
        if len(dead) == 0:
            continue
        chain = chains.get(name)
        if chain is None:
            results.append({"layer": name, "removed": 0, "kept": len(dead), "reason": "no chain"})
            continue
        values = _constant_output(model, chain, module)[dead]
        consumer = model.get_submodule(chain.consumer)
        padded = isinstance(consumer, nn.Conv2d) and any(p != 0 for p in _padding(consumer))
        removable = (values == 0) | (not padded)
        drop = dead[removable]
        if bool((values[removable] != 0).any()):
            nz = removable & (values != 0)
            _absorb(consumer, dead[nz], values[nz])
        gone = set(drop.tolist())
        keep_rows = torch.tensor([i for i in range(mask.shape[0]) if i not in gone])
        resize_chain(model, chain, keep_rows)
        _restore_fanin(model.get_submodule(chain.consumer))
        kept = int((~removable).sum())
        results.append(
            {
                "layer": name,
                "consumer": chain.consumer,
                "removed": len(drop),
                "kept": kept,
                "reason": "padded conv consumer fed a nonzero constant" if kept else None,
            }
        )
        log.info("%s: removed %d ablated neurons (%d kept)", name, len(drop), kept)
    ctx.metrics["shrink_ablated"] = results
    return model


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):
        return (0,) if conv.padding == "valid" else (1,)
    return tuple(conv.padding)


register_pass(ShrinkConfig)(shrink_ablated)
