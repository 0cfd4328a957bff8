"""The Python API (sparsify_cli.api): a hand-written training loop gets the CLI's masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from sparsify_cli import api
from sparsify_cli.app import app
from sparsify_cli.data import load_data
from sparsify_cli.loading import load_model
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.masks import masked_modules
from sparsify_cli.passes.pattern import NMPattern, nm_violations
from sparsify_cli.samples.datasets import DATASETS

EPOCHS, BATCH, LR, SEED = 2, 64, 1e-3, 0


def _subset(path) -> str:
    """320 digits rows as an .npz (the CLI holds out its fixed 10%, as load_data does here)."""
    data = DATASETS["digits"]()
    np.savez(path, x=data.x_train[:320], y=data.y_train[:320])
    return str(path)


def _hand_written_loop(method: str, npz: str) -> tuple[torch.nn.Module, Manifest]:
    """Plain PyTorch: DataLoader, AdamW, cosine schedule, cross-entropy; sparsify's hooks only."""
    loaded = load_model("digits_cnn")
    model = loaded.model
    data = load_data(npz, (1, 8, 8))
    sp = api.prepare(model, nm="2:4", method=method, example=loaded.example, epochs=EPOCHS)
    loader = DataLoader(
        TensorDataset(torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    total = EPOCHS * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )
    for epoch in range(EPOCHS):
        model.train()
        sp.epoch_start(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sp.step(optimizer)
            schedule.step()
    assert sp.dense is not None and not list(masked_modules(sp.dense))  # the dense copy
    return model, sp.finalize()


def test_hand_written_loop_gets_the_same_masks_as_the_cli(tmp_path) -> None:
    """MaxQ (schedule over 2 epochs, soft masks, decay hooks) trained by the CLI and by hand."""
    method, npz = "maxq", _subset(tmp_path / "digits.npz")
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        ["convert", "digits_cnn", "--method", method, "--data", npz, "--epochs", str(EPOCHS),
         "--batch-size", str(BATCH), "--lr", str(LR), "--seed", str(SEED), "--out", str(out),
         "--batch-sizes", "1", "--bench-seconds", "0.02", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cli = Manifest.load(out / "manifest.safetensors")
    model, manifest = _hand_written_loop(method, npz)
    assert set(manifest.entries) == set(cli.entries) and len(cli.entries) >= 3
    modules = dict(model.named_modules())
    for name, entry in manifest.entries.items():
        assert entry.pattern == "2:4"
        assert np.array_equal(entry.mask, cli.entries[name].mask), name
        weight = modules[entry.module].weight.detach().numpy()
        assert nm_violations(weight, NMPattern(2, 4), axis=1) == 0  # folded: exact zeros
        assert np.array_equal(weight != 0, entry.mask)
    assert not list(masked_modules(model))
    assert manifest.recipe["passes"][0]["pass"] == method


def test_prepare_refuses_what_the_loop_owns_and_unknown_methods() -> None:
    loaded = load_model("digits_cnn")
    with pytest.raises(SparsifyError, match="does not take \\['lr'\\]"):
        api.prepare(loaded.model, method="maxq", example=loaded.example, lr=0.1)
    with pytest.raises(SparsifyError, match="unknown method 'sgd'"):
        api.prepare(loaded.model, method="sgd", example=loaded.example)
    with pytest.raises(SparsifyError, match="needs an example batch"):
        api.prepare(loaded.model, method="asp")
    with pytest.raises(SparsifyError, match="steps_per_epoch"):
        api.prepare(loaded.model, method="rigl", example=loaded.example, sparsity=0.5)


def test_export_writes_the_cli_artifacts_from_a_hand_written_loop(tmp_path) -> None:
    """prepare -> own loop -> finalize -> export: verified ONNX with exact 2:4, parity, a
    report.json that `sparsify report` and `sparsify inspect` read, and no recipe.yaml."""
    import json

    import onnx
    from onnx import numpy_helper

    from sparsify_cli.exporters.onnx_export import weight_refs

    npz = _subset(tmp_path / "digits.npz")
    loaded = load_model("digits_cnn")
    model, data = loaded.model, load_data(npz, (1, 8, 8))
    sp = api.prepare(model, nm="2:4", method="asp", example=loaded.example, epochs=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    sp.epoch_start(0)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    for i in range(0, len(x), BATCH):
        loss = F.cross_entropy(model(x[i : i + BATCH]), y[i : i + BATCH])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sp.step(optimizer)
    manifest = sp.finalize()
    out = tmp_path / "out"
    report = api.export(
        model, manifest, out, ("onnx", "condensed"), example=sp.example, dense=sp.dense,
        data=npz, batch_sizes=(1,), bench_seconds=0.02,
    )  # fmt: skip
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model_dense.onnx", "model_condensed.onnx", "manifest.safetensors",
            "model_sparse.safetensors", "report.json", "report.html"} <= names  # fmt: skip
    assert "recipe.yaml" not in names
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    arts = {a["format"]: a for a in report["artifacts"]}
    assert arts["onnx"]["pattern_ok"] and arts["condensed"]["pattern_ok"]
    assert arts["onnx"]["parity_max_abs"] <= 1e-4
    assert report["accuracy"]["samples"] == len(data.y_test)
    assert report["accuracy"]["sparse_onnx"] == report["accuracy"]["sparse"]
    assert report["baseline"]["latency"] and arts["onnx"]["latency"][0]["speedup_vs_dense"]
    assert report["recipe"]["options"]["method"] == "asp"
    assert report["recipe"]["passes"][0]["pass"] == "asp"
    sparse_rows = [r for r in report["layers"] if r["pattern"]]
    assert {r["name"] for r in sparse_rows} == set(manifest.by_module())
    # the N:M pattern, exact in the ONNX file: every group of 4 inputs holds at most 2 nonzeros
    # (read back independently of the exporter's own check; BatchNorm may be folded in)
    onnx_model = onnx.load(str(out / "model.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    refs = weight_refs(onnx_model, list(manifest.by_module()))
    for module, entry in manifest.by_module().items():
        assert refs[module], module
        for ref in refs[module]:
            stored = weights[ref.initializer]
            assert nm_violations(stored, NMPattern(2, 4), axis=ref.in_axis) == 0, module
            assert not ((stored != 0) & ~entry.mask).any(), module
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["inspect", str(out / "model.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows


def test_export_says_what_is_missing(tmp_path) -> None:
    loaded = load_model("digits_cnn")
    sp = api.prepare(loaded.model, method="asp", example=loaded.example, epochs=1)
    with pytest.raises(SparsifyError, match="finalize"):
        api.export(loaded.model, Manifest({}), tmp_path / "a", example=sp.example, dense=sp.dense)
    manifest = sp.finalize()
    with pytest.raises(SparsifyError, match="needs dense"):
        api.export(loaded.model, manifest, tmp_path / "b", example=sp.example)
    with pytest.raises(SparsifyError, match="int8 calibrates on data"):
        api.export(
            loaded.model, manifest, tmp_path / "c", ("onnx", "int8"),
            example=sp.example, dense=sp.dense,
        )  # fmt: skip
    with pytest.raises(SparsifyError, match="does not take \\['lr'\\]"):
        api.export(loaded.model, manifest, tmp_path / "d", example=sp.example, dense=sp.dense, lr=1)
    with torch.no_grad():  # trained on after finalize: a weight leaves the manifest's mask
        name = next(iter(manifest.entries.values())).module
        w = dict(loaded.model.named_modules())[name].weight
        w[w == 0] = 1.0
    with pytest.raises(SparsifyError, match="nonzeros where the manifest's mask is off"):
        api.export(loaded.model, manifest, tmp_path / "e", example=sp.example, dense=sp.dense)
    assert not any((tmp_path / n).exists() for n in "abcde")
