"""Per-layer truth about 2:4 on TensorRT: masked (manifest) x eligible / picked (build log) x
precision and tactic (engine inspector), matched through ONNX node names.

The manifest names torch modules; :func:`sparsify_cli.exporters.onnx_export.weight_refs` maps each
module to
the ONNX node holding its weight; TensorRT engine layers name the ONNX nodes they were built from
(``Metadata``, else the ``" + "``-joined layer name). A layer counts as *running sparse* only when
TensorRT says it picked a sparse implementation for it; the tactic name (``..._sparse_...``) is
shown beside it as a second witness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sparsify_cli.exporters.tensorrt.inspector import EngineLayer
from sparsify_cli.exporters.tensorrt.sparsity_log import SparsityLog, layer_tokens


@dataclass(frozen=True)
class TrtLayerRow:
    module: str | None
    onnx_node: str | None
    engine_layer: str | None
    pattern: str | None
    eligible: bool
    picked_sparse: bool
    sparse_tactic: bool
    precision: str | None
    tactic: str | None

    @property
    def masked(self) -> bool:
        return self.pattern is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "masked": self.masked}


def _node_set(names: Sequence[str]) -> set[str]:
    return {token for name in names for token in layer_tokens(name)}


def merge_layer_rows(
    node_map: Mapping[str, Sequence[str]],
    patterns: Mapping[str, str],
    engine_layers: Sequence[EngineLayer],
    log: SparsityLog,
) -> list[TrtLayerRow]:
    """One row per weight node of every module in ``node_map`` (module -> ONNX node names).

    ``patterns`` maps masked modules to their manifest pattern (``"2:4"``); modules not in it are
    dense. Engine layers the log calls eligible or picked that match no module are appended with
    ``module=None`` so nothing TensorRT reported is hidden.
    """
    eligible_names, picked_names = set(log.eligible), set(log.picked)
    eligible_nodes, picked_nodes = _node_set(log.eligible), _node_set(log.picked)
    by_node: dict[str, EngineLayer] = {}
    for layer in engine_layers:
        for node in layer.onnx_nodes:
            by_node.setdefault(node, layer)

    rows: list[TrtLayerRow] = []
    matched: set[str] = set()
    for module, nodes in node_map.items():
        for node in nodes:
            layer = by_node.get(node)
            name = layer.name if layer else None
            if name:
                matched.add(name)
            rows.append(
                TrtLayerRow(
                    module=module,
                    onnx_node=node,
                    engine_layer=name,
                    pattern=patterns.get(module),
                    eligible=name in eligible_names or node in eligible_nodes,
                    picked_sparse=name in picked_names or node in picked_nodes,
                    sparse_tactic=bool(layer and layer.sparse_tactic),
                    precision=layer.precision if layer else None,
                    tactic=layer.tactic if layer else None,
                )
            )
    known = {layer.name: layer for layer in engine_layers}
    for name in [*log.eligible, *(p for p in log.picked if p not in eligible_names)]:
        if name in matched or any(r.onnx_node in layer_tokens(name) for r in rows):
            continue
        layer = known.get(name)
        rows.append(
            TrtLayerRow(
                module=None,
                onnx_node=None,
                engine_layer=name,
                pattern=None,
                eligible=name in eligible_names,
                picked_sparse=name in picked_names,
                sparse_tactic=bool(layer and layer.sparse_tactic),
                precision=layer.precision if layer else None,
                tactic=layer.tactic if layer else None,
            )
        )
    return rows


def sparsity_warnings(
    rows: Sequence[TrtLayerRow], log: SparsityLog, sparse_build: bool
) -> list[str]:
    """Plain statements of what did *not* run sparse, for the report and the terminal."""
    if not sparse_build:
        return []
    masked = [r for r in rows if r.masked]
    if not log.found:
        return [
            "TensorRT's build log has no sparsity lines: the engine was built without "
            "SPARSE_WEIGHTS or the logger dropped INFO messages, so nothing is proven sparse"
        ]
    out = []
    if masked and not any(r.picked_sparse for r in masked):
        out.append(
            f"the model is 2:4 sparse ({len(masked)} masked layers) but TensorRT picked no sparse "
            "kernel: every layer runs dense (dense tactics were faster, or no layer was eligible)"
        )
    not_eligible = [r.module for r in masked if not r.eligible]
    if not_eligible:
        out.append(
            "masked but not eligible for sparse math (TensorRT did not see 2:4 in these weights "
            f"or has no sparse kernel for the layer): {', '.join(map(str, not_eligible))}"
        )
    dense_won = [r.module for r in masked if r.eligible and not r.picked_sparse]
    if dense_won and any(r.picked_sparse for r in masked):
        out.append(f"eligible but a dense kernel was faster: {', '.join(map(str, dense_won))}")
    unmatched = [r.module for r in masked if r.engine_layer is None]
    if unmatched:
        out.append(
            "no engine layer names these masked layers' ONNX nodes (fused into a Myelin region?): "
            + ", ".join(map(str, unmatched))
        )
    return out
