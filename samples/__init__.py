"""Shipped sample models: name -> architecture, checkpoint, dataset, input shape.

A sample checkpoint is ``{"sparsify_sample": name, "state_dict": ...}``, so
``sparsify convert samples/digits_cnn.pt`` needs no ``--arch``: the loader accepts the name only
if it is registered here, so a checkpoint can never make the loader import arbitrary code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from sparsify_cli.samples.models import DigitsResNet, DigitsTransformer

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Sample:
    name: str
    build: type[nn.Module]
    dataset: str
    input_shape: tuple[int, ...]
    epochs: int
    lr: float

    @property
    def checkpoint(self) -> Path:
        return HERE / f"{self.name}.pt"

    @property
    def card(self) -> Path:
        """JSON written by the training script: dense accuracy and how it was trained."""
        return HERE / f"{self.name}.json"


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in (
        Sample("digits_cnn", DigitsResNet, "digits", (1, 1, 8, 8), epochs=30, lr=3e-3),
        Sample("digits_transformer", DigitsTransformer, "digits", (1, 1, 8, 8), epochs=40, lr=1e-3),
    )
}
