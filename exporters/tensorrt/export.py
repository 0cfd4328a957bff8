"""``--export tensorrt``: dense and 2:4 engines from the same ONNX, proven and timed side by side.

Both engines are built from the *same* sparse ONNX at the same precision; only
``SPARSE_WEIGHTS`` differs. So the latency ratio isolates what the sparse kernels buy (the
accuracy cost of the zeros is reported separately, against the dense checkpoint). The artifact
entry carries: per-layer rows (masked / eligible / picked sparse / precision / tactic), plain
warnings when a masked layer runs dense, parity of the sparse engine against PyTorch, and
trtexec-style latency of both engines per batch size with the dense/sparse ratio.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsify_cli.exporters.artifact import Artifact, Parity
from sparsify_cli.exporters.tensorrt.availability import require_tensorrt
from sparsify_cli.exporters.tensorrt.build import BuiltEngine, build_engine
from sparsify_cli.exporters.tensorrt.config import BuildSettings, axis_ranges
from sparsify_cli.exporters.tensorrt.layers import merge_layer_rows, sparsity_warnings
from sparsify_cli.exporters.tensorrt.runtime import (
    EngineRunner,
    TimingSettings,
    TrtLatencyRow,
    measure_engines,
)
from sparsify_cli.exporters.tensorrt.stats import parity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineBackend:
    """What :func:`export_tensorrt` needs from TensorRT and CUDA, in one place.

    The real one builds with :func:`build_engine`, runs with :class:`EngineRunner` and times with
    :func:`measure_engines`; a test substitutes a CPU stand-in (:func:`use_backend`) so that the
    whole ``--export tensorrt`` pipeline, report, HTML and gates run without a GPU.
    """

    check: Callable[[], None]
    build: Callable[[Path, Path, BuildSettings], BuiltEngine]
    infer: Callable[[Path, np.ndarray], np.ndarray]
    measure: Callable[..., dict[str, list[TrtLatencyRow]]]
    version: Callable[[], str]


def _trt_version() -> str:
    import tensorrt

    return tensorrt.__version__


TENSORRT = EngineBackend(
    check=require_tensorrt,
    build=build_engine,
    infer=lambda path, x: EngineRunner(path).infer(x),
    measure=measure_engines,
    version=_trt_version,
)
_backend = [TENSORRT]


def backend() -> EngineBackend:
    """The engine backend in use (TensorRT unless a test substituted one)."""
    return _backend[-1]


@contextlib.contextmanager
def use_backend(replacement: EngineBackend) -> Iterator[EngineBackend]:
    """Use ``replacement`` instead of TensorRT inside the ``with`` block."""
    _backend.append(replacement)
    try:
        yield replacement
    finally:
        _backend.remove(replacement)


def build_pair(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: BuildSettings,
    stem: str = "model",
) -> tuple[BuiltEngine, BuiltEngine]:
    """(dense, sparse) engines of ``onnx_path`` with ``settings`` (``sparse_weights`` off / on)."""
    out_dir = Path(out_dir)
    tag = settings.precision
    build = backend().build
    dense = build(
        Path(onnx_path),
        out_dir / f"{stem}_{tag}_dense.engine",
        BuildSettings(**{**asdict(settings), "sparse_weights": False}),
    )
    sparse = build(
        Path(onnx_path),
        out_dir / f"{stem}_{tag}_2of4.engine",
        BuildSettings(**{**asdict(settings), "sparse_weights": True}),
    )
    return dense, sparse


def _plain(value: Any) -> Any:
    """``value`` as report.json stores it (tuples become lists), so a report reads back equal."""
    return json.loads(json.dumps(value))


def export_tensorrt(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    node_map: Mapping[str, Sequence[str]],
    patterns: Mapping[str, str],
    check_x: np.ndarray,
    reference: np.ndarray,
    batch_sizes: Sequence[int],
    precision: str = "fp16",
    timing: TimingSettings = TimingSettings(),
    timing_cache: str | os.PathLike[str] | None = None,
    labels: np.ndarray | None = None,
    specs: Sequence[Any] = (),
) -> Artifact:
    """Build, verify and time; return the artifact of the 2:4 engine.

    ``node_map``: module -> ONNX weight node names
    (:func:`sparsify_cli.exporters.onnx_export.weight_refs`);
    ``patterns``: masked module -> manifest pattern; ``check_x`` / ``reference``: inputs and the
    PyTorch outputs the engine must reproduce within
    :data:`~sparsify_cli.exporters.tensorrt.stats.PARITY_RTOL`; ``labels``: the check inputs'
    labels, for the engine's own top-1 accuracy (what the accuracy gate reads). ``specs``: the
    model's inputs (:class:`~sparsify_cli.passes.inputs.InputSpec`); ``check_x`` is then
    ``name -> array``. Every input gets its own optimization profile (the batch range, and for a
    dynamic sequence axis 1 up to the longest length of the example and check inputs:
    :func:`~sparsify_cli.exporters.tensorrt.config.axis_ranges`); integer inputs stay integer.

    Latency rows are the common :class:`~sparsify_cli.exporters.artifact.LatencyRow` (p50..p99
    and mean of the GPU compute time, samples per second); TensorRT's full statistics (GPU
    compute and host latency, queries per second) travel in each row's extras.
    """
    engines = backend()
    settings = BuildSettings(
        precision=precision,
        min_batch=1,
        opt_batch=max(batch_sizes),
        max_batch=max(max(batch_sizes), 1),
        timing_cache=str(timing_cache) if timing_cache else None,
        dynamic_axes=axis_ranges(specs, check_x),
    )
    dense, sparse = build_pair(onnx_path, out_dir, settings)
    rows = merge_layer_rows(node_map, patterns, sparse.layers, sparse.sparsity)
    warnings = sparsity_warnings(rows, sparse.sparsity, sparse_build=True)
    for line in warnings:
        log.warning("TensorRT %s: %s", precision, line)

    outputs = engines.infer(sparse.path, check_x)
    check = parity(outputs, reference, precision)
    latency = engines.measure(
        {"dense": dense.path, "sparse": sparse.path},
        tuple(specs) or tuple(check_x.shape[1:]),
        tuple(batch_sizes),
        timing,
        baseline="dense",
    )
    masked = [r for r in rows if r.masked]
    accuracy = None if labels is None else float((outputs.argmax(-1) == labels).mean())
    return Artifact.of_file(
        "tensorrt",
        sparse.path,
        parity=Parity("pytorch", "max_abs", check.max_abs, check.tolerance),
        accuracy=accuracy,
        latency=[r.to_row() for r in latency["sparse"]],
        extras={
            "precision": precision,
            "dense_path": dense.path.name,
            "tensorrt": engines.version(),
            "build_settings": _plain(asdict(sparse.settings)),
            "inputs": _plain([asdict(p) for p in sparse.inputs]),
            "build_seconds": {"dense": dense.build_seconds, "sparse": sparse.build_seconds},
            "build_log": sparse.log_path.name,
            "layer_info": sparse.info_path.name,
            "parity_scale": check.scale,
            "top1_agreement": check.top1_agreement,
            "sparse_layers": {
                "masked": len(masked),
                "eligible": sum(r.eligible for r in masked),
                "picked_sparse": sum(r.picked_sparse for r in masked),
            },
            "layers": [r.to_dict() for r in rows],
            "warnings": warnings,
            "timing": timing.to_dict(),
            "dense_latency": [r.to_row().to_dict() for r in latency["dense"]],
        },
    )
