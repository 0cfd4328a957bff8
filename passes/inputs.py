"""Model inputs: one ordered mapping ``name -> tensor``, and the spec each input is drawn from.

Every stage (layer selection, FLOP counting, export, parity, latency, prediction) takes an
:data:`Example`: an ordered mapping from input name to a batch-first tensor, passed to the model
*positionally* in that order, its names becoming the ONNX input names. A bare tensor is shorthand
for ``{"input": tensor}``, the single float input every model had before multi-input support, so
that path is unchanged.

An :class:`InputSpec` says what an input looks like (shape, dtype, dynamic axes) and, for integer
inputs, which values are valid (``[low, high)``: token ids below the vocabulary size, an
attention mask of ones), so latency runs and random examples feed the model values it accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from sparsify_cli.passes.errors import SparsifyError

DEFAULT_NAME = "input"
DTYPES = {
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
    "int64": (torch.int64, np.int64),
    "int32": (torch.int32, np.int32),
    "bool": (torch.bool, np.bool_),
}
INTEGER_DTYPES = ("int64", "int32")

Example = torch.Tensor | Mapping[str, torch.Tensor]
"""What the model is called with: a tensor (one input named ``input``) or ``name -> tensor``."""

Arrays = np.ndarray | Mapping[str, np.ndarray]
"""Numpy counterpart of :data:`Example` for datasets and ONNX Runtime feeds."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: batch-first example shape, dtype, dynamic axes, valid integer range.

    ``dynamic`` maps axis -> symbolic name in the ONNX file (axis 0 is always the batch).
    Integer inputs are drawn uniformly from ``[low, high)``; float inputs from N(0, 1).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: Mapping[int, str] = field(default_factory=lambda: {0: "batch"})
    low: int = 0
    high: int = 2

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise SparsifyError(
                f"unknown dtype {self.dtype!r} for input {self.name!r}",
                expected=f"one of {', '.join(DTYPES)}",
            )
        if self.high <= self.low:
            raise SparsifyError(
                f"empty value range for input {self.name!r}",
                expected="LOW-HIGH with LOW < HIGH (values drawn from [LOW, HIGH))",
                found=f"{self.low}-{self.high}",
            )

    def random(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """``batch`` rows of valid values (the example's batch axis replaced by ``batch``)."""
        shape = (batch, *self.shape[1:])
        if self.dtype in INTEGER_DTYPES:
            return rng.integers(self.low, self.high, shape, dtype=DTYPES[self.dtype][1])
        if self.dtype == "bool":
            return rng.integers(0, 2, shape).astype(np.bool_)
        return rng.standard_normal(shape, dtype=np.float32).astype(DTYPES[self.dtype][1])


def parse_dims(text: str, commas: bool = True) -> tuple[int, ...] | None:
    """``"1x3x32x32"`` (or ``"1,3,32,32"``, unless commas separate something else there) ->
    ``(1, 3, 32, 32)``; None unless every dimension is an integer >= 1. The one reading of a
    shape for ``--input``, ``--input-shape`` and ``bench --shapes``."""
    parts = re.split(r"[,x]" if commas else "x", text.replace(" ", ""))
    if not all(p.isascii() and p.isdigit() for p in parts) or any(int(p) < 1 for p in parts):
        return None
    return tuple(int(p) for p in parts)


_RANGE_RE = re.compile(r"^(?:(\d+)-)?(\d+)$")


def parse_input_spec(text: str) -> InputSpec:
    """``NAME:SHAPE:DTYPE[:RANGE]`` -> :class:`InputSpec` (the ``--input`` option).

    SHAPE is ``x``- (or comma-) separated with the batch first; RANGE (integer inputs) is
    ``HIGH`` or ``LOW-HIGH``, values drawn from ``[LOW, HIGH)`` (default ``0-2``).

    >>> parse_input_spec("input_ids:1x128:int64:30522").high
    30522
    """
    expected = "NAME:SHAPE:DTYPE[:RANGE], e.g. input_ids:1x128:int64:30522 or x:1x3x32x32:float32"
    parts = text.split(":")
    if len(parts) not in (3, 4) or not all(p.strip() for p in parts):
        raise SparsifyError(f"cannot read --input {text!r}", expected=expected, found=repr(text))
    name, dims, dtype = (p.strip() for p in parts[:3])
    if not name.isidentifier():
        raise SparsifyError(
            f"bad input name {name!r} in --input {text!r}",
            expected="a Python identifier (it names the ONNX input)",
        )
    shape = parse_dims(dims)
    if shape is None:
        raise SparsifyError(
            f"bad shape {dims!r} in --input {text!r}",
            expected="x-separated integers >= 1, batch first, e.g. 1x128",
            found=repr(dims),
        )
    if dtype not in DTYPES:
        raise SparsifyError(
            f"bad dtype {dtype!r} in --input {text!r}", expected=f"one of {', '.join(DTYPES)}"
        )
    low, high = 0, 2
    if len(parts) == 4:
        match = _RANGE_RE.match(parts[3].strip())
        if not match or dtype not in INTEGER_DTYPES:
            raise SparsifyError(
                f"bad value range {parts[3]!r} in --input {text!r}",
                expected="HIGH or LOW-HIGH, only for int64/int32 inputs",
            )
        low, high = int(match.group(1) or 0), int(match.group(2))
    return InputSpec(name, shape, dtype, low=low, high=high)


def spec_of(name: str, array: np.ndarray) -> InputSpec:
    """The spec of an example array (``--example-input``): integer ranges from its own values."""
    dtype = str(array.dtype)
    if dtype not in DTYPES:
        raise SparsifyError(
            f"example input {name!r} has dtype {dtype}", expected=f"one of {', '.join(DTYPES)}"
        )
    if array.ndim < 1 or array.shape[0] < 1:
        raise SparsifyError(f"example input {name!r} has no batch axis", found=str(array.shape))
    if dtype in INTEGER_DTYPES and array.size:
        low, high = int(array.min()), int(array.max()) + 1
        return InputSpec(name, tuple(array.shape), dtype, low=low, high=max(high, low + 1))
    return InputSpec(name, tuple(array.shape), dtype)


def as_inputs(example: Example) -> dict[str, torch.Tensor]:
    """The ordered ``name -> tensor`` form of ``example`` (a bare tensor is named ``input``)."""
    if isinstance(example, torch.Tensor):
        return {DEFAULT_NAME: example}
    return dict(example)


def call(model: nn.Module, example: Example) -> object:
    """``model`` applied to ``example``'s tensors, positionally, in order."""
    return model(*as_inputs(example).values())


def batch_size(example: Example | Arrays) -> int:
    """Rows of the batch axis (the first input's; all inputs share it)."""
    first = example if not isinstance(example, Mapping) else next(iter(example.values()))
    return int(first.shape[0])


def rows(arrays: Arrays, index: slice | np.ndarray) -> Arrays:
    """The same rows of every input."""
    if isinstance(arrays, Mapping):
        return {name: a[index] for name, a in arrays.items()}
    return arrays[index]


def as_arrays(example: Example) -> Arrays:
    """Numpy form of ``example`` (one array for a bare tensor)."""
    if isinstance(example, torch.Tensor):
        return example.numpy()
    return {name: t.numpy() for name, t in example.items()}


def make_example(specs: Sequence[InputSpec], seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic example from ``specs`` at their own batch size."""
    rng = np.random.default_rng(seed)
    return {s.name: torch.from_numpy(s.random(s.shape[0], rng)) for s in specs}


def to_tensors(arrays: Arrays) -> Example:
    """Torch form of ``arrays`` (``as_tensor``: no copy where the dtype allows)."""
    if isinstance(arrays, Mapping):
        return {name: torch.as_tensor(a) for name, a in arrays.items()}
    return torch.as_tensor(arrays)


def to_device(example: Example, device: torch.device | str) -> Example:
    """``example`` with every tensor on ``device`` (a mapping stays a mapping, in order)."""
    if isinstance(example, Mapping):
        return {name: t.to(device) for name, t in example.items()}
    return example.to(device)


def batches(arrays: Arrays, size: int) -> Iterator[Example]:
    """Consecutive batches of ``arrays`` as tensors: ``name -> tensor`` for named inputs.

    The form calibration (one-shot passes, int8) and prediction feed the model with.
    """
    for start in range(0, batch_size(arrays), size):
        yield to_tensors(rows(arrays, slice(start, start + size)))


class ArrayRows(Dataset):
    """Rows of numpy inputs (one array, or ``name -> array``) with optional labels.

    An item is ``(x,)`` or ``(x, y)`` with ``x`` a tensor or ``name -> tensor``; the default
    collate turns a batch of them into ``[x_batch]`` / ``[x_batch, y_batch]``, a mapping staying
    an ordered mapping, so every loader yields the :data:`Example` form the model is called with.
    """

    def __init__(self, x: Arrays, y: np.ndarray | None) -> None:
        self.x = to_tensors(x)
        self.y = None if y is None else torch.as_tensor(y)
        self.rows = batch_size(x)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if isinstance(self.x, torch.Tensor):
            x: Any = self.x[index]
        else:
            x = {name: t[index] for name, t in self.x.items()}
        return (x,) if self.y is None else (x, self.y[index])
