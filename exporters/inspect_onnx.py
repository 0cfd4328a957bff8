"""Per-layer view of an ONNX file: every weight-bearing layer, its pattern and MACs.

Works on any ONNX model, not only sparsify's, and on every kind of file ``convert`` writes:

* Conv / Gemm / MatMul whose weight is an initializer, in the node's own layout (Conv and
  Gemm(transB=1) ``[out, in, ...]``, MatMul and Gemm(transB=0) ``[in, out]``);
* the same behind a DequantizeLinear (static int8, QDQ) and ConvInteger / MatMulInteger (dynamic
  int8): the pattern is read from the int8 values actually stored;
* condensed layers (``CondensedLinear`` custom ops, or the stock Gather/Mul/ReduceSum form):
  values + indices expanded back to ``[out, in]``.

The pattern is read from the stored values along the layout's reduction axis with
:func:`sparsify_cli.passes.pattern.weight_pattern`, the same reading the torch-side
:func:`sparsify_cli.passes.inspect.inspect_model` does. A file can only say whether a layer's
*shape* allows N:M (conv groups, reduction size); which layers a run chose is in its report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod

import numpy as np
import onnx
import onnxruntime as ort

from sparsify_cli.exporters.condensed import (
    CONV_OP_TYPE,
    DOMAIN,
    CondensedWeight,
    expand,
    session_options,
)
from sparsify_cli.exporters.onnx_export import (
    INTEGER_WEIGHT_OPS,
    WEIGHT_OPS,
    initializers,
    module_of,
    weight_source,
)
from sparsify_cli.exporters.onnx_file import read_onnx
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.pattern import LayerStats, weight_pattern

CONDENSED_SUFFIX = ".condensed.values"
"""Initializer names of condensed layers end so (``<module>.condensed.values``), in both forms."""

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
    given = {
        i.name: [
            d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim
        ]
        for i in model.graph.input
        if i.name not in inits
    }
    outputs = [o for o in dict.fromkeys(outputs) if o not in given]
    probe_ok = dims and all(d and d > 0 for d in dims[1:]) and prod(dims[1:]) <= PROBE_MAX
    if probe_ok and first.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        present = {o.name for o in probe.graph.output}
        probe.graph.output.extend(
            onnx.helper.make_empty_tensor_value_info(n) for n in outputs if n not in present
        )
        feed = {first.name: np.zeros([1, *dims[1:]], dtype=np.float32)}
        custom = any(op.domain == DOMAIN for op in model.opset_import)
        try:
            quiet = session_options() if custom else ort.SessionOptions()
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
        shapes = {n: list(a.shape) for n, a in zip(outputs, ran, strict=True)}
        return {**{n: [1, *d[1:]] for n, d in given.items()}, **shapes}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as err:  # inference errors on inconsistent graphs
        raise SparsifyError(f"cannot infer the model's shapes: {type(err).__name__}") from err
    values = [*inferred.graph.value_info, *inferred.graph.output]
    return given | {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in values
    }


def _condensed(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> list[tuple]:
    """``(module, node, x input, CondensedWeight)`` of every condensed layer of either form.

    The custom op reads ``x, values, indices[, bias[, rows]]`` (``out_features`` attribute when
    rows were ablated); the stock form stores an extra zero row and a ``columns`` map back to the
    full width when rows were ablated. The input width is filled in later, from ``x``'s shape.
    """
    found = []
    for name in (n for n in weights if n.endswith(CONDENSED_SUFFIX)):
        prefix = name[: -len(".values")]
        values, indices = weights[name], weights[f"{prefix}.indices"]
        user = next(n for n in model.graph.node if name in n.input)
        if user.domain == DOMAIN:
            x = user.input[0]
            rows = weights.get(f"{prefix}.rows")
            names = ("out_features", "out_channels")
            out = next((a.i for a in user.attribute if a.name in names), len(values))
        else:  # Gather(x, Cast(indices)) feeds the Mul that reads the values
            gather = next(
                n for n in model.graph.node if n.op_type == "Gather" and n.output[0] in user.input
            )
            x = gather.input[0]
            columns = weights.get(f"{prefix}.columns")
            if columns is not None:  # drop the zero row; active rows in their stored order
                values, indices = values[:-1], indices[:-1]
                rows = np.argsort(columns, kind="stable")[: len(values)]
                out = len(columns)
            else:
                rows, out = None, len(values)
        active = np.arange(len(values)) if rows is None else np.asarray(rows)
        condensed = CondensedWeight(values, indices, active.astype(np.int32), (int(out), 0))
        found.append((prefix.removesuffix(".condensed"), user, x, condensed))
    return found


def inspect_onnx(path: str | os.PathLike[str], m: int = 4) -> list[OnnxLayerInfo]:
    """One :class:`OnnxLayerInfo` per weight-bearing layer (see the module docstring).

    ``m`` is the group size eligibility is judged for (the reduction size must divide by it).
    MACs per sample: output positions (from one batch-1 run) times the nonzero (sparse) or all
    (dense) weights, as :func:`sparsify_cli.passes.flops.layer_flops` counts them.
    """
    model = read_onnx(path)
    weights = initializers(model)
    inits = set(weights)
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    nodes = []
    for n in model.graph.node:
        if n.op_type not in WEIGHT_OPS + INTEGER_WEIGHT_OPS or len(n.input) < 2:
            continue
        source = weight_source(n.input[1], inits, dq_of)
        if source is not None and weights[source[0]].ndim >= 2:
            nodes.append((n, source[0]))
    condensed = _condensed(model, weights)
    probed = [c[2] for c in condensed] + [c[1].output[0] for c in condensed]
    shapes = _shapes(model, [n.output[0] for n, _ in nodes] + probed)
    rows = []
    for node, init in nodes:
        weight = weights[init]
        trans_b = _attr(node, "transB", 0)
        conv = node.op_type in ("Conv", "ConvInteger")
        in_axis = 1 if conv or (node.op_type == "Gemm" and trans_b) else 0
        group = _attr(node, "group", 1) if conv else 1
        bias = (
            weights.get(node.input[2])
            if node.op_type in WEIGHT_OPS and len(node.input) > 2
            else None
        )
        positions = _positions(shapes, node.output[0], "Conv" if conv else node.op_type)
        module = module_of(node.name) or init.removesuffix("_quantized").removesuffix(".weight")
        rows.append(
            _info(node.name, module, node.op_type, init, weight, in_axis, group, bias, positions, m)
        )
    for module, node, x, cw in condensed:
        dims = shapes.get(x) or []
        conv = node.op_type == CONV_OP_TYPE  # x is [N, C, H, W]; indices over [C, kh, kw]
        kernel = [a.ints for a in node.attribute if a.name == "kernel_shape"]
        if conv:
            kh, kw = (list(kernel[0]) if kernel else [1, 1])[-2:]
            channels = dims[1] if len(dims) > 1 and dims[1] else None
            width = (channels or (int(cw.indices.max()) + 1) // (kh * kw)) * kh * kw
            out_dims = shapes.get(node.output[0]) or []
            positions = prod(d for d in out_dims[2:] if d) if out_dims else 1
        else:
            width = dims[-1] if dims and dims[-1] else int(cw.indices.max()) + 1
            positions = prod(d for d in dims[1:-1] if d) if dims else 1
        weight, _ = expand(
            CondensedWeight(cw.values, cw.indices, cw.active_rows, (cw.shape[0], width))
        )
        if conv:
            weight = weight.reshape(cw.shape[0], width // (kh * kw), kh, kw)
        bias = weights.get(f"{module}.condensed.bias")
        rows.append(
            _info(
                node.name,
                module,
                node.op_type if node.domain == DOMAIN else "CondensedLinear",
                f"{module}.condensed.values",
                weight,
                1,
                1,
                bias,
                positions,
                m,
                stored=cw.values.size,
            )
        )
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return sorted(rows, key=lambda r: order.get(r.node, len(order)))


def _info(
    node: str,
    module: str,
    op: str,
    init: str,
    weight: np.ndarray,
    in_axis: int,
    group: int,
    bias: np.ndarray | None,
    positions: int,
    m: int,
    stored: int | None = None,
) -> OnnxLayerInfo:
    """One row; ``stored`` is the count of weights a condensed layer keeps (its ``params``)."""
    found = weight_pattern(weight, in_axis=in_axis, out_axis=1 - in_axis)
    if group != 1:
        reason = f"grouped conv (group={group}) is not sparsified"
    elif weight.shape[in_axis] % m:
        reason = f"reduction size {weight.shape[in_axis]} not divisible by {m}"
    else:
        reason = None
    nonzero = int(np.count_nonzero(weight))
    extra = bias.size if bias is not None else 0
    return OnnxLayerInfo(
        node=node,
        module=module,
        op=op,
        initializer=init,
        shape=tuple(weight.shape),
        in_axis=in_axis,
        reason=reason,
        density=found.density,
        nm=found.nm,
        fan_in=found.fan_in,
        ablated=found.ablated,
        params=(weight.size if stored is None else stored) + extra,
        nonzero_params=nonzero + (int(np.count_nonzero(bias)) if bias is not None else 0),
        flops_dense=positions * weight.size,
        flops_sparse=positions * nonzero,
    )
