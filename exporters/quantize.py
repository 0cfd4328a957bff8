"""Post-training int8 quantization of the exported sparse ONNX, keeping its N:M pattern.

Static mode (``int8``) calibrates activation ranges on training rows and writes a QDQ model:
QuantizeLinear/DequantizeLinear pairs on the activation input *and* the weight of every
Conv/Gemm/MatMul, so int8 flows in and out of each sparse GEMM and TensorRT's explicit
quantization can fuse them into sparse int8 kernels. Weights are per-channel *symmetric*
(zero point 0, ``q = round(w / s)``), so a weight that is exactly 0 stays exactly 0 and the
2:4 pattern survives quantization; activations are symmetric too, as TensorRT expects.

Dynamic mode (``int8-dynamic``) stores int8 weights and quantizes activations at run time
(ONNX Runtime's MatMulInteger/ConvInteger): no calibration data needed.

Accuracy is guarded by a budget: when int8 loses more than ``max_accuracy_drop`` points, each
quantized node is scored by how much accuracy comes back when it alone stays float
(leave-one-out sensitivity), and the costliest nodes are kept in float, one at a time, until
the budget holds. Parity is the signal-to-quantization-noise ratio against the fp32 outputs,
``SQNR = 10 log10(sum y^2 / sum (y - y_q)^2)`` dB.

CPU note: without VNNI, ONNX Runtime's x86 int8 kernels multiply u8 x s8 with ``VPMADDUBSW``,
whose int16 pair sums saturate for full-range weights; its docs prescribe 7-bit weights
(``reduce_range``) there. ``reduce_range=None`` picks that automatically from the CPU flags.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_dynamic,
    quantize_static,
    save_tensors_data,
)

from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.onnx_export import INPUT_NAME, WEIGHT_OPS
from sparsify_cli.passes.atomic import atomic_path
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import Arrays, rows
from sparsify_cli.passes.inputs import batch_size as inputs_batch

log = logging.getLogger(__name__)


class _QuantizerAdvice(logging.Filter):
    """ONNX Runtime's quantizer logs on the root logger, at WARNING, advice that does not apply
    here (run its pre-processing: we quantize the exported graph as it is, so the pattern check
    reads the file it checked), once per call: 22 lines for one sensitivity search, even under
    ``--quiet``. Those records go to this module's logger at DEBUG instead (``--debug`` shows
    them); everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if "onnxruntime/quantization" not in path:
            return True
        log.debug("onnxruntime quantizer: %s", record.getMessage())
        return False


@contextlib.contextmanager
def _captured_advice() -> Iterator[None]:
    root, advice = logging.getLogger(), _QuantizerAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


