"""The built-in formats of the exporter registry: ``onnx``, ``condensed``, ``int8``,
``int8-dynamic`` and ``tensorrt`` (registered explicitly here, once, on import).

Each ``build`` writes its file into the staging folder, proves the sparsity pattern and parity
against the PyTorch outputs, and returns an :class:`~sparsify_cli.exporters.artifact.Artifact`;
the pipeline adds the ONNX Runtime latency of the ``ort_timed`` ones afterwards (all timed in one
interleaved run beside the dense baseline).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.artifact import (
    Artifact,
    Exporter,
    ExportStage,
    Parity,
    register_exporter,
    require_parity,
    require_pattern,
)
from sparsify_cli.exporters.verify import max_abs_diff, verify_pattern
from sparsify_cli.passes.errors import SparsifyError

PARITY_ATOL = 1e-4
"""fp32 ONNX Runtime vs PyTorch: max abs difference allowed on the outputs (``--parity-atol``)."""

QUANT_FILES = {"int8": "model_int8.onnx", "int8-dynamic": "model_int8_dynamic.onnx"}
QUANT_FORMATS = {"int8": "onnx-int8", "int8-dynamic": "onnx-int8-dynamic"}


def top1(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((outputs.argmax(-1) == labels).mean())


def _fp32_atol(stage: ExportStage) -> float:
    return float(getattr(stage.options, "parity_atol", PARITY_ATOL))


def _checked_ort(art: Artifact, stage: ExportStage, tolerance: float, what: str) -> Artifact:
    """Run ``art``'s file in ONNX Runtime on the check inputs: parity and accuracy, checked."""
    outputs = runtime.run(runtime.session(stage.folder / art.path), stage.check_x)
    if not np.isfinite(outputs).all():  # before parity: NaN would read as a mere mismatch
        raise SparsifyError(
            f"the {what} gives NaN or Inf outputs",
            found=f"{int((~np.isfinite(outputs)).sum())} non-finite values of {outputs.size}",
            fix="check the model and the data: a NaN never passes verification",
        )
    art.parity = Parity("pytorch", "max_abs", max_abs_diff(outputs, stage.reference), tolerance)
    art.accuracy = top1(outputs, stage.labels)
    return require_parity(art, what)


def _pattern_checks(path: Any, stage: ExportStage) -> list[dict[str, Any]]:
    return [dataclasses.asdict(c) for c in verify_pattern(path, stage.manifest)]


def build_onnx(stage: ExportStage) -> Artifact:
    """The sparse fp32 ONNX (``stage.onnx``, exported by the pipeline), read back and checked."""
    art = Artifact.of_file("onnx", stage.onnx, pattern_checks=_pattern_checks(stage.onnx, stage))
    require_pattern(art, "exported ONNX")
    return _checked_ort(art, stage, _fp32_atol(stage), "exported ONNX")


def build_condensed(stage: ExportStage) -> Artifact:
    """Constant fan-in layers as values + indices (``CondensedLinear`` / ``CondensedConv`` or
    stock ops), checked; each layer's check names the kernel that runs it, or why it stays dense.

    ``--condensed-layers auto`` (custom ops) times every eligible layer alone at batch 1 on the
    run's ``--threads`` and keeps the ones where dense is faster dense (the detail names the
    measured ratio); the standard-op form condenses every eligible layer. The pattern check
    compares each condensed layer's fan-in with the manifest's; parity is against the same
    PyTorch outputs as the plain ONNX, with the same tolerance.
    """
    from sparsify_cli.exporters.condensed import condense_onnx, kernel_isa

    ops = getattr(stage.options, "condensed_ops", "custom")
    layers = getattr(stage.options, "condensed_layers", "all") if ops == "custom" else "all"
    threads = int(getattr(stage.options, "threads", 1))
    path = stage.folder / "model_condensed.onnx"
    if layers == "auto":
        stage.status("timing each condensable layer against dense (--condensed-layers auto)")
    results = condense_onnx(
        stage.onnx,
        stage.manifest,
        path,
        ops=ops,
        layers=layers,
        threads=threads,
        example=stage.check_x,
    )
    entries = stage.manifest.by_module()
    checks = [
        {
            "module": r.module,
            "pattern": entries[r.module].pattern,
            "ok": r.skipped is not None or r.fan_in == entries[r.module].fan_in,
            "detail": r.skipped or _condensed_detail(r),
            # what runs the layer (CondensedLinear / CondensedConv / stock ops / dense: detail)
            "kernel": r.kernel,
            "fused": list(r.fused),
            # --condensed-layers auto: dense / condensed time of the layer alone at batch 1
            "speedup_alone": r.speedup,
        }
        for r in results
    ]
    art = Artifact.of_file(
        "condensed",
        path,
        pattern_checks=checks,
        extras={
            "condensed_ops": ops,
            "condensed_layers": layers,
            # which kernel set produced the latency (avx512, avx2 or portable)
            "kernels": kernel_isa() if ops == "custom" else None,
            "layers_condensed": sum(r.skipped is None for r in results),
            # eligible layers kept dense because they ran faster dense (auto)
            "layers_dense_by_timing": sum(
                r.skipped is not None and r.speedup is not None for r in results
            ),
        },
    )
    require_pattern(art, "condensed ONNX")
    return _checked_ort(art, stage, _fp32_atol(stage), "condensed ONNX")


