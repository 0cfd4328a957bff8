"""Condensed export: the condense format, the CondensedLinear kernel in real ONNX Runtime
sessions, the stock-op fallback, ablated rows, and the transformer sample end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from sparsify_cli.exporters import condensed
from sparsify_cli.exporters.inspect_onnx import inspect_onnx
from sparsify_cli.exporters.onnx_export import export_onnx
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.manifest import Manifest, TensorEntry
from sparsify_cli.passes.masks import WeightMask, attach_mask, fold, manifest_entries
from sparsify_cli.samples.models import DigitsTransformer

ATOL = 1e-4  # fp32 sums reordered by the kernel vs ORT's dense GEMM
CHECKPOINT = Path(__file__).resolve().parents[1] / "samples" / "digits_transformer.pt"


def fan_in_mask(
    rng: np.random.Generator, out: int, inp: int, k: int, ablated: int = 0
) -> np.ndarray:
    mask = np.zeros((out, inp), bool)
    for row in range(out):
        mask[row, rng.choice(inp, k, replace=False)] = True
    mask[rng.choice(out, ablated, replace=False)] = False
    return mask


@st.composite
def masked_weights(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    out = draw(st.integers(1, 12))
    inp = draw(st.integers(1, 40))
    k = draw(st.integers(1, inp))
    ablated = draw(st.integers(0, out))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    mask = fan_in_mask(rng, out, inp, k, ablated)
    return rng.standard_normal((out, inp)).astype(np.float32) * mask, mask


@settings(max_examples=60, deadline=None)
@given(masked_weights())
def test_condense_round_trip(case: tuple[np.ndarray, np.ndarray]) -> None:
    weight, mask = case
    c = condensed.condense(weight, mask)
    active = np.flatnonzero(mask.any(axis=1))
    assert c.active_rows.tolist() == active.tolist()
    assert c.values.shape == c.indices.shape == (active.size, int(mask.sum(1).max(initial=0)))
    assert c.indices.dtype == np.int16
    assert (np.diff(c.indices.astype(int), axis=1) > 0).all()  # ascending, no repeats
    back_w, back_m = condensed.expand(c)
    np.testing.assert_array_equal(back_m, mask)
    np.testing.assert_array_equal(back_w, weight)


def test_condense_wide_layer_uses_int32_and_flattens_1x1_conv() -> None:
    rng = np.random.default_rng(0)
    mask = fan_in_mask(rng, 3, 40000, 5)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    c = condensed.condense(weight, mask)
    assert c.indices.dtype == np.int32
    np.testing.assert_array_equal(condensed.expand(c)[0], weight)
    conv = condensed.condense(weight[:, :8, None, None] * 0 + 1, np.ones((3, 8, 1, 1), bool))
    assert conv.shape == (3, 8) and conv.values.shape == (3, 8)


def test_condense_rejects_varying_fan_in() -> None:
    mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    with pytest.raises(SparsifyError, match="fan-in is not constant"):
        condensed.condense(mask.astype(np.float32), mask)
    with pytest.raises(SparsifyError, match="disagree"):
        condensed.condense(np.ones((2, 3), np.float32), np.ones((3, 2), bool))


def kernel_model(
    c: condensed.CondensedWeight,
    bias: np.ndarray | None,
    rank: int,
    in_dim: int | str | None = None,
) -> bytes:
    """A one-node CondensedLinear model over the stored rows of ``c``."""
    out_features, in_features = c.shape
    inits = [
        numpy_helper.from_array(c.values, "values"),
        numpy_helper.from_array(c.indices, "indices"),
    ]
    inputs = ["x", "values", "indices", ""]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs[3] = "bias"
    attrs = {}
    if c.active_rows.size < out_features:
        inits.append(numpy_helper.from_array(c.active_rows.astype(np.int32), "rows"))
        inputs.append("rows")
        attrs["out_features"] = out_features
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(condensed.OP_TYPE, inputs, ["y"], domain=condensed.DOMAIN, **attrs)
    x_shape = ["b"] * (rank - 1) + [in_features if in_dim is None else in_dim]
    graph = helper.make_graph(
        [node],
        "k",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(condensed.DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


@pytest.mark.parametrize(
    ("out", "inp", "k", "batch", "ablated", "rank", "bias", "threads"),
    [
        (37, 29, 5, 1, 0, 2, True, 1),  # odd sizes, batch 1 (gather path)
        (37, 29, 5, 3, 0, 2, True, 1),  # odd batch (batched path, padded lanes)
        (64, 100, 1, 1, 3, 2, True, 1),  # k = 1
        (64, 100, 100, 9, 3, 2, False, 1),  # k = in, no bias, ablated rows
        (64, 100, 13, 9, 0, 2, False, 1),  # no bias, every row kept (direct 4-row stores)
        (70, 300, 17, 130, 4, 2, True, 2),  # batch beyond one 64-lane tile, 2 threads
        (50, 30, 7, 5, 1, 3, True, 1),  # 3-D input [b, t, in]
        (33, 40000, 13, 2, 2, 2, True, 2),  # int32 indices
        (1000, 256, 26, 1, 0, 2, True, 2),  # several row chunks on the thread pool
        (12, 20, 3, 2, 12, 2, True, 1),  # every row ablated: an empty rows input, bias out
        # AVX-512 wide direct tiles (batch > 16): 32, 48 and 64 lanes, a partial row group
        (37, 29, 5, 17, 0, 2, True, 1),  # 32-lane tile, 37 rows (last group of 4 partial)
        (64, 100, 13, 45, 0, 2, False, 1),  # 48-lane tile, no bias (4-row transposed stores)
        (41, 77, 9, 64, 3, 2, True, 1),  # one full 64-lane tile, ablated rows (scattered)
        (40, 64, 20, 150, 0, 2, True, 2),  # three 64-lane tiles (the last 22 lanes) on 2 threads
    ],
)
def test_kernel_matches_numpy(
    out: int, inp: int, k: int, batch: int, ablated: int, rank: int, bias: bool, threads: int
) -> None:
    rng = np.random.default_rng(out * inp + k + batch)
    mask = fan_in_mask(rng, out, inp, k, ablated)
    weight = rng.standard_normal((out, inp)).astype(np.float32) * mask
    b = rng.standard_normal(out).astype(np.float32) if bias else None
    c = condensed.condense(weight, mask)
    sess = ort.InferenceSession(kernel_model(c, b, rank), condensed.session_options(threads))
    x = rng.standard_normal((batch, 4, inp) if rank == 3 else (batch, inp)).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    ref = x @ weight.T + (b if bias else 0)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=ATOL, rtol=1e-5)


def nm_mask(rng: np.random.Generator, out: int, inp: int, n: int, m: int) -> np.ndarray:
    """Exactly n kept per aligned group of m inputs in every row (inp a multiple of m)."""
    mask = np.zeros((out, inp // m, m), bool)
    for row in range(out):
        for group in range(inp // m):
            mask[row, group, rng.choice(m, n, replace=False)] = True
    return mask.reshape(out, inp)


@pytest.mark.parametrize(
    ("out", "inp", "n", "m", "batch"),
    [
        (46, 36, 2, 4, 1),  # 2:4 at batch 1: narrow row lanes on AVX2; 45 stored rows
        (46, 36, 2, 4, 3),  # 2:4, batched path
        (5, 40000, 2, 4, 1),  # 2:4, int32 indices
        (46, 48, 4, 8, 1),  # 4:8: offsets up to 15, the two-register AVX2 window
        (13, 40, 4, 8, 1),  # k = 20; the last window ends at the last input
    ],
)
def test_kernel_matches_numpy_on_n_m(out: int, inp: int, n: int, m: int, batch: int) -> None:
    """N:M rows at batch 1 read x through windows that may reach past its end (padded by the
    kernel): results must match numpy, ablated row and ragged row groups included."""
    rng = np.random.default_rng(out + inp + batch)
    mask = nm_mask(rng, out, inp, n, m)
    mask[:, -m:] = False
    mask[:, -n:] = True  # the last group keeps its last inputs: no read past x
    mask[min(7, out - 1)] = False  # one ablated row
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    bias = rng.standard_normal(out).astype(np.float32)
    c = condensed.condense(weight, mask)
    assert c.indices.dtype == (np.int16 if inp <= 32767 else np.int32)
    sess = ort.InferenceSession(kernel_model(c, bias, 2), condensed.session_options(1))
    x = rng.standard_normal((batch, inp)).astype(np.float32)
    ref = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    # fp32 rounding of a k-term sum grows like sqrt(k) (k = 20000 in the int32 case)
    tol = ATOL * max(1.0, np.sqrt(c.values.shape[1] / 100))
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, atol=tol)


@pytest.mark.parametrize("batch", range(1, 18))
@pytest.mark.parametrize("k", [77, 80])
def test_kernel_matches_numpy_on_small_batches(batch: int, k: int) -> None:
    """Every batch from 1 to 17 (gather path, then batched tiles of 8 lanes with padding), k
    padded to a multiple of 8 or not, a row count (101) that is no multiple of the row groups."""
    rng = np.random.default_rng(batch * 100 + k)
    mask = fan_in_mask(rng, 101, 768, k)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    bias = rng.standard_normal(101).astype(np.float32)
    c = condensed.condense(weight, mask)
    sess = ort.InferenceSession(kernel_model(c, bias, 2), condensed.session_options(1))
    x = rng.standard_normal((batch, 768)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ weight.T + bias, atol=ATOL)


@pytest.mark.parametrize(("out", "inp", "k"), [(130, 768, 77), (200, 3000, 3), (64, 32, 32)])
def test_kernel_matches_numpy_at_batch_1_with_ablated_rows(out: int, inp: int, k: int) -> None:
    """Batch 1 with a partial last row group, ablated rows (outputs scattered by column) and
    three densities: 10% (row lanes), 0.1% (AVX2 falls back to scalar gathers), every input."""
    rng = np.random.default_rng(out + inp + k)
    mask = fan_in_mask(rng, out, inp, k, ablated=5)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    bias = rng.standard_normal(out).astype(np.float32)
    c = condensed.condense(weight, mask)
    sess = ort.InferenceSession(kernel_model(c, bias, 2), condensed.session_options(2))
    x = rng.standard_normal((1, inp)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ weight.T + bias, atol=ATOL)


ISA_ORDER = ["portable", "avx2", "avx512"]


@pytest.mark.parametrize("isa", ISA_ORDER[:-1])
def test_kernel_paths_of_narrower_instruction_sets(isa: str) -> None:
    """The kernel tests again with the instruction set capped (SPARSIFY_CONDENSED_ISA), so the
    AVX2 and portable paths stay tested on an AVX-512 machine. The cap is read when the library
    loads, hence a fresh process."""
    native = condensed.kernel_isa()
    if ISA_ORDER.index(native) <= ISA_ORDER.index(isa):
        pytest.skip(f"this CPU's kernels are already {native}")
    env = {**os.environ, "SPARSIFY_CONDENSED_ISA": isa}
    probe = [sys.executable, "-c", "from exporters import condensed; print(condensed.kernel_isa())"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == isa
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "kernel_matches or kernel_rejects or transformer_end_to_end or fuses_residual",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_kernel_rejects_out_of_range_index() -> None:
    mask = np.eye(8, dtype=bool)
    c = condensed.condense(mask.astype(np.float32), mask)
    sess = ort.InferenceSession(kernel_model(c, None, 2, in_dim="in"), condensed.session_options(1))
    with pytest.raises(Exception, match="out of range"):
        sess.run(None, {"x": np.ones((1, 4), np.float32)})


@pytest.mark.parametrize("op", ["linear", "conv"])
@pytest.mark.parametrize(
    ("rows", "message"),
    [([0, 5], r"rows must lie in \[0, {dim}\)"), ([1, 1], "rows must not repeat")],
)
def test_kernels_reject_bad_rows_input(op: str, rows: list[int], message: str) -> None:
    """Both ops check their rows input with one helper (check_output_rows); the message names
    the op's own width attribute."""
    mask = np.zeros((3, 2, 1, 1), bool) if op == "conv" else np.zeros((3, 2), bool)
    mask[[0, 2], 0] = True
    c = condensed.condense(mask.astype(np.float32), mask)
    c = c._replace(active_rows=np.array(rows, np.int64))
    if op == "conv":
        geometry = {"kernel_shape": [1, 1], "strides": [1, 1], "pads": [0] * 4, "dilations": [1, 1]}
        model, dim = conv_kernel_model(c, None, geometry, False), "out_channels"
    else:
        model, dim = kernel_model(c, None, 2), "out_features"
    with pytest.raises(Exception, match=message.format(dim=dim)):
        ort.InferenceSession(model, condensed.session_options(1))


