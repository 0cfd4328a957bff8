"""Findings about a run's artifacts that defeat its purpose, each with the option that helps.

A run can write every artifact, pass every check and still not do what was asked: an
``--export condensed`` that condensed no layer is the plain model under another name, and an
artifact measured slower than the dense model is a regression however sparse it is. Both are
read from the finished report (so ``sparsify report`` and scripts see the same) and returned as
``{"kind", "message", "option"}`` records, the shape of the report's ``"warnings"``.

"Slower" is judged on the measured interval: the whole 95% interval of the speedup below
:data:`SLOWER`, so noise alone never raises it (a row without an interval: the point below it).
"""

from __future__ import annotations

from typing import Any

SLOWER = 0.95
"""A speedup whose 95% interval lies wholly below this is reported as slower than dense."""


def _slow_rows(art: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for row in art.get("latency") or []:
        speed, high = row.get("speedup_vs_dense"), row.get("ratio_high")
        if speed is not None and (high if high is not None else speed) < SLOWER:
            rows.append(row)
    return rows


def _why_slow(art: dict[str, Any], report: dict[str, Any], vnni: bool) -> tuple[str, str]:
    """The likely cause of a slow artifact and the option that would help."""
    recipe = (report.get("recipe") or {}).get("options") or {}
    fmt = art.get("format")
    if fmt == "onnx-int8" and not vnni:
        return (
            "this CPU has no VNNI, where ONNX Runtime's static int8 kernels are slow",
            "--quantize int8-dynamic, or a CPU with AVX-VNNI / AVX512-VNNI",
        )
    if fmt == "condensed" and art.get("condensed_ops") == "standard":
        return (
            "stock Gather/Mul/ReduceSum ops stand in for the condensed kernel",
            "--condensed-ops custom",
        )
    if recipe.get("ift") == "wide" and fmt == "condensed" and recipe.get("dst") == "srigl":
        return (
            "Sparse Wide keeps the dense model's multiply-adds (layers widened, then sparse), and "
            "the condensed kernels do fewer of them per second than dense ones on small layers",
            "drop --ift wide (--dst srigl --sparsity 0.9 on the original widths), or deploy the "
            "dense model",
        )
    if recipe.get("ift") == "wide":
        return (
            "Sparse Wide widens the layers, and dense kernels run their zeros too",
            "--export onnx,condensed with --dst srigl (constant fan-in), or drop --ift wide",
        )
    if fmt == "condensed" and art.get("condensed_layers") == "all":
        return (
            "--condensed-layers all condensed every eligible layer, those where the dense kernel "
            "is faster (small layers, 50% zeros) too",
            "--condensed-layers auto (times each layer, keeps it dense where dense is faster)",
        )
    if fmt == "condensed":
        return (
            "condensed kernels win on large layers at high sparsity; at 50% zeros (2:4) or on "
            "small layers the dense kernel is faster (--condensed-layers auto times each layer "
            "alone; in the whole graph a condensed layer can cost more, e.g. layout changes "
            "between dense convolutions)",
            "--dst srigl --sparsity 0.9 (constant fan-in at 90%), or deploy model.onnx",
        )
    if fmt == "onnx-int8-dynamic":
        return (
            "dynamic int8 quantizes every activation at run time, and ONNX Runtime's ConvInteger "
            "is slow on CPUs",
            "--quantize int8 with --data (static)" if vnni else "keep the float model.onnx",
        )
    if fmt == "onnx":
        return (
            "ONNX Runtime's dense kernels run the zeros of a sparse ONNX",
            "--export onnx,condensed (kernels that skip them)",
        )
    return ("it is slower than the model it replaces", "--min-speedup 1 to fail such a run")


def _no_op_condensed(art: dict[str, Any]) -> dict[str, Any]:
    """A condensed export that condensed nothing: because timing kept every layer dense
    (``--condensed-layers auto``), or because no layer could be condensed at all."""
    timed = art.get("layers_dense_by_timing")
    if timed:
        return {
            "kind": "no-op-export",
            "message": f"--export condensed condensed no layer: {art['path']} is the plain "
            f"sparse model (all {timed} eligible layers ran faster dense when timed alone at "
            "batch 1)",
            "option": "--dst srigl --sparsity 0.9 (the kernels win on large layers at high "
            "sparsity), or --condensed-layers all to condense them anyway",
        }
    return {
        "kind": "no-op-export",
        "message": f"--export condensed condensed no layer: {art['path']} is the plain sparse "
        "model (only sparsified layers with constant fan-in condense; the standard-op form "
        "leaves convolutions dense)",
        "option": "--condensed-ops custom, and --nm N:M or --dst srigl",
    }


def artifact_findings(report: dict[str, Any], vnni: bool | None = None) -> list[dict[str, Any]]:
    """The findings of ``report`` (a ``report.json`` document); ``vnni``: whether the CPU
    has int8 dot-product instructions (default: this machine's)."""
    if vnni is None:
        from sparsify_cli.exporters.quantize import cpu_has_vnni

        vnni = cpu_has_vnni()
    found = []
    for art in report.get("artifacts") or []:
        if art.get("format") == "condensed" and not art.get("layers_condensed"):
            found.append(_no_op_condensed(art))
        slow = _slow_rows(art)
        if slow:
            figures = ", ".join(
                f"{r['speedup_vs_dense']:.2f}x at batch {r['batch']}"
                + (
                    f" (95% {r['ratio_low']:.2f}-{r['ratio_high']:.2f}x)"
                    if r.get("ratio_low") is not None
                    else ""
                )
                for r in slow
            )
            cause, option = _why_slow(art, report, vnni)
            found.append(
                {
                    "kind": "slower-than-dense",
                    "message": f"{art['path']} is slower than dense: {figures}; {cause}",
                    "option": option,
                }
            )
    return found