def _condensed_detail(r: Any) -> str:
    detail = f"k={r.fan_in} over {r.active_rows}/{r.out_features} rows"
    if r.speedup is not None:
        detail += f"; {r.speedup:.2f}x of dense alone at batch 1"
    return detail + (f"; {r.note}" if r.note else "")


def _build_quantized(mode: str):
    def build(stage: ExportStage) -> Artifact:
        """int8 PTQ of the sparse ONNX; the quantizer measures its own agreement (SQNR, max
        difference from the fp32 ONNX) and accuracy, and the int8 weights keep the pattern."""
        from sparsify_cli.exporters.quantize import quantize_model

        config = stage.options.quantize_config()
        quant = quantize_model(
            stage.onnx,
            stage.folder / QUANT_FILES[mode],
            config,
            stage.calib_x,
            stage.check_x,
            stage.labels,
        )
        art = Artifact.of_file(
            QUANT_FORMATS[mode],
            quant.path,
            parity=Parity("onnx-fp32", "max_abs", quant.max_abs_diff, float("inf")),
            pattern_checks=_pattern_checks(quant.path, stage),
            accuracy=quant.accuracy,
            extras={
                "sqnr_db": quant.sqnr_db,
                "accuracy_fp32_sparse": quant.fp32_accuracy,
                "quantization": quant.to_dict(),
            },
        )
        return require_pattern(art, "int8 ONNX")

    return build


def _tensorrt_tolerance(stage: ExportStage) -> float:
    from sparsify_cli.exporters.tensorrt.stats import PARITY_RTOL

    scale = max(float(np.abs(np.asarray(stage.reference)).max(initial=0.0)), 1e-6)
    return PARITY_RTOL["fp16"] * scale


def build_tensorrt(stage: ExportStage) -> Artifact:
    """Dense and 2:4 fp16 engines of the sparse ONNX: which layers run sparse, parity, latency.
    Models with several inputs (token ids, attention mask, ...) get a profile per input."""
    import onnx

    from sparsify_cli.exporters.onnx_export import weight_refs
    from sparsify_cli.exporters.tensorrt.export import export_tensorrt
    from sparsify_cli.exporters.tensorrt.runtime import TimingSettings

    refs = weight_refs(onnx.load(str(stage.onnx)), list(stage.layers))
    art = export_tensorrt(
        stage.onnx,
        stage.folder,
        node_map={module: [r.node for r in found] for module, found in refs.items()},
        patterns={e.module: e.pattern for e in stage.manifest.entries.values()},
        check_x=stage.check_x,
        reference=stage.reference,
        batch_sizes=stage.options.batch_sizes,
        timing=TimingSettings(duration_s=stage.options.bench_seconds),
        labels=stage.labels,
        specs=stage.specs,
    )
    return require_parity(art, "TensorRT engine")


def _tensorrt_check(options: Any) -> None:
    from sparsify_cli.exporters.tensorrt.export import backend

    backend().check()


register_exporter(
    Exporter("onnx", "sparse fp32 ONNX", _fp32_atol, build_onnx)  # always built, first
)
register_exporter(
    Exporter("condensed", "constant fan-in layers condensed", _fp32_atol, build_condensed)
)
for _mode in QUANT_FILES:
    register_exporter(
        Exporter(
            _mode,
            f"{_mode} quantized ONNX",
            lambda stage: float("inf"),  # judged by SQNR and accuracy, not elementwise
            _build_quantized(_mode),
            fp32_reference="onnx",
        )
    )
register_exporter(
    Exporter(
        "tensorrt",
        "dense and 2:4 fp16 TensorRT engines",
        _tensorrt_tolerance,
        build_tensorrt,
        ort_timed=False,
        check=_tensorrt_check,
    )
)
