"""Latency statistics and output parity: pure functions over numbers (no GPU needed).

Latency is summarised the way ``trtexec`` reports it: per query, *GPU compute time* (CUDA events
around the enqueue only) and *host latency* (host-to-device copy + compute + device-to-host copy);
each as min / mean / median / p90 / p95 / p99 / max in milliseconds (percentiles by linear
interpolation between order statistics); throughput as queries per second of wall time spent in
the timed loop, and samples per second (queries x batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PARITY_RTOL = {"fp32": 1e-3, "fp16": 1e-2, "int8": 1e-1}
"""Largest allowed ``max|engine - torch|`` as a fraction of ``max|torch|`` (the output scale).

fp32: GPU reduction order only (TF32 is off). fp16: ~3 decimal digits per product, accumulated
in fp32, measured on logits of O(10). int8: per-channel symmetric weights and per-tensor
activations (Q/DQ); 10% of the output scale, and the report also gives top-1 agreement.
"""


@dataclass(frozen=True)
class LatencyStats:
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """Summary of per-query times in milliseconds (at least one sample)."""
    ms = np.asarray(samples_ms, dtype=np.float64)
    if ms.size == 0 or not np.all(np.isfinite(ms)) or np.any(ms < 0):
        raise ValueError("latency samples must be a non-empty list of finite times >= 0")
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return LatencyStats(
        float(ms.min()),
        float(ms.mean()),
        float(p50),
        float(p90),
        float(p95),
        float(p99),
        float(ms.max()),
        int(ms.size),
    )


def throughput(queries: int, batch: int, wall_seconds: float) -> tuple[float, float]:
    """(queries per second, samples per second) over ``wall_seconds`` of timed loop."""
    if wall_seconds <= 0:
        raise ValueError("wall time must be > 0")
    qps = queries / wall_seconds
    return qps, qps * batch


def speedup(dense_median_ms: float, sparse_median_ms: float) -> float:
    """Dense median over sparse median: > 1 means the sparse engine is faster."""
    return dense_median_ms / sparse_median_ms


@dataclass(frozen=True)
class Parity:
    max_abs: float
    scale: float
    tolerance: float
    top1_agreement: float | None

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def parity(engine_out: np.ndarray, reference: np.ndarray, precision: str) -> Parity:
    """Engine outputs vs the PyTorch reference with the tolerance of ``precision``."""
    engine_out = np.asarray(engine_out, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if engine_out.shape != reference.shape:
        raise ValueError(f"shape mismatch: engine {engine_out.shape} vs torch {reference.shape}")
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-6)
    top1 = None
    if reference.ndim == 2 and reference.shape[1] > 1:
        top1 = float((engine_out.argmax(1) == reference.argmax(1)).mean())
    return Parity(
        max_abs=float(np.abs(engine_out - reference).max(initial=0.0)),
        scale=scale,
        tolerance=PARITY_RTOL[precision] * scale,
        top1_agreement=top1,
    )
