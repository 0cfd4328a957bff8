"""Shared fixtures: a model the project has never seen, written as a user would write it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

UNSEEN_MODULE = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Net(nn.Module):
        """A user's model: conv features, a 30-wide layer (not divisible by 4) and a head."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 32, 3, groups=32, padding=1), nn.ReLU(),
            )
            self.hidden = nn.Linear(32 * 16, 64)
            self.odd = nn.Linear(64, 30)
            self.out = nn.Linear(30, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(self.features(x), 2).flatten(1)
            return self.out(torch.relu(self.odd(torch.relu(self.hidden(x)))))
    '''
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared, loaded CPU more threads spin and run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def unseen_model(tmp_path_factory) -> Path:
    """A folder holding ``mymodels.py`` and ``net.pt`` (a state_dict trained briefly on digits)."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "mymodels.py").write_text(UNSEEN_MODULE)
    sys.path.insert(0, str(folder))
    try:
        import mymodels
    finally:
        sys.path.remove(str(folder))
    from sparsify_cli.passes.registry import PassContext
    from sparsify_cli.passes.training import TrainConfig, cross_entropy, fit, make_loader
    from sparsify_cli.samples.datasets import digits

    torch.manual_seed(0)
    data = digits()
    model = mymodels.Net()
    cfg = TrainConfig(epochs=4, lr=3e-3)
    fit(
        model,
        make_loader(data.x_train, data.y_train, 64, True),
        cfg,
        PassContext(),
        cross_entropy(),
    )
    torch.save(model.state_dict(), folder / "net.pt")
    np.savez(
        folder / "data.npz", x=data.x_train, y=data.y_train, x_test=data.x_test, y_test=data.y_test
    )
    return folder


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real ``sparsify`` entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "sparsify_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


FAST = ("--bench-seconds", "0.05", "--batch-sizes", "1", "--quiet")
