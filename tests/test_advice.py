"""The accuracy guard: a one-shot run that collapses says so, in report.json, terminal and HTML."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from sparsify_cli.advice import (
    AGREEMENT_WARN,
    AdviceLog,
    accuracy_guard,
    advice_line,
    output_agreement,
)
from sparsify_cli.app import app


def test_output_agreement_by_hand() -> None:
    dense = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # [batch 1, seq 2, hidden 2]
    sparse = np.array([[[1.0, 1.0], [0.0, -3.0]]])
    assert np.isclose(output_agreement(dense, sparse), (2**-0.5 - 1) / 2)
    # the attention mask drops the padded second token
    assert np.isclose(output_agreement(dense, sparse, np.array([[1, 0]])), 2**-0.5)
    assert output_agreement(np.zeros((1, 3)), np.ones((1, 3))) == 0.0


def test_guard_thresholds_and_suggestions() -> None:
    log = AdviceLog()
    ok = {"dense": 0.95, "sparse": 0.94}
    assert accuracy_guard(log, "magnitude", "2:4", 8, ok, None) is None
    bad = accuracy_guard(log, "sparsegpt", "1:4", 8, {"dense": 0.95, "sparse": 0.5}, 0.99)
    assert bad.kind == "accuracy-drop" and bad.option == "--method maxq --epochs 8"
    assert "45.00 points" in bad.message
    # without labels the output agreement is judged
    low = accuracy_guard(log, "wanda", "2:4", 8, None, AGREEMENT_WARN - 0.1)
    assert low.kind == "low-agreement" and low.option == "--method sparsegpt"
    assert accuracy_guard(log, "maxq", "2:4", 8, None, AGREEMENT_WARN + 0.01) is None
    assert [a["kind"] for a in log.to_list()] == ["accuracy-drop", "low-agreement"]
    assert advice_line(log.to_list()[1]).endswith("; try --method sparsegpt")


def test_collapsed_one_shot_run_warns(tmp_path) -> None:
    """digits_transformer at 1:4 magnitude goes 95% -> ~29%: the run warns in all three places."""
    out = tmp_path / "out"
    args = ["convert", "digits_transformer", "--nm", "1:4", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--batch-sizes", "1", "--bench-seconds", "0.02"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    (warning,) = report["warnings"]
    assert warning["kind"] == "accuracy-drop" and warning["option"] == "--method sparsegpt"
    drop = 100 * (report["accuracy"]["dense"] - report["accuracy"]["sparse"])
    assert drop > 30 and f"{drop:.2f} points" in warning["message"]
    assert "warning:" in result.output and "--method sparsegpt" in result.output
    assert 0 < report["agreement"]["sparse"] < 1
    assert "try --method sparsegpt" in (out / "report.html").read_text()
