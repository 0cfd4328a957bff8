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
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sparsify_cli.passes.checkpoint import EpochCheckpoint
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.masks import WeightMask, dense_weight, masked_modules
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.registry import PassContext
from sparsify_cli.passes.training import (
    Callbacks,
    History,
    Objective,
    TrainConfig,
    cross_entropy,
    distillation,
    fit,
    make_optimizer,
)

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")


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
    """SR-STE's sparse-refined term after every backward: ``grad += lam * (1 - mask) * W``
    (Zhou et al., arXiv 2102.04010, Sec. 4; MaxQ reuses it with ``1 - clamp(mask, 0, 1)``)."""

    def __init__(self, lam: float) -> None:
        self.lam = lam

    @torch.no_grad()
    def after_backward(self, model: nn.Module, step: int) -> None:
        for _, module in masked_modules(model):
            mask = module.parametrizations["weight"][0]
            weight = dense_weight(module)
            if isinstance(mask, DecayedMask) and weight.grad is not None:
                weight.grad.add_(self.lam * mask.decay_factor().to(weight.dtype) * weight)


def is_classifier(output: torch.Tensor) -> bool:
    return output.ndim == 2


def make_objective(
    config: FinetuneConfig, teacher: nn.Module, has_labels: bool, classifier: bool
) -> Objective:
    """Cross-entropy on labels, else distillation from the dense ``teacher``."""
    if has_labels and not config.distill:
        return cross_entropy()
    return distillation(teacher, config.temperature, classifier=classifier)


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
            pred = model(batch[0].to(device)).argmax(-1).cpu()
            correct += int((pred == batch[1]).sum())
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
    attach: Callable[[nn.Module], Callbacks],
) -> nn.Module:
    """Attach masks with ``attach(model)`` (which returns the method's callbacks) and train.

    The dense input model is the distillation teacher. Returns ``model`` in eval mode, with its
    masks frozen at their last training state; ``ctx.metrics[config.name]`` gets the history.
    """
    if ctx.train is None:
        raise SparsifyError(
            f"--method {config.name} fine-tunes the model and needs training data",
            fix="pass --data (a dataset name such as digits, or an .npz with x[, y])",
        )
    first = _peek(ctx.train)
    has_labels = len(first) > 1
    teacher = None
    if config.distill or not has_labels:
        teacher = copy.deepcopy(model).to(ctx.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    model.to(ctx.device)
    with torch.no_grad():
        classifier = is_classifier(model.eval()(first[0][:2].to(ctx.device)))
    torch.manual_seed(ctx.seed)
    callbacks = attach(model)
    model.to(ctx.device)
    cfg = config.train_config(getattr(ctx.train, "batch_size", None) or 1)
    objective = make_objective(config, teacher, has_labels, classifier)
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
            callbacks,
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
    ctx.metrics.setdefault(config.name, {}).update(dataclasses.asdict(history))
    return model.eval()
