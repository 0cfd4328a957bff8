"""Reading an ONNX file someone handed us: a model, or one clear error; never a file elsewhere.

``sparsify inspect`` and ``bench`` take any ``.onnx``. Before anything else reads it (onnx,
numpy, ONNX Runtime), :func:`read_onnx` checks that it is a complete model: not empty, a valid
protobuf that passes ``onnx.checker``, every stored tensor holding as many bytes as its dims
claim (a header claiming a huge dimension is refused, not allocated), and external data only in
files inside the model's own folder (``location: ../../etc/shadow`` is refused: a model file
never makes us read another file).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from sparsify_cli.passes.errors import SparsifyError

_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor stored in ``graph``: initializers, constants and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _names(graph: onnx.GraphProto) -> Iterator[object]:
    """Every name in ``graph`` (protobuf hands back bytes where a file holds invalid UTF-8)."""
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        for attr in node.attribute:
            yield attr.name
            if attr.HasField("g"):
                yield from _names(attr.g)
            for sub in attr.graphs:
                yield from _names(sub)
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        yield value.name


def _bad(path: Path, what: str, fix: str | None = None) -> SparsifyError:
    return SparsifyError(f"cannot use ONNX file {path}: {what}", fix=fix)


def _check_external(tensor: TensorProto, path: Path) -> None:
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    folder = path.resolve().parent
    target = (folder / location).resolve()
    if not location or os.path.isabs(location) or folder not in target.parents:
        raise _bad(
            path,
            f"tensor {tensor.name!r} keeps its data in {location!r}, outside the model's folder",
            fix="keep external data files beside the .onnx file (onnx.save_model(..., "
            "save_as_external_data=True, location='weights.bin'))",
        )
    if not target.is_file():
        raise _bad(path, f"tensor {tensor.name!r} needs the missing data file {location!r}")


def _check_size(tensor: TensorProto, path: Path) -> None:
    """The bytes stored must match what the dims claim (dims are never trusted to allocate)."""
    if any(d < 0 for d in tensor.dims):
        raise _bad(path, f"tensor {tensor.name!r} has negative dims {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError) as err:
        raise _bad(
            path, f"tensor {tensor.name!r} has unknown data type {tensor.data_type}"
        ) from err
    if tensor.HasField("raw_data"):
        stored = len(tensor.raw_data)
    elif tensor.data_location == TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in tensor.external_data}
        stored = int(entries["length"]) if entries.get("length", "").isdigit() else None
        if stored is None:
            stored = os.path.getsize(path.resolve().parent / entries["location"])
    else:
        values = sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
        stored, itemsize = values, 1  # compare element counts (typed fields widen small types)
        if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
            stored //= 2
    if count * itemsize > stored:
        raise _bad(
            path,
            f"tensor {tensor.name!r} claims dims {list(tensor.dims)} but stores less data "
            "(truncated or corrupt)",
        )


def read_onnx(path: str | os.PathLike[str], load_weights: bool = True) -> onnx.ModelProto:
    """The model at ``path`` after the checks of the module docstring; ``load_weights`` also
    reads its external data (from inside its folder only)."""
    path = Path(path)
    if not path.is_file():
        raise SparsifyError(f"ONNX file not found: {path}", expected="an .onnx file")
    if path.stat().st_size == 0:
        raise _bad(path, "the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, RuntimeWarning, ValueError...
        raise _bad(path, f"not an ONNX model ({type(err).__name__})") from err
    if not model.HasField("graph") or not model.graph.node:
        raise _bad(path, "it holds no graph")
    if not all(isinstance(name, str) for name in _names(model.graph)):
        raise _bad(path, "it holds names that are not UTF-8 text (a corrupt file)")
    for tensor in _tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            _check_external(tensor, path)
        _check_size(tensor, path)
    try:  # given the path, the checker resolves external data beside the file
        onnx.checker.check_model(str(path))
    except Exception as err:  # ValidationError, and C++ errors for some malformed graphs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _bad(path, f"not a valid ONNX model ({first[:200]})") from err
    if load_weights:
        try:
            onnx.load_external_data_for_model(model, str(path.resolve().parent))
        except (OSError, ValueError) as err:
            raise _bad(path, f"cannot read its external data ({type(err).__name__})") from err
    return model