def dense_linear(weight: np.ndarray, bias: np.ndarray, rank: int, path: Path) -> None:
    """One Linear the way torch's exporter writes it: Gemm for 2-D input, MatMul + Add for 3-D."""
    out, inp = weight.shape
    if rank == 2:
        nodes = [
            helper.make_node(
                "Gemm", ["input", "fc.weight", "fc.bias"], ["output"], transB=1, name="/fc/Gemm"
            )
        ]
        inits = [
            numpy_helper.from_array(weight, "fc.weight"),
            numpy_helper.from_array(bias, "fc.bias"),
        ]
    else:
        nodes = [
            helper.make_node("MatMul", ["input", "onnx::MatMul_7"], ["mm"], name="/fc/MatMul"),
            helper.make_node("Add", ["fc.bias", "mm"], ["output"], name="/fc/Add"),
        ]
        inits = [
            numpy_helper.from_array(np.ascontiguousarray(weight.T), "onnx::MatMul_7"),
            numpy_helper.from_array(bias, "fc.bias"),
        ]
    lead = ["batch"] * (rank - 1)
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, lead + [inp])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, lead + [out])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def entry_for(mask: np.ndarray, module: str = "fc", fan_in: int | None = -1) -> TensorEntry:
    counts = mask.sum(axis=1)
    return TensorEntry(
        name=f"{module}.weight",
        module=module,
        op="Linear",
        shape=mask.shape,
        pattern="fanin",
        density=float(mask.mean()),
        fan_in=int(counts.max()) if fan_in == -1 else fan_in,
        ablated=tuple(int(i) for i in np.flatnonzero(counts == 0)),
        mask=mask,
    )


