"""The CLI end to end: a shipped sample in-process, and a model the project never saw in a
real subprocess, at 2:4 and 1:4; the condensed export through the CLI with both op sets."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sparsify_cli.app import app
from sparsify_cli.exporters.condensed import kernel_isa
from tests.conftest import FAST, run_cli


def test_convert_sample_in_process(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["convert", "digits_cnn", "--nm", "2:4", "--export", "onnx,condensed", "--out", str(out)]
        + ["--condensed-layers", "all"]  # every layer, whichever kernel is faster on this CPU
        + list(FAST),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == 1 and report["input"]["sha256"]
    for key in ("recipe", "environment", "layers", "accuracy", "artifacts", "baseline"):
        assert key in report
    assert {p.name for p in out.iterdir()} >= {
        "model.onnx",
        "model_dense.onnx",
        "manifest.safetensors",
        "model_sparse.safetensors",
        "report.json",
    }
    art = report["artifacts"][0]
    assert art["pattern_ok"] and art["parity_max_abs"] <= 1e-4
    assert art["latency"][0]["batch"] == 1 and art["latency"][0]["speedup_vs_dense"] > 0
    assert report["accuracy"]["dense"] > 0.95
    assert report["accuracy"]["sparse"] == report["accuracy"]["sparse_onnx"]
    # --export condensed: every 2:4 conv runs as CondensedConv (BatchNorm folded, ReLU fused
    # where a Relu follows), within the plain ONNX's tolerance of torch
    cond = next(a for a in report["artifacts"] if a["format"] == "condensed")
    sparse_convs = {row["name"] for row in report["layers"] if row["pattern"]}
    assert len(sparse_convs) == 7 and cond["layers_condensed"] == 7
    kernels = {c["module"]: c["kernel"] for c in cond["pattern_checks"]}
    assert {m for m, k in kernels.items() if k == "CondensedConv"} == sparse_convs
    assert cond["pattern_ok"] and cond["parity_max_abs"] <= 1e-4
    assert any("Relu" in c["fused"] for c in cond["pattern_checks"])
    assert "kernel per layer" in result.output and "CondensedConv" in result.output
    spectral = {row["name"]: row["spectral"] for row in report["layers"]}
    assert spectral["fc"] is None  # dense layers have no mask graph
    gaps = spectral["layer1.conv1"]
    assert gaps["weighted_gap"] > 0 and abs(gaps["ramanujan_gap"]) < 100
    skipped = {row["name"]: row["skipped"] for row in report["layers"]}
    assert skipped["stem.0"] == "in_channels 1 not divisible by 4"
    assert skipped["layer1.conv1"] is None
    assert not list(tmp_path.glob(".*partial*"))  # staging folder cleaned up


@pytest.mark.parametrize("nm", ["2:4", "1:4"])
def test_unseen_model_converts_in_a_real_subprocess(unseen_model, tmp_path, nm):
    out = tmp_path / f"out{nm.replace(':', '')}"
    proc = run_cli(
        "convert",
        "net.pt",
        "--arch",
        "mymodels:Net",
        "--input-shape",
        "1,1,8,8",
        "--data",
        "data.npz",
        "--nm",
        nm,
        "--out",
        str(out),
        *FAST,
        cwd=unseen_model,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    art = report["artifacts"][0]
    assert art["pattern_ok"], art["pattern_checks"]
    assert art["parity_max_abs"] <= 1e-4
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["features.0"]["skipped"] == "in_channels 1 not divisible by 4"
    assert "depthwise" in rows["features.5"]["skipped"]
    assert rows["out"]["skipped"]  # head (and 30 inputs) stays dense
    sparse = [r for r in rows.values() if r["pattern"]]
    assert {r["name"] for r in sparse} == {"features.2", "hidden", "odd"}
    assert all(r["pattern"] == nm for r in sparse)
    assert {c["module"] for c in art["pattern_checks"]} == {"features.2", "hidden", "odd"}
    acc = report["accuracy"]
    assert acc["sparse_onnx"] == acc["sparse"]  # ONNX Runtime agrees with the masked model
    assert acc["dense"] > 0.8


@pytest.mark.parametrize("ops", ["custom", "standard"])
def test_convert_exports_condensed_onnx(tmp_path, ops):
    """--export condensed: every sparse Linear of the transformer sample becomes a condensed
    layer, checked against torch and timed beside the dense ONNX in the same report."""
    out = tmp_path / "out"
    args = ["convert", "digits_transformer", "--nm", "2:4", "--export", "onnx,condensed"]
    if ops == "custom":  # every layer, whichever kernel is faster (standard always condenses all)
        args += ["--condensed-layers", "all"]
    result = CliRunner().invoke(app, [*args, "--condensed-ops", ops, "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    art = next(a for a in report["artifacts"] if a["format"] == "condensed")
    assert (out / art["path"]).is_file() and art["condensed_ops"] == ops
    sparse_layers = [row for row in report["layers"] if row["pattern"]]
    assert art["layers_condensed"] == len(sparse_layers) == 13
    assert art["pattern_ok"], art["pattern_checks"]
    assert art["parity_max_abs"] <= 1e-4
    assert art["kernels"] == (kernel_isa() if ops == "custom" else None)
    assert art["latency"][0]["batch"] == 1 and art["latency"][0]["speedup_vs_dense"] > 0
