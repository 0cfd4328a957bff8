"""Latency of ONNX artifacts in ONNX Runtime, the dense baseline measured in the same run.

Artifacts are timed *interleaved*: rounds of one block of calls per artifact, the order of the
artifacts rotated every round, so a noisy neighbour or a frequency change hits all of them alike;
every call is timed on its own. Timing continues until the figures are stable or a time cap is
reached:

* first ``warmup`` untimed calls per artifact (by default up to ``AUTO_WARMUP``, stopping once
  they have taken ``seconds``: a large model at a large batch is not run 10 times for nothing);
* at least ``min_rounds`` rounds and ``seconds`` per artifact (``--duration``), or exactly
  ``iterations`` calls per artifact when that is set (``--iterations``);
* then, unless ``iterations`` fixes the count, more rounds until the 95% interval of every
  speedup ratio is within ``target`` (relative half-width) of the ratio, for at most
  ``max_factor`` times the minimum time.

Reported per batch size: p50/p90/p99/mean in milliseconds, throughput in samples per second, the
number of timed calls, the ratio of the baseline's median to the artifact's median
(``speedup_vs_dense``) with its 95% interval (``ratio_low``, ``ratio_high``), and ``noisy``: the
interval is wider than ``noisy_width`` of the ratio on either side, so the figure should not be
trusted (rerun on a quieter machine, or with a longer ``--duration``).

The interval is a bootstrap over rounds: each round holds one block of every artifact taken at
nearly the same time, so resampling whole rounds keeps the pairing that interleaving created.
The baseline's own rows (ratio 1, interval [1, 1]) and rows of a run without a baseline (no
ratio, interval ``None``) are flagged noisy by the same rule applied to the interval of their own
median.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.artifact import LatencyRow
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import InputSpec

AUTO_WARMUP = 10
"""Untimed calls per artifact and batch when ``--warmup`` is not given (fewer for slow models)."""

BOOTSTRAP = 1000
"""Bootstrap resamples of the rounds for the 95% interval (seeded: the same times, the same
interval)."""


@dataclass(frozen=True)
class LatencySettings:
    """How long and how often every artifact is timed (see the module docstring)."""

    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int = 1
    warmup: int | None = None
    seconds: float = 1.0
    iterations: int | None = None
    round_size: int = 10
    min_rounds: int = 6
    target: float = 0.02
    max_factor: float = 4.0
    noisy_width: float = 0.05

    def __post_init__(self) -> None:
        if self.warmup is not None and self.warmup < 0:
            raise SparsifyError("--warmup must be >= 0", found=str(self.warmup))
        if not (math.isfinite(self.seconds) and self.seconds > 0):  # nan/inf would never end
            raise SparsifyError(
                "--duration (--bench-seconds) must be a positive finite number of seconds",
                found=str(self.seconds),
            )
        if self.iterations is not None and self.iterations < 1:
            raise SparsifyError("--iterations must be >= 1", found=str(self.iterations))
        if self.threads < 1:
            raise SparsifyError("--threads must be >= 1", found=str(self.threads))
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise SparsifyError("batch sizes must be >= 1", found=str(self.batch_sizes))


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


def _boot_medians(blocks: list[list[float]], draws: np.ndarray) -> np.ndarray:
    """Median of the resampled rounds' calls, per bootstrap draw (the median of block medians:
    an artifact's blocks are equal in size)."""
    med = np.array([np.median(b) for b in blocks])
    return np.median(med[draws], axis=1)


def _draws(rounds: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, rounds, (BOOTSTRAP, rounds))


def ratio_interval(
    base_blocks: list[list[float]], blocks: list[list[float]]
) -> tuple[float, float]:
    """95% bootstrap interval of ``median(base) / median(artifact)`` over paired rounds."""
    rounds = min(len(base_blocks), len(blocks))
    draws = _draws(rounds)
    ratios = _boot_medians(base_blocks[:rounds], draws) / _boot_medians(blocks[:rounds], draws)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def median_spread(blocks: list[list[float]]) -> float:
    """Relative half-width of the 95% bootstrap interval of one artifact's median."""
    boot = _boot_medians(blocks, _draws(len(blocks)))
    point = float(np.median([np.median(b) for b in blocks]))
    low, high = np.percentile(boot, [2.5, 97.5])
    return _spread(float(low), float(high), point)


def _spread(low: float, high: float, point: float) -> float:
    """Largest distance of the interval's ends from ``point``, as a fraction of it."""
    return max(point - low, high - point) / point


def median_ratio(base: list[list[float]], own: list[list[float]]) -> float:
    return float(np.median([t for b in base for t in b]) / np.median([t for b in own for t in b]))