@pytest.mark.parametrize("ops", ["custom", "standard"])
@pytest.mark.parametrize("rank", [2, 3])
def test_condense_onnx_matches_dense_with_ablated_rows(tmp_path: Path, ops: str, rank: int) -> None:
    rng = np.random.default_rng(rank)
    mask = fan_in_mask(rng, 48, 40, 6, ablated=5)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    bias = rng.standard_normal(48).astype(np.float32)  # nonzero bias on ablated rows too
    dense_linear(weight, bias, rank, tmp_path / "dense.onnx")
    results = condensed.condense_onnx(
        tmp_path / "dense.onnx",
        Manifest({"fc.weight": entry_for(mask)}),
        tmp_path / "c.onnx",
        ops=ops,
    )
    assert [(r.module, r.fan_in, r.active_rows, r.skipped) for r in results] == [
        ("fc", 6, 43, None)
    ]
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    assert not any(n.op_type in ("Gemm", "MatMul") for n in graph.node)
    options = condensed.session_options(1) if ops == "custom" else ort.SessionOptions()
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), options)
    dense = ort.InferenceSession(str(tmp_path / "dense.onnx"))
    x = rng.standard_normal((3, 40) if rank == 2 else (3, 5, 40)).astype(np.float32)
    y = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(y, dense.run(None, {"input": x})[0], atol=ATOL)
    np.testing.assert_allclose(
        y[..., list(entry_for(mask).ablated)],
        np.broadcast_to(bias[list(entry_for(mask).ablated)], y.shape[:-1] + (5,)),
        atol=0,
    )


