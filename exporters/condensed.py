"""Condensed export: constant fan-in layers stored as ``values [R, k]`` + ``indices [R, k]``.

N:M and SRigL layers keep exactly ``k`` weights in every active output row, so a layer is fully
described by the kept values and their input positions (ALGORITHMS.md, SRigL "Condensed form"):

    y[..., o] = sum_j values[o, j] * x[..., indices[o, j]] + bias[o]

Rows with no kept weight (ablated neurons) are not stored: they cost no compute and no memory.

Two ONNX forms are written by :func:`condense_onnx`:

* ``ops="custom"``: one ``ai.sparsify::CondensedLinear`` node per layer, run by the C++ kernel in
  the ``sparsify_cli.exporters._condensed_ort`` library that ``pip install`` builds. Load it with
  ``ort.InferenceSession(path, condensed.session_options())``. This is the fast form: the
  kernel gathers inputs with SIMD and runs on the session's intra-op threads.
* Conv2d layers (groups = 1, any kernel, stride, pads, dilation) with constant fan-in over
  ``in x kh x kw`` become ``ai.sparsify::CondensedConv``: the same values + indices (flattened
  ``[in, kh, kw]`` positions) and the Conv's geometry attributes; a Relu that alone consumes the
  Conv's output is fused into it, and so is a residual Add of a same-shaped tensor (with the Relu
  after it), as the op's sixth input (BatchNorm was already folded into the Conv by the export).
* ``ops="standard"``: Gather + Mul + ReduceSum, stock ONNX ops for runtimes without the library.
  Convolutions stay dense in this form (stock ONNX has no sparse convolution, and a Gather-based
  im2col would be slower than the dense Conv).
  Correct everywhere, but 10-30x slower than dense on ONNX Runtime's CPU provider (its Gather
  copies one scalar at a time; measured at 90% sparsity on 768/3072-wide layers); use it for
  portability, not speed.

Which layers are condensed (``layers=``): ``"all"`` condenses every eligible layer (the same
file on every run); ``"auto"`` (the CLI's default) first times each eligible layer alone in ONNX
Runtime, the condensed node against the dense node(s) it would replace, at batch 1 on the run's
threads, and keeps the layer dense unless the condensed node is at least :data:`MIN_SPEEDUP`
times faster (the report names the measured ratio). The kernels win on large layers at high
sparsity and lose on small ones and at 2:4, so a condensed file is then never slower than dense
because of a layer where the dense kernel is faster; but the choice is a measurement, so a layer
near the threshold may go either way from one run to the next (use ``"all"`` where identical
artifacts matter).

Ablated rows: the condensed node computes only the active rows and scatters them into the full
output width, writing ``bias`` (or 0) into ablated columns, which is exactly what the dense layer
outputs there. Consumers of the layer (an activation, a residual add, the next Linear) therefore
see the original shape and values and need no change.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from sparsify_cli.exporters.onnx_export import weight_refs
from sparsify_cli.passes.atomic import atomic_path
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.manifest import Manifest, TensorEntry

logger = logging.getLogger(__name__)

DOMAIN = "ai.sparsify"
OP_TYPE = "CondensedLinear"
CONV_OP_TYPE = "CondensedConv"
_LIBRARY_STEM = "_condensed_ort"
_INT16_MAX_FEATURES = 32767

LAYER_CHOICES = ("auto", "all")
"""``layers=`` of :func:`condense_onnx` (``--condensed-layers``): time each layer and keep the
dense ones that are faster, or condense every eligible layer."""
MIN_SPEEDUP = 1.05
"""``layers="auto"`` condenses a layer only when its condensed node, timed alone, runs at least
this many times faster than the dense node(s): a 2% "gain" is within the noise of a shared
machine, and the dense layer is the safe default (it is what the file replaces)."""
TIMING_WARMUP = 3
"""Untimed calls of each session before a layer is timed (first calls allocate and page in)."""
TIMING_ROUNDS = 7
"""A layer is timed over at least this many rounds (one call of each session per round)..."""
TIMING_BUDGET_S = 0.06
"""...and until the rounds took about this long: a ~50-layer model is timed in a few seconds."""
TIMING_MACS = 2_000_000
"""A small layer is timed as up to :data:`TIMING_COPIES` copies side by side in one call (each
on its own input, sharing the weights) until the copies hold about this many dense
multiply-adds: a ``run`` costs ~5 us of ONNX Runtime overhead, more than a small layer's whole
work, which alone would make every small layer's ratio read ~1.0x."""
TIMING_COPIES = 16
GUARD_TRIES = 4
"""``auto``: times the whole file is re-timed with more of its weakest layers returned to dense
(1, 2, 4, 8 more), before every condensed layer is (the file then is the dense model)."""


class CondensedWeight(NamedTuple):
    """A constant fan-in weight without its zeros.

    ``values[r, j]`` is the weight at ``[active_rows[r], indices[r, j]]`` of the dense ``[out,
    in]`` weight; indices ascend within a row, so the kernel reads its input front to back.
    """

    values: np.ndarray
    indices: np.ndarray
    active_rows: np.ndarray
    shape: tuple[int, int]


