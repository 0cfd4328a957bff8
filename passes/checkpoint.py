"""Per-epoch checkpoints of a training pass, so ``--resume`` continues an interrupted run.

``<workdir>/<pass name>.ckpt`` holds the model (weights and mask buffers), optimizer and
scheduler, the torch RNG states (global and the loader's shuffling generator), the loss history
and whatever the pass adds (DST: its rewiring generator and update count), written atomically
after every epoch. A resumed run reaches the same weights bit for bit as an uninterrupted one
with the same seed. The checkpoint records the pass config, and one written with other settings
is refused. Under torchrun only rank 0 writes it; on resume rank 0 reads it and sends it to
every rank. Used by the N:M fine-tuning harness and by dynamic sparse training alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify_cli.passes import distributed
from sparsify_cli.passes.atomic import atomic_path
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.registry import PassContext
from sparsify_cli.passes.training import History


def _rng_state(loader: Any) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(loader, "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def _set_rng_state(loader: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(loader, "generator", None)
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


class EpochCheckpoint:
    """The checkpoint file of one pass ``config`` in ``ctx.workdir`` (none without a workdir)."""

    def __init__(self, ctx: PassContext, config: Any) -> None:
        self.ctx = ctx
        self.config = dataclasses.asdict(config)
        self.path = Path(ctx.workdir) / f"{config.name}.ckpt" if ctx.workdir is not None else None

    def _read(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt file is the user's to delete, not a crash
            raise SparsifyError(
                f"cannot read the checkpoint {self.path}",
                found=f"{type(err).__name__}: {err}",
                fix="run again without --resume to start over",
            ) from err
        if ckpt.get("config") != self.config:
            raise SparsifyError(
                f"the checkpoint {self.path} was written with other settings",
                expected=str(self.config),
                found=str(ckpt.get("config")),
                fix="resume with the same options, or run without --resume to start over",
            )
        return ckpt

    def resume(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[History, int, dict[str, Any]]:
        """With ``ctx.resume`` and a checkpoint: restore model, optimizer and RNG states and
        return ``(history, first epoch to run, the pass's extra state)``; else a fresh start."""
        if not (self.ctx.resume and self.path is not None):
            return History(), 0, {}
        ckpt = distributed.from_main(self._read)
        if ckpt is None:
            return History(), 0, {}
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(self.ctx.train, ckpt["rng"])
        return History(**ckpt["history"]), ckpt["epoch"] + 1, ckpt.get("extra", {})

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        epoch: int,
        history: History,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write the state after ``epoch`` (rank 0 only; nothing without a workdir)."""
        if self.path is None or not distributed.is_main():
            return
        state = {
            "epoch": epoch,
            "config": self.config,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(self.ctx.train),
            "history": dataclasses.asdict(history),
            "extra": extra or {},
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