@pytest.mark.parametrize("ops", ["custom", "standard"])
def test_inspect_reads_condensed_layers(tmp_path: Path, ops: str) -> None:
    """inspect expands values + indices back to [out, in]: fan-in, ablated rows, MACs."""
    rng = np.random.default_rng(7)
    mask = fan_in_mask(rng, 48, 40, 6, ablated=5)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    dense_linear(weight, rng.standard_normal(48).astype(np.float32), 3, tmp_path / "dense.onnx")
    manifest = Manifest({"fc.weight": entry_for(mask)})
    condensed.condense_onnx(tmp_path / "dense.onnx", manifest, tmp_path / "c.onnx", ops=ops)
    (row,) = inspect_onnx(tmp_path / "c.onnx", m=4)
    assert (row.module, row.op, row.shape, row.in_axis) == ("fc", "CondensedLinear", (48, 40), 1)
    assert (row.fan_in, row.ablated, row.nonzero_params) == (6, 5, 43 * 6 + 48)
    assert row.density == pytest.approx(43 * 6 / (48 * 40))
    assert row.flops_sparse == 43 * 6 and row.flops_dense == 48 * 40


def test_condense_onnx_keeps_varying_fan_in_dense_and_checks_manifest(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    mask = fan_in_mask(rng, 8, 16, 4)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    dense_linear(weight, np.zeros(8, np.float32), 2, tmp_path / "dense.onnx")
    manifest = Manifest({"fc.weight": entry_for(mask, fan_in=None)})
    results = condensed.condense_onnx(tmp_path / "dense.onnx", manifest, tmp_path / "c.onnx")
    assert results[0].skipped == "fan-in is not constant"
    assert [n.op_type for n in onnx.load(str(tmp_path / "c.onnx")).graph.node] == ["Gemm"]
    wrong = Manifest({"fc.weight": entry_for(np.roll(mask, 1, axis=1))})
    with pytest.raises(SparsifyError, match="outside the mask"):
        condensed.condense_onnx(tmp_path / "dense.onnx", wrong, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_transformer_end_to_end(tmp_path: Path) -> None:
    """The sample at 90% constant fan-in: every Linear condensed, outputs equal the dense ONNX."""
    model = DigitsTransformer()
    model.load_state_dict(torch.load(CHECKPOINT, weights_only=True)["state_dict"])
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.in_features >= 10:
            weight = module.weight.detach().abs()
            k = module.in_features // 10
            keep = torch.zeros_like(weight, dtype=torch.bool).scatter_(
                1, weight.topk(k, dim=1).indices, True
            )
            attach_mask(module, WeightMask(keep, "fanin"))
    manifest = Manifest(manifest_entries(model))
    fold(model)
    dense_path = tmp_path / "model.onnx"
    export_onnx(model, torch.zeros(1, 1, 8, 8), dense_path)
    dense = ort.InferenceSession(str(dense_path))
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    want = dense.run(None, {"input": x})[0]
    for ops in ("custom", "standard"):
        out = tmp_path / f"model.{ops}.onnx"
        results = condensed.condense_onnx(dense_path, manifest, out, ops=ops)
        assert len(results) == 13 and all(r.skipped is None for r in results)
        options = condensed.session_options(2) if ops == "custom" else ort.SessionOptions()
        got = ort.InferenceSession(str(out), options).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, want, atol=ATOL)


def conv_kernel_model(
    c: condensed.CondensedWeight, bias: np.ndarray | None, geometry: dict, relu: bool
) -> bytes:
    """A one-node CondensedConv model over the stored rows of ``c`` (flattened [in, kh, kw])."""
    out_channels = c.shape[0]
    inits = [
        numpy_helper.from_array(c.values, "values"),
        numpy_helper.from_array(c.indices, "indices"),
    ]
    inputs = ["x", "values", "indices", ""]
    attrs = dict(geometry, relu=int(relu))
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs[3] = "bias"
    if c.active_rows.size < out_channels:
        inits.append(numpy_helper.from_array(c.active_rows.astype(np.int32), "rows"))
        inputs.append("rows")
        attrs["out_channels"] = out_channels
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(condensed.CONV_OP_TYPE, inputs, ["y"], domain=condensed.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        "k",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(condensed.DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "pads", "dilation", "hw", "batch", "k", "threads"),
    [
        (8, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (9, 11), 1, 36, 1),  # 2:4-like density
        (5, 7, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (13, 10), 3, 4, 1),  # odd channels, stride 2
        (3, 9, (3, 2), (1, 3), (0, 2, 1, 0), (2, 1), (12, 15), 2, 7, 1),  # asymmetric everything
        (16, 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (7, 7), 1, 4, 1),  # 1x1 expansion
        (16, 12, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), (9, 8), 2, 3, 1),  # 1x1 strided shortcut
        (12, 70, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), (30, 33), 1, 10, 2),  # dilated, wide map
        (4, 6, (5, 5), (3, 2), (2, 1, 2, 1), (1, 1), (4, 4), 5, 100, 1),  # k = every weight
        (3, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (1, 1), 2, 2, 1),  # 1x1 input, pads only
        (64, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (20, 20), 4, 58, 2),  # batch on 2 threads
        (3700, 3, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (2, 3), 1, 9, 1),  # int32 indices
        # 2:4-like density on 96 channels: several channel blocks (partial sums carried between
        # them) and, with 150 output channels, several row blocks
        (96, 150, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (17, 19), 1, 432, 1),
        (8, 10, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (30, 41), 2, 4, 1),  # 1x1: long tiles, tail
        # flat planes (stride 1, > 256 positions, rows exactly out_w wide): one copy per plane
        # (out_w 16), dilated non-square kernel with asymmetric pads (out_w 12: two copies with
        # AVX-512), and 100 channels at 60x40: bands of 8 rows, several channel blocks, two copies
        # with AVX-512, tiles whose last vector runs past the band
        (10, 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (24, 16), 2, 40, 1),
        (7, 9, (3, 5), (1, 1), (2, 0, 1, 3), (2, 1), (30, 13), 1, 50, 1),
        (100, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (60, 40), 1, 450, 1),
        # im2col path (<= 256 output positions): 16 positions (one vector), 35 (masked tails,
        # batch on 2 threads), 256 (four 64-position tiles; the second size, 19x17, is planes)
        (6, 10, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (4, 4), 1, 20, 1),
        (7, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (5, 7), 3, 30, 2),
        (5, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (16, 16), 1, 11, 1),
        # its column planes built row by row: stride 1 with out_w != w (masked loads), stride 2
        # on an 8x8 map (a load and a permute per row); the sw = 3 row above takes gathers
        (6, 5, (3, 3), (1, 1), (0, 1, 2, 0), (1, 2), (7, 9), 2, 17, 1),
        (8, 12, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (8, 8), 2, 20, 1),
        # several images per kernel call (one vector of positions each): 4 + 2 on one thread,
        # 9 images over 2 threads (AVX-512 takes 4x4 maps by 4, AVX2 maps of <= 8 by 2)
        (10, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (4, 4), 6, 30, 1),
        (10, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (2, 4), 9, 30, 2),
    ],
)
@pytest.mark.parametrize("relu", [False, True])
def test_conv_kernel_matches_torch(
    cin: int,
    cout: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    hw: tuple[int, int],
    batch: int,
    k: int,
    threads: int,
    relu: bool,
) -> None:
    """CondensedConv against torch's conv2d: every geometry attribute, odd channel counts,
    ablated output channels (bias, then ReLU, in their planes), batch 1 and > 1."""
    rng = np.random.default_rng(cin * cout + k + batch + relu)
    fan = cin * kernel[0] * kernel[1]
    mask = fan_in_mask(rng, cout, fan, k, ablated=min(2, cout - 1)).reshape(cout, cin, *kernel)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    bias = rng.standard_normal(cout).astype(np.float32) if cout % 2 == 0 else None
    c = condensed.condense(weight, mask)
    assert c.indices.dtype == (np.int16 if fan <= 32767 else np.int32)
    geometry = {
        "kernel_shape": list(kernel),
        "strides": list(stride),
        "pads": list(pads),
        "dilations": list(dilation),
    }
    model = conv_kernel_model(c, bias, geometry, relu)
    sess = ort.InferenceSession(model, condensed.session_options(threads))
    x = rng.standard_normal((batch, cin, *hw)).astype(np.float32)
    padded = torch.nn.functional.pad(torch.from_numpy(x), (pads[1], pads[3], pads[0], pads[2]))
    want = torch.nn.functional.conv2d(
        padded,
        torch.from_numpy(weight),
        None if bias is None else torch.from_numpy(bias),
        stride=stride,
        dilation=dilation,
    )
    if relu:
        want = want.relu()
    got = sess.run(None, {"x": x})[0]
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), atol=ATOL, rtol=1e-5)
    if batch == 1:  # a second input size on the same session: the offsets are rebuilt
        x2 = rng.standard_normal((1, cin, hw[0] + 3, hw[1] + 1)).astype(np.float32)
        padded = torch.nn.functional.pad(torch.from_numpy(x2), (pads[1], pads[3], pads[0], pads[2]))
        want2 = torch.nn.functional.conv2d(
            padded,
            torch.from_numpy(weight),
            None if bias is None else torch.from_numpy(bias),
            stride=stride,
            dilation=dilation,
        )
        want2 = want2.relu() if relu else want2
        np.testing.assert_allclose(sess.run(None, {"x": x2})[0], want2.numpy(), atol=ATOL)