def condense(weight: np.ndarray, mask: np.ndarray) -> CondensedWeight:
    """Store the masked weight as ``values [R, k]`` + ``indices [R, k]`` over its R active rows.

    ``weight`` and ``mask`` use the torch layout ``[out, in]``; a 1x1 convolution ``[out, in, 1,
    1]`` (any trailing kernel dims) is flattened to ``[out, in * kh * kw]``. Rows whose mask is
    empty are dropped and listed in ``active_rows`` (from the mask, never from weight values).
    Indices are int16 when ``in <= 32767`` (half the bytes to stream), else int32.

    >>> w = np.array([[0., 2., 3., 0.], [0., 0., 0., 0.], [5., 0., 0., 6.]], np.float32)
    >>> c = condense(w, w != 0)
    >>> c.values.tolist(), c.indices.tolist(), c.active_rows.tolist()
    ([[2.0, 3.0], [5.0, 6.0]], [[1, 2], [0, 3]], [0, 2])
    """
    weight = np.asarray(weight)
    mask = np.asarray(mask, dtype=bool)
    if weight.shape != mask.shape or weight.ndim < 2:
        raise SparsifyError(
            "cannot condense: weight and mask disagree",
            expected="weight and mask of one shape [out, in, *kernel]",
            found=f"weight {weight.shape}, mask {mask.shape}",
        )
    out_features = weight.shape[0]
    flat_w = weight.reshape(out_features, -1)
    flat_m = mask.reshape(out_features, -1)
    counts = flat_m.sum(axis=1)
    active = np.flatnonzero(counts).astype(np.int32)
    kept = np.unique(counts[active])
    if kept.size > 1:
        raise SparsifyError(
            "cannot condense: fan-in is not constant",
            expected="the same number of kept weights in every non-empty row",
            found=f"row counts {kept.min()}..{kept.max()}",
            fix="export this layer dense, or train it with constant fan-in (N:M or SRigL)",
        )
    k = int(kept[0]) if kept.size else 0
    in_features = flat_w.shape[1]
    index_dtype = np.int16 if in_features <= _INT16_MAX_FEATURES else np.int32
    # np.nonzero walks row-major, so each row's columns come out ascending.
    cols = np.nonzero(flat_m[active])[1].reshape(active.size, k)
    values = np.take_along_axis(flat_w[active], cols, axis=1).astype(np.float32)
    return CondensedWeight(values, cols.astype(index_dtype), active, (out_features, in_features))


def expand(condensed: CondensedWeight) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`condense`: the dense ``[out, in]`` weight (zeros off-mask) and its mask."""
    out_features, in_features = condensed.shape
    weight = np.zeros((out_features, in_features), np.float32)
    mask = np.zeros((out_features, in_features), bool)
    rows = condensed.active_rows[:, None]
    cols = condensed.indices.astype(np.int64)
    weight[rows, cols] = condensed.values
    mask[rows, cols] = True
    return weight, mask


def library_path() -> Path:
    """Path of the custom-op library built by ``pip install`` next to this module."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{_LIBRARY_STEM}{suffix}"
        if candidate.is_file():
            return candidate
    raise SparsifyError(
        "the CondensedLinear kernel library is not built",
        expected=f"{here / _LIBRARY_STEM}<python extension suffix>",
        found="no such file",
        fix="reinstall with `pip install -e .` (needs a C++17 compiler), or export with "
        "ops='standard'",
    )


