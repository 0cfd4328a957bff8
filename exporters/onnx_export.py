"""ONNX export and the map from torch modules to the ONNX nodes that hold their weights.

Export uses torch's TorchScript-based exporter (opset 17, constant folding on, so BatchNorm is
folded into the preceding Conv and Linear weights on 3-D inputs become pre-transposed MatMul
initializers). Folded initializers lose their parameter names, so weights are found through node
*scopes*, which that exporter derives from module paths: module ``layer2.shortcut.0`` owns node
``/layer2/shortcut/shortcut.0/Conv``, module ``blocks.0.fc1`` owns ``/blocks.0/fc1/MatMul``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from sparsify_cli.passes.atomic import atomic_path
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import Example, InputSpec, as_inputs

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
INTEGER_WEIGHT_OPS = ("ConvInteger", "MatMulInteger")
"""ONNX Runtime's dynamic int8 ops: their weight input is the int8 initializer itself."""


def export_onnx(
    model: nn.Module,
    example: Example,
    path: str | os.PathLike[str],
    specs: Sequence[InputSpec] = (),
) -> None:
    """Export ``model`` (in eval mode) with a dynamic batch axis, check it, write atomically.

    ONNX inputs take ``example``'s names (``input`` for a bare tensor), in order; ``specs`` name
    further dynamic axes per input (a transformer's sequence axis). The output keeps the batch
    axis dynamic; other output axes follow from the inputs' through shape inference.
    """
    inputs = as_inputs(example)
    axes = {name: {0: "batch"} for name in inputs}
    axes.update({s.name: dict(s.dynamic) for s in specs if s.name in inputs})
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                tuple(inputs.values()),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                do_constant_folding=True,
                input_names=list(inputs),
                output_names=[OUTPUT_NAME],
                dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
            )
            _bypass_shared_weight_identities(tmp)
            onnx.checker.check_model(str(tmp), full_check=True)
    except (SparsifyError, OSError):  # OSError: the disk, not the model (full, read-only)
        raise
    except Exception as err:  # torch's exporter raises many types; say which model and why
        raise SparsifyError(
            f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0]}",
            fix="check the model runs on the example input and uses ops of ONNX opset 17",
        ) from err
    finally:
        model.train(was_training)


