"""ONNX Runtime sessions on the CPU, configured the same way for parity, accuracy and timing."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from sparsify_cli.exporters.condensed import DOMAIN, library_path
from sparsify_cli.exporters.onnx_file import read_onnx
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import Arrays, rows
from sparsify_cli.passes.inputs import batch_size as inputs_batch


def uses_condensed_ops(path: str | os.PathLike[str]) -> bool:
    """Whether the model imports the project's custom-op domain (so needs the kernel library).

    The file is checked first (:func:`read_onnx`): ONNX Runtime would otherwise read external
    data from wherever the file points.
    """
    model = read_onnx(path, load_weights=False)
    return any(op.domain == DOMAIN for op in model.opset_import)


def session(path: str | os.PathLike[str] | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads, sequential execution, full optimization.

    Condensed models (``CondensedLinear`` nodes) get the project's kernel library registered.
    ``path`` may also be a serialized model (the condensed exporter times single layers built in
    memory with the same settings as the artifacts, so its choice is made on the same terms).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    in_memory = isinstance(path, bytes)
    if in_memory:
        domains = {op.domain for op in onnx.load_from_string(path).opset_import}
        custom = DOMAIN in domains
    else:
        custom = uses_condensed_ops(path)
    if custom:
        opts.register_custom_ops_library(str(library_path()))
    source = path if in_memory else str(path)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise SparsifyError(
            f"ONNX Runtime cannot load {'a model built in memory' if in_memory else path}: "
            f"{str(err).splitlines()[0]}",
            fix="check the file is a complete ONNX model (re-run the export)",
        ) from err


def run(sess: ort.InferenceSession, x: Arrays, batch_size: int = 256) -> np.ndarray:
    """Outputs of the session's first output for inputs ``x``, in chunks of ``batch_size``.

    ``x`` is one array (fed to the session's first input) or ``name -> array`` for several.
    """

    def feed(chunk: Arrays) -> dict[str, np.ndarray]:
        named = {sess.get_inputs()[0].name: chunk} if isinstance(chunk, np.ndarray) else chunk
        return {name: np.ascontiguousarray(a) for name, a in named.items()}

    outs = [
        sess.run(None, feed(rows(x, slice(i, i + batch_size))))[0]
        for i in range(0, inputs_batch(x), batch_size)
    ]
    return np.concatenate(outs)
