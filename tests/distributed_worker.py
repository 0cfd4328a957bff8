"""Library-level training run for tests/test_distributed.py, launched by torchrun (or imported).

Each rank trains the same way through ``run_passes`` and saves its own masked state_dict to
``OUT/<method>-rank<R>.pt`` so the test can compare ranks bit for bit and compare rank 0 with an
in-process single-process run over the same global batches. This file is test scaffolding: the
library itself writes nothing on ranks other than 0.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from sparsify_cli.passes import distributed
from sparsify_cli.passes.dst import DSTConfig
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.maxq import MaxQConfig
from sparsify_cli.passes.registry import PassContext, run_passes
from sparsify_cli.samples import SAMPLES
from sparsify_cli.samples.datasets import digits

ROWS = 1024
"""Training rows (a multiple of the global batch, so no rank pads its shard)."""
BATCH = 64
"""Global batch: 64 in one process, 32 per rank on two."""

RUNS = {
    "maxq": (
        "digits_transformer",
        MaxQConfig(n=2, m=4, epochs=1),
        ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"],
    ),
    "rigl": (
        "digits_cnn",
        DSTConfig("rigl", sparsity=0.75, epochs=1, delta_t=4),
        ["layer2.conv1", "layer2.conv2", "layer3.conv1", "layer3.conv2"],
    ),
}


def loaded(name: str) -> nn.Module:
    model = SAMPLES[name].build()
    model.load_state_dict(torch.load(SAMPLES[name].checkpoint, weights_only=True)["state_dict"])
    return model


def train(method: str) -> tuple[nn.Module, PassContext]:
    """One run of ``method`` on this process's shard (the whole set in a single process)."""
    name, config, targets = RUNS[method]
    data = digits()
    torch.manual_seed(0)
    ctx = PassContext(
        targets=targets,
        seed=0,
        train=distributed.sharded_loader(
            data.x_train[:ROWS], data.y_train[:ROWS], BATCH, shuffle=True, seed=0
        ),
    )
    return run_passes(loaded(name), [config], ctx), ctx


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with distributed.session("cpu"):
        for method in RUNS:
            model, ctx = train(method)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            torch.save(
                {"state": state, "metrics": ctx.metrics},
                out / f"{method}-rank{distributed.rank()}.pt",
            )
        # the divergence guard: one rank's mask flipped must stop every rank with one error
        mask = next(b for n, b in model.named_buffers() if n.endswith("mask"))
        if distributed.rank() == 1:
            mask.view(-1)[0] = ~mask.view(-1)[0]
        try:
            distributed.verify_in_sync(model, "the test")
            caught = ""
        except SparsifyError as err:
            caught = type(err).__name__
        (out / f"guard-rank{distributed.rank()}.txt").write_text(caught)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
