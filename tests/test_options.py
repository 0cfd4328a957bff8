"""``ConvertOptions``: every option has an effect or is refused by name, before any work; the
training options reach dynamic sparse training; eligibility follows the pass that runs."""

from __future__ import annotations

import copy
import json
import textwrap

import numpy as np
import pytest
import torch
from report_outputs import FAST, invoke

from sparsify_cli.options import ConvertOptions, resolve_passes
from sparsify_cli.passes import training as training_module
from sparsify_cli.passes.dst import DSTConfig
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.masks import is_masked
from sparsify_cli.passes.registry import PassContext, run_passes

INEFFECTIVE = [
    (["--calib-size", "64"], "--calib-size"),
    (["--calib-method", "entropy"], "--calib-method"),
    (["--max-accuracy-drop", "1"], "--max-accuracy-drop"),
    (["--full-range"], "--reduce-range"),
    (["--quantize", "int8-dynamic", "--calib-size", "64"], "--calib-size"),
    (["--condensed-ops", "standard"], "--condensed-ops"),
    (["--condensed-layers", "all"], "--condensed-layers"),
    (
        ["--export", "onnx,condensed", "--condensed-ops", "standard", "--condensed-layers", "all"],
        "--condensed-layers",
    ),
    (["--sparsity", "0.5"], "--sparsity"),
    (["--mask-init", "erk"], "--mask-init"),
    (["--ift", "wide", "--mask-init", "erk"], "--mask-init"),
    (["--device", "cpu"], "--device"),
    (["--epochs", "2"], "--epochs"),
    (["--lr", "0.01"], "--lr"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--distill"], "--distill"),
    (["--resume"], "--resume"),
    (["--batch-size", "8"], "--batch-size"),
    (["--dst", "set", "--method", "asp"], "--method"),
    (["--dst", "set", "--nm", "1:4"], "--nm"),
    (["--ift", "wide", "--nm", "1:4"], "--nm"),
]


@pytest.mark.parametrize(("args", "option"), INEFFECTIVE, ids=[" ".join(a) for a, _ in INEFFECTIVE])
def test_an_option_without_effect_is_refused_by_name_before_loading(args, option, tmp_path):
    out = tmp_path / "out"
    result = invoke("convert", "digits_cnn", "--out", str(out), *args, *FAST)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"error: {option} has no effect in this run" in text
    assert "Traceback" not in result.output and not out.exists()


def test_options_that_do_take_effect_are_accepted():
    ConvertOptions("digits_cnn", quantize="int8", calib_size=64, calib_method="entropy")
    ConvertOptions("digits_cnn", export=("onnx", "condensed"), condensed_ops="standard")
    ConvertOptions("digits_cnn", export=("onnx", "condensed"), condensed_layers="all")
    with pytest.raises(SparsifyError, match="unknown --condensed-layers 'some'"):
        ConvertOptions("digits_cnn", export=("onnx", "condensed"), condensed_layers="some")
    ConvertOptions("digits_cnn", method="asp", epochs=2, lr=0.01, optimizer="sgd", distill=True)
    ConvertOptions("digits_cnn", dst="rigl", sparsity=0.9, mask_init="erk", device="cpu")


def test_recipe_values_are_judged_alike():
    with pytest.raises(SparsifyError, match="--lr has no effect"):
        ConvertOptions("digits_cnn", lr=0.5)


def test_inspect_refuses_an_unknown_tensorrt_precision():
    result = invoke("inspect", "digits_cnn", "--tensorrt", "fp64")
    assert result.exit_code == 1
    assert "unknown --tensorrt 'fp64'" in " ".join(result.output.split())


def test_dst_receives_lr_optimizer_and_distill():
    """Regression: resolve_passes built DSTConfig without them (silently ignored)."""
    opts = ConvertOptions(
        "digits_cnn", dst="set", lr=0.02, optimizer="sgd", distill=True, epochs=3, sparsity=0.5
    )
    dst = next(c for c in resolve_passes(opts) if isinstance(c, DSTConfig))
    assert (dst.lr, dst.optimizer, dst.distill, dst.epochs, dst.sparsity) == (
        0.02,
        "sgd",
        True,
        3,
        0.5,
    )


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 3),
    )  # fmt: skip


