"""Sparse training driven by any loop: masks attached, and the callbacks the loop calls.

:func:`prepare` attaches a method's masks to the target layers and returns a
:class:`Sparsifier`, the one object through which *every* training loop talks to the method:
the project's own ``sparsify_cli.passes.training.fit`` (the CLI's fine-tuning) and a user's
hand-written loop (:mod:`sparsify_cli.api`) call the same three methods::

    sp = prepare(model, MaxQConfig(n=2, m=4, epochs=E), targets, seed=0)
    for epoch in range(E):
        sp.epoch_start(epoch)          # MaxQ's incremental-sparsity schedule
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()            # SR-STE / MaxQ decay is a gradient hook: nothing to call
            optimizer.step()
            sp.step(optimizer)         # DST mask updates (they reset the regrown weights' state)
    manifest = sp.finalize()           # fold: exact zeros; the manifest of every mask

A method is registered once with :func:`register_attach` (its config type -> a function that
attaches the masks and returns its :class:`Callbacks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.masks import fold, manifest_entries, masked_modules
from sparsify_cli.passes.registry import config_to_dict


class Callbacks:
    """What a method does at the hook points of a training loop; every method is a no-op by
    default. Gradient edits (SR-STE decay, DST's dense-gradient capture) are tensor hooks the
    method registers itself, so no loop has to call anything between backward and step."""

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None: ...

    def before_step(self, model: nn.Module, step: int) -> None: ...

    def after_step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int
    ) -> None: ...

    def close(self) -> None:
        """Remove any hooks the method registered."""


class CallbackList(Callbacks):
    """Several :class:`Callbacks` run in order at every hook (e.g. rewiring + a loss schedule)."""

    def __init__(self, *callbacks: Callbacks) -> None:
        self.callbacks = callbacks

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        for c in self.callbacks:
            c.on_epoch_start(model, epoch)

    def before_step(self, model: nn.Module, step: int) -> None:
        for c in self.callbacks:
            c.before_step(model, step)

    def after_step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int
    ) -> None:
        for c in self.callbacks:
            c.after_step(model, optimizer, step)

    def close(self) -> None:
        for c in self.callbacks:
            c.close()


@dataclass(frozen=True)
class Plan:
    """What a method may need to attach: the target layers, the seed, and the loop's length
    (``steps_per_epoch``: DST schedules its mask updates over ``epochs * steps_per_epoch``)."""

    targets: tuple[str, ...]
    seed: int = 0
    steps_per_epoch: int | None = None


Attach = Callable[[nn.Module, Any, Plan], Callbacks]
_ATTACH: dict[type, Attach] = {}


def register_attach(config_type: type) -> Callable[[Attach], Attach]:
    """Register ``fn(model, config, plan) -> Callbacks`` as how ``config_type`` attaches."""

    def wrap(fn: Attach) -> Attach:
        _ATTACH[config_type] = fn
        return fn

    return wrap


class Sparsifier:
    """The masks of one sparse-training run and the hooks a training loop calls.

    ``step`` counts optimizer steps (``sp.step()`` after each ``optimizer.step()``); the method's
    ``before_step`` for the next step runs at the end of ``step`` (and at ``epoch_start``), so a
    loop needs no call before its forward.
    """

    def __init__(
        self,
        model: nn.Module,
        callbacks: Callbacks | None = None,
        config: Any = None,
        targets: Sequence[str] = (),
        step: int = 0,
    ) -> None:
        self.model = model
        self.callbacks = callbacks or Callbacks()
        self.config = config
        self.targets = tuple(targets)
        self.steps = step
        self.epoch: int | None = None
        self._armed: int | None = None
        self.dense: nn.Module | None = None
        """The model before its masks, when the caller kept a copy (the export baseline)."""
        self.example: Any = None
        """A batch of the model's inputs, when the caller gave one (what export traces)."""

    def _arm(self) -> None:
        if self._armed != self.steps:
            self.callbacks.before_step(self.model, self.steps)
            self._armed = self.steps

    def epoch_start(self, epoch: int | None = None) -> None:
        """Call at the start of every epoch (``epoch`` counts from 0; default: the next one)."""
        self.epoch = epoch if epoch is not None else (0 if self.epoch is None else self.epoch + 1)
        self.callbacks.on_epoch_start(self.model, self.epoch)
        self._arm()

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Call after every ``optimizer.step()``; pass the optimizer (DST resets its state for
        regrown weights)."""
        self.callbacks.after_step(self.model, optimizer, self.steps)
        self.steps += 1
        self._arm()

    def close(self) -> None:
        """Remove the method's gradient hooks (training is over)."""
        self.callbacks.close()

    @torch.no_grad()
    def recalibrate_norms(self, batches: Iterable[Any], device: Any = None) -> int:
        """Re-estimate every BatchNorm's running mean and variance on ``batches`` (inputs, or
        ``(inputs, labels)`` as a loader yields them) with the masks as they are now; returns
        the number of batches used (0 when the model has no BatchNorm).

        Why: the running statistics are an exponential average (momentum 0.1) over training
        steps, so after a short run they still describe the model as it was before its masks.
        MaxQ's soft factors scale the kept weights by 1 to ~3 from the first step, so a short
        MaxQ run evaluates and folds with statistics of the dense model (``docs/maxq.md``:
        95.74% top-1 after 10 steps, 98.89% once re-estimated). The masks are not
        recomputed (the model is in eval mode; only the BatchNorms run in training mode, with
        a cumulative average: every batch counts alike).
        """
        from sparsify_cli.passes import distributed
        from sparsify_cli.passes.inputs import call, to_device

        norms = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        if not norms:
            return 0
        was_training = self.model.training
        self.model.eval()
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        used = 0
        try:
            for batch in batches:
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                call(self.model, to_device(x, device) if device is not None else x)
                used += 1
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            self.model.train(was_training)
        distributed.average_norm_stats(self.model)
        return used

    def finalize(self) -> Manifest:
        """End training: fold every mask into its weight (exact zeros, no parametrizations
        left) and return the manifest (pattern and mask of every tensor), as the CLI's fold pass
        records it."""
        self.close()
        self.model.eval()
        entries = manifest_entries(self.model)
        fold(self.model)
        left = [name for name, _ in masked_modules(self.model)]
        if left:
            raise SparsifyError("masks left after folding", found=", ".join(left))
        passes = [config_to_dict(self.config)] if self.config is not None else []
        recipe = {"passes": [*passes, {"pass": "fold"}]}
        return Manifest(entries, recipe=recipe, versions={"torch": torch.__version__})


def prepare(
    model: nn.Module,
    config: Any,
    targets: Sequence[str],
    seed: int = 0,
    steps_per_epoch: int | None = None,
) -> Sparsifier:
    """Attach ``config``'s masks to ``targets`` (seeded) and return the :class:`Sparsifier`."""
    attach = _ATTACH.get(type(config))
    if attach is None:
        raise SparsifyError(
            f"{type(config).__name__} cannot be trained through a Sparsifier",
            expected=f"one of {sorted(t.__name__ for t in _ATTACH)}",
        )
    torch.manual_seed(seed)
    plan = Plan(tuple(targets), seed, steps_per_epoch)
    return Sparsifier(model, attach(model, config, plan), config, targets)
