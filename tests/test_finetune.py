"""The fine-tuning harness: resume is bit-identical, NaN keeps the last good epoch, and the CLI
runs ``--method maxq`` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sparsify_cli.app import app
from sparsify_cli.passes import ASPConfig, MaxQConfig, PassContext, SparsifyError, run_passes
from sparsify_cli.passes.training import make_loader
from sparsify_cli.samples import SAMPLES
from sparsify_cli.samples.datasets import digits

TARGETS = ["layer2.conv2", "layer3.conv1", "layer3.conv2"]


def _model():
    model = SAMPLES["digits_cnn"].build()
    model.load_state_dict(
        torch.load(SAMPLES["digits_cnn"].checkpoint, weights_only=True)["state_dict"]
    )
    return model


def _ctx(workdir, resume=False, track=None):
    data = digits()
    ctx = PassContext(
        targets=TARGETS,
        seed=3,
        train=make_loader(data.x_train[:256], data.y_train[:256], 64, True, seed=3),
        workdir=workdir,
        resume=resume,
    )
    if track is not None:
        ctx.track = track
    return ctx


class Interrupt(Exception):
    pass


def _interrupt_at_epoch(n):
    def track(items, description, total=None):
        if description.startswith(f"epoch {n}/"):
            raise Interrupt
        yield from items

    return track


def test_resume_gives_bit_identical_weights(tmp_path):
    config = MaxQConfig(epochs=3, schedule_end=0.5)
    straight = run_passes(_model(), [config], _ctx(tmp_path / "a"))
    with pytest.raises(Interrupt):
        run_passes(_model(), [config], _ctx(tmp_path / "b", track=_interrupt_at_epoch(3)))
    assert (tmp_path / "b" / "maxq.ckpt").is_file()
    ctx = _ctx(tmp_path / "b", resume=True)
    resumed = run_passes(_model(), [config], ctx)
    assert len(ctx.metrics["maxq"]["loss"]) == 3
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path):
    with pytest.raises(Interrupt):
        run_passes(_model(), [ASPConfig(epochs=2)], _ctx(tmp_path, track=_interrupt_at_epoch(2)))
    with pytest.raises(SparsifyError, match="other settings"):
        run_passes(_model(), [ASPConfig(epochs=2, lr=5e-3)], _ctx(tmp_path, resume=True))


def test_nan_stops_and_keeps_the_last_good_epoch(tmp_path):
    ctx = _ctx(tmp_path)
    model = run_passes(_model(), [ASPConfig(epochs=2, lr=1e30)], ctx)
    assert "stopped" in ctx.metrics["asp"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_trained_method_without_data_is_a_clear_error():
    with pytest.raises(SparsifyError, match="needs training data"):
        run_passes(_model(), [MaxQConfig(epochs=1)], PassContext(targets=TARGETS))


def test_cli_convert_maxq_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "convert",
            "digits_cnn",
            "--nm",
            "2:4",
            "--method",
            "maxq",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--batch-sizes",
            "1",
            "--bench-seconds",
            "0.05",
            "--quiet",
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["passes"][0]["pass"] == "maxq"
    assert report["artifacts"][0]["pattern_ok"]
    assert report["accuracy"]["sparse"] > 0.9
    assert len(report["training"]["maxq"]["loss"]) == 1
    assert not (tmp_path / ".out.work").exists()  # workdir removed after success


def test_cli_maxq_without_data_is_one_clear_error(tmp_path):
    ckpt = tmp_path / "cnn.pt"
    torch.save(_model().state_dict(), ckpt)  # a plain state_dict: no sample dataset attached
    result = CliRunner().invoke(
        app,
        [
            "convert",
            str(ckpt),
            "--arch",
            "sparsify_cli.samples.models:DigitsResNet",
            "--input-shape",
            "1,1,8,8",
            "--method",
            "maxq",
            "--out",
            str(tmp_path / "o"),
        ],  # fmt: skip
    )
    assert result.exit_code == 1
    assert "needs training data" in result.output


def test_a_given_teacher_is_left_as_the_caller_had_it():
    """Distillation freezes a copy: the caller's teacher keeps its grads and training mode."""
    from torch import nn

    from sparsify_cli.passes.training import default_objective

    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3).train()
    first = [torch.randn(2, 4)]  # no labels: distillation
    default_objective(student, first, torch.device("cpu"), "asp", teacher=teacher)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
