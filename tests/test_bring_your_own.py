"""Bring your own model: --input specs, several inputs, zoo-style CNNs, checkpoint-less --arch."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from sparsify_cli.app import app
from sparsify_cli.exporters.latency import LatencySettings, measure_latency
from sparsify_cli.exporters.onnx_export import export_onnx, weight_refs
from sparsify_cli.loading import load_model
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import InputSpec, parse_input_spec
from sparsify_cli.pipeline import ConvertOptions, convert

FAST = dict(batch_sizes=(1, 4), bench_seconds=0.05)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("input_ids:1x128:int64:30522", InputSpec("input_ids", (1, 128), "int64", high=30522)),
        ("mask:2x16:int32:1-2", InputSpec("mask", (2, 16), "int32", low=1, high=2)),
        ("x:1x3x32x32:float32", InputSpec("x", (1, 3, 32, 32))),
        ("flag:1x4:bool", InputSpec("flag", (1, 4), "bool")),
        ("h:1x8:float16", InputSpec("h", (1, 8), "float16")),
    ],
)
def test_input_spec_parses(text: str, spec: InputSpec) -> None:
    assert parse_input_spec(text) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input_ids:1x128", "cannot read --input"),
        ("input_ids", "cannot read --input"),
        ("a:1x2:int64:3:4", "cannot read --input"),
        ("input_ids::int64", "cannot read --input"),
        ("input_ids:1x128:int8", "bad dtype 'int8'"),
        ("input_ids:1;128:int64", "bad shape '1;128'"),
        ("input_ids:1x0:int64", "bad shape '1x0'"),
        ("input_ids:-1x4:int64", "bad shape"),
        ("2ids:1x4:int64", "bad input name"),
        ("x:1x4:float32:10", "bad value range"),
        ("ids:1x4:int64:5-5", "empty value range"),
        ("ids:1x4:int64:a", "bad value range"),
    ],
)
def test_bad_input_specs_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(SparsifyError, match=message):
        parse_input_spec(text)


def test_input_shape_reads_commas_as_input_shape_does() -> None:
    assert parse_input_spec("pixel_values:1,3,32,32:float32").shape == (1, 3, 32, 32)
    assert parse_input_spec("ids:1x 128:int64").shape == (1, 128)


def test_bad_input_spec_on_the_cli_exits_1(tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "convert",
            "--arch",
            "sparsify_cli.samples.zoo:TokenAndFeatures",
            "--input",
            "ids:1x8:int9",
        ],
    )
    assert result.exit_code == 1
    assert "bad dtype 'int9'" in result.output


def test_integer_specs_draw_inside_their_range() -> None:
    spec = InputSpec("ids", (1, 64), "int64", {0: "batch", 1: "sequence"}, 3, 7)
    values = spec.random(50, np.random.default_rng(0))
    assert values.shape == (50, 64) and values.dtype == np.int64
    assert values.min() == 3 and values.max() == 6


def _layers(report: dict) -> dict[str, dict]:
    return {row["name"]: row for row in report["layers"]}


@pytest.mark.parametrize("arch", ["TinySEResNeXt", "TinyMobileNet"])
def test_zoo_style_cnns_export_at_2_4(arch: str, tmp_path, caplog) -> None:
    """Random-init (no checkpoint) ResNeXt/MobileNet blocks: SE convs sparsified, depthwise and
    grouped convs skipped with their reason, pattern read back from the ONNX, parity."""
    report, out = convert(
        ConvertOptions(
            None,
            arch=f"sparsify_cli.samples.zoo:{arch}",
            input_shape="1,3,32,32",
            out=str(tmp_path / "o"),
            **FAST,
        )
    )
    assert "random init" in caplog.text
    layers = _layers(report)
    onnx_art = report["artifacts"][0]
    assert onnx_art["pattern_ok"] and onnx_art["parity_max_abs"] <= 1e-4
    checked = {c["module"] for c in onnx_art["pattern_checks"]}
    assert checked == {n for n, r in layers.items() if r["pattern"] == "2:4"}
    se = [n for n in layers if ".se." in n]
    assert se and all(layers[n]["pattern"] == "2:4" for n in se)
    skipped = [r for r in layers.values() if r["skipped"] and "conv (groups=" in r["skipped"]]
    assert skipped, "depthwise/grouped convs must be listed as skipped"
    kind = "depthwise" if arch == "TinyMobileNet" else "grouped"
    assert all(r["skipped"].startswith(kind) and r["pattern"] is None for r in skipped)
    head = "classifier" if arch == "TinyMobileNet" else "fc"
    assert layers[head]["skipped"].startswith("output head kept dense")
    assert report["input"]["path"].endswith("(random init)")


def _token_data(path, rows: int = 96) -> None:
    rng = np.random.default_rng(1)
    features = rng.standard_normal((rows, 16)).astype(np.float32)
    ids = rng.integers(0, 50, (rows, 8))
    y = (features[:, 0] > 0).astype(np.int64) + 2 * (ids[:, 0] > 25)
    np.savez(path, features=features, ids=ids, y=y)


def test_two_inputs_through_the_cli(tmp_path) -> None:
    """--input twice (float + int64 token ids in [0, 50)), --data with arrays named after them:
    export with both ONNX inputs, parity on the held-out rows, accuracy, latency feeds."""
    _token_data(tmp_path / "d.npz")
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app,
        [
            "convert",
            "--arch",
            "sparsify_cli.samples.zoo:TokenAndFeatures",
            "--input",
            "features:1x16:float32",
            "--input",
            "ids:1x8:int64:50",
            "--data",
            str(tmp_path / "d.npz"),
            "--out",
            str(out),
            "--batch-sizes",
            "1,8",
            "--bench-seconds",
            "0.05",
            "--json",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    art = report["artifacts"][0]
    assert art["pattern_ok"] and art["parity_max_abs"] <= 1e-4
    assert report["accuracy"]["samples"] == 10 and art["accuracy"] is not None
    assert [r["batch"] for r in art["latency"]] == [1, 8]
    model = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["features", "ids"]
    assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    layers = _layers(report)
    assert layers["embed"]["skipped"] == "Embedding is not sparsified (only Linear and Conv2d)"
    assert layers["mlp.0"]["pattern"] == "2:4"


def test_example_input_npz(tmp_path) -> None:
    """--example-input: names, dtypes, shapes and the integer range come from the arrays."""
    ids = np.array([[3, 9, 44, 0, 1, 2, 7, 40]])
    np.savez(tmp_path / "x.npz", features=np.ones((1, 16), np.float32), ids=ids)
    loaded = load_model(
        None, "sparsify_cli.samples.zoo:TokenAndFeatures", example_input=str(tmp_path / "x.npz")
    )
    assert list(loaded.example) == ["features", "ids"]
    assert torch.equal(loaded.example["ids"], torch.from_numpy(ids))
    assert (loaded.specs[1].low, loaded.specs[1].high) == (0, 45)
    with pytest.raises(SparsifyError, match="both describe the inputs"):
        load_model(
            None,
            "sparsify_cli.samples.zoo:TokenAndFeatures",
            "1,16",
            example_input=str(tmp_path / "x.npz"),
        )


def test_named_data_must_hold_every_input(tmp_path) -> None:
    np.savez(tmp_path / "d.npz", features=np.zeros((8, 16), np.float32), y=np.zeros(8, int))
    opts = ConvertOptions(
        None,
        arch="sparsify_cli.samples.zoo:TokenAndFeatures",
        inputs=("features:1x16:float32", "ids:1x8:int64:50"),
        data=str(tmp_path / "d.npz"),
        out=str(tmp_path / "o"),
    )
    with pytest.raises(SparsifyError, match=r"lacks arrays for the inputs \['ids'\]"):
        convert(opts)


def test_latency_feeds_token_ids_inside_the_vocabulary(tmp_path) -> None:
    """ONNX Runtime's Gather rejects ids past the table: timing must draw them from the spec."""
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2)
    )
    path = tmp_path / "m.onnx"
    export_onnx(model, {"ids": torch.zeros(1, 3, dtype=torch.int64)}, path)
    spec = InputSpec("ids", (1, 3), "int64", high=10)
    rows = measure_latency({"m": path}, [spec], LatencySettings((2,), seconds=0.01))
    assert rows["m"][0].iterations >= 30
    with pytest.raises(Exception, match="(?i)out of bounds|indices"):
        measure_latency(
            {"m": path},
            [InputSpec("ids", (1, 3), "int64", high=10**6)],
            LatencySettings((2,), seconds=0.01),
        )