def test_conv_kernel_takes_each_row_in_any_order() -> None:
    """The kernel sorts each row's kept weights by input channel (its channel blocks are ranges
    of that order): a file whose rows list them in another order computes the same conv."""
    rng = np.random.default_rng(7)
    mask = fan_in_mask(rng, 12, 80 * 9, 360, ablated=0).reshape(12, 80, 3, 3)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    c = condensed.condense(weight, mask)
    order = np.argsort(rng.random(c.indices.shape), axis=1)
    shuffled = c._replace(
        values=np.take_along_axis(c.values, order, axis=1),
        indices=np.take_along_axis(c.indices, order, axis=1),
    )
    geometry = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    x = rng.standard_normal((1, 80, 20, 20)).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), padding=1)
    for weights in (c, shuffled):
        sess = ort.InferenceSession(
            conv_kernel_model(weights, None, geometry, False), condensed.session_options(1)
        )
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], want.numpy(), atol=ATOL, rtol=1e-5)


def test_conv_kernel_rejects_bad_inputs() -> None:
    mask = np.ones((2, 3, 3, 3), bool)
    c = condensed.condense(mask.astype(np.float32), mask)
    geometry = {
        "kernel_shape": [3, 3],
        "strides": [1, 1],
        "pads": [0, 0, 0, 0],
        "dilations": [1, 1],
    }
    sess = ort.InferenceSession(
        conv_kernel_model(c, None, geometry, False), condensed.session_options(1)
    )
    with pytest.raises(Exception, match="channel 2, but X has 2"):
        sess.run(None, {"x": np.ones((1, 2, 5, 5), np.float32)})
    with pytest.raises(Exception, match="smaller than the kernel"):
        sess.run(None, {"x": np.ones((1, 3, 2, 5), np.float32)})