def _loader(labels: bool):
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((64, 8), dtype=np.float32))
    tensors = [x, torch.as_tensor(rng.integers(0, 3, 64))] if labels else [x]
    return x, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=16)


def _train(config: DSTConfig, labels: bool = True) -> torch.nn.Module:
    x, loader = _loader(labels)
    ctx = PassContext(targets=["2"], example=x[:1], train=loader)
    return run_passes(_mlp(), [config], ctx)


def test_dst_training_uses_the_learning_rate_and_optimizer():
    base = DSTConfig("static", 0.5, epochs=1)
    weights = {
        name: _train(cfg)[2].weight.detach().clone()
        for name, cfg in {
            "base": base,
            "again": base,
            "lr": DSTConfig("static", 0.5, epochs=1, lr=0.05),
            "sgd": DSTConfig("static", 0.5, epochs=1, optimizer="sgd"),
        }.items()
    }
    assert torch.equal(weights["base"], weights["again"])
    assert not torch.allclose(weights["base"], weights["lr"])
    assert not torch.allclose(weights["base"], weights["sgd"])


@pytest.mark.parametrize("labels", [False, True])
def test_dst_distils_from_the_dense_model_not_its_own_sparse_copy(labels, monkeypatch):
    """Regression: the teacher was copied after the training masks were attached."""
    seen = []
    real = training_module.distillation  # default_objective builds every trained pass's loss

    def spy(teacher, *args, **kwargs):
        seen.append(copy.deepcopy(teacher))
        return real(teacher, *args, **kwargs)

    monkeypatch.setattr(training_module, "distillation", spy)
    _train(DSTConfig("static", 0.5, epochs=1, distill=labels), labels=labels)
    (teacher,) = seen
    assert not any(is_masked(m) for m in teacher.modules())
    assert torch.equal(teacher[2].weight, _mlp()[2].weight)


def test_distill_with_labels_changes_the_objective():
    plain = _train(DSTConfig("static", 0.5, epochs=1))[2].weight
    distilled = _train(DSTConfig("static", 0.5, epochs=1, distill=True))[2].weight
    assert not torch.allclose(plain, distilled)


NARROW = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Narrow(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(6, 10)
            self.mid = nn.Linear(10, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.relu(self.mid(torch.relu(self.stem(x)))))
    """
)


def test_dst_set_trains_layers_of_width_6_and_10(tmp_path, monkeypatch):
    """Regression: eligibility used --nm's M (4), so --dst set refused every layer here."""
    (tmp_path / "narrowmods.py").write_text(NARROW)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0))
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "convert", "--arch", "narrowmods:Narrow", "--input-shape", "1,6", "--dst", "set",
        "--sparsity", "0.5", "--epochs", "1", "--data", str(tmp_path / "d.npz"),
        "--out", str(tmp_path / "out"), *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    layers = {
        r["name"]: r for r in json.loads((tmp_path / "out/report.json").read_text())["layers"]
    }
    assert layers["mid"]["pattern"] == "unstructured" and layers["mid"]["density"] < 1


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_dst_resume_continues_an_interrupted_run_bit_for_bit(method, tmp_path):
    """Regression: --resume was silently ignored under --dst (no work folder, no checkpoint)."""
    config = DSTConfig(method, 0.5, epochs=3, delta_t=2)

    def run(workdir, resume=False, stop_at=None):
        x, loader = _loader(labels=True)

        def track(items, description, total=None):
            if stop_at and description.startswith(f"epoch {stop_at}/"):
                raise KeyboardInterrupt
            yield from items

        torch.manual_seed(0)
        ctx = PassContext(
            targets=["2"], example=x[:1], train=loader, workdir=workdir, resume=resume,
            track=track,
        )  # fmt: skip
        model = run_passes(_mlp(), [config], ctx)
        return model, ctx.metrics["dst"]

    whole, metrics = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=3)
    assert (tmp_path / "b" / "dst.ckpt").is_file()
    resumed, again = run(tmp_path / "b", resume=True)
    assert again == metrics and again["updates"] > 0
    for (name, a), (_, b) in zip(
        whole.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(SparsifyError, match="other settings"):
        x, loader = _loader(labels=True)
        ctx = PassContext(targets=["2"], example=x[:1], train=loader, workdir=tmp_path / "b")
        ctx.resume = True
        run_passes(_mlp(), [DSTConfig(method, 0.5, epochs=4, delta_t=2)], ctx)
