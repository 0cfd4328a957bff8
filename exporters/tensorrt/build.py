"""Build a TensorRT engine from ONNX and collect what TensorRT says about it (needs a GPU).

One call = one engine: parse the ONNX, apply :class:`BuildSettings`, build, write the plan
atomically, then read back (a) the sparsity lines of the build log and (b) the engine
inspector's per-layer JSON. Both are kept raw beside the engine so a reader can check the parsed
report against TensorRT's own words.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsify_cli.exporters.tensorrt.availability import import_tensorrt
from sparsify_cli.exporters.tensorrt.config import (
    BuildSettings,
    InputProfile,
    configure_build,
    save_timing_cache,
)
from sparsify_cli.exporters.tensorrt.inspector import EngineLayer, parse_engine_info
from sparsify_cli.exporters.tensorrt.sparsity_log import SparsityLog, parse_sparsity_log
from sparsify_cli.passes.atomic import atomic_write_bytes, atomic_write_text
from sparsify_cli.passes.errors import SparsifyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltEngine:
    path: Path
    settings: BuildSettings
    build_seconds: float
    sparsity: SparsityLog
    layers: list[EngineLayer]
    log_path: Path
    info_path: Path
    inputs: tuple[InputProfile, ...] = ()
    """The optimization profile and dtype of every input the engine was built with."""


def _capturing_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps INFO+ messages and every ``(Sparsity)`` message as text."""
    tags = {
        trt.ILogger.Severity.INTERNAL_ERROR: "F",
        trt.ILogger.Severity.ERROR: "E",
        trt.ILogger.Severity.WARNING: "W",
        trt.ILogger.Severity.INFO: "I",
        trt.ILogger.Severity.VERBOSE: "V",
    }

    class Capture(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            tag = tags.get(severity, "I")
            if tag != "V" or "(Sparsity)" in msg:
                self.lines.append(f"[{tag}] [TRT] {msg}")
            if tag in "FE":
                log.error("TensorRT: %s", msg)
            elif tag == "W":
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Capture()


def build_engine(
    onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], settings: BuildSettings
) -> BuiltEngine:
    """Build ``onnx_path`` into ``engine_path``, with ``.build.log`` and ``.layers.json`` beside."""
    trt = import_tensorrt()
    engine_path = Path(engine_path)
    logger = _capturing_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SparsifyError(f"TensorRT cannot parse {onnx_path}", found=errors)
    config, profiles, _ = configure_build(builder, network, settings, trt)
    start = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    log_text = "\n".join(logger.lines)
    log_path = engine_path.with_suffix(".build.log")
    atomic_write_text(log_path, log_text + "\n")
    if blob is None:
        errors = [line for line in logger.lines if line.startswith(("[E]", "[F]"))]
        raise SparsifyError(
            f"TensorRT failed to build an engine from {onnx_path}",
            found="; ".join(errors[-3:]) or "no error message",
            fix=f"see the full log in {log_path}",
        )
    save_timing_cache(settings, config)
    atomic_write_bytes(engine_path, bytes(blob))

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(bytes(blob))
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    info_path = engine_path.with_suffix(".layers.json")
    atomic_write_text(info_path, info)
    log.info("built %s in %.1f s", engine_path, seconds)
    return BuiltEngine(
        path=engine_path,
        settings=settings,
        build_seconds=seconds,
        sparsity=parse_sparsity_log(log_text),
        layers=parse_engine_info(info),
        log_path=log_path,
        info_path=info_path,
        inputs=tuple(profiles),
    )
