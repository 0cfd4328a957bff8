"""Per-layer view of an ONNX file: every Conv / Gemm / MatMul weight, its pattern and FLOPs.

Works on any ONNX model, not only sparsify's: every weight-bearing node whose weight operand is
an initializer is listed, in the node's own layout (Conv and Gemm(transB=1) ``[out, in, ...]``,
MatMul and Gemm(transB=0) ``[in, out]``), and the pattern is read from the stored values along
that layout's reduction axis with :func:`sparsify_cli.passes.pattern.weight_pattern`, the same
reading the
torch-side :func:`sparsify_cli.passes.inspect.inspect_model` does. A file can only say whether a
layer's
*shape* allows N:M (conv groups, reduction size); which layers a run chose is in its report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod

import numpy as np
import onnx
import onnxruntime as ort

from sparsify_cli.exporters.onnx_export import WEIGHT_OPS, initializers, module_of
from sparsify_cli.exporters.onnx_file import read_onnx
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.pattern import LayerStats, weight_pattern

PROBE_MAX = 1 << 24
"""Inputs with more elements per sample than this get static shape inference, not a probe run."""


@dataclass(frozen=True, kw_only=True)
class OnnxLayerInfo(LayerStats):
    """One weight-bearing node. ``module`` is the torch module path its scope names, if any."""

    node: str
    module: str
    initializer: str


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _positions(shapes: dict[str, list[int | None]], output: str, op: str) -> int:
    """Output positions per sample that each weight is applied at (1 when unknown)."""
    dims = shapes.get(output)
    if not dims:
        return 1
    inner = dims[2:] if op == "Conv" else dims[1:-1]
    return prod(d for d in inner if d) if all(d for d in inner) else 1


def _shapes(model: onnx.ModelProto, outputs: list[str]) -> dict[str, list[int | None]]:
    """Shapes of ``outputs``: exact from one batch-1 run in ONNX Runtime when the input shape
    is static besides the batch axis (as :func:`sparsify_cli.passes.flops.layer_flops` runs the
    torch model), else from static shape inference (unknown dims stay ``None``)."""
    inits = {i.name for i in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    dims = [
        d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim
    ]
    probe_ok = dims and all(d and d > 0 for d in dims[1:]) and prod(dims[1:]) <= PROBE_MAX
    if probe_ok and first.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in outputs)
        feed = {first.name: np.zeros([1, *dims[1:]], dtype=np.float32)}
        try:
            quiet = ort.SessionOptions()
            quiet.log_severity_level = 3
            sess = ort.InferenceSession(
                probe.SerializeToString(), quiet, providers=["CPUExecutionProvider"]
            )
            ran = sess.run(outputs, feed)
        except Exception as err:  # ORT refuses graphs the checker let through
            raise SparsifyError(
                f"ONNX Runtime cannot run the model: {str(err).strip().splitlines()[0][:200]}",
                fix="check the file is a complete ONNX model",
            ) from err
        return {n: list(a.shape) for n, a in zip(outputs, ran, strict=True)}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as err:  # inference errors on inconsistent graphs
        raise SparsifyError(f"cannot infer the model's shapes: {type(err).__name__}") from err
    values = [*inferred.graph.value_info, *inferred.graph.output]
    return {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in values
    }


def inspect_onnx(path: str | os.PathLike[str], m: int = 4) -> list[OnnxLayerInfo]:
    """One :class:`OnnxLayerInfo` per Conv / Gemm / MatMul node whose weight is an initializer.

    ``m`` is the group size eligibility is judged for (the reduction size must divide by it).
    FLOPs are MACs per sample: output positions (from one batch-1 run) times the nonzero
    (sparse) or all (dense) weights, as :func:`sparsify_cli.passes.flops.layer_flops` counts them.
    """
    model = read_onnx(path)
    weights = initializers(model)
    nodes = [
        n
        for n in model.graph.node
        if n.op_type in WEIGHT_OPS
        and len(n.input) > 1
        and n.input[1] in weights
        and weights[n.input[1]].ndim >= 2
    ]
    shapes = _shapes(model, [n.output[0] for n in nodes])
    rows = []
    for node in nodes:
        weight = weights[node.input[1]]
        trans_b = _attr(node, "transB", 0)
        in_axis = 1 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else 0
        found = weight_pattern(weight, in_axis=in_axis, out_axis=1 - in_axis)
        group = _attr(node, "group", 1) if node.op_type == "Conv" else 1
        if group != 1:
            reason = f"grouped conv (group={group}) is not sparsified"
        elif weight.shape[in_axis] % m:
            reason = f"reduction size {weight.shape[in_axis]} not divisible by {m}"
        else:
            reason = None
        bias = weights.get(node.input[2]) if len(node.input) > 2 else None
        positions = _positions(shapes, node.output[0], node.op_type)
        nonzero = int(np.count_nonzero(weight))
        rows.append(
            OnnxLayerInfo(
                node=node.name,
                module=module_of(node.name) or node.input[1].removesuffix(".weight"),
                op=node.op_type,
                initializer=node.input[1],
                shape=tuple(weight.shape),
                in_axis=in_axis,
                reason=reason,
                density=found.density,
                nm=found.nm,
                fan_in=found.fan_in,
                ablated=found.ablated,
                params=weight.size + (bias.size if bias is not None else 0),
                nonzero_params=nonzero + (int(np.count_nonzero(bias)) if bias is not None else 0),
                flops_dense=positions * weight.size,
                flops_sparse=positions * nonzero,
            )
        )
    return rows
