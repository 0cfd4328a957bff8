"""Tests parametrized over the two registries (as timm's model tests are over its models):
every registered pass round-trips through a recipe dict and runs; every registered exporter
builds a checked artifact from one real sparse ONNX; a new exporter needs no change elsewhere."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from report_outputs import FAST, cnn_output, invoke
from test_tensorrt_pipeline import FAKE

import sparsify_cli.exporters.formats  # noqa: F401  (registers the built-in exporters)
from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.artifact import (
    EXPORTERS,
    Artifact,
    Exporter,
    ExportStage,
    Parity,
    register_exporter,
)
from sparsify_cli.exporters.tensorrt.export import use_backend
from sparsify_cli.gates import check_gates
from sparsify_cli.options import ConvertOptions
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.registry import (
    PassContext,
    config_from_dict,
    config_to_dict,
    registered_passes,
    run_passes,
)
from sparsify_cli.samples.datasets import DATASETS

BUILTIN_PASSES = (
    "asp",
    "dst",
    "fold",
    "magnitude",
    "maxq",
    "shrink_ablated",
    "sparse_ift",
    "srste",
)


def test_a_fresh_interpreter_sees_every_pass_without_the_pipeline():
    """Regression: dst, shrink_ablated and sparse_ift were registered only when the pipeline
    happened to import them, so ``config_from_dict({"pass": "dst"})`` failed elsewhere."""
    code = (
        "import sparsify_cli.passes as p, sys\n"
        "c = p.config_from_dict({'pass': 'dst', 'method': 'set', 'sparsity': 0.5})\n"
        "print(type(c).__name__, c.method, sorted(p.registered_passes()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == ["DSTConfig", "set"]
    for name in BUILTIN_PASSES:
        assert repr(name) in out.stdout


@pytest.mark.parametrize("name", sorted(registered_passes()))
def test_every_pass_round_trips_and_declares_its_order(name):
    entry = registered_passes()[name]
    config = entry.config_type()
    assert config.name == name
    again = config_from_dict(json.loads(json.dumps(config_to_dict(config))))
    assert again == config
    for follower in config.next_passes:
        assert follower in registered_passes(), f"{name} names unknown follower {follower}"
    size = getattr(config, "group_size", None)
    assert size is None or (isinstance(size, int) and size >= 1)
    with pytest.raises(SparsifyError, match="unknown key 'bogus'"):
        config_from_dict({**config_to_dict(config), "bogus": 1})


def _tiny_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
        torch.nn.Linear(8, 3),
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(registered_passes()) - {"fold"}))
def test_every_pass_runs_before_fold_on_a_tiny_model(name):
    """Each pass, in the shortest legal chain that starts with it, runs on real data."""
    entry = registered_passes()[name]
    chain = [entry.config_type()]
    if name == "dst":
        chain = [entry.config_type(method="set", epochs=1, delta_t=2)]
    if name in ("asp", "srste", "maxq"):
        chain = [entry.config_type(epochs=1)]
    while chain[-1].next_passes and "fold" not in chain[-1].next_passes:
        chain.append(registered_passes()[chain[-1].next_passes[0]].config_type())
    if name == "shrink_ablated":  # needs masks: after a static DST with no epochs
        chain = [registered_passes()["dst"].config_type(method="static", epochs=0), *chain]
    chain.append(registered_passes()["fold"].config_type())
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((64, 8), dtype=np.float32))
    y = torch.as_tensor(rng.integers(0, 3, 64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    ctx = PassContext(targets=["0", "2"], example=x[:1], train=loader, eval=loader)
    ctx.calibration = (x, None)  # one-shot passes that measure activations (wanda, sparsegpt)
    model = run_passes(_tiny_mlp(), chain, ctx)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert ctx.manifest, f"{name}: fold recorded no manifest entry"
    assert torch.isfinite(model(x)).all()


# --- the exporter registry -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A stage built from a real convert output: its sparse ONNX, manifest and digits data."""
    folder = tmp_path_factory.mktemp("stage")
    for name in ("model.onnx", "manifest.safetensors"):
        shutil.copy(cnn_output() / name, folder / name)
    data = DATASETS["digits"]()
    x = data.x_test[:64]
    return ExportStage(
        folder=folder,
        onnx=folder / "model.onnx",
        manifest=Manifest.load(folder / "manifest.safetensors"),
        check_x=x,
        reference=runtime.run(runtime.session(folder / "model.onnx"), x),
        labels=data.y_test[:64],
        calib_x=data.x_train[:64],
        options=ConvertOptions("digits_cnn", quantize="int8", calib_size=64),
        layers=list(Manifest.load(folder / "manifest.safetensors").by_module()),
    )


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_every_exporter_builds_a_checked_artifact(name, stage):
    exporter = EXPORTERS[name]
    with use_backend(FAKE):
        art = exporter.build(stage)
    assert isinstance(art, Artifact) and (stage.folder / art.path).is_file()
    assert art.size_bytes == (stage.folder / art.path).stat().st_size and len(art.sha256) == 64
    assert art.parity is not None and art.parity.ok
    assert exporter.tolerance(stage) > 0
    # TensorRT reports its sparse layers apart (sparse_layers); every ONNX form is read back
    assert art.pattern_holds is (None if name == "tensorrt" else True)
    assert art.accuracy is not None
    again = Artifact.from_dict(json.loads(json.dumps(art.to_dict())))
    assert again.to_dict() == art.to_dict()


def _copy_exporter(stage: ExportStage) -> Artifact:
    """A format the code base does not know: the sparse ONNX under another name."""
    path = stage.folder / "model_copy.onnx"
    shutil.copyfile(stage.onnx, path)
    out = runtime.run(runtime.session(path), stage.check_x)
    diff = float(np.abs(out - stage.reference).max())
    return Artifact.of_file(
        "copy",
        path,
        parity=Parity("pytorch", "max_abs", diff, 1e-4),
        accuracy=None if stage.labels is None else float((out.argmax(-1) == stage.labels).mean()),
        extras={"note": "test format"},
    )


def test_a_new_exporter_needs_no_change_elsewhere(tmp_path):
    """Registering one entry is enough: --export accepts it, it is timed beside dense, and the
    report, terminal table, HTML and gates all show it."""
    register_exporter(Exporter("copy", "a copy", lambda s: 1e-4, _copy_exporter))
    try:
        out = tmp_path / "out"
        result = invoke(
            "convert", "digits_cnn", "--export", "onnx,copy", "--out", str(out), *FAST[:4],
            "--gate-max-accuracy-drop", "50",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        copy = next(a for a in report["artifacts"] if a["format"] == "copy")
        assert copy["note"] == "test format" and copy["latency"][0]["speedup_vs_dense"] > 0
        assert "model_copy.onnx" in (out / "report.html").read_text()
        assert "model_copy.onnx" in result.output
        assert check_gates(report, max_accuracy_drop=50) == []
    finally:
        EXPORTERS.pop("copy")
    assert "copy" not in EXPORTERS
    with pytest.raises(SparsifyError, match="unknown --export copy"):
        ConvertOptions("digits_cnn", export=("onnx", "copy"))


def test_exporter_names_are_unique():
    with pytest.raises(ValueError, match="registered twice"):
        register_exporter(dataclasses.replace(EXPORTERS["onnx"]))