def kernel_isa() -> str:
    """Instruction set the CondensedLinear kernels use on this CPU: avx512, avx2 or portable.

    The environment variable ``SPARSIFY_CONDENSED_ISA`` caps it for processes started after it is
    set (to compare the paths, or to run the narrower ones on a wider CPU).
    """
    query = ctypes.CDLL(str(library_path())).SparsifyCondensedIsa
    query.restype = ctypes.c_char_p
    return query().decode()


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime session options that can run ``CondensedLinear`` nodes.

    ``threads`` sets ``intra_op_num_threads`` (the kernel splits its rows over that pool);
    ``None`` keeps ONNX Runtime's default (one per physical core).

    >>> sess = ort.InferenceSession("model.condensed.onnx", session_options())  # doctest: +SKIP
    """
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(library_path()))
    return options


@dataclass(frozen=True)
class LayerResult:
    """What :func:`condense_onnx` did with one manifest entry (``skipped`` says why not).

    ``kernel`` names what runs the layer in the written file: ``CondensedLinear`` or
    ``CondensedConv`` (the custom op), ``stock ops`` (the standard-op form), or ``dense`` (the
    original node, for the reason in ``skipped``). ``fused`` lists graph ops folded into the
    condensed node (``Relu`` after a Conv; ``Add``, ``Relu`` for a residual sum).
    """

    module: str
    node: str | None
    fan_in: int | None
    active_rows: int | None
    out_features: int
    skipped: str | None = None
    kernel: str = "dense"
    fused: tuple[str, ...] = ()
    speedup: float | None = None
    """``layers="auto"``: dense time / condensed time of the layer alone at batch 1 (> 1: the
    condensed node is faster); ``None`` when it was not timed (see ``note``)."""
    note: str | None = None
    """Why a condensed layer was not timed under ``layers="auto"`` (its input shape unknown)."""


@dataclass
class _Dense:
    """A dense Linear or Conv found in the graph: its weight in torch layout, the nodes it spans
    and, for a Conv, its geometry attributes (``kernel_shape``, ``strides``, ``pads``,
    ``dilations``), whether a following Relu is fused into it, and the residual tensor of a
    fused Add."""

    x: str
    output: str
    weight: np.ndarray
    bias: np.ndarray | None
    nodes: list[onnx.NodeProto]
    initializers: list[str]
    scope: str
    conv: dict[str, list[int]] | None = None
    relu: bool = False
    residual: str | None = None  # a Conv's fused residual Add: the tensor it adds

    @property
    def fused(self) -> tuple[str, ...]:
        return (("Add",) if self.residual else ()) + (("Relu",) if self.relu else ())


def condense_onnx(
    dense_onnx_path: str | os.PathLike[str],
    manifest: Manifest,
    out_path: str | os.PathLike[str],
    ops: Literal["custom", "standard"] = "custom",
    layers: Literal["auto", "all"] = "all",
    threads: int = 1,
    example: np.ndarray | Mapping[str, np.ndarray] | None = None,
) -> list[LayerResult]:
    """Rewrite every constant fan-in Linear of a dense ONNX file into its condensed form.

    ``dense_onnx_path`` is the folded model exported by torch's TorchScript exporter; each
    manifest entry is found by its node scope (``blocks.0.fc1`` -> ``/blocks.0/fc1/MatMul`` or
    ``.../Gemm``), falling back to a Gemm reading the ``<module>.weight`` initializer. A Gemm is
    replaced whole; a MatMul together with the Add of its bias. Entries without constant fan-in
    (``fan_in is None``), non-Linear entries and entries not found stay dense and are reported
    with the reason. The input file is not modified; ``out_path`` is written atomically.

    ``layers="auto"`` (custom ops only) times each eligible layer alone against its dense
    node(s) on ``threads`` intra-op threads at batch 1, in the input shape ONNX shape inference
    gives the layer with the graph's inputs at batch 1 (their other dims from ``example``, one
    array or ``name -> array``, where the graph leaves them symbolic), and keeps it dense unless
    the condensed node is :data:`MIN_SPEEDUP` times faster. A layer whose input shape is still
    unknown is condensed, and its ``note`` says it was not timed. ``layers="all"`` condenses every
    eligible layer: the same file on every run.

    >>> condense_onnx("model.onnx", Manifest.load("manifest.safetensors"),
    ...               "model.condensed.onnx", layers="auto")  # doctest: +SKIP
    """
    if ops not in ("custom", "standard"):
        raise SparsifyError(
            f"unknown condensed op set {ops!r}",
            expected="'custom' (CondensedLinear kernel) or 'standard' (stock ONNX ops)",
            found=repr(ops),
        )
    if layers not in LAYER_CHOICES:
        raise SparsifyError(
            f"unknown condensed layer choice {layers!r}",
            expected="'auto' (time each layer, keep the faster) or 'all' (condense every one)",
            found=repr(layers),
        )
    if layers == "auto" and ops == "standard":
        # The stock-op form is 10-30x slower than dense on every layer: timing would keep every
        # layer dense, and the form exists for runtimes without the kernel library, not speed.
        raise SparsifyError(
            "choosing condensed layers by timing applies to the custom kernels",
            expected="layers='all' with ops='standard', or ops='custom'",
            found="layers='auto', ops='standard'",
        )
    original = onnx.load(str(dense_onnx_path))
    shapes = _tensor_shapes(original)  # of the original graph: custom ops hide later shapes
    timed: dict[str, float | None] = {}
    if layers == "auto":
        timed_shapes = _batch1_shapes(original, example)

        def time_layer(model: onnx.ModelProto, entry: TensorEntry, dense: _Dense) -> float | None:
            if entry.module not in timed:
                condensed = _checked_condense(entry, dense)
                timed[entry.module] = _timed_speedup(
                    model, dense, condensed, entry, timed_shapes, threads
                )
            return timed[entry.module]

        model, results = _rewrite(original, manifest, ops, shapes, time_layer, {})
        feeds = _first_row(original, example)
        if feeds is not None and any(r.skipped is None for r in results):
            model, results = _whole_model_guard(
                original, model, results, feeds, threads, manifest, shapes, time_layer
            )
    else:
        model, results = _rewrite(original, manifest, ops, shapes, None, {})
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return results


def _rewrite(
    original: onnx.ModelProto,
    manifest: Manifest,
    ops: str,
    shapes: dict[str, tuple[int | str, ...]],
    time_layer: Callable[[onnx.ModelProto, TensorEntry, _Dense], float | None] | None,
    demoted: Mapping[str, str],
) -> tuple[onnx.ModelProto, list[LayerResult]]:
    """A copy of ``original`` with its eligible layers condensed, one after another (a fused
    Add is gone before the next layer looks for one); ``time_layer`` (auto) gives each layer's
    alone speedup, and the layers in ``demoted`` stay dense for the reason given there."""
    model = onnx.ModelProto()
    model.CopyFrom(original)
    graph = model.graph
    results = []
    for entry in manifest.entries.values():
        reason = _skip_reason(entry, ops)
        dense = reason or _find_dense(model, entry, shapes)
        if isinstance(dense, str):
            logger.info("%s stays dense: %s", entry.module, dense)
            results.append(
                LayerResult(entry.module, None, entry.fan_in, None, entry.shape[0], skipped=dense)
            )
            continue
        condensed = _checked_condense(entry, dense)
        speedup, note = None, None
        if time_layer is not None:
            speedup = time_layer(model, entry, dense)
            why = demoted.get(entry.module)
            if speedup is None:
                note = "not timed (input shape unknown at batch 1): condensed"
            elif speedup < MIN_SPEEDUP:
                why = _alone_reason(speedup)
            if why is not None:
                logger.info("%s stays dense: %s", entry.module, why)
                results.append(
                    LayerResult(
                        entry.module,
                        dense.nodes[0].name,
                        entry.fan_in,
                        None,
                        entry.shape[0],
                        skipped=why,
                        speedup=speedup,
                    )
                )
                continue
        _replace(graph, dense, condensed, entry, ops)
        kernel = "stock ops" if ops == "standard" else CONV_OP_TYPE if dense.conv else OP_TYPE
        results.append(
            LayerResult(
                entry.module,
                dense.nodes[0].name,
                int(condensed.values.shape[1]),
                int(condensed.active_rows.size),
                entry.shape[0],
                kernel=kernel,
                fused=dense.fused,
                speedup=speedup,
                note=note,
            )
        )
        logger.info(
            "%s: condensed to k=%d over %d/%d rows (%s)",
            entry.module,
            condensed.values.shape[1],
            condensed.active_rows.size,
            entry.shape[0],
            kernel,
        )
    if ops == "custom" and any(r.skipped is None for r in results):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model, results


def _alone_reason(speedup: float) -> str:
    """Why a layer timed alone stays dense (a ratio in [1, MIN_SPEEDUP) is no clear gain)."""
    ratio = f"condensed {speedup:.2f}x of dense at batch 1"
    if speedup >= 1.0:
        return f"no clear gain: {ratio} (condensing needs {MIN_SPEEDUP:.2f}x)"
    return f"dense is faster here: {ratio}"


def _whole_model_guard(
    original: onnx.ModelProto,
    model: onnx.ModelProto,
    results: list[LayerResult],
    feeds: dict[str, np.ndarray],
    threads: int,
    manifest: Manifest,
    shapes: dict[str, tuple[int | str, ...]],
    time_layer: Callable[[onnx.ModelProto, TensorEntry, _Dense], float | None],
) -> tuple[onnx.ModelProto, list[LayerResult]]:
    """Time the whole rewritten model against the dense one at batch 1 and, while it is slower
    (below 1.0x), return its weakest condensed layers (lowest alone ratio) to dense, 1, 2, 4, ...
    more each time, up to :data:`GUARD_TRIES` times; then, if still slower, every one.

    Layers timed alone miss what they cost in the graph: ONNX Runtime runs consecutive dense
    convs in its blocked NCHWc layout, and a custom op between them adds two layout conversions
    (HF MobileNetV2 at 2:4: 9 of 34 layers 1.2-1.6x faster alone, the file 0.81x of dense)."""
    from sparsify_cli.exporters import runtime  # it imports this module

    dense_sess = runtime.session(original.SerializeToString(), threads)
    demoted: dict[str, str] = {}
    whole = _paired_speedup(dense_sess, runtime.session(model.SerializeToString(), threads), feeds)
    for attempt in range(GUARD_TRIES + 1):
        kept = [r for r in results if r.skipped is None]
        if whole >= 1.0 or not kept:
            break
        why = (
            f"dense in the whole model: with it condensed the file ran {whole:.2f}x of dense at "
            "batch 1"
        )
        if attempt == GUARD_TRIES:  # still slower: the safe file is the dense one
            demoted.update({r.module: why for r in kept})
        else:  # 1, 2, 4, ... weakest (lowest alone ratio, untimed first) more each time
            order = sorted(kept, key=lambda r: (r.speedup is not None, r.speedup or 0.0))
            for weak in order[: 2**attempt]:
                alone = f"{weak.speedup:.2f}x" if weak.speedup is not None else "not timed"
                demoted[weak.module] = f"{why} (alone: {alone})"
        model, results = _rewrite(original, manifest, "custom", shapes, time_layer, demoted)
        if attempt < GUARD_TRIES:
            candidate = runtime.session(model.SerializeToString(), threads)
            whole = _paired_speedup(dense_sess, candidate, feeds)
    logger.info("condensed model vs dense at batch 1: %.2fx", whole)
    return model, results


def _first_row(
    model: onnx.ModelProto, example: np.ndarray | Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray] | None:
    """``example``'s first row as a feed of the whole model (``None`` without an example)."""
    if example is None:
        return None
    if isinstance(example, np.ndarray):
        inits = {t.name for t in model.graph.initializer}
        first = next((i.name for i in model.graph.input if i.name not in inits), None)
        if first is None:
            return None
        example = {first: example}
    return {name: np.ascontiguousarray(a[:1]) for name, a in example.items()}