def spread(blocks: Mapping[str, list[list[float]]], name: str, baseline: str | None) -> float:
    """How uncertain ``name``'s figure is: its speedup's interval, relative to the speedup (or,
    for the baseline itself and runs without one, its median's interval)."""
    if baseline is None or name == baseline:
        return median_spread(blocks[name])
    low, high = ratio_interval(blocks[baseline], blocks[name])
    return _spread(low, high, median_ratio(blocks[baseline], blocks[name]))


def _feeds(
    sessions: Mapping[str, Any], input_shape: Sequence[int] | Sequence[InputSpec], batch: int
) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    if input_shape and all(isinstance(s, InputSpec) for s in input_shape):
        x = {s.name: s.random(batch, rng) for s in input_shape}  # type: ignore[union-attr]
        return dict.fromkeys(sessions, x)
    arr = rng.standard_normal((batch, *input_shape), dtype=np.float32)  # type: ignore[misc]
    return {name: {s.get_inputs()[0].name: arr} for name, s in sessions.items()}


def _block_size(call_s: float, settings: LatencySettings) -> int:
    """Calls per block, the same for every artifact of a round (so rounds pair alike):
    ``round_size``, fewer for slow models, so that one block of the slowest artifact takes at
    most about 1/12 of ``seconds`` and ``min_rounds`` rounds fit the time asked for."""
    if settings.iterations is not None:
        return settings.round_size
    budget = settings.seconds / (2 * settings.min_rounds)
    return max(1, min(settings.round_size, int(budget / max(call_s, 1e-6))))


def time_batch(
    sessions: Mapping[str, Any],
    feeds: Mapping[str, dict[str, np.ndarray]],
    settings: LatencySettings,
    baseline: str | None,
) -> dict[str, list[list[float]]]:
    """Blocks of per-call times (seconds) of every session, until stable (or capped)."""
    slowest = 0.0
    auto = settings.warmup is None
    for name, sess in sessions.items():
        calls: list[float] = []
        for _ in range(AUTO_WARMUP if auto else settings.warmup):  # tells how long a call takes
            t0 = time.perf_counter()
            sess.run(None, feeds[name])
            calls.append(time.perf_counter() - t0)
            if auto and sum(calls) >= settings.seconds:
                break
        slowest = max(slowest, float(np.median(calls)) if calls else 0.0)
    names = list(sessions)
    size = _block_size(slowest, settings)
    blocks: dict[str, list[list[float]]] = {name: [] for name in names}
    floor = settings.seconds * len(names)
    start = time.perf_counter()
    next_check = floor
    rounds = 0
    while True:
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            sess, feed = sessions[name], feeds[name]
            block = []
            for _ in range(size):
                t0 = time.perf_counter()
                sess.run(None, feed)
                block.append(time.perf_counter() - t0)
            blocks[name].append(block)
        rounds += 1
        elapsed = time.perf_counter() - start
        if settings.iterations is not None:
            if rounds * settings.round_size >= settings.iterations:
                break
            continue
        if rounds < settings.min_rounds or elapsed < next_check:
            continue
        if elapsed >= floor * settings.max_factor:
            break
        if all(spread(blocks, name, baseline) <= settings.target for name in names):
            break
        next_check = elapsed + 0.1 * floor  # judging stability costs time: not every round
    if settings.iterations is not None:  # exactly the asked-for count of calls
        for name in names:
            flat = [t for b in blocks[name] for t in b][: settings.iterations]
            blocks[name] = [flat[i : i + size] for i in range(0, len(flat), size)]
    return blocks


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
    their valid range, so token ids stay inside the vocabulary). ``baseline`` names the dense
    artifact whose medians the speedups (and their intervals) are relative to.
    """
    sessions = {name: runtime.session(path, settings.threads) for name, path in artifacts.items()}
    results: dict[str, list[LatencyRow]] = {name: [] for name in artifacts}
    batches = settings.batch_sizes
    for batch in track(batches, "timing", len(batches)) if track else batches:
        blocks = time_batch(sessions, _feeds(sessions, input_shape, batch), settings, baseline)
        for name, own in blocks.items():
            row = _row(batch, [t for b in own for t in b])
            if baseline is not None:
                low, high = (
                    (1.0, 1.0) if name == baseline else ratio_interval(blocks[baseline], own)
                )
                row = replace(
                    row,
                    speedup_vs_dense=median_ratio(blocks[baseline], own),
                    ratio_low=low,
                    ratio_high=high,
                )
            noisy = spread(blocks, name, baseline) > settings.noisy_width
            results[name].append(replace(row, noisy=bool(noisy)))
    return results
