"""``--export tensorrt``: dense and 2:4 engines from the same ONNX, proven and timed side by side.

Both engines are built from the *same* sparse ONNX at the same precision; only
``SPARSE_WEIGHTS`` differs. So the latency ratio isolates what the sparse kernels buy (the
accuracy cost of the zeros is reported separately, against the dense checkpoint). The artifact
entry carries: per-layer rows (masked / eligible / picked sparse / precision / tactic), plain
warnings when a masked layer runs dense, parity of the sparse engine against PyTorch, and
trtexec-style latency of both engines per batch size with the dense/sparse ratio.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sparsify_cli.exporters.tensorrt.build import BuiltEngine, build_engine
from sparsify_cli.exporters.tensorrt.config import BuildSettings
from sparsify_cli.exporters.tensorrt.layers import merge_layer_rows, sparsity_warnings
from sparsify_cli.exporters.tensorrt.runtime import EngineRunner, TimingSettings, measure_engines
from sparsify_cli.exporters.tensorrt.stats import parity

log = logging.getLogger(__name__)


def build_pair(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: BuildSettings,
    stem: str = "model",
) -> tuple[BuiltEngine, BuiltEngine]:
    """(dense, sparse) engines of ``onnx_path`` with ``settings`` (``sparse_weights`` off / on)."""
    out_dir = Path(out_dir)
    tag = settings.precision
    dense = build_engine(
        onnx_path,
        out_dir / f"{stem}_{tag}_dense.engine",
        BuildSettings(**{**asdict(settings), "sparse_weights": False}),
    )
    sparse = build_engine(
        onnx_path,
        out_dir / f"{stem}_{tag}_2of4.engine",
        BuildSettings(**{**asdict(settings), "sparse_weights": True}),
    )
    return dense, sparse


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
) -> dict[str, Any]:
    """Build, verify and time; return the ``report.json`` artifact entry for the 2:4 engine.

    ``node_map``: module -> ONNX weight node names
    (:func:`sparsify_cli.exporters.onnx_export.weight_refs`);
    ``patterns``: masked module -> manifest pattern; ``check_x`` / ``reference``: inputs and the
    PyTorch outputs the engine must reproduce within
    :data:`~sparsify_cli.exporters.tensorrt.stats.PARITY_RTOL`.
    """
    settings = BuildSettings(
        precision=precision,
        min_batch=1,
        opt_batch=max(batch_sizes),
        max_batch=max(max(batch_sizes), 1),
        timing_cache=str(timing_cache) if timing_cache else None,
    )
    dense, sparse = build_pair(onnx_path, out_dir, settings)
    rows = merge_layer_rows(node_map, patterns, sparse.layers, sparse.sparsity)
    warnings = sparsity_warnings(rows, sparse.sparsity, sparse_build=True)
    for line in warnings:
        log.warning("TensorRT %s: %s", precision, line)

    check = parity(EngineRunner(sparse.path).infer(check_x), reference, precision)
    sample_shape = tuple(check_x.shape[1:])
    latency = measure_engines(
        {"dense": dense.path, "sparse": sparse.path},
        sample_shape,
        tuple(batch_sizes),
        timing,
        baseline="dense",
    )
    import tensorrt

    masked = [r for r in rows if r.masked]
    return {
        "format": "tensorrt",
        "precision": precision,
        "path": sparse.path.name,
        "size_bytes": sparse.path.stat().st_size,
        "dense_path": dense.path.name,
        "tensorrt": tensorrt.__version__,
        "build_settings": asdict(sparse.settings),
        "build_seconds": {"dense": dense.build_seconds, "sparse": sparse.build_seconds},
        "build_log": sparse.log_path.name,
        "layer_info": sparse.info_path.name,
        "parity_max_abs": check.max_abs,
        "parity_atol": check.tolerance,
        "parity": check.to_dict(),
        "sparse_layers": {
            "masked": len(masked),
            "eligible": sum(r.eligible for r in masked),
            "picked_sparse": sum(r.picked_sparse for r in masked),
        },
        "layers": [r.to_dict() for r in rows],
        "warnings": warnings,
        "timing": timing.to_dict(),
        "latency": [r.to_dict() for r in latency["sparse"]],
        "dense_latency": [r.to_dict() for r in latency["dense"]],
    }