def _paired_speedup(
    dense: ort.InferenceSession, condensed: ort.InferenceSession, feeds: dict[str, np.ndarray]
) -> float:
    """Dense over condensed median time per call on ``feeds``: the interleaved timing of
    :func:`~sparsify_cli.exporters.latency.time_batch` (drift hits both alike), one call per
    block, at least :data:`TIMING_ROUNDS` rounds and about :data:`TIMING_BUDGET_S` in all."""
    from sparsify_cli.exporters.latency import LatencySettings, median_ratio, time_batch

    settings = LatencySettings(
        (1,), warmup=TIMING_WARMUP, seconds=TIMING_BUDGET_S / 2, round_size=1,
        min_rounds=TIMING_ROUNDS, max_factor=1.0,
    )  # fmt: skip
    sessions = {"dense": dense, "condensed": condensed}
    blocks = time_batch(sessions, dict.fromkeys(sessions, feeds), settings, None)
    return median_ratio(blocks["dense"], blocks["condensed"])


def _batch1_shapes(
    model: onnx.ModelProto, example: np.ndarray | Mapping[str, np.ndarray] | None
) -> dict[str, tuple[int, ...]]:
    """Every tensor's concrete shape when the graph's inputs have batch 1, so a layer is timed
    in the shape it runs in at batch 1 (a flattened ``batch * seq`` too).

    ONNX shape inference first, with a symbolic leading input dim set to 1 and other symbolic
    dims taken from ``example`` (a lone array is the first input). Where it stops (a Pad whose
    pads are computed in the graph, as Hugging Face's "same" padding writes it) and ``example``
    is given, the dense model is run once on the example's first row and the inputs of its
    Conv / Gemm / MatMul nodes are read off."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    inits = {t.name for t in fixed.graph.initializer}
    inputs = [i for i in fixed.graph.input if i.name not in inits]
    if isinstance(example, np.ndarray):
        example = {inputs[0].name: example} if inputs else {}
    given = {name: tuple(np.shape(a)) for name, a in (example or {}).items()}
    for info in inputs:
        if not info.type.tensor_type.HasField("shape"):
            continue
        want = given.get(info.name)
        for i, dim in enumerate(info.type.tensor_type.shape.dim):
            if i == 0:
                dim.dim_value = 1
            elif not dim.HasField("dim_value") and want is not None and len(want) > i:
                dim.dim_value = int(want[i])
    known = {
        name: tuple(int(d) for d in dims)
        for name, dims in _tensor_shapes(fixed).items()
        if all(isinstance(d, int) and d > 0 for d in dims)
    }
    layer_inputs = {n.input[0] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    missing = sorted(layer_inputs - set(known) - inits)
    if missing and example:
        known.update(_run_shapes(model, example, missing))
    return known


def _run_shapes(
    model: onnx.ModelProto, example: Mapping[str, np.ndarray], names: list[str]
) -> dict[str, tuple[int, ...]]:
    """The shapes ``names`` take when the model runs on the first row of ``example`` (empty
    when it cannot run here: those layers are then condensed untimed)."""
    from sparsify_cli.exporters import runtime  # it imports this module

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    feeds = {name: np.ascontiguousarray(a[:1]) for name, a in example.items()}
    try:
        outputs = runtime.session(probe.SerializeToString()).run(names, feeds)
    except Exception as err:  # an input the example does not name, an op ORT lacks, ...
        logger.warning("cannot run the dense model for its layer shapes: %s", err)
        return {}
    pairs = zip(names, outputs, strict=True)
    return {name: tuple(int(d) for d in out.shape) for name, out in pairs}


def _timed_speedup(
    model: onnx.ModelProto,
    dense: _Dense,
    condensed: CondensedWeight,
    entry: TensorEntry,
    shapes: Mapping[str, tuple[int, ...]],
    threads: int,
) -> float | None:
    """Dense over condensed time of the layer alone at batch 1 (``None``: its input shape is
    unknown). Two one-layer models, the dense nodes and their replacement, are run in sessions
    configured as the artifacts' (:func:`~sparsify_cli.exporters.runtime.session`) on the same
    random input, in alternating order (drift hits both alike); the ratio is of the medians."""
    from sparsify_cli.exporters import runtime  # it imports this module

    feeds_shapes = {dense.x: shapes.get(dense.x)}
    if dense.residual:
        feeds_shapes[dense.residual] = shapes.get(dense.residual)
    if any(shape is None for shape in feeds_shapes.values()):
        return None
    dense_model = _layer_model(model, dense, feeds_shapes)
    condensed_model = onnx.ModelProto()
    condensed_model.CopyFrom(dense_model)
    _replace(condensed_model.graph, dense, condensed, entry, "custom")
    condensed_model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    x_shape = feeds_shapes[dense.x]
    positions = int(np.prod(x_shape[2:])) if dense.conv else int(np.prod(x_shape[:-1]))
    strides = int(np.prod(dense.conv["strides"])) if dense.conv else 1
    macs = max(1, dense.weight.size * max(1, positions // strides))
    copies = int(min(TIMING_COPIES, max(1, -(-TIMING_MACS // macs))))
    dense_model, condensed_model = (_copies(m, copies) for m in (dense_model, condensed_model))
    rng = np.random.default_rng(0)
    feeds = {
        f"{name}#{k}": rng.standard_normal(shape).astype(np.float32)
        for name, shape in feeds_shapes.items()
        for k in range(copies)
    }
    dense_sess, condensed_sess = (
        runtime.session(m.SerializeToString(), threads) for m in (dense_model, condensed_model)
    )
    return _paired_speedup(dense_sess, condensed_sess, feeds)


def _layer_model(
    model: onnx.ModelProto, dense: _Dense, inputs: Mapping[str, tuple[int, ...] | None]
) -> onnx.ModelProto:
    """The dense layer alone: its nodes and initializers, ``inputs`` (the layer's input and a
    fused residual) as graph inputs, its output as the graph output."""
    inits = [t for t in model.graph.initializer if t.name in set(dense.initializers)]
    graph = helper.make_graph(
        [_copy(n) for n in dense.nodes],
        f"{dense.scope}.timing",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(dense.output, onnx.TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)


def _copies(layer: onnx.ModelProto, copies: int) -> onnx.ModelProto:
    """``copies`` copies of a one-layer model side by side, tensor ``t`` of copy ``k`` renamed
    ``t#k``, all reading the same initializers (so no copy of the weights; distinct inputs, so
    ONNX Runtime cannot merge the copies as common subexpressions)."""
    graph = layer.graph
    shared = {t.name for t in graph.initializer}

    def rename(name: str, k: int) -> str:
        return name if not name or name in shared else f"{name}#{k}"

    nodes, inputs, outputs = [], [], []
    for k in range(copies):
        for node in graph.node:
            copied = _copy(node)
            copied.name = f"{node.name}#{k}"
            copied.input[:] = [rename(n, k) for n in node.input]
            copied.output[:] = [rename(n, k) for n in node.output]
            nodes.append(copied)
        for infos, into in ((graph.input, inputs), (graph.output, outputs)):
            for info in infos:
                renamed = onnx.ValueInfoProto()
                renamed.CopyFrom(info)
                renamed.name = rename(info.name, k)
                into.append(renamed)
    out = onnx.ModelProto()
    out.CopyFrom(layer)
    del out.graph.node[:], out.graph.input[:], out.graph.output[:]
    out.graph.node.extend(nodes)
    out.graph.input.extend(inputs)
    out.graph.output.extend(outputs)
    return out


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied


def _skip_reason(entry: TensorEntry, ops: str) -> str | None:
    if entry.op not in ("Linear", "Conv2d"):
        return f"op {entry.op} has no condensed form (Linear and Conv2d only)"
    if entry.fan_in is None:
        return "fan-in is not constant"
    if entry.op == "Conv2d" and ops == "standard":
        # A stock-op form would be im2col by Gather (one scalar copy per kept weight and output
        # position) then Mul + ReduceSum: the 10-30x slowdown of the standard Linear form, over
        # every output pixel. The dense Conv, zeros included, is both correct and faster.
        return (
            "stock ONNX ops have no sparse convolution; the dense Conv is faster than a Gather form"
        )
    return None


def _tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """Every tensor's shape that ONNX shape inference knows fully (a dim is its value or its
    symbolic name), for checking that a residual Add adds two tensors of one shape."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # an unusual graph: no shapes, so nothing is fused that needs them
        return {}
    shapes: dict[str, tuple[int | str, ...]] = {}
    for info in [*inferred.value_info, *inferred.input, *inferred.output]:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else d.dim_param or None
            for d in info.type.tensor_type.shape.dim
        ]
        if all(d is not None and d != "" for d in dims):
            shapes[info.name] = tuple(dims)
    return shapes