class ConvNet(torch.nn.Module):
    """conv -> BN -> relu, strided conv (no relu: its output feeds two consumers), 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 12, 3, stride=2, padding=1)
        self.conv3 = torch.nn.Conv2d(12, 20, 1)
        self.grouped = torch.nn.Conv2d(20, 20, 3, padding=1, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.conv2(h)
        return self.grouped(torch.relu(self.conv3(h)) + h.mean())


@pytest.mark.parametrize("ops", ["custom", "standard"])
def test_condense_onnx_convs(tmp_path: Path, ops: str) -> None:
    """Conv2d layers with constant fan-in become CondensedConv (BatchNorm folded by the export,
    a sole Relu consumer fused); grouped convs and the stock-op form stay dense, with reasons."""
    torch.manual_seed(0)
    model = ConvNet()
    model.bn1.running_mean.uniform_(-1, 1)
    model.bn1.running_var.uniform_(0.5, 2)
    model.eval()
    rng = np.random.default_rng(0)
    for conv in (model.conv1, model.conv2, model.conv3, model.grouped):
        out, fan = conv.weight.shape[0], conv.weight[0].numel()
        keep = fan_in_mask(rng, out, fan, max(1, fan // 4), ablated=1)
        attach_mask(conv, WeightMask(torch.from_numpy(keep.reshape(conv.weight.shape)), "fanin"))
    manifest = Manifest(manifest_entries(model))
    fold(model)
    dense_path = tmp_path / "model.onnx"
    export_onnx(model, torch.zeros(1, 8, 10, 10), dense_path)
    results = condensed.condense_onnx(dense_path, manifest, tmp_path / "c.onnx", ops=ops)
    by = {r.module: r for r in results}
    if ops == "standard":
        assert all(r.kernel == "dense" and "stock ONNX ops" in r.skipped for r in results)
        return
    assert "grouped convolution" in by["grouped"].skipped and by["grouped"].kernel == "dense"
    assert [by[m].kernel for m in ("conv1", "conv2", "conv3")] == [condensed.CONV_OP_TYPE] * 3
    assert by["conv1"].fused == ("Relu",) and by["conv3"].fused == ("Relu",)
    assert by["conv2"].fused == ()  # its output also feeds the mean
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    assert sum(n.op_type == "Conv" for n in graph.node) == 1
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), condensed.session_options(1))
    x = rng.standard_normal((3, 8, 10, 10)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, atol=ATOL)
    # inspect reads the condensed convs back as [out, in, kh, kw]: same reading as the plain file
    plain = {r.module: r for r in inspect_onnx(dense_path)}
    rows = {r.module: r for r in inspect_onnx(tmp_path / "c.onnx")}
    for m in ("conv1", "conv2", "conv3"):
        got, want_row = rows[m], plain[m]
        assert got.op == condensed.CONV_OP_TYPE and got.shape == want_row.shape, m
        assert (got.fan_in, got.ablated, got.density) == (
            want_row.fan_in,
            want_row.ablated,
            want_row.density,
        ), m
        assert got.flops_sparse == want_row.flops_sparse, m


class ResidualNet(torch.nn.Module):
    """Residual sums the way ResNet blocks write them: conv + shortcut conv -> Relu (the shortcut
    is computed after the conv in graph order), conv + its input without a Relu, and a conv plus
    a broadcast mean (another shape: not a residual to fuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.short = torch.nn.Conv2d(6, 8, 1)
        self.c = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.d = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h) + self.short(x))
        h = self.c(h) + h
        return self.d(h) + h.mean(dim=(2, 3), keepdim=True)


@pytest.mark.parametrize("hw", [(6, 5), (20, 17)])  # im2col path, plane path
def test_condense_onnx_fuses_residual_add(tmp_path: Path, hw: tuple[int, int]) -> None:
    """A Conv whose output only feeds an Add of a same-shaped tensor takes that tensor as its
    residual input (and the Relu after the sum when there is one); parity with torch at batch 1
    and 3, ablated output channels included."""
    torch.manual_seed(1)
    model = ResidualNet().eval()
    rng = np.random.default_rng(1)
    for conv in (model.a, model.b, model.short, model.c, model.d):
        out, fan = conv.weight.shape[0], conv.weight[0].numel()
        keep = fan_in_mask(rng, out, fan, max(1, fan // 3), ablated=1)
        attach_mask(conv, WeightMask(torch.from_numpy(keep.reshape(conv.weight.shape)), "fanin"))
    manifest = Manifest(manifest_entries(model))
    fold(model)
    dense_path = tmp_path / "model.onnx"
    export_onnx(model, torch.zeros(1, 6, *hw), dense_path)
    results = condensed.condense_onnx(dense_path, manifest, tmp_path / "c.onnx")
    by = {r.module: r for r in results}
    assert [by[m].kernel for m in ("a", "b", "short", "c", "d")] == [condensed.CONV_OP_TYPE] * 5
    assert by["a"].fused == ("Relu",) and by["b"].fused == ("Add", "Relu")
    assert by["c"].fused == ("Add",) and by["short"].fused == () and by["d"].fused == ()
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    assert [n.op_type for n in graph.node].count("Add") == 1  # only d's broadcast sum is left
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), condensed.session_options(1))
    for batch in (1, 3):
        x = rng.standard_normal((batch, 6, *hw)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, atol=ATOL)


