"""Per-layer facts from TensorRT's engine inspector JSON.

``engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)`` on an
engine built with ``ProfilingVerbosity.DETAILED`` returns ``{"Layers": [...], "Bindings": [...]}``
(TensorRT 11 replaces ``Bindings`` with ``"I/O Tensors"``). Each layer is an object such as
(shape of a real one quoted in NVIDIA/TensorRT#3876; field names as read by NVIDIA's own
``trt-engine-explorer``, ``trex/layer.py`` and ``trex/activations.py``)::

    {"Name": "/model.2/cv1/conv/Conv + /model.2/cv1/act/Relu",
     "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "...", "Location": "Device", "Dimensions": [1, 64, 160, 160],
                 "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
     "Outputs": [...], "ParameterType": "Convolution", "Kernel": [3, 3], ...
     "TacticName": "sm80_xmma_fprop_sparse_conv_..._f16f16_f16f16_f16_nhwckrsc_nhwc_...",
     "Metadata": "[ONNX Layer: /model.2/cv1/conv/Conv]\\x1f[ONNX Layer: /model.2/cv1/act/Relu]"}

Without DETAILED verbosity ``Layers`` is a list of plain names; that is accepted too (no
precision or tactic then). ``Metadata`` (TensorRT >= 8.6) names the ONNX nodes a layer was built
from, separated by ``\\x1e``/``\\x1f``; it is the reliable link back to ONNX node names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sparsify_cli.exporters.tensorrt.sparsity_log import layer_tokens
from sparsify_cli.passes.errors import SparsifyError

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]\x1e\x1f]+)\]")

# Data-type words found in "Format/Datatype" strings (TensorRT 10) or "DataType" (TensorRT 11),
# longest first so "BFloat16" is not read as "Float".
_PRECISION_WORDS = (
    ("bfloat16", "bf16"),
    ("fp8", "fp8"),
    ("int8", "int8"),
    ("int32", "int32"),
    ("int64", "int64"),
    ("fp16", "fp16"),
    ("half", "fp16"),
    ("fp32", "fp32"),
    ("float", "fp32"),
    ("bool", "bool"),
)


@dataclass(frozen=True)
class EngineLayer:
    """One engine layer: name, kind, compute precision (of its first input), chosen tactic."""

    name: str
    layer_type: str | None
    precision: str | None
    tactic: str | None
    onnx_nodes: tuple[str, ...]

    @property
    def sparse_tactic(self) -> bool:
        """Whether the chosen kernel's name says it is a sparse kernel (``..._sparse_...``)."""
        return bool(self.tactic) and "sparse" in self.tactic.lower()


def tensor_precision(tensor: dict[str, Any]) -> str | None:
    """``"Channel major FP16 format where channel % 8 == 0"`` -> ``"fp16"``."""
    text = str(tensor.get("DataType") or tensor.get("Format/Datatype") or "").lower()
    for word, precision in _PRECISION_WORDS:
        if word in text:
            return precision
    return None


def metadata_nodes(metadata: str | None) -> tuple[str, ...]:
    """ONNX node names from a layer's ``Metadata`` field."""
    return tuple(m.strip() for m in _ONNX_LAYER.findall(metadata or ""))


def _layer(raw: Any) -> EngineLayer:
    if isinstance(raw, str):  # ProfilingVerbosity.LAYER_NAMES_ONLY
        return EngineLayer(raw, None, None, None, layer_tokens(raw))
    name = str(raw.get("Name", ""))
    inputs = raw.get("Inputs") or []
    precision = tensor_precision(inputs[0]) if inputs and isinstance(inputs[0], dict) else None
    tactic = raw.get("TacticName")
    nodes = metadata_nodes(raw.get("Metadata")) or layer_tokens(name)
    return EngineLayer(
        name=name,
        layer_type=raw.get("LayerType"),
        precision=precision,
        tactic=str(tactic) if tactic not in (None, "") else None,
        onnx_nodes=nodes,
    )


def parse_engine_info(text: str) -> list[EngineLayer]:
    """Layers from the inspector's JSON text, in engine order (only the first profile's layers).

    Raises :class:`SparsifyError` when the text is not the inspector's JSON.
    """
    try:
        info = json.loads(text)
        raw_layers = info["Layers"]
        if not isinstance(raw_layers, list):
            raise TypeError("Layers is not a list")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SparsifyError(
            "cannot read TensorRT engine inspector output",
            expected='JSON with a "Layers" list',
            found=f"{type(err).__name__}: {err}",
        ) from err
    layers = [_layer(raw) for raw in raw_layers]
    # Extra optimization profiles repeat every layer with a " [profile N]" suffix.
    return [layer for layer in layers if not re.search(r"\[profile \d+\]", layer.name)]
