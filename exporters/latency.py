"""Latency of ONNX artifacts in ONNX Runtime, the dense baseline measured in the same run.

Artifacts are timed *interleaved* (short rounds of each, in turn) so that a noisy neighbour or a
frequency change hits all of them alike; each round's runs are timed one by one. Reported per
batch size: p50/p90/p99/mean in milliseconds, throughput in samples per second, and the ratio of
the baseline's median to the artifact's median (``speedup_vs_dense``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.artifact import LatencyRow
from sparsify_cli.passes.inputs import InputSpec


@dataclass(frozen=True)
class LatencySettings:
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int = 1
    warmup: int = 10
    seconds: float = 1.0
    min_iterations: int = 30
    round_size: int = 10


def _row(batch: int, times: list[float]) -> LatencyRow:
    ms = np.array(times) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyRow(
        batch,
        float(p50),
        float(p90),
        float(p99),
        float(ms.mean()),
        float(batch * 1e3 / ms.mean()),
        len(times),
    )


def measure_latency(
    artifacts: Mapping[str, str | Path],
    input_shape: Sequence[int] | Sequence[InputSpec],
    settings: LatencySettings = LatencySettings(),
    baseline: str | None = None,
    track: Callable[..., Any] | None = None,
) -> dict[str, list[LatencyRow]]:
    """Time every artifact at every batch size.

    ``input_shape`` is the shape of the single float input without its batch axis, or one
    :class:`~sparsify_cli.passes.inputs.InputSpec` per input (integer inputs are fed values from
    their valid
    range, so token ids stay inside the vocabulary). ``baseline`` names the dense artifact whose
    medians the speedups are relative to.
    """
    sessions = {name: runtime.session(path, settings.threads) for name, path in artifacts.items()}
    rng = np.random.default_rng(0)
    results: dict[str, list[LatencyRow]] = {name: [] for name in artifacts}
    batches = settings.batch_sizes
    for batch in track(batches, "timing", len(batches)) if track else batches:
        if all(isinstance(s, InputSpec) for s in input_shape):
            x = {s.name: s.random(batch, rng) for s in input_shape}
            feeds = dict.fromkeys(sessions, x)
        else:
            x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
            feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
        for name, sess in sessions.items():
            for _ in range(settings.warmup):
                sess.run(None, feeds[name])
        times: dict[str, list[float]] = {name: [] for name in sessions}
        start = time.perf_counter()
        budget = settings.seconds * len(sessions)
        while (
            min(len(t) for t in times.values()) < settings.min_iterations
            or time.perf_counter() - start < budget
        ):
            for name, sess in sessions.items():
                feed = feeds[name]
                for _ in range(settings.round_size):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    times[name].append(time.perf_counter() - t0)
        for name in sessions:
            results[name].append(_row(batch, times[name]))
    if baseline is not None:
        for name, rows in results.items():
            results[name] = [
                r.with_(speedup_vs_dense=base.p50_ms / r.p50_ms)
                for r, base in zip(rows, results[baseline], strict=True)
            ]
    return results
