"""TensorRT builder settings as plain data, and the one function that applies them.

:class:`BuildSettings` is what a user chooses (precision, 2:4 sparse weights, workspace, timing
cache, the batch range of the optimization profile, builder optimization level). It is a frozen,
validated dataclass so it can be recorded in the recipe and compared between runs.
:func:`apply_settings` translates it into calls on a TensorRT ``IBuilderConfig``; it takes the
``tensorrt`` module as an argument, so it never imports TensorRT itself and its behaviour can be
checked on a machine without a GPU.

TensorRT 10 API used here (names checked against the TensorRT Python API reference and
Polygraphy's ``backend/trt/config.py``): ``config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS | FP16
| INT8)``, ``config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)``,
``config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED`` (needed for per-layer tactics
in the engine inspector), ``config.builder_optimization_level``,
``builder.create_optimization_profile()`` + ``profile.set_shape(name, min, opt, max)`` +
``config.add_optimization_profile(profile)``, and the timing cache
``config.create_timing_cache(bytes)`` / ``config.set_timing_cache(cache, ignore_mismatch=False)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsify_cli.passes.atomic import atomic_write_bytes
from sparsify_cli.passes.errors import SparsifyError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BuildSettings:
    """How one engine is built.

    ``precision``: ``fp16`` lets TensorRT pick fp16 kernels; ``int8`` is for explicitly quantized
    (Q/DQ) ONNX and also enables fp16 for the layers left unquantized, as ``trtexec --int8
    --fp16`` does; ``fp32`` clears TF32 so fp32 parity stays tight. ``sparse_weights`` sets
    ``SPARSE_WEIGHTS``, which lets TensorRT *consider* 2:4 sparse tactics for weights that hold the
    pattern; it still times them against dense ones and keeps the faster (see
    :mod:`sparsify_cli.exporters.tensorrt.sparsity_log`). The optimization profile covers the
    dynamic batch axis from ``min_batch`` to ``max_batch``, tuned for ``opt_batch``.
    """

    precision: str = "fp16"
    sparse_weights: bool = True
    workspace_bytes: int = 4 << 30
    timing_cache: str | None = None
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 256
    optimization_level: int = 3
    detailed_profiling: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SparsifyError(
                f"unknown TensorRT precision {self.precision!r}", expected=f"one of {PRECISIONS}"
            )
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise SparsifyError(
                "TensorRT batch profile must satisfy 1 <= min <= opt <= max",
                found=f"min={self.min_batch}, opt={self.opt_batch}, max={self.max_batch}",
            )
        if not 0 <= self.optimization_level <= 5:
            raise SparsifyError(
                "TensorRT builder optimization level must be 0..5",
                found=str(self.optimization_level),
            )
        if self.workspace_bytes < 1 << 20:
            raise SparsifyError(
                "TensorRT workspace must be >= 1 MiB", found=str(self.workspace_bytes)
            )

    def profile_shapes(
        self, sample_shape: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for ``sample_shape`` (which excludes the batch axis)."""
        rest = tuple(int(d) for d in sample_shape)
        return (self.min_batch, *rest), (self.opt_batch, *rest), (self.max_batch, *rest)


def apply_settings(
    settings: BuildSettings,
    config: Any,
    builder: Any,
    trt: Any,
    inputs: dict[str, Sequence[int]],
) -> Any:
    """Configure ``config`` (an ``IBuilderConfig``) for ``settings``; returns the timing cache.

    ``inputs`` maps each network input name to its shape without the batch axis; every input gets
    the same batch range in one optimization profile. The timing cache is loaded from
    ``settings.timing_cache`` when that file exists (so dense and sparse builds, and later runs,
    reuse each other's tactic timings) and is created empty otherwise; the caller writes it back
    with :func:`save_timing_cache` after the build.
    """
    flags = trt.BuilderFlag
    if settings.precision in ("fp16", "int8"):
        config.set_flag(flags.FP16)
    if settings.precision == "int8":
        config.set_flag(flags.INT8)
    if settings.precision == "fp32":
        config.clear_flag(flags.TF32)
    if settings.sparse_weights:
        config.set_flag(flags.SPARSE_WEIGHTS)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    if settings.detailed_profiling:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED

    profile = builder.create_optimization_profile()
    for name, shape in inputs.items():
        profile.set_shape(name, *settings.profile_shapes(shape))
    config.add_optimization_profile(profile)

    data = b""
    if settings.timing_cache and Path(settings.timing_cache).is_file():
        data = Path(settings.timing_cache).read_bytes()
        log.info("reusing TensorRT timing cache %s (%d bytes)", settings.timing_cache, len(data))
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def save_timing_cache(settings: BuildSettings, config: Any) -> None:
    """Write the (now filled) timing cache back to ``settings.timing_cache``, atomically."""
    if not settings.timing_cache:
        return
    atomic_write_bytes(settings.timing_cache, bytes(config.get_timing_cache().serialize()))