def test_conv_kernel_rejects_residual_of_another_shape() -> None:
    mask = np.ones((2, 3, 1, 1), bool)
    c = condensed.condense(mask.astype(np.float32), mask)
    geometry = {"kernel_shape": [1, 1], "strides": [1, 1], "pads": [0] * 4, "dilations": [1, 1]}
    model = onnx.load_from_string(conv_kernel_model(c, None, geometry, True))
    model.graph.node[0].input.extend(["", "", "r"])
    model.graph.input.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), condensed.session_options(1))
    x = np.ones((1, 3, 4, 4), np.float32)
    got = sess.run(None, {"x": x, "r": np.full((1, 2, 4, 4), -5.0, np.float32)})[0]
    np.testing.assert_allclose(got, 0.0)  # relu(3 - 5)
    with pytest.raises(Exception, match="residual must be a float tensor of Y's shape"):
        sess.run(None, {"x": x, "r": np.ones((1, 2, 1, 1), np.float32)})


class BigAndTiny(torch.nn.Module):
    """A small 3x3 conv (64 -> 16 channels on an 8x8 map, every weight kept: dense ORT wins; with
    16 input channels the condensed kernel ran level with it) feeding a large Linear at 90%
    constant fan-in (1024 -> 1024: the condensed kernel wins several times over at batch 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.tiny = torch.nn.Conv2d(64, 16, 3, padding=1)
        self.big = torch.nn.Linear(1024, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.big(torch.relu(self.tiny(x)).flatten(1))


def big_and_tiny(tmp_path: Path) -> tuple[torch.nn.Module, Manifest, Path]:
    torch.manual_seed(2)
    model = BigAndTiny().eval()
    rng = np.random.default_rng(2)
    for layer, k in ((model.tiny, 576), (model.big, 102)):
        out, fan = layer.weight.shape[0], layer.weight[0].numel()
        keep = fan_in_mask(rng, out, fan, k)
        attach_mask(layer, WeightMask(torch.from_numpy(keep.reshape(layer.weight.shape)), "fanin"))
    manifest = Manifest(manifest_entries(model))
    fold(model)
    dense_path = tmp_path / "model.onnx"
    export_onnx(model, torch.zeros(1, 64, 8, 8), dense_path)
    return model, manifest, dense_path


def test_auto_condenses_only_layers_that_run_faster(tmp_path: Path) -> None:
    """layers='auto' times each layer alone: the large 90% sparse Linear is condensed, the tiny
    conv stays dense, and every layer kept dense names its measured ratio (the whole file, timed
    against dense, keeps the big one condensed); 'all' condenses both. Both files match torch."""
    model, manifest, dense_path = big_and_tiny(tmp_path)
    x = np.random.default_rng(0).standard_normal((3, 64, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    auto = condensed.condense_onnx(
        dense_path, manifest, tmp_path / "auto.onnx", layers="auto", example=x
    )
    by = {r.module: r for r in auto}
    assert by["big"].kernel == condensed.OP_TYPE and by["big"].skipped is None
    assert by["big"].speedup >= condensed.MIN_SPEEDUP
    assert by["tiny"].kernel == "dense", by["tiny"]
    for r in auto:
        if r.kernel == "dense":
            assert r.speedup < condensed.MIN_SPEEDUP
            ratio = f"condensed {r.speedup:.2f}x of dense at batch 1"
            assert r.skipped in (
                f"dense is faster here: {ratio}",
                f"no clear gain: {ratio} (condensing needs 1.05x)",
            )
    everything = condensed.condense_onnx(dense_path, manifest, tmp_path / "all.onnx", layers="all")
    assert [r.kernel for r in everything] == [condensed.CONV_OP_TYPE, condensed.OP_TYPE]
    assert all(r.speedup is None and r.note is None for r in everything)
    for name, kept_conv in (("auto.onnx", True), ("all.onnx", False)):
        graph = onnx.load(str(tmp_path / name)).graph
        assert any(n.op_type == "Conv" for n in graph.node) == kept_conv, name
        sess = ort.InferenceSession(str(tmp_path / name), condensed.session_options(1))
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, atol=ATOL)


def test_auto_times_symbolic_dims_in_the_examples_shape(tmp_path: Path) -> None:
    """A layer whose input has a symbolic dim besides batch is timed in the example's shape;
    without an example it is condensed untimed, and its note says so."""
    rng = np.random.default_rng(5)
    mask = fan_in_mask(rng, 48, 40, 6)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    dense_linear(weight, rng.standard_normal(48).astype(np.float32), 3, tmp_path / "dense.onnx")
    manifest = Manifest({"fc.weight": entry_for(mask)})
    (untimed,) = condensed.condense_onnx(
        tmp_path / "dense.onnx", manifest, tmp_path / "u.onnx", layers="auto"
    )
    assert untimed.kernel == condensed.OP_TYPE and untimed.speedup is None
    assert untimed.note == "not timed (input shape unknown at batch 1): condensed"
    example = np.zeros((7, 5, 40), np.float32)
    (timed,) = condensed.condense_onnx(
        tmp_path / "dense.onnx", manifest, tmp_path / "t.onnx", layers="auto", example=example
    )
    assert timed.speedup is not None and timed.speedup > 0 and timed.note is None
    assert (timed.kernel == "dense") == (timed.speedup < condensed.MIN_SPEEDUP)


def test_condensed_layer_choice_is_refused_where_meaningless(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    mask = fan_in_mask(rng, 8, 16, 4)
    dense_linear(mask.astype(np.float32), np.zeros(8, np.float32), 2, tmp_path / "dense.onnx")
    manifest = Manifest({"fc.weight": entry_for(mask)})
    with pytest.raises(SparsifyError, match="applies to the custom kernels"):
        condensed.condense_onnx(
            tmp_path / "dense.onnx", manifest, tmp_path / "c.onnx", "standard", layers="auto"
        )
    with pytest.raises(SparsifyError, match="unknown condensed layer choice 'some'"):
        condensed.condense_onnx(
            tmp_path / "dense.onnx", manifest, tmp_path / "c.onnx", layers="some"
        )
    assert not (tmp_path / "c.onnx").exists()


def test_auto_reads_shapes_inference_cannot_give_from_one_run_of_the_example(
    tmp_path: Path,
) -> None:
    """A Reshape to a shape computed in the graph (as "same" padding computes Pad's pads in
    Hugging Face convs) stops ONNX shape inference: the layer's input shape is then read from one
    run of the dense model on the example's first row, and the layer is timed."""
    rng = np.random.default_rng(8)
    mask = fan_in_mask(rng, 64, 40, 4)
    weight = rng.standard_normal(mask.shape).astype(np.float32) * mask
    dense_linear(weight, np.zeros(64, np.float32), 2, tmp_path / "dense.onnx")
    model = onnx.load(str(tmp_path / "dense.onnx"))
    gemm = model.graph.node[0]
    gemm.input[0] = "reshaped"
    shape_nodes = [
        helper.make_node("Shape", ["input"], ["shape"], start=1),
        helper.make_node("Constant", [], ["minus1"], value=numpy_helper.from_array(np.array([-1]))),
        helper.make_node("Concat", ["minus1", "shape"], ["target"], axis=0),
        helper.make_node("Reshape", ["input", "target"], ["reshaped"]),
    ]
    for offset, node in enumerate(shape_nodes):
        model.graph.node.insert(offset, node)
    onnx.save(model, str(tmp_path / "dense.onnx"))
    assert "reshaped" not in condensed._batch1_shapes(model, None)  # inference alone: unknown
    manifest = Manifest({"fc.weight": entry_for(mask)})
    example = rng.standard_normal((4, 40)).astype(np.float32)
    (timed,) = condensed.condense_onnx(
        tmp_path / "dense.onnx", manifest, tmp_path / "c.onnx", layers="auto", example=example
    )
    assert timed.speedup is not None and timed.note is None
    (untimed,) = condensed.condense_onnx(
        tmp_path / "dense.onnx", manifest, tmp_path / "u.onnx", layers="auto"
    )
    assert untimed.speedup is None and "not timed" in untimed.note
    sess = ort.InferenceSession(str(tmp_path / "u.onnx"), condensed.session_options(1))
    want = example @ weight.T
    np.testing.assert_allclose(sess.run(None, {"input": example})[0], want, atol=ATOL)