def _find_dense(
    model: onnx.ModelProto, entry: TensorEntry, shapes: dict[str, tuple[int | str, ...]]
) -> _Dense | str:
    """The graph nodes computing ``entry``'s layer, or the reason they cannot be condensed."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    want_conv = entry.op == "Conv2d"
    refs = [
        r for r in weight_refs(model, [entry.module])[entry.module] if (r.op == "Conv") == want_conv
    ]
    if len(refs) != 1:
        if len(refs) > 1:
            logger.warning("%s: %d candidate nodes, leaving it dense", entry.module, len(refs))
            return f"{len(refs)} nodes use this module's weight (one call expected)"
        return f"no {'Conv' if want_conv else 'Gemm/MatMul'} for this module in the ONNX graph"
    node = next(n for n in graph.node if n.name == refs[0].node)
    if node.input[1] not in inits:
        return "the weight is not a plain initializer (quantized?)"
    if want_conv:
        return _find_conv(graph, inits, node, entry.module, shapes)
    scope = entry.module
    consumers = _consumers(graph)
    weight = numpy_helper.to_array(inits[node.input[1]])
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            return "Gemm with transA, alpha or beta other than the defaults"
        if not attrs.get("transB", 0):
            weight = weight.T
        bias = None
        used = [node.input[1]]
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                return "the Gemm bias is not an initializer"
            bias = numpy_helper.to_array(inits[node.input[2]])
            used.append(node.input[2])
        return _Dense(node.input[0], node.output[0], weight, bias, [node], used, scope)
    weight = weight.T  # MatMul B is [in, out]
    nodes, bias, used, output = [node], None, [node.input[1]], node.output[0]
    after = consumers.get(output, [])
    if len(after) == 1 and after[0].op_type == "Add" and output not in _graph_outputs(graph):
        add = after[0]
        other = add.input[1] if add.input[0] == output else add.input[0]
        if other in inits and numpy_helper.to_array(inits[other]).size == weight.shape[0]:
            bias = numpy_helper.to_array(inits[other])
            nodes.append(add)
            used.append(other)
            output = add.output[0]
    return _Dense(node.input[0], output, weight, bias, nodes, used, scope)


def _find_conv(
    graph: onnx.GraphProto,
    inits: dict[str, onnx.TensorProto],
    node: onnx.NodeProto,
    scope: str,
    shapes: dict[str, tuple[int | str, ...]],
) -> _Dense | str:
    """A 2-D, groups = 1 Conv (BatchNorm already folded into it by the exporter), with what
    alone consumes its output fused: a Relu; or a residual Add of another tensor of the same
    shape (a ResNet block's sum), and the Relu that alone consumes the sum."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weight = numpy_helper.to_array(inits[node.input[1]])
    if weight.ndim != 4:
        return f"a {weight.ndim - 2}-D convolution (2-D only)"
    if attrs.get("group", 1) != 1:
        return f"grouped convolution (group={attrs['group']}); groups = 1 only"
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", "NOTSET"):
        return f"auto_pad={auto_pad!r}; explicit pads only"
    geometry = {
        "kernel_shape": list(weight.shape[2:]),
        "strides": list(attrs.get("strides", [1, 1])),
        "pads": list(attrs.get("pads", [0, 0, 0, 0])),
        "dilations": list(attrs.get("dilations", [1, 1])),
    }
    bias, used = None, [node.input[1]]
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits:
            return "the Conv bias is not an initializer"
        bias = numpy_helper.to_array(inits[node.input[2]])
        used.append(node.input[2])
    nodes, output, residual = [node], node.output[0], None
    consumers, outputs = _consumers(graph), _graph_outputs(graph)

    def sole(name: str, op_type: str) -> onnx.NodeProto | None:
        after = consumers.get(name, [])
        ok = len(after) == 1 and after[0].op_type == op_type and name not in outputs
        return after[0] if ok else None

    add = sole(output, "Add")
    if add is not None:
        other = add.input[1] if add.input[0] == output else add.input[0]
        same = other in shapes and shapes.get(other) == shapes.get(output)
        if other != output and other not in inits and same:
            nodes.append(add)
            residual, output = other, add.output[0]
    relu = sole(output, "Relu")
    if relu is not None:
        nodes.append(relu)
        output = relu.output[0]
    fuse_relu = relu is not None
    return _Dense(
        node.input[0], output, weight, bias, nodes, used, scope, geometry, fuse_relu, residual
    )


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _graph_outputs(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def _checked_condense(entry: TensorEntry, dense: _Dense) -> CondensedWeight:
    """Condense ``dense`` by the manifest mask, after checking the two belong together."""
    if dense.weight.shape != tuple(entry.shape):
        raise SparsifyError(
            f"manifest entry {entry.name} does not match the ONNX model",
            expected=f"weight of shape {tuple(entry.shape)}",
            found=f"{dense.weight.shape} in node {dense.nodes[0].name}",
            fix="pass the manifest written with this exported model",
        )
    stray = int(np.count_nonzero(dense.weight[~entry.mask]))
    if stray:
        raise SparsifyError(
            f"manifest entry {entry.name} does not match the ONNX model",
            expected="zeros wherever the manifest mask is off (a folded model)",
            found=f"{stray} nonzero weights outside the mask in node {dense.nodes[0].name}",
            fix="export the model after folding its masks, with the manifest of that run",
        )
    return condense(dense.weight, entry.mask)


def _replace(
    graph: onnx.GraphProto, dense: _Dense, condensed: CondensedWeight, entry: TensorEntry, ops: str
) -> None:
    """Swap ``dense.nodes`` for the condensed node(s), in place, keeping topological order."""
    prefix = f"{entry.module}.condensed"
    out_features = entry.shape[0]
    ablated = condensed.active_rows.size < out_features
    bias = dense.bias.reshape(-1).astype(np.float32) if dense.bias is not None else None
    if ops == "custom":
        new_inits = {f"{prefix}.values": condensed.values, f"{prefix}.indices": condensed.indices}
        inputs = [dense.x, f"{prefix}.values", f"{prefix}.indices"]
        if bias is not None:
            new_inits[f"{prefix}.bias"] = bias
        inputs.append(f"{prefix}.bias" if bias is not None else "")
        op_type = CONV_OP_TYPE if dense.conv else OP_TYPE
        attrs: dict[str, object] = dict(dense.conv or {})
        if dense.relu:
            attrs["relu"] = 1
        if ablated:
            new_inits[f"{prefix}.rows"] = condensed.active_rows.astype(np.int32)
            inputs.append(f"{prefix}.rows")
            attrs["out_channels" if dense.conv else "out_features"] = out_features
        if dense.residual:  # input 5, after the optional bias and rows
            inputs += [""] * (5 - len(inputs)) + [dense.residual]
        while inputs[-1] == "":
            inputs.pop()
        new_nodes = [
            helper.make_node(
                op_type,
                inputs,
                [dense.output],
                domain=DOMAIN,
                name=f"/{dense.scope.replace('.', '/')}/{op_type}",
                **attrs,
            )
        ]
    else:
        new_nodes, new_inits = _standard_nodes(dense, condensed, bias, prefix, out_features)
    # At the last replaced node: every input of the group (a fused Add's residual too, which may
    # be computed after the Conv) is ready there.
    position = max(i for i, n in enumerate(graph.node) if n in dense.nodes) - len(dense.nodes) + 1
    for node in dense.nodes:
        graph.node.remove(node)
    for offset, node in enumerate(new_nodes):
        graph.node.insert(position + offset, node)
    still_used = {name for n in graph.node for name in n.input}
    for name in dense.initializers:
        if name not in still_used:
            init = next(t for t in graph.initializer if t.name == name)
            graph.initializer.remove(init)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_inits.items())


def _standard_nodes(
    dense: _Dense,
    condensed: CondensedWeight,
    bias: np.ndarray | None,
    prefix: str,
    out_features: int,
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Gather + Mul + ReduceSum (+ Gather back to full width when rows were ablated) + Add.

    Gather takes int32/int64 indices only, so int16 indices are stored as they are and Cast in
    the graph (ONNX Runtime folds the Cast of a constant at load time). Ablated columns gather
    from an extra all-zero row, so they read 0 before the bias is added, as in the dense layer.
    """
    name = f"/{dense.scope.replace('.', '/')}/Condensed"
    values, indices = condensed.values, condensed.indices
    ablated = condensed.active_rows.size < out_features
    if ablated:
        values = np.concatenate([values, np.zeros((1, values.shape[1]), np.float32)])
        indices = np.concatenate([indices, np.zeros((1, indices.shape[1]), indices.dtype)])
    inits = {
        f"{prefix}.values": values,
        f"{prefix}.indices": indices,
        f"{prefix}.axes": np.array([-1], np.int64),
    }
    summed = f"{name}_ReduceSum_output_0"
    nodes = [
        helper.make_node(
            "Cast",
            [f"{prefix}.indices"],
            [f"{name}_Cast_output_0"],
            to=onnx.TensorProto.INT64,
            name=f"{name}_Cast",
        ),
        helper.make_node(
            "Gather",
            [dense.x, f"{name}_Cast_output_0"],
            [f"{name}_Gather_output_0"],
            axis=-1,
            name=f"{name}_Gather",
        ),
        helper.make_node(
            "Mul",
            [f"{name}_Gather_output_0", f"{prefix}.values"],
            [f"{name}_Mul_output_0"],
            name=f"{name}_Mul",
        ),
        helper.make_node(
            "ReduceSum",
            [f"{name}_Mul_output_0", f"{prefix}.axes"],
            [summed],
            keepdims=0,
            name=f"{name}_ReduceSum",
        ),
    ]
    if ablated:
        columns = np.full(out_features, condensed.active_rows.size, np.int64)
        columns[condensed.active_rows] = np.arange(condensed.active_rows.size)
        inits[f"{prefix}.columns"] = columns
        nodes.append(
            helper.make_node(
                "Gather",
                [summed, f"{prefix}.columns"],
                [f"{name}_Scatter_output_0"],
                axis=-1,
                name=f"{name}_Scatter",
            )
        )
        summed = f"{name}_Scatter_output_0"
    if bias is not None:
        inits[f"{prefix}.bias"] = bias
        nodes.append(
            helper.make_node("Add", [summed, f"{prefix}.bias"], [dense.output], name=f"{name}_Add")
        )
    else:
        nodes[-1].output[0] = dense.output
    return nodes, inits
