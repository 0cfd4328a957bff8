"""Post-training int8 of the sparse ONNX: pattern kept in the int8 tensors, accuracy measured in
real ONNX Runtime sessions, the accuracy budget enforced by keeping sensitive nodes in float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsify_cli.data import load_data
from sparsify_cli.exporters.inspect_onnx import inspect_onnx
from sparsify_cli.exporters.onnx_export import initializers, weight_refs
from sparsify_cli.exporters.quantize import (
    ArrayCalibrationReader,
    QuantizeConfig,
    calibrate,
    calibration_rows,
    quantize_model,
    quantized_nodes,
)
from sparsify_cli.exporters.verify import verify_pattern
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.pipeline import ConvertOptions, convert
from sparsify_cli.samples.datasets import digits


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """digits_cnn at 2:4 (one-shot magnitude) with static int8 under a 0.5-point budget."""
    out = tmp_path_factory.mktemp("ptq") / "cnn"
    opts = ConvertOptions(
        "digits_cnn",
        out=str(out),
        quantize="int8",
        max_accuracy_drop=0.5,
        batch_sizes=(1,),
        bench_seconds=0.05,
    )
    return convert(opts)


def _int8(report: dict) -> dict:
    return next(a for a in report["artifacts"] if a["format"] == "onnx-int8")


def test_convert_int8_keeps_accuracy_and_pattern(cnn: tuple[dict, Path]) -> None:
    report, out = cnn
    art = _int8(report)
    assert art["path"] == "model_int8.onnx" and (out / "model_int8.onnx").is_file()
    assert art["pattern_ok"] and len(art["pattern_checks"]) == 7
    fp32 = report["accuracy"]["sparse_onnx"]
    assert report["accuracy"]["quantized"] == art["accuracy"]
    assert 100 * (fp32 - art["accuracy"]) <= 0.5
    assert art["sqnr_db"] > 20
    assert [r["batch"] for r in art["latency"]] == [1]
    assert art["latency"][0]["speedup_vs_fp32"] > 0


def test_zero_weights_stay_zero_per_channel_symmetric(cnn: tuple[dict, Path]) -> None:
    _, out = cnn
    manifest = Manifest.load(out / "manifest.safetensors")
    fp32, int8 = onnx.load(str(out / "model.onnx")), onnx.load(str(out / "model_int8.onnx"))
    f_refs, q_refs = (
        weight_refs(fp32, list(manifest.by_module())),
        weight_refs(int8, list(manifest.by_module())),
    )
    f_w, q_w = initializers(fp32), initializers(int8)
    dq = {n.name: n for n in int8.graph.node}
    checked = 0
    for module, refs in q_refs.items():
        for f_ref, q_ref in zip(f_refs[module], refs, strict=True):
            if q_ref.dequantize is None:  # kept in float by the accuracy budget
                continue
            w, q = f_w[f_ref.initializer], q_w[q_ref.initializer]
            assert q.dtype == np.int8 and q.shape == w.shape
            assert not q[w == 0].any(), module  # every zero weight is a zero int8
            _, scale, zero_point = dq[q_ref.dequantize].input
            assert not q_w[zero_point].any()  # symmetric
            assert q_w[scale].shape == (w.shape[q_ref.out_axis],)  # per output channel
            checked += 1
    assert checked >= 1


def test_pattern_check_reads_the_int8_tensor(cnn: tuple[dict, Path], tmp_path: Path) -> None:
    _, out = cnn
    manifest = Manifest.load(out / "manifest.safetensors")
    model = onnx.load(str(out / "model_int8.onnx"))
    refs = weight_refs(model, list(manifest.by_module()))
    module, ref = next((m, r[0]) for m, r in refs.items() if r and r[0].dequantize)
    init = next(i for i in model.graph.initializer if i.name == ref.initializer)
    q = numpy_helper.to_array(init).copy()
    q[q == 0] = 1  # fill every pruned slot: breaks 2:4
    init.CopyFrom(numpy_helper.from_array(q, init.name))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    checks = {c.module: c for c in verify_pattern(tmp_path / "broken.onnx", manifest)}
    assert not checks[module].ok and "outside the mask" in checks[module].detail


def test_calibration_reader_over_npz(tmp_path: Path) -> None:
    d = digits()
    np.savez(tmp_path / "d.npz", x=d.x_train[:203], y=d.y_train[:203])
    data = load_data(str(tmp_path / "d.npz"), (1, 8, 8))
    rows = calibration_rows(data.x_train, 256)  # fewer rows than asked: all of them
    reader = ArrayCalibrationReader(rows)
    batches = list(iter(reader.get_next, None))
    assert len({len(b["input"]) for b in batches}) == 1  # equal batches (histogram methods)
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), rows)
    assert len(calibration_rows(data.x_train, 50)) == 50


def test_calibrate_writes_ranges(cnn: tuple[dict, Path], tmp_path: Path) -> None:
    _, out = cnn
    calibrate(out / "model.onnx", digits().x_train[:64], "percentile", tmp_path / "c.json")
    assert "input" in (tmp_path / "c.json").read_text()


def test_sensitivity_fallback_reaches_budget(cnn: tuple[dict, Path], tmp_path: Path) -> None:
    """Calibrating on inputs 20x too small clips every activation: int8 collapses, and the
    budget can only be met by keeping the most sensitive nodes in float."""
    _, out = cnn
    d = digits()
    src, x_bad = out / "model.onnx", d.x_train * 0.05
    plain = quantize_model(src, tmp_path / "a.onnx", QuantizeConfig(), x_bad, d.x_test, d.y_test)
    assert 100 * (plain.fp32_accuracy - plain.accuracy) > 0.5 and not plain.excluded
    config = QuantizeConfig(max_accuracy_drop=0.5)
    res = quantize_model(src, tmp_path / "b.onnx", config, x_bad, d.x_test, d.y_test)
    assert 100 * (res.fp32_accuracy - res.accuracy) <= 0.5
    assert res.excluded and len(res.sensitivity) == len(quantized_nodes(src))
    model = onnx.load(str(tmp_path / "b.onnx"))
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name in res.excluded:
            assert node.input[1] in inits  # float weight, no DequantizeLinear
    assert res.to_dict()["excluded"] == res.excluded


def test_dynamic_int8_keeps_pattern(cnn: tuple[dict, Path], tmp_path: Path) -> None:
    _, out = cnn
    d = digits()
    dst = tmp_path / "dyn.onnx"
    res = quantize_model(
        out / "model.onnx", dst, QuantizeConfig("int8-dynamic"), None, d.x_test, d.y_test
    )
    assert res.sqnr_db > 20 and res.calib_rows == 0
    checks = verify_pattern(dst, Manifest.load(out / "manifest.safetensors"))
    assert all(c.ok for c in checks) and all("Integer" in c.detail for c in checks)


def test_inspect_reads_every_int8_layer(cnn: tuple[dict, Path], tmp_path: Path) -> None:
    """Static (QDQ) and dynamic int8 files list every layer of the fp32 file, pattern intact."""
    _, out = cnn
    fp32 = {r.module: r for r in inspect_onnx(out / "model.onnx")}
    d = digits()
    dyn = tmp_path / "dyn.onnx"
    quantize_model(out / "model.onnx", dyn, QuantizeConfig("int8-dynamic"), None, d.x_test, None)
    for path in (out / "model_int8.onnx", dyn):
        rows = {r.module: r for r in inspect_onnx(path)}
        assert set(rows) == set(fp32), path.name
        for module, row in rows.items():
            if fp32[module].nm == "2:4":
                assert row.nm == "2:4" and row.shape == fp32[module].shape, (path.name, module)


def test_fp32_weight_refs_unchanged(cnn: tuple[dict, Path]) -> None:
    _, out = cnn
    manifest = Manifest.load(out / "manifest.safetensors")
    refs = weight_refs(onnx.load(str(out / "model.onnx")), list(manifest.by_module()))
    assert all(len(r) == 1 and r[0].dequantize is None for r in refs.values())


def test_missing_or_empty_calibration_data_is_a_clear_error() -> None:
    with pytest.raises(SparsifyError, match="needs calibration data"):
        calibration_rows(None, 256)
    with pytest.raises(SparsifyError, match="calibration data is empty"):
        calibration_rows(np.zeros((0, 1, 8, 8), np.float32), 256)
    with pytest.raises(SparsifyError, match="calib-method"):
        ConvertOptions("digits_cnn", quantize="int8", calib_method="kl")
    with pytest.raises(SparsifyError, match="--quantize"):
        ConvertOptions("digits_cnn", quantize="int4")
    with pytest.raises(SparsifyError, match="calib-size"):
        QuantizeConfig(calib_size=0)
