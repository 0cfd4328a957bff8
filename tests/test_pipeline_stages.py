"""``convert`` as stages: each a short function, and one traced forward of the model for every
question selection, Sparse-IFT and the MAC counts ask (hooks used to run five forwards)."""

from __future__ import annotations

import ast
from pathlib import Path

from torch import nn

import sparsify_cli.pipeline as pipeline
from sparsify_cli.options import ConvertOptions

MAX_LINES = 60


def test_every_function_of_the_pipeline_is_at_most_60_lines():
    tree = ast.parse(Path(pipeline.__file__).read_text(encoding="utf-8"))
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert long == []


def test_an_nm_run_traces_the_model_once(tmp_path, monkeypatch):
    """Forward hooks are registered once per Linear / Conv2d: one traced forward for the head,
    the eligibility and the MACs of the report."""
    registered = []
    original = nn.Module.register_forward_hook

    def counting(self, *args, **kwargs):
        registered.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "register_forward_hook", counting)
    opts = ConvertOptions(
        "digits_cnn", out=str(tmp_path / "o"), batch_sizes=(1,), bench_seconds=0.05
    )
    report, _ = pipeline.convert(opts)
    layers = [r for r in report["layers"] if r["op"] in ("Linear", "Conv2d")]
    assert len(registered) == len(layers) and set(registered) <= {"Linear", "Conv2d"}
    assert all(r["flops_dense"] > 0 for r in layers)
