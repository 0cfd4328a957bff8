"""The N:M sparsity pattern: parsing, the reduction-axis grouping, and validity checks.

This is part of the format layer (with :mod:`passes.manifest`): exporters use it to read the
pattern back from an artifact, so it holds no algorithm beyond counting.

Convention (DESIGN.md): N:M runs along the *reduction* axis. For a torch weight
``[out, in, *kernel]`` (Linear ``[out, in]``, Conv2d ``[out, in, kh, kw]``) every group is M
consecutive input channels at one ``(out, *kernel)`` position, the layout TensorRT and
cuSPARSELt accelerate. N:M implies constant fan-in: each output keeps ``in * N / M`` weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from passes.errors import SparsifyError

_NM_RE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class NMPattern:
    """At most ``n`` nonzeros in every group of ``m`` consecutive weights along the reduction axis.

    >>> NMPattern.parse("2:4").density
    0.5
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 1 <= self.n < self.m:
            raise SparsifyError(
                f"invalid N:M pattern {self.n}:{self.m}",
                expected="integers with 1 <= N < M, e.g. 2:4, 1:4, 4:8, 1:16",
                found=f"N={self.n}, M={self.m}",
                fix="pass --nm N:M with N smaller than M",
            )

    @classmethod
    def parse(cls, text: str) -> NMPattern:
        """Parse ``"N:M"``; anything else is a :class:`SparsifyError` naming the input."""
        match = _NM_RE.match(text or "")
        if match is None:
            raise SparsifyError(
                f"cannot read --nm {text!r}",
                expected="N:M with two integers, e.g. 2:4",
                found=repr(text),
                fix="pass --nm 2:4 (or 1:4, 4:8, 1:16)",
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def density(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def reduction_groups(weight: np.ndarray, m: int, axis: int = 1) -> np.ndarray:
    """View ``weight`` as ``[positions, in/m, m]`` groups along ``axis`` (the reduction axis).

    ``axis`` is 1 for torch weights (Linear, Conv) and ONNX Conv / Gemm(transB=1); 0 for a MatMul
    B operand ``[in, out]``.
    """
    if weight.shape[axis] % m:
        raise ValueError(f"reduction size {weight.shape[axis]} is not divisible by M={m}")
    moved = np.moveaxis(weight, axis, -1)
    return moved.reshape(-1, weight.shape[axis] // m, m)


def nm_violations(weight: np.ndarray, pattern: NMPattern, axis: int = 1) -> int:
    """Number of groups holding more than N nonzeros (0 means the pattern holds exactly)."""
    counts = np.count_nonzero(reduction_groups(weight, pattern.m, axis), axis=-1)
    return int(np.count_nonzero(counts > pattern.n))


def fan_in(mask: np.ndarray, out_axis: int = 0) -> np.ndarray:
    """Nonzeros per output neuron, over every input and kernel position: shape ``[out]``.

    ``out_axis`` is 0 for torch weights and ONNX Conv / Gemm(transB=1), 1 for a MatMul B operand.
    """
    rows = np.moveaxis(mask, out_axis, 0)
    return np.count_nonzero(rows.reshape(rows.shape[0], -1), axis=1)
