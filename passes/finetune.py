"""The fine-tuning harness every trained N:M pass (ASP, SR-STE, MaxQ) runs through.

One place decides the objective, checkpoints each epoch, resumes, evaluates and recovers from a
diverging run, so the methods differ only in their mask (a
:class:`~sparsify_cli.passes.masks.WeightMask`
subclass) and their :class:`~sparsify_cli.passes.training.Callbacks`. Training itself is
:func:`sparsify_cli.passes.training.fit`.

* Objective: cross-entropy when the training batches carry labels; otherwise (or with
  ``distill=True``) distillation from a frozen copy of the dense input model: KL on softened
  logits for classifiers (2-D outputs), MSE on the outputs for anything else.
* Checkpoint: after every epoch (:class:`~sparsify_cli.passes.checkpoint.EpochCheckpoint`);
  ``ctx.resume`` continues from it and reaches the same weights bit for bit as an uninterrupted
  run with the same seed.
* A non-finite loss stops training and restores the last good epoch (or the starting point).
* BatchNorm statistics are re-estimated on the training data once training ends
  (:meth:`~sparsify_cli.passes.sparsifier.Sparsifier.recalibrate_norms`), so evaluation and
  folding use the statistics of the model as trained, not a lagging average.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sparsify_cli.passes.checkpoint import EpochCheckpoint
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import call, to_device
from sparsify_cli.passes.masks import WeightMask, dense_weight, masked_modules
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.registry import PassContext
from sparsify_cli.passes.sparsifier import Callbacks, prepare
from sparsify_cli.passes.training import (
    History,
    TrainConfig,
    default_objective,
    fit,
    make_optimizer,
)

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
NORM_BATCHES = 200
"""Training batches the BatchNorm statistics are re-estimated on after fine-tuning (at most)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings shared by every trained N:M pass: the pattern and the fine-tuning recipe.

    The batch size is the training loader's (``ctx.train``), so it is not repeated here.
    """

    name: ClassVar[str] = "finetune"
    next_passes: ClassVar[tuple[str, ...]] = ("fold",)
    n: int = 2
    m: int = 4
    epochs: int = 8
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    distill: bool = False
    temperature: float = 1.0

    def __post_init__(self) -> None:
        NMPattern(self.n, self.m)  # validates
        if self.optimizer not in OPTIMIZERS:
            raise SparsifyError(
                f"unknown --optimizer {self.optimizer!r}", expected=f"one of {OPTIMIZERS}"
            )
        if self.epochs < 0 or self.lr <= 0 or self.temperature <= 0:
            raise SparsifyError(
                "invalid fine-tuning settings",
                expected="--epochs >= 0, --lr > 0, temperature > 0",
                found=f"epochs={self.epochs}, lr={self.lr}, temperature={self.temperature}",
            )

    @property
    def pattern(self) -> NMPattern:
        return NMPattern(self.n, self.m)

    @property
    def group_size(self) -> int:
        """A layer is eligible when its reduction size divides by M."""
        return self.m

    def train_config(self, batch_size: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            batch_size=batch_size,
        )


class _StraightThrough(torch.autograd.Function):
    """``weight * mask`` forward, identity backward: the weight receives the gradient of the
    masked weight unchanged, so pruned weights keep learning (the STE of SR-STE and MaxQ)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _StraightThrough.apply(weight, mask)


class DecayedMask(WeightMask):
    """A dynamic mask whose pruned weights are pulled towards zero by :class:`SparseDecay`."""

    def decay_factor(self) -> torch.Tensor:
        """``1 - clamp(mask, 0, 1)``: 1 on pruned weights, 0 on kept ones."""
        return (~self.mask).to(torch.float32)