def test_nested_sequential_scopes_are_found(tmp_path) -> None:
    """``blocks.0.expand.0.0`` (Sequential in Sequential) owns its folded Conv in the ONNX."""
    from sparsify_cli.samples.zoo import TinyMobileNet

    model = TinyMobileNet().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.zeros(1, 3, 32, 32), path)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    refs = weight_refs(onnx.load(str(path)), names)
    assert all(len(refs[n]) == 1 for n in names), {n: r for n, r in refs.items() if len(r) != 1}


def test_no_checkpoint_without_arch_is_an_error() -> None:
    result = CliRunner().invoke(app, ["convert", "--input-shape", "1,3,32,32"])
    assert result.exit_code == 1 and "no checkpoint given" in result.output


@pytest.mark.parametrize(
    ("package", "arch"),
    [("torchvision", "torchvision.models:mobilenet_v3_small"), ("timm", "timm:resnet18")],
)
def test_zoo_names(package: str, arch: str, tmp_path) -> None:
    """Real zoo architectures where the package imports beside this torch (skipped otherwise)."""
    try:
        __import__(package)
    except Exception as err:  # torchvision from PyPI fails to import beside a CPU torch build
        pytest.skip(f"{package} unavailable: {type(err).__name__}")
    report, _ = convert(
        ConvertOptions(None, arch=arch, input_shape="1,3,64,64", out=str(tmp_path / "o"), **FAST)
    )
    art = report["artifacts"][0]
    assert art["pattern_ok"] and art["parity_max_abs"] <= 1e-4


def test_missing_transformers_is_a_clear_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(
        SparsifyError, match=r"needs the 'transformers' package.*sparsify-cli\[hf\]"
    ):
        load_model(str(tmp_path))
