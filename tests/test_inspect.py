"""``sparsify inspect``: the pattern read from an ONNX file agrees with the checkpoint's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from report_outputs import cnn_output, invoke

from sparsify_cli.exporters.inspect_onnx import inspect_onnx
from sparsify_cli.exporters.onnx_export import export_onnx, weight_refs
from sparsify_cli.passes import (
    FoldConfig,
    NMConfig,
    PassContext,
    Selection,
    run_passes,
    select_layers,
)
from sparsify_cli.passes.inspect import inspect_model
from sparsify_cli.passes.pattern import detect_nm, weight_pattern
from sparsify_cli.samples import SAMPLES


def test_detect_nm_golden():
    # weights 1..8 at 2:4 keep 3,4 and 7,8: the strictest pattern is 2:4 (not 4:8 or 2:8)
    w = np.array([[0, 0, 3, 4, 0, 0, 7, 8]], dtype=np.float32)
    assert str(detect_nm(w)) == "2:4"
    assert str(detect_nm(np.array([[0, 0, 0, 4, 0, 0, 0, 8]], dtype=np.float32))) == "1:4"
    assert str(detect_nm(np.array([[0, 0, 0, 0, 0, 0, 0, 8]], dtype=np.float32))) == "1:8"
    assert str(detect_nm(np.array([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=np.float32))) == "4:8"
    assert detect_nm(np.ones((2, 8), dtype=np.float32)) is None
    # along axis 0 (MatMul [in, out]) the same groups are columns
    assert str(detect_nm(w.T.copy(), axis=0)) == "2:4"
    assert detect_nm(w.T.copy(), axis=1) is None
    p = weight_pattern(np.array([[0, 0, 3, 4], [0, 0, 0, 0], [1, 0, 0, 2]], np.float32))
    assert (p.fan_in, p.ablated, p.density) == (2, 1, 4 / 12)


@pytest.mark.parametrize(("name", "nm"), [("digits_cnn", (2, 4)), ("digits_transformer", (1, 8))])
def test_onnx_and_checkpoint_agree(tmp_path, name, nm):
    """Sparsify, export, then inspect both: every torch layer's pattern is found in its nodes."""
    sample = SAMPLES[name]
    model = sample.build()
    model.load_state_dict(torch.load(sample.checkpoint, weights_only=True)["state_dict"])
    model.eval()
    example = torch.randn(sample.input_shape)
    targets = [c.name for c in select_layers(model, nm[1], example, Selection()) if c.selected]
    run_passes(model, [NMConfig(*nm), FoldConfig()], PassContext(targets=targets))
    export_onnx(model, example, tmp_path / "m.onnx")

    torch_rows = {r.name: r for r in inspect_model(model, example, m=nm[1])}
    onnx_rows = {r.initializer: r for r in inspect_onnx(tmp_path / "m.onnx", m=nm[1])}
    import onnx

    refs = weight_refs(onnx.load(str(tmp_path / "m.onnx")), list(torch_rows))
    expected = f"{nm[0]}:{nm[1]}"
    for module, row in torch_rows.items():
        assert row.nm == (expected if module in targets else None), module
        assert refs[module], module
        for ref in refs[module]:
            found = onnx_rows[ref.initializer]
            assert found.nm == row.nm, (module, ref.node)
            assert found.fan_in == row.fan_in, module
            assert found.in_axis == ref.in_axis
            assert found.density == pytest.approx(row.density)
            assert found.flops_sparse == row.flops_sparse and found.flops_dense == row.flops_dense
    if name == "digits_transformer":  # Linear on tokens: MatMul with an [in, out] initializer
        assert any(
            r.op == "MatMul" and r.in_axis == 0 and r.nm == expected for r in onnx_rows.values()
        )


def test_cli_inspect_folder_onnx_and_checkpoint():
    out = cnn_output()
    docs = {}
    for source in (str(out), str(out / "model.onnx"), "digits_cnn"):
        result = invoke("inspect", source, "--json")
        assert result.exit_code == 0, result.output
        docs[source] = json.loads(result.output)
    folder, onnx_doc, dense = docs[str(out)], docs[str(out / "model.onnx")], docs["digits_cnn"]
    assert folder["format"] == "torch" and onnx_doc["format"] == "onnx"
    by_name = {r["name"]: r for r in folder["layers"]}
    assert by_name["layer1.conv1"]["nm"] == "2:4" == by_name["layer1.conv1"]["declared"]
    assert by_name["fc"]["nm"] is None and "head" in by_name["fc"]["reason"]
    assert by_name["stem.0"]["reason"] == "in_channels 1 not divisible by 4"
    assert {r["module"]: r["nm"] for r in onnx_doc["layers"]} == {
        n: r["nm"] for n, r in by_name.items()
    }
    assert folder["totals"]["nm_layers"] == 7 and dense["totals"]["nm_layers"] == 0
    assert folder["totals"]["flops_sparse"] < dense["totals"]["flops_sparse"]
    table = invoke("inspect", str(out / "model.onnx"))
    assert table.exit_code == 0 and "layer3.conv2" in table.output and "2:4" in table.output


def test_cli_inspect_missing_file_is_a_user_error(tmp_path):
    result = invoke("inspect", str(tmp_path / "nope.pt"))
    assert result.exit_code == 1 and "not found" in result.output


def test_cli_inspect_predicts_tensorrt_benefit_in_torch_and_onnx_layouts(tmp_path):
    model = SAMPLES["digits_transformer"].build().eval()
    export_onnx(model, torch.zeros(1, 1, 8, 8), tmp_path / "t.onnx")
    docs = {}
    for source in ("digits_transformer", str(tmp_path / "t.onnx")):
        result = invoke("inspect", source, "--tensorrt", "fp16", "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        docs[source] = {r.get("name") or r.get("module"): r for r in doc["layers"]}
    torch_rows, onnx_rows = docs.values()
    # 192 -> 768 is borderline on TensorRT; the 192 -> 10 head is not tile-aligned
    assert torch_rows["blocks.0.fc1"]["tensorrt_2of4"] == "maybe"
    assert torch_rows["head"]["tensorrt_2of4"] == "unlikely"
    assert "192->10" in torch_rows["head"]["tensorrt_reason"]
    # MatMul weights are stored [in, out]: read as [out, in], the file agrees with the model
    shared = set(torch_rows) & set(onnx_rows)
    assert {"blocks.0.fc1", "blocks.1.attn.q", "head"} <= shared
    for name in shared:
        assert onnx_rows[name]["tensorrt_reason"] == torch_rows[name]["tensorrt_reason"], name


def test_inspect_output_folder_of_a_hugging_face_run(tmp_path):
    """``inspect out/`` of an HF run reads its ``hf_model/`` (no --arch, nothing imported from
    the folder): each sparsified layer's pattern read back beside the one the manifest declares."""
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from hf_tiny import tiny_bert

    out = tmp_path / "out"
    args = ("--bench-seconds", "0.02", "--batch-sizes", "1", "--quiet")
    convert = invoke("convert", str(tiny_bert(tmp_path / "bert")), "--out", str(out), *args)
    assert convert.exit_code == 0, convert.output
    result = invoke("inspect", str(out), "--json")
    assert result.exit_code == 0, result.output
    layers = json.loads(result.output)["layers"]
    declared = [r for r in layers if r["declared"] == "2:4"]
    assert len(declared) == 12  # 2 layers x (q, k, v, attention output, intermediate, output)
    assert all(r["nm"] == "2:4" for r in declared)
