"""The one training loop: sample training and every fine-tuning pass go through :func:`fit`.

Passes customise it with :class:`Callbacks` (mask updates before a step, gradient edits after
backward, schedules at epoch start) instead of patching the optimizer. The objective is
cross-entropy on labels, or distillation from a frozen teacher when there are none.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sparsify_cli.passes import distributed
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import ArrayRows, Arrays, Example, call, rows, to_device, to_tensors
from sparsify_cli.passes.inputs import batch_size as inputs_batch
from sparsify_cli.passes.registry import PassContext
from sparsify_cli.passes.sparsifier import Callbacks, Sparsifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and schedule; defaults suit fine-tuning a small converged model."""

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError("epochs >= 0, lr > 0 and batch_size >= 1 are required")


@dataclass
class History:
    loss: list[float] = field(default_factory=list)
    accuracy: list[float | None] = field(default_factory=list)


def make_loader(
    x: Arrays, y: np.ndarray | None, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """A deterministic loader over numpy inputs (an array or ``name -> array``; labels optional)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ArrayRows(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator)


Objective = Callable[[torch.Tensor, Sequence[Any]], torch.Tensor]
"""``(model output, batch) -> loss``; ``batch[0]`` is the :data:`Example`, ``batch[1]`` labels."""


def cross_entropy(label_smoothing: float = 0.0) -> Objective:
    def loss(logits: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        return F.cross_entropy(logits, batch[1], label_smoothing=label_smoothing)

    return loss


def check_labels(output: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    """Labels train with cross-entropy: the model must output ``[batch, classes]`` logits with a
    class for every label; anything else is an error naming ``what`` (the pass)."""
    if output.ndim != 2:
        raise SparsifyError(
            f"{what} got labelled data, but the model outputs {list(output.shape)}, not logits",
            expected="[batch, classes] logits for cross-entropy (a classifier)",
            fix="drop the labels to distil from the dense model, or load a classifier",
        )
    if labels.numel() and int(labels.max()) >= output.shape[1]:
        raise SparsifyError(
            f"{what}: label {int(labels.max())} is out of range for {output.shape[1]} classes",
            expected=f"class ids in [0, {output.shape[1]})",
        )


def token_mask(example: Example, output: torch.Tensor) -> torch.Tensor | None:
    """The attention mask ``[batch, sequence]`` when ``output`` is per token (its first two axes
    match the ``attention_mask`` input), so padding does not count in a per-token loss."""
    if not isinstance(example, Mapping) or output.ndim < 3:
        return None
    mask = example.get("attention_mask")
    if mask is None or tuple(mask.shape) != tuple(output.shape[:2]):
        return None
    return mask.to(output.dtype)


def masked_mse(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the positions ``mask`` keeps (all of them without a mask)."""
    if mask is None:
        return F.mse_loss(out, target)
    weights = mask.reshape(*mask.shape, *([1] * (out.ndim - mask.ndim)))
    squared = (out - target).pow(2) * weights
    return squared.sum() / (weights.sum() * out[0, 0].numel()).clamp_min(1.0)


def distillation(
    teacher: nn.Module, temperature: float = 1.0, classifier: bool = True
) -> Objective:
    """KL to the teacher's softened logits (classifiers) or MSE to its outputs (anything else:
    hidden states or per-token logits, with padded positions left out by the attention mask)."""
    teacher.eval()

    def loss(out: torch.Tensor, batch: Sequence[Any]) -> torch.Tensor:
        with torch.no_grad():
            target = call(teacher, batch[0])
        if not classifier:
            return masked_mse(out, target, token_mask(batch[0], out))
        t = temperature
        return F.kl_div(
            F.log_softmax(out / t, -1),
            F.log_softmax(target / t, -1),
            log_target=True,
            reduction="batchmean",
        ) * (t * t)

    return loss


def default_objective(
    model: nn.Module,
    first: Sequence[Any],
    device: torch.device,
    what: str,
    distill: bool = False,
    temperature: float = 1.0,
    teacher: nn.Module | None = None,
) -> Objective:
    """The objective of every trained pass, from the first training batch ``first``.

    Cross-entropy when the batches carry labels (checked against the model's logits); otherwise,
    or with ``distill``, distillation from a frozen copy of ``model`` as it is now, so call this
    before masks are attached: the dense model is the teacher (or ``teacher``, when given: the
    dense original of a model pruned before this pass). ``what`` names the pass in errors.
    """
    model.to(device)
    with torch.no_grad():
        output = call(model.eval(), to_device(rows(first[0], slice(0, 2)), device))
    if len(first) > 1 and not distill:
        check_labels(output, first[1], what)
        return cross_entropy()
    # A copy in both cases: the caller's model (or teacher) keeps its device, mode and grads.
    teacher = copy.deepcopy(model if teacher is None else teacher).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return distillation(teacher, temperature, classifier=output.ndim == 2)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on biases and norm parameters (1-D tensors), as the papers' recipes."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def cosine_lr(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to zero, as a multiplier of ``cfg.lr`` per step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return factor


@torch.no_grad()
def predict(model: nn.Module, x: Arrays, batch_size: int = 256) -> np.ndarray:
    """Model outputs for numpy inputs (one array, or ``name -> array`` for several inputs), in
    eval mode (the mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    outs = [
        call(model, to_device(to_tensors(rows(x, slice(i, i + batch_size))), device)).cpu().numpy()
        for i in range(0, inputs_batch(x), batch_size)
    ]
    model.train(was_training)
    return np.concatenate(outs)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((predict(model, x).argmax(-1) == y).mean())


def _describe(epoch: int, epochs: int, history: History) -> str:
    """Progress label: the epoch, with the previous epoch's loss and accuracy once known."""
    text = f"epoch {epoch + 1}/{epochs}"
    if history.loss:
        text += f" loss {history.loss[-1]:.4f}"
    if history.accuracy and history.accuracy[-1] is not None:
        text += f" acc {100 * history.accuracy[-1]:.2f}%"
    return text


def fit(
    model: nn.Module,
    train: DataLoader,
    cfg: TrainConfig,
    ctx: PassContext,
    objective: Objective,
    callbacks: Callbacks | Sparsifier = Callbacks(),
    evaluate: Callable[[nn.Module], float] | None = None,
    start_epoch: int = 0,
    on_epoch_end: Callable[[nn.Module, torch.optim.Optimizer, Any, int, History], None]
    | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    history: History | None = None,
) -> History:
    """Train ``model`` in place for ``cfg.epochs`` epochs (from ``start_epoch`` when resuming).

    ``on_epoch_end(model, optimizer, scheduler, epoch, history)`` is where resumable callers
    write their checkpoint. A non-finite loss stops training with ``FloatingPointError``.

    Under torchrun the training forward goes through DDP (``train`` is then a sharded loader);
    the loss history is the global mean, and the ranks are checked to agree after every epoch
    (:mod:`sparsify_cli.passes.distributed`).
    """
    model.to(ctx.device)
    net = distributed.wrap(model, ctx.device)
    optimizer = optimizer or make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr(cfg, len(train)))
    with warnings.catch_warnings():  # resuming: the schedule catches up before any step,
        # which torch warns about ("lr_scheduler.step() before optimizer.step()"), rightly so
        # for a fresh run, not for this fast-forward
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for _ in range(start_epoch * len(train)):
            scheduler.step()
    history = history or History()
    sp = callbacks if isinstance(callbacks, Sparsifier) else Sparsifier(model, callbacks)
    sp.steps = start_epoch * len(train)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        distributed.set_epoch(train, epoch)
        sp.epoch_start(epoch)
        total, count = 0.0, 0
        for batch in ctx.track(train, _describe(epoch, cfg.epochs, history), len(train)):
            batch = [to_device(t, ctx.device) for t in batch]
            loss = objective(call(net, batch[0]), batch)
            if distributed.any_rank(not torch.isfinite(loss)):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {sp.steps}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sp.step(optimizer)
            scheduler.step()
            total += loss.item() * inputs_batch(batch[0])
            count += inputs_batch(batch[0])
        total, count = distributed.sum_over_ranks(total, count)
        distributed.average_norm_stats(model)
        distributed.verify_in_sync(model, f"epoch {epoch + 1}", ctx.metrics)
        history.loss.append(total / max(1, count))
        history.accuracy.append(evaluate(model) if evaluate else None)
        log.info("epoch %d loss %.4f acc %s", epoch + 1, history.loss[-1], history.accuracy[-1])
        if on_epoch_end is not None:
            on_epoch_end(model, optimizer, scheduler, epoch, history)
    return history
