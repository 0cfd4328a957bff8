"""Will 2:4 pay on TensorRT for this layer? A rule-of-thumb prediction before any fine-tuning.

TensorRT times sparse and dense tactics for every eligible layer and keeps the faster one, so a
layer that is 2:4 but small, badly aligned or of an unsupported kind simply runs dense: its
fine-tuning cost buys nothing on TensorRT. The rules below are heuristics from NVIDIA's guidance
("Accelerating Inference with Sparsity Using the NVIDIA Ampere Architecture and NVIDIA TensorRT";
"Sparsity in INT8: Training Workflow and Best Practices for NVIDIA TensorRT Acceleration") and from
how Sparse Tensor Core GEMMs tile, not a measurement: the engine build (``--export tensorrt``) is
the proof of what ran sparse.

* Only dense Conv (groups == 1) and Linear/GEMM layers have 2:4 sparse kernels.
* Sparse Tensor Cores run fp16/bf16/int8; an fp32 build (TF32 off) has none.
* Channels should be multiples of the Tensor Core tile: 16 for fp16, 32 for int8; otherwise the
  layer is padded or not eligible.
* The GEMM must be large enough that math, not memory or launch overhead, dominates: fewer than
  128 input or output channels -> dense wins; 128..255 -> it depends; >= 256 -> likely.
* A GEMM with very few rows (``gemm_m``: batch x spatial positions or tokens, when known) is
  memory-bound and gains little from halving the math.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

LIKELY_CHANNELS = 256
MAYBE_CHANNELS = 128
MIN_GEMM_M = 64
ALIGN = {"fp16": 16, "bf16": 16, "int8": 32}
SPARSE_OPS = ("Conv2d", "Linear", "Conv", "Gemm", "MatMul")


def _verdict(row: Mapping[str, Any]) -> tuple[str, str]:
    op = str(row.get("op", ""))
    shape = [int(d) for d in row.get("shape") or ()]
    precision = str(row.get("precision", "fp16")).lower()
    if op not in SPARSE_OPS or len(shape) < 2:
        return "unlikely", f"TensorRT has no 2:4 kernel for {op or 'this op'}"
    if int(row.get("groups", 1)) != 1:
        return "unlikely", "grouped/depthwise convolution has no 2:4 kernel"
    if precision not in ALIGN:
        return "unlikely", f"{precision} builds do not use Sparse Tensor Cores (use fp16 or int8)"
    c_out, c_in = shape[0], shape[1]
    align = ALIGN[precision]
    if c_in % align or c_out % align:
        return (
            "unlikely",
            f"channels {c_in}->{c_out} are not multiples of {align} ({precision} tile)",
        )
    smallest = min(c_in, c_out)
    gemm_m = row.get("gemm_m")
    if smallest < MAYBE_CHANNELS:
        return "unlikely", f"{smallest} channels: too small, dense kernels win"
    if gemm_m is not None and int(gemm_m) < MIN_GEMM_M:
        return "maybe", f"GEMM has only {int(gemm_m)} rows: memory-bound, little to gain"
    if smallest < LIKELY_CHANNELS:
        return "maybe", f"{smallest} channels: borderline, sparse wins only on some shapes"
    return "likely", f"{c_in}->{c_out} channels, {precision}: large aligned GEMM"


def predict_sparse_benefit(layer_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each layer row, ``{"name", "tensorrt_2of4": likely|maybe|unlikely, "reason"}``.

    A row is a ``report.json`` layer (``name``, ``op``, ``shape`` as ``[out, in, *kernel]`` with
    ``in`` per group) and may add ``groups`` (default 1), ``precision`` (default ``fp16``) and
    ``gemm_m`` (rows of the GEMM at the batch size you deploy). Rows come back in input order.

    >>> rows = [{"name": "fc", "op": "Linear", "shape": [1024, 512]}]
    >>> predict_sparse_benefit(rows)[0]["tensorrt_2of4"]
    'likely'
    """
    out = []
    for row in layer_rows:
        verdict, reason = _verdict(row)
        out.append({"name": row.get("name"), "tensorrt_2of4": verdict, "reason": reason})
    return out