@pytest.mark.parametrize("whole", [[0.8, 1.2], [0.8] * 10])
def test_auto_returns_layers_to_dense_while_the_whole_file_is_slower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: list[float]
) -> None:
    """Layers faster alone can still make the whole file slower (layout conversions between
    ONNX Runtime's NCHWc convs): the weakest go back to dense until the file is not slower,
    and when it stays slower every layer does. Timings are fixed here so the test decides."""
    model, manifest, dense_path = big_and_tiny(tmp_path)
    alone = {"tiny": 1.5, "big": 3.0}
    monkeypatch.setattr(condensed, "_timed_speedup", lambda m, d, c, entry, *a: alone[entry.module])
    ratios = iter(whole)
    monkeypatch.setattr(condensed, "_paired_speedup", lambda *a: next(ratios))
    x = np.random.default_rng(0).standard_normal((2, 64, 8, 8)).astype(np.float32)
    results = condensed.condense_onnx(
        dense_path, manifest, tmp_path / "c.onnx", layers="auto", example=x
    )
    by = {r.module: r for r in results}
    why = "dense in the whole model: with it condensed the file ran 0.80x of dense at batch 1"
    assert by["tiny"].kernel == "dense" and by["tiny"].skipped == f"{why} (alone: 1.50x)"
    if whole[1] >= 1.0:
        assert by["big"].kernel == condensed.OP_TYPE and by["big"].skipped is None
    else:
        assert by["big"].kernel == "dense" and by["big"].skipped.startswith(why)
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    assert any(n.domain == condensed.DOMAIN for n in graph.node) == (whole[1] >= 1.0)
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), condensed.session_options(1))
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, atol=ATOL)
