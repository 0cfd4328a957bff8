"""The N:M sparsity pattern: parsing, the reduction-axis grouping, and validity checks.

This is part of the format layer (with :mod:`sparsify_cli.passes.manifest`): exporters use it to
read the pattern back from an artifact, so it holds no algorithm beyond counting.

Convention (DESIGN.md): N:M runs along the *reduction* axis. For a torch weight
``[out, in, *kernel]`` (Linear ``[out, in]``, Conv2d ``[out, in, kh, kw]``) every group is M
consecutive input channels at one ``(out, *kernel)`` position, the layout TensorRT and
cuSPARSELt accelerate. N:M implies constant fan-in: each output keeps ``in * N / M`` weights.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sparsify_cli.passes.errors import SparsifyError

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


COMMON_PATTERNS: tuple[NMPattern, ...] = tuple(
    NMPattern(n, m) for n, m in ((1, 16), (1, 8), (1, 4), (2, 8), (2, 4), (4, 8))
)
"""The N:M patterns :func:`detect_nm` tries, strictest first (lowest density, then smallest M:
1:4 implies 2:8, so the smaller group is the stronger statement)."""


def detect_nm(weight: np.ndarray, axis: int = 1) -> NMPattern | None:
    """The strictest of :data:`COMMON_PATTERNS` that the zeros of ``weight`` satisfy along ``axis``.

    Read from the values alone, so it answers "what does this file hold", not "what was
    declared": a dense weight gives ``None``; a pattern whose M does not divide the reduction
    size is never reported.

    >>> detect_nm(np.array([[0., 0., 1., 1., 0., 0., 0., 1.]]))
    NMPattern(n=2, m=4)
    """
    for pattern in COMMON_PATTERNS:
        if weight.shape[axis] % pattern.m == 0 and nm_violations(weight, pattern, axis) == 0:
            return pattern
    return None


@dataclass(frozen=True)
class WeightPattern:
    """What the zeros of one weight say: density, best N:M, constant fan-in, ablated outputs."""

    density: float
    nm: str | None
    fan_in: int | None
    ablated: int


def weight_pattern(weight: np.ndarray, in_axis: int = 1, out_axis: int = 0) -> WeightPattern:
    """Describe ``weight`` in its own layout (``in_axis`` the reduction axis, ``out_axis`` outputs).

    ``fan_in`` is the number of nonzeros every active output keeps when that number is the
    same for all of them (constant fan-in, as SRigL and condensed export need), else ``None``.
    """
    counts = fan_in(weight != 0, out_axis)
    active = counts[counts > 0]
    constant = active.size > 0 and bool((active == active[0]).all())
    found = detect_nm(weight, in_axis)
    return WeightPattern(
        density=float(np.count_nonzero(weight) / weight.size) if weight.size else 0.0,
        nm=None if found is None else str(found),
        fan_in=int(active[0]) if constant else None,
        ablated=int(np.count_nonzero(counts == 0)),
    )


@dataclass(frozen=True, kw_only=True)
class LayerStats:
    """What one layer's weight holds, read from its values in the layout it is stored in.

    Shared by the torch-model and ONNX-file views (``sparsify_cli.passes.inspect``,
    ``sparsify_cli.exporters.inspect_onnx``)
    so both report the same fields. ``in_axis`` is the reduction axis of ``shape``; ``reason is
    None`` means the layer is eligible; ``nm`` is the strictest common N:M the zeros satisfy;
    ``flops_*`` are MACs per sample.
    """

    op: str
    shape: tuple[int, ...]
    in_axis: int
    reason: str | None
    density: float
    nm: str | None
    fan_in: int | None
    ablated: int
    params: int
    nonzero_params: int
    flops_dense: int
    flops_sparse: int

    @property
    def eligible(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "eligible": self.eligible}