class SparseDecay(Callbacks):
    """SR-STE's sparse-refined term on every gradient: ``grad += lam * (1 - mask) * W``
    (Zhou et al., arXiv 2102.04010, Sec. 4; MaxQ reuses it with ``1 - clamp(mask, 0, 1)``).

    A tensor hook on each masked layer's dense weight, registered at attach time, so any training
    loop gets it from ``loss.backward()`` alone; :meth:`close` removes the hooks.
    """

    def __init__(self, lam: float, model: nn.Module) -> None:
        self.lam = lam
        self.handles = []
        for _, module in masked_modules(model):
            mask = module.parametrizations["weight"][0]
            if isinstance(mask, DecayedMask):
                weight = dense_weight(module)
                self.handles.append(weight.register_hook(self._hook(mask, weight)))

    def _hook(self, mask: DecayedMask, weight: torch.Tensor):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return grad + self.lam * mask.decay_factor().to(weight.dtype) * weight

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@torch.no_grad()
def loader_accuracy(model: nn.Module, loader: Any, device: torch.device) -> float | None:
    """Top-1 accuracy over a loader of ``(x, y)`` batches; ``None`` when it has no labels."""
    was_training = model.training
    model.eval()
    correct, count = 0, 0
    try:
        for batch in loader:
            if len(batch) < 2:
                return None
            out = call(model, to_device(batch[0], device))
            if out.ndim != 2:
                return None
            correct += int((out.argmax(-1).cpu() == batch[1]).sum())
            count += len(batch[1])
    finally:
        model.train(was_training)
    return correct / count if count else None


def _peek(loader: Any) -> Any:
    """The first batch, without advancing the loader's shuffling generator."""
    generator = getattr(loader, "generator", None)
    state = generator.get_state() if generator is not None else None
    batch = next(iter(loader))
    if generator is not None:
        generator.set_state(state)
    return batch


def finetune(
    model: nn.Module,
    config: FinetuneConfig,
    ctx: PassContext,
) -> nn.Module:
    """Attach the method's masks (:func:`sparsify_cli.passes.sparsifier.prepare`) and train.

    The dense input model is the distillation teacher. Returns ``model`` in eval mode, with its
    masks frozen at their last training state; ``ctx.metrics[config.name]`` gets the history.
    """
    if ctx.train is None:
        raise SparsifyError(
            f"--method {config.name} fine-tunes the model and needs training data",
            fix="pass --data (a dataset name such as digits, or an .npz with x[, y])",
        )
    objective = default_objective(
        model,
        _peek(ctx.train),
        ctx.device,
        f"--method {config.name}",
        config.distill,
        config.temperature,
        ctx.teacher,
    )
    sparsifier = prepare(model, config, ctx.targets, ctx.seed)
    model.to(ctx.device)
    cfg = config.train_config(getattr(ctx.train, "batch_size", None) or 1)
    optimizer = make_optimizer(model, cfg)
    checkpoint = EpochCheckpoint(ctx, config)
    history, start, _ = checkpoint.resume(model, optimizer)
    if start:
        log.info("resuming %s from epoch %d (%s)", config.name, start, checkpoint.path)
    last_good = copy.deepcopy(model.state_dict())

    def on_epoch_end(model: nn.Module, optimizer, scheduler, epoch: int, hist: History) -> None:
        nonlocal last_good
        last_good = copy.deepcopy(model.state_dict())
        checkpoint.save(model, optimizer, scheduler, epoch, hist)

    try:
        history = fit(
            model,
            ctx.train,
            cfg,
            ctx,
            objective,
            sparsifier,
            evaluate=(lambda m: loader_accuracy(m, ctx.eval, ctx.device)) if ctx.eval else None,
            start_epoch=start,
            on_epoch_end=on_epoch_end,
            optimizer=optimizer,
            history=history,
        )
    except FloatingPointError as err:
        log.warning("%s stopped: %s; keeping the last good epoch", config.name, err)
        model.load_state_dict(last_good)
        ctx.metrics.setdefault(config.name, {})["stopped"] = str(err)
    finally:
        sparsifier.close()
    metrics = ctx.metrics.setdefault(config.name, {})
    metrics.update(dataclasses.asdict(history))
    if history.loss:  # trained: the BatchNorm statistics of the model as it ends
        batches = itertools.islice(ctx.train, NORM_BATCHES)
        metrics["norm_batches"] = sparsifier.recalibrate_norms(batches, ctx.device)
    return model.eval()