def _bypass_shared_weight_identities(path: str | os.PathLike[str]) -> None:
    """Let every node read its weight initializer directly.

    torch's exporter stores equal weights once and feeds the other layers through ``Identity``
    nodes (a freshly built ``nn.TransformerEncoder``: each layer is a deepcopy of the first).
    Readers find a layer's weight as the initializer its node reads (:func:`weight_refs`, the
    condensed and int8 exporters), so those nodes now read the shared initializer. External data
    stays where it is (not loaded, references kept).
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {init.name for init in graph.initializer}
    outputs = {out.name for out in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    }
    if not alias:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    for node in [n for n in graph.node if n.op_type == "Identity" and n.output[0] in alias]:
        graph.node.remove(node)
    onnx.save(model, str(path))


@dataclass(frozen=True)
class WeightRef:
    """Where a module's weight sits in an ONNX graph, and its layout there.

    ``in_axis`` is the reduction axis and ``out_axis`` the output axis of the initializer as
    stored: Conv and Gemm(transB=1) are ``[out, in, ...]``; MatMul and Gemm(transB=0) are
    ``[in, out]``.
    """

    module: str
    node: str
    op: str
    initializer: str
    in_axis: int
    out_axis: int
    dequantize: str | None = None
    """The DequantizeLinear node between ``initializer`` (then int8) and ``node``, in QDQ files."""


def _scope_segments(node_name: str) -> list[str]:
    parts = node_name.split("/")[1:-1]
    return [seg for part in parts for seg in part.split(".")]


def module_of(node_name: str) -> str:
    """The module path a node's scope names, repeated segments merged (``""`` for no scope).

    >>> module_of("/layer2/shortcut/shortcut.0/Conv")
    'layer2.shortcut.0'
    """
    segments = _scope_segments(node_name)
    return ".".join(s for i, s in enumerate(segments) if i == 0 or s != segments[i - 1])


def _overlap_path(node_name: str) -> str:
    """The module path with each scope level's repeated prefix dropped.

    Children of a ``Sequential`` are scoped ``parent.index`` under ``parent``, and nested
    ``Sequential`` children repeat more than one segment: module ``blocks.0.expand.0.0`` owns
    ``/blocks/blocks.0/expand/expand.0/expand.0.0/Conv``. Each level adds what its name has
    beyond the longest suffix of the path so far that it starts with.

    >>> _overlap_path("/blocks/blocks.0/expand/expand.0/expand.0.0/Conv")
    'blocks.0.expand.0.0'
    """
    path: list[str] = []
    for level in node_name.split("/")[1:-1]:
        segs = level.split(".")
        keep = next(
            (k for k in range(min(len(path), len(segs) - 1), 0, -1) if path[-k:] == segs[:k]), 0
        )
        path.extend(segs[keep:])
    return ".".join(path)


def _scope_candidates(node_name: str) -> set[str]:
    """Module paths a node name can belong to (raw scope, with repeated segments merged, and
    with repeated prefixes of nested ``Sequential`` levels dropped)."""
    return {".".join(_scope_segments(node_name)), module_of(node_name), _overlap_path(node_name)}


def _owner_in_scope(node_name: str, float_name: str, wanted: set[str]) -> set[str]:
    """The owner of a node whose scope is not its module's: a module called through its parent's
    forward (``nn.MultiheadAttention`` runs ``out_proj`` as ``F.linear`` in its own scope).

    The module the ``.weight`` initializer is named after, when it lies in the node's scope (or
    the node has none); else the one wanted module in that scope (a weight shared by equal
    layers is named after the first layer only).
    """
    if not float_name.endswith(".weight"):
        return set()  # an unnamed (folded) initializer: a weight the module did not own
    named = float_name[: -len(".weight")]
    scopes = {s for s in _scope_candidates(node_name) if s}

    def inside(module: str) -> bool:
        return any(module.startswith(scope + ".") for scope in scopes)

    if not scopes or inside(named):
        return {named} & wanted
    below = {m for m in wanted if inside(m)}
    return below if len(below) == 1 else set()


def weight_source(
    name: str, inits: set[str], dq_of: dict[str, onnx.NodeProto]
) -> tuple[str, onnx.NodeProto | None] | None:
    """The initializer behind a weight input: itself, or the one a DequantizeLinear reads (QDQ)."""
    if name in inits:
        return name, None
    dq = dq_of.get(name)
    if dq is not None and dq.input[0] in inits:
        return dq.input[0], dq
    return None


def weight_refs(model: onnx.ModelProto, modules: list[str]) -> dict[str, list[WeightRef]]:
    """For each module path, the weight-bearing nodes it owns (one per call of the module).

    In a QDQ-quantized file the weight reaches its Conv/Gemm/MatMul through a DequantizeLinear;
    the ref then names the int8 initializer that node reads, so pattern checks see the integers
    actually stored. ONNX Runtime names that initializer ``<float name>_quantized``.
    """
    inits = {init.name for init in model.graph.initializer}
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    wanted = set(modules)
    refs: dict[str, list[WeightRef]] = {m: [] for m in modules}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS + INTEGER_WEIGHT_OPS or len(node.input) < 2:
            continue
        source = weight_source(node.input[1], inits, dq_of)
        if source is None:
            continue
        init, dq = source
        # int8 weights: `<name>_quantized` (QDQ, MatMulInteger), `<name>_Transposed_quantized` (a
        # Gemm with transB quantized into a MatMulInteger)
        float_name = init.removesuffix("_quantized").removesuffix("_Transposed")
        owners = wanted & _scope_candidates(node.name) or _owner_in_scope(
            node.name, float_name, wanted
        )
        for owner in owners:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            in_axis = (
                1
                if node.op_type in ("Conv", "ConvInteger") or (node.op_type == "Gemm" and trans_b)
                else 0
            )
            refs[owner].append(
                WeightRef(
                    owner,
                    node.name,
                    node.op_type,
                    init,
                    in_axis,
                    1 - in_axis,
                    dq.name if dq is not None else None,
                )
            )
    return refs


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
