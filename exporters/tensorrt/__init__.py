"""TensorRT 2:4 engines: build, prove which layers run sparse, and time them against dense.

The pure parts (settings, log and inspector parsing, per-layer merge, statistics, the
will-it-pay prediction) import nothing from TensorRT and run anywhere. Building and timing
(:mod:`.build`, :mod:`.runtime`, :mod:`.export`) import TensorRT lazily, after
:func:`require_tensorrt` has explained anything missing.
"""

from sparsify_cli.exporters.tensorrt.availability import missing_requirements, require_tensorrt
from sparsify_cli.exporters.tensorrt.config import BuildSettings, apply_settings
from sparsify_cli.exporters.tensorrt.inspector import EngineLayer, parse_engine_info
from sparsify_cli.exporters.tensorrt.layers import TrtLayerRow, merge_layer_rows, sparsity_warnings
from sparsify_cli.exporters.tensorrt.predict import predict_sparse_benefit
from sparsify_cli.exporters.tensorrt.sparsity_log import SparsityLog, parse_sparsity_log
from sparsify_cli.exporters.tensorrt.stats import PARITY_RTOL, LatencyStats, latency_stats, parity

__all__ = [
    "PARITY_RTOL",
    "BuildSettings",
    "EngineLayer",
    "LatencyStats",
    "SparsityLog",
    "TrtLayerRow",
    "apply_settings",
    "latency_stats",
    "merge_layer_rows",
    "missing_requirements",
    "parity",
    "parse_engine_info",
    "parse_sparsity_log",
    "predict_sparse_benefit",
    "require_tensorrt",
    "sparsity_warnings",
]
