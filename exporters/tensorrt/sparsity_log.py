"""What TensorRT's build log says about 2:4 sparsity, parsed from plain text.

With ``BuilderFlag.SPARSE_WEIGHTS`` set, TensorRT logs two lines at INFO severity near the end of
a build (the format has been stable from TensorRT 8.0 to 10.x; examples from trtexec logs in
NVIDIA/TensorRT issues #2169, #4054 and #4056, and pytorch/TensorRT issue #1340)::

    [I] [TRT] (Sparsity) Layers eligible for sparse math: Conv_1 + Relu_2, MatMul_4
    [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: Conv_1 + Relu_2

The first lists the engine layers whose weights hold the 2:4 pattern (so a sparse tactic was
*considered*); the second lists those where the sparse tactic won the timing (TensorRT keeps the
fastest kernel, so an eligible layer can still run dense: NVIDIA/TensorRT#2169). Either list may
be empty. Names are engine layer names: ONNX node names joined by ``" + "`` when TensorRT fused
them. The Python logger receives the message without the ``[I] [TRT]`` prefix; trtexec logs
carry it and a timestamp. Both are accepted, as are lists wrapped over several lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ELIGIBLE_MARK = "Layers eligible for sparse math:"
PICKED_MARK = "TRT inference plan picked sparse implementation for layers:"
_NEW_RECORD = re.compile(r"^\s*(\[\d\d/\d\d/\d{4}-[\d:]+\]\s*)?\[[A-Z]\]|^\s*\[(TRT|MemUsage)")
"""A line that starts a new log record (trtexec timestamp or severity tag)."""


@dataclass(frozen=True)
class SparsityLog:
    """Engine layer names from the two sparsity lines; ``found`` is False when neither appeared."""

    eligible: tuple[str, ...]
    picked: tuple[str, ...]
    found: bool


def split_layer_list(text: str) -> tuple[str, ...]:
    """``"A + B, C"`` -> ``("A + B", "C")``: engine layer names, in order, without blanks."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _list_after(lines: list[str], mark: str) -> tuple[str, ...] | None:
    for i, line in enumerate(lines):
        at = line.find(mark)
        if at < 0:
            continue
        body = line[at + len(mark) :]
        for cont in lines[i + 1 :]:  # a list wrapped over several lines (copied terminal output)
            if _NEW_RECORD.search(cont) or ELIGIBLE_MARK in cont or PICKED_MARK in cont:
                break
            body += cont.strip()
        return split_layer_list(body)
    return None


def parse_sparsity_log(text: str) -> SparsityLog:
    """The eligible and picked engine layers from a TensorRT build log (the last build in it)."""
    lines = text.splitlines()
    # A log may hold several builds; the last occurrence belongs to the last engine.
    last = max(
        (i for i, line in enumerate(lines) if ELIGIBLE_MARK in line),
        default=0,
    )
    tail = lines[last:]
    eligible = _list_after(tail, ELIGIBLE_MARK)
    picked = _list_after(tail, PICKED_MARK)
    return SparsityLog(eligible or (), picked or (), eligible is not None or picked is not None)


def layer_tokens(layer_name: str) -> tuple[str, ...]:
    """The ONNX node names an engine layer name is made of.

    ``"/l1/conv/Conv + /l1/relu/Relu"`` -> both names; a profile suffix (``" [profile 1]"``) and
    reformat wrappers are dropped; a Myelin region ``"{ForeignNode[/a/MatMul.../b/Add]}"`` gives
    its first and last node (the nodes between them are not named in the layer name).
    """
    name = re.sub(r"\s*\[profile \d+\]$", "", layer_name.strip())
    foreign = re.fullmatch(r"\{ForeignNode\[(.*)\]\}", name)
    if foreign:
        return tuple(t for t in foreign.group(1).split("...") if t)
    return tuple(t.strip() for t in name.split(" + ") if t.strip())