MODES = ("int8", "int8-dynamic")
CALIB_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
HISTOGRAM_BINS = 512
"""Entropy calibration histogram. ORT's default of 128 bins equals its 128 quantized bins,
which leaves the KL threshold search nothing to choose (it degenerates to min/max); TensorRT uses
2048, which costs ~4x more of ORT's pure-Python search than 512."""
CALIB_BATCH = 32


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize: ``mode`` in :data:`MODES`, calibration settings, the accuracy budget.

    ``max_accuracy_drop`` is in percentage points of top-1 vs the fp32 sparse model (``None``:
    no fallback). ``reduce_range`` stores 7-bit weights; ``None`` means "where the CPU lacks
    VNNI" (see the module docstring).
    """

    mode: str = "int8"
    calib_method: str = "minmax"
    calib_size: int = 256
    max_accuracy_drop: float | None = None
    reduce_range: bool | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SparsifyError(f"unknown --quantize {self.mode!r}", expected=f"one of {MODES}")
        if self.calib_method not in CALIB_METHODS:
            raise SparsifyError(
                f"unknown --calib-method {self.calib_method!r}",
                expected=f"one of {tuple(CALIB_METHODS)}",
            )
        if self.calib_size < 1:
            raise SparsifyError("--calib-size must be >= 1", found=str(self.calib_size))
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise SparsifyError(
                "--max-accuracy-drop must be >= 0 (points)", found=str(self.max_accuracy_drop)
            )


def cpu_has_vnni(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool:
    """Whether the CPU has AVX-VNNI or AVX512-VNNI (int8 dot products without saturation)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve_reduce_range(config: QuantizeConfig) -> bool:
    return (not cpu_has_vnni()) if config.reduce_range is None else config.reduce_range


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds calibration rows to ONNX Runtime in equal-sized batches.

    ``x`` is one float array (fed as ``input_name``) or ``name -> array`` for a model with
    several inputs, fed under their own names and dtypes: integer inputs (token ids, attention
    masks) go in as they are; only the float activations they produce inside the graph are
    calibrated and quantized.

    Equal sizes matter: ORT's histogram calibrators (entropy, percentile) stack per-batch
    outputs and fail on a ragged last batch, so the batch is the largest divisor of the row
    count up to ``batch_size`` and no row is dropped.
    """

    def __init__(self, x: Arrays, input_name: str = INPUT_NAME, batch_size: int = CALIB_BATCH):
        if isinstance(x, np.ndarray):
            x = {input_name: x.astype(np.float32)}
        self.x = {name: np.ascontiguousarray(a) for name, a in x.items()}
        self.rows = inputs_batch(self.x)
        self.batch = max(b for b in range(1, min(batch_size, self.rows) + 1) if self.rows % b == 0)
        self.rewind()

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return self.rows // self.batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self.rows:
            return None
        chunk = rows(self.x, slice(self._next, self._next + self.batch))
        self._next += self.batch
        return dict(chunk)


def calibration_rows(x: Arrays | None, size: int, seed: int = 0) -> Arrays:
    """``size`` rows of ``x`` (a fixed random subset; all rows when fewer), or a clear error.

    ``x`` is one array or ``name -> array`` (the same rows of every input)."""
    if x is None:
        raise SparsifyError(
            "static int8 quantization needs calibration data",
            expected="inputs from --data (a dataset name, an .npz with array 'x', or a text "
            "file for a Hugging Face folder)",
            found="no data",
            fix="pass --data, or use --quantize int8-dynamic (no calibration)",
        )
    count = inputs_batch(x)
    if count == 0:
        raise SparsifyError(
            "the calibration data is empty",
            expected="at least 1 training row",
            found="0 rows",
            fix="pass --data with rows in 'x'",
        )
    if count <= size:
        return x
    order = np.random.default_rng(seed).permutation(count)[:size]
    return rows(x, np.sort(order))


def quantized_nodes(path: str | os.PathLike[str]) -> list[str]:
    """Names of the nodes static quantization wraps in Q/DQ (graph order): the sensitivity
    candidates and the valid ``nodes_to_exclude``."""
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in WEIGHT_OPS]


def calibrate(
    src: str | os.PathLike[str], x: Arrays, method: str, cache: str | os.PathLike[str]
) -> None:
    """Run calibration once and store the activation ranges in ``cache`` (JSON).

    Every later :func:`quantize_int8_static` reads the cache, so a sensitivity sweep costs one
    calibration, not one per trial.
    """
    options: dict[str, Any] = {"symmetric": True}
    if method != "minmax":
        options["num_bins"] = HISTOGRAM_BINS
    with tempfile.TemporaryDirectory(prefix="sparsify-calib-") as tmp, _captured_advice():
        calibrator = create_calibrator(
            Path(src),
            list(WEIGHT_OPS),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CALIB_METHODS[method],
            extra_options=options,
        )
        calibrator.collect_data(ArrayCalibrationReader(x))
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)


def quantize_int8_static(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    cache: str | os.PathLike[str],
    method: str,
    reduce_range: bool,
    exclude: tuple[str, ...] = (),
) -> None:
    """QDQ int8, per-channel symmetric weights, symmetric activations, ranges from ``cache``."""
    with atomic_path(dst) as tmp, _captured_advice():
        quantize_static(
            str(src),
            str(tmp),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(WEIGHT_OPS),
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=CALIB_METHODS[method],
            calibration_cache_path=str(cache),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": True},
        )


def quantize_int8_dynamic(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], reduce_range: bool
) -> None:
    """Weight-only int8 (activations quantized at run time), symmetric weights: no calibration."""
    with atomic_path(dst) as tmp, _captured_advice():
        quantize_dynamic(
            str(src),
            str(tmp),
            op_types_to_quantize=list(WEIGHT_OPS),
            per_channel=False,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True},
        )


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``test`` vs ``reference`` in dB (inf if equal)."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - test.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


def top1(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((outputs.argmax(-1) == labels).mean())


@dataclass(frozen=True)
class Sensitivity:
    """What keeping ``node`` alone in float buys back (leave-one-out)."""

    node: str
    accuracy: float | None
    sqnr_db: float


@dataclass
class QuantizeResult:
    path: Path
    mode: str
    reduce_range: bool
    calib_rows: int
    accuracy: float | None
    fp32_accuracy: float | None
    sqnr_db: float
    max_abs_diff: float
    excluded: list[str] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = self.path.name
        return out


def _drop_points(fp32: float | None, int8: float | None) -> float:
    return 0.0 if fp32 is None or int8 is None else 100.0 * (fp32 - int8)


def quantize_model(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: QuantizeConfig,
    x_calib: Arrays | None,
    x_eval: Arrays,
    y_eval: np.ndarray | None,
) -> QuantizeResult:
    """Quantize the fp32 ONNX ``src`` into ``dst`` and measure it on ``x_eval`` in ORT.

    Example: ``quantize_model("model.onnx", "model_int8.onnx", QuantizeConfig(), x, xt, yt)``
    """
    dst = Path(dst)
    reduce_range = resolve_reduce_range(config)
    reference = runtime.run(runtime.session(src), x_eval)
    fp32_acc = top1(reference, y_eval)

    def measure(path: Path) -> tuple[float | None, float, float]:
        out = runtime.run(runtime.session(path), x_eval)
        return top1(out, y_eval), sqnr_db(reference, out), float(np.max(np.abs(reference - out)))

    if config.mode == "int8-dynamic":
        quantize_int8_dynamic(src, dst, reduce_range)
        acc, sqnr, diff = measure(dst)
        return QuantizeResult(dst, config.mode, reduce_range, 0, acc, fp32_acc, sqnr, diff)

    calib = calibration_rows(x_calib, config.calib_size)
    budget = config.max_accuracy_drop
    if budget is not None and y_eval is None:
        raise SparsifyError(
            "--max-accuracy-drop needs labelled eval data",
            found="eval inputs without labels",
            fix="pass --data with y (and y_test), or drop --max-accuracy-drop",
        )
    with tempfile.TemporaryDirectory(prefix="sparsify-ptq-") as tmp:
        cache = Path(tmp) / "calibration.json"
        calibrate(src, calib, config.calib_method, cache)

        def trial(exclude: tuple[str, ...], path: Path) -> tuple[float | None, float, float]:
            quantize_int8_static(src, path, cache, config.calib_method, reduce_range, exclude)
            return measure(path)

        acc, sqnr, diff = trial((), dst)
        result = QuantizeResult(
            dst, config.mode, reduce_range, inputs_batch(calib), acc, fp32_acc, sqnr, diff
        )
        if budget is None or _drop_points(fp32_acc, acc) <= budget:
            return result
        log.info(
            "int8 drops %.2f points > %.2f: measuring per-node sensitivity",
            _drop_points(fp32_acc, acc),
            budget,
        )
        probe = Path(tmp) / "probe.onnx"
        for node in quantized_nodes(src):
            acc_n, sqnr_n, _ = trial((node,), probe)
            result.sensitivity.append(Sensitivity(node, acc_n, sqnr_n))
        ranked = sorted(
            result.sensitivity, key=lambda s: (s.accuracy or 0.0, s.sqnr_db), reverse=True
        )
        for item in ranked:
            result.excluded.append(item.node)
            result.accuracy, result.sqnr_db, result.max_abs_diff = trial(
                tuple(result.excluded), dst
            )
            if _drop_points(fp32_acc, result.accuracy) <= budget:
                break
    log.info("kept %d nodes in float: %s", len(result.excluded), result.excluded)
    return result
