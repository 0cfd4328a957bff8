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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    dynamic_axes: tuple[tuple[str, int, int, int, int], ...] = ()
    """``(input, axis, min, opt, max)`` of every dynamic axis other than the batch (a sequence
    length): the profile range of that axis (:func:`axis_ranges` derives it from the inputs)."""

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
        for entry in self.dynamic_axes:
            name, axis, low, opt, high = entry
            if axis < 1 or not 1 <= low <= opt <= high:
                raise SparsifyError(
                    f"TensorRT range of input {name} axis {axis} must satisfy axis >= 1 and "
                    "1 <= min <= opt <= max",
                    found=str(tuple(entry)),
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


TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "INT8": "int8",
}
"""``trt.DataType`` member name -> the numpy dtype name an input of that type is fed."""


@dataclass(frozen=True)
class InputProfile:
    """One network input in the optimization profile: (min, opt, max) shapes and its dtype.

    Integer inputs (token ids, attention masks) keep the integer type the parsed network
    declares (int32, or int64 where TensorRT 10 keeps it); the runner casts the data to it,
    never to float."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        lengths = {len(self.min), len(self.opt), len(self.max)}
        ordered = all(
            1 <= a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=False)
        )
        if len(lengths) != 1 or not ordered:
            raise SparsifyError(
                f"TensorRT profile of input {self.name} must satisfy 1 <= min <= opt <= max "
                "on every axis",
                found=f"min={self.min}, opt={self.opt}, max={self.max}",
            )


def trt_dtype_name(trt: Any, dtype: Any) -> str:
    """The numpy dtype name of a ``trt.DataType`` (``"float32"`` for one this table lacks)."""
    for member, name in TRT_DTYPES.items():
        if getattr(trt.DataType, member, object()) == dtype:
            return name
    return "float32"


def network_inputs(network: Any, trt: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape with -1 on dynamic axes, dtype name) of every input of a parsed network."""
    found = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        found[tensor.name] = (shape, trt_dtype_name(trt, tensor.dtype))
    return found


def input_profiles(
    inputs: Mapping[str, tuple[Sequence[int], str]], settings: BuildSettings
) -> list[InputProfile]:
    """The optimization profile of every network input (one profile holds them all).

    ``inputs``: :func:`network_inputs`. A fixed axis is fixed in the profile; the batch axis
    (axis 0) spans ``settings``' batch range; any other dynamic axis (a sequence length) takes
    its ``(min, opt, max)`` from ``settings.dynamic_axes`` and is refused, naming the input and
    the axis, without one.
    """
    axes: dict[str, dict[int, tuple[int, int, int]]] = {}
    for name, axis, low, opt, high in settings.dynamic_axes:
        axes.setdefault(name, {})[axis] = (low, opt, high)
    profiles = []
    for name, (shape, dtype) in inputs.items():
        low, opt, high = [], [], []
        for axis, dim in enumerate(shape):
            if axis == 0 and dim < 0:
                span = (settings.min_batch, settings.opt_batch, settings.max_batch)
            elif dim >= 0:
                span = (dim, dim, dim)
            elif axis in axes.get(name, {}):
                span = tuple(int(d) for d in axes[name][axis])
            else:
                raise SparsifyError(
                    f"TensorRT input {name} has dynamic axis {axis} and no range for it",
                    found=f"network shape {list(shape)}",
                    fix="export with that axis fixed, or give its (min, opt, max) in "
                    "BuildSettings.dynamic_axes",
                )
            low.append(span[0])
            opt.append(span[1])
            high.append(span[2])
        profiles.append(InputProfile(name, tuple(low), tuple(opt), tuple(high), dtype))
    return profiles


def axis_ranges(
    specs: Sequence[Any], check_x: Any = None
) -> tuple[tuple[str, int, int, int, int], ...]:
    """``(input, axis, min, opt, max)`` of every dynamic non-batch axis of the inputs ``specs``
    (:class:`~sparsify_cli.passes.inputs.InputSpec`), for ``BuildSettings.dynamic_axes``: from
    1 up to the longest length the example or the check inputs have (a sequence padded to
    ``--max-length``), tuned for that length."""
    ranges = []
    for spec in specs:
        for axis in spec.dynamic:
            if axis == 0 or axis >= len(spec.shape):
                continue
            longest = int(spec.shape[axis])
            given = check_x.get(spec.name) if isinstance(check_x, Mapping) else None
            if given is not None and np.ndim(given) > axis:
                longest = max(longest, int(np.shape(given)[axis]))
            ranges.append((spec.name, int(axis), 1, longest, longest))
    return tuple(ranges)


def configure_build(
    builder: Any, network: Any, settings: BuildSettings, trt: Any
) -> tuple[Any, list[InputProfile], Any]:
    """A builder config for ``network`` (parsed): every input's profile (:func:`input_profiles`)
    and ``settings`` applied. Returns ``(config, profiles, timing cache)``; ``trt`` is the
    module, so this runs against a stand-in on a machine without TensorRT."""
    profiles = input_profiles(network_inputs(network, trt), settings)
    config = builder.create_builder_config()
    cache = apply_settings(settings, config, builder, trt, profiles)
    return config, profiles, cache


def apply_settings(
    settings: BuildSettings,
    config: Any,
    builder: Any,
    trt: Any,
    inputs: Sequence[InputProfile],
) -> Any:
    """Configure ``config`` (an ``IBuilderConfig``) for ``settings``; returns the timing cache.

    ``inputs`` are the profiles of every network input (:func:`input_profiles`), all set in one
    optimization profile. The timing cache is loaded from
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
    for p in inputs:
        profile.set_shape(p.name, p.min, p.opt, p.max)
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
