"""What a new user sees (issue 20): honest speed figures, gates on intervals, each artifact timed
against its own dense model, run-named output folders, tables that fit 80 columns, file modes.

The models here are tiny ONNX graphs written with ``onnx.helper`` (real files, real ONNX Runtime
sessions), so every test takes well under a few seconds.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from typer.testing import CliRunner

from sparsify_cli.app import app
from sparsify_cli.bench import bench, collect
from sparsify_cli.exporters.artifact import LatencyRow
from sparsify_cli.exporters.latency import LatencySettings, measure_latency, ratio_interval
from sparsify_cli.gates import check_gates, speed_miss
from sparsify_cli.naming import default_out, run_name
from sparsify_cli.passes.atomic import atomic_write_text
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.report import render

FAST = LatencySettings((1, 4), warmup=2, seconds=0.01, iterations=20)


def linear(path: Path, inp: int, out: int, dims: list | None = None, seed: int = 0) -> Path:
    """One MatMul ``[*dims, inp] @ [inp, out]`` (``dims`` default: a dynamic batch)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((inp, out)).astype(np.float32)
    lead = dims or ["batch"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, inp])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, out])],
        [numpy_helper.from_array(w, "w")],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def folder(root: Path, inp: int) -> Path:
    linear(root / "model_dense.onnx", inp, 16, seed=1)
    linear(root / "model.onnx", inp, 16, seed=2)
    return root


# -- latency ---------------------------------------------------------------------------------


def test_latency_rows_carry_iterations_interval_and_noise_flag(tmp_path):
    a, b = linear(tmp_path / "a.onnx", 32, 32), linear(tmp_path / "b.onnx", 32, 32, seed=3)
    rows = measure_latency({"a": a, "b": b}, (32,), FAST, baseline="a")
    assert [r.batch for r in rows["b"]] == [1, 4]
    for base, row in zip(rows["a"], rows["b"], strict=True):
        assert base.iterations == row.iterations == 20  # --iterations: exactly that many
        assert (base.speedup_vs_dense, base.ratio_low, base.ratio_high) == (1.0, 1.0, 1.0)
        assert row.ratio_low <= row.ratio_high and isinstance(row.noisy, bool)
    alone = measure_latency({"a": a}, (32,), LatencySettings((1,), warmup=1, seconds=0.02))
    (row,) = alone["a"]
    assert row.speedup_vs_dense is None and row.ratio_low is None and row.iterations >= 60


class _Counted:
    """A real ONNX Runtime session that counts its calls."""

    def __init__(self, sess):
        self.sess, self.calls = sess, 0

    def run(self, *args):
        self.calls += 1
        return self.sess.run(*args)


def test_default_warmup_stops_once_it_took_the_duration_and_an_explicit_one_is_kept(tmp_path):
    from sparsify_cli.exporters import runtime
    from sparsify_cli.exporters.latency import AUTO_WARMUP, _feeds, time_batch

    path = linear(tmp_path / "big.onnx", 512, 512)
    for warmup, seconds, expect in ((None, 1e-9, 1), (None, 60.0, AUTO_WARMUP), (3, 1e-9, 3)):
        sess = _Counted(runtime.session(path, 1))
        settings = LatencySettings((1,), warmup=warmup, seconds=seconds, iterations=10)
        blocks = time_batch({"a": sess}, _feeds({"a": sess.sess}, (512,), 1), settings, None)
        timed = sum(len(b) for b in blocks["a"])
        assert sess.calls - timed == expect, (warmup, seconds)


def test_ratio_interval_is_tight_on_steady_times_and_wide_on_noisy_ones():
    rng = np.random.default_rng(0)
    base = [list(1.0 + 0.001 * rng.standard_normal(10)) for _ in range(20)]
    same = [list(0.5 + 0.0005 * rng.standard_normal(10)) for _ in range(20)]
    low, high = ratio_interval(base, same)
    assert 1.98 < low <= high < 2.02
    noisy = [list(0.5 * rng.choice([0.5, 2.0], 10)) for _ in range(20)]
    low, high = ratio_interval(base, noisy)
    assert high - low > 0.5


def test_timing_options_are_validated():
    for bad in ({"warmup": -1}, {"seconds": 0}, {"iterations": 0}, {"threads": 0}):
        with pytest.raises(SparsifyError):
            LatencySettings(**bad)


# -- gates -----------------------------------------------------------------------------------


def row(speed, low=None, high=None, batch=1):
    return LatencyRow(batch, 1.0, 1.0, 1.0, 1.0, 1.0, 10, speed, low, high)


def test_min_speedup_fails_an_interval_that_straddles_the_bar():
    assert speed_miss(row(1.3, 1.25, 1.35), 1.2) is None  # clears the bar with its interval
    below = speed_miss(row(1.0, 0.95, 1.05), 1.2)
    assert "is below --min-speedup 1.20x" in below and "0.95-1.05x" in below
    straddles = speed_miss(row(1.25, 1.1, 1.4), 1.2)  # the point passes, the interval cannot
    assert "cannot be told" in straddles and "straddles" in straddles
    assert "--duration" in straddles
    assert speed_miss(row(1.25), 1.2) is None  # no interval (older reports): the point decides
    doc = {"artifacts": [{"path": "m.onnx", "latency": [row(1.25, 1.1, 1.4).to_dict()]}]}
    (failure,) = check_gates(doc, min_speedup=1.2)
    assert failure.startswith("m.onnx: speedup 1.25x at batch 1 cannot be told")


def test_accuracy_gate_uses_each_artifacts_own_baseline():
    doc = {
        "baselines": [{"path": "a/dense", "accuracy": 0.9}, {"path": "b/dense", "accuracy": 0.5}],
        "artifacts": [
            {"path": "a/m", "baseline": "a/dense", "accuracy": 0.89, "latency": []},
            {"path": "b/m", "baseline": "b/dense", "accuracy": 0.498, "latency": []},
        ],
    }
    assert check_gates(doc, max_accuracy_drop=2) == []  # against a/dense, b/m would drop 40
    (miss,) = check_gates(doc, max_accuracy_drop=0.5)  # a/m drops 1 point, b/m 0.2
    assert miss.startswith("a/m: accuracy 89.00% is 1.00 points below dense 90.00%")


# -- bench -----------------------------------------------------------------------------------


def test_bench_compares_each_folder_with_its_own_dense_model(tmp_path):
    cnn, tr = folder(tmp_path / "cnn", 64), folder(tmp_path / "tr", 24)  # different inputs
    groups = collect([cnn, tr], None)
    assert [(b.name, [a.parent.name for a in arts]) for b, arts in groups] == [
        ("model_dense.onnx", ["cnn"]),
        ("model_dense.onnx", ["tr"]),
    ]
    doc = bench([cnn, tr], FAST)
    assert [b["path"] for b in doc["baselines"]] == [
        str(cnn / "model_dense.onnx"),
        str(tr / "model_dense.onnx"),
    ]
    for art in doc["artifacts"]:
        assert Path(art["baseline"]).parent == Path(art["path"]).parent
    assert doc["artifacts"][1]["inputs"] == {"x": [1, 24]}


def test_lone_model_finds_the_dense_model_beside_it(tmp_path):
    out = folder(tmp_path / "run", 16)
    ((base, arts),) = collect([out / "model.onnx"], None)
    assert base == out / "model_dense.onnx" and arts == [out / "model.onnx"]
    lone = linear(tmp_path / "elsewhere" / "m.onnx", 16, 4)
    assert collect([lone], None) == [(None, [lone])]


def test_shapes_fill_dynamic_axes_and_are_checked(tmp_path):
    seq = linear(tmp_path / "seq.onnx", 8, 4, dims=["batch", "tokens"])
    with pytest.raises(SparsifyError, match="--shapes x:1xN"):
        bench([seq], FAST)
    doc = bench([seq], FAST, shapes={"x": (1, 5, 8)})
    assert doc["artifacts"][0]["inputs"] == {"x": [1, 5, 8]}
    with pytest.raises(SparsifyError, match="does not fit"):
        bench([seq], FAST, shapes={"x": (1, 5, 9)})
    with pytest.raises(SparsifyError, match="does not have: y"):
        bench([seq], FAST, shapes={"x": (1, 5, 8), "y": (1, 2)})


def test_bench_table_fits_80_columns_with_columns_env(tmp_path):
    """A real subprocess with COLUMNS=80: names whole, no line wider than 80."""
    folder(tmp_path / "a_rather_long_folder_name", 16)
    folder(tmp_path / "out", 16)
    env = {**os.environ, "COLUMNS": "80"}
    code = "from sparsify_cli.app import main; main()"
    for name in ("a_rather_long_folder_name", "out"):
        args = ["bench", name, "--iterations", "20", "--warmup", "2", "--quiet"]
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        assert any(f"{name}/model_dense.onnx (dense)" in line for line in lines)
        assert any(f"{name}/model.onnx" in line for line in lines)
    assert "│ out/model.onnx " in result.stdout  # a short name stays in the table itself


# -- terminal tables -------------------------------------------------------------------------


def fake_report(fp32: bool = False) -> dict:
    lat = {"batch": 1, "p50_ms": 0.0512, "p90_ms": 0.07, "p99_ms": 0.123, "mean_ms": 0.06}
    lat |= {"throughput": 17500.0, "iterations": 5230}
    base = {"path": "model_dense.onnx", "latency": [{**lat, "speedup_vs_dense": 1.0}]}
    art = {
        "path": "model_int8_dynamic_long_name.onnx",
        "pattern_ok": True,
        "parity_max_abs": 2e-6,
        "latency": [
            {**lat, "speedup_vs_dense": 1.02, "ratio_low": 0.99, "ratio_high": 1.2, "noisy": True}
            | ({"speedup_vs_fp32": 2.9} if fp32 else {})
        ],
    }
    layer = {
        "name": "encoder.layer.11.attention.output.dense",
        "op": "Linear",
        "shape": [768, 768],
        "pattern": None,
        "density": 1.0,
        "flops_dense": 589824,
        "flops_sparse": 589824,
        "skipped": "output head kept dense (--sparsify-head to include it)",
    }
    return {
        "layers": [layer],
        "accuracy": None,
        "environment": {"threads": 1},
        "baseline": base,
        "artifacts": [art],
    }


@pytest.mark.parametrize("width", [80, 100])
def test_report_tables_keep_names_whole_at_80_and_100_columns(width):
    buf = io.StringIO()
    render(fake_report(), Console(file=buf, width=width))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "encoder.layer.11.attention.output.dense" in text
    assert "model_int8_dynamic_long_name.onnx" in text
    assert "vs fp32" not in text  # only when an artifact has values for it
    assert "1.02x" in text and "* noisy" in text


def test_vs_fp32_column_when_it_has_values():
    buf = io.StringIO()
    render(fake_report(fp32=True), Console(file=buf, width=140))
    assert "vs fp32" in buf.getvalue() and "2.90x" in buf.getvalue()


# -- output folder, version, file modes ------------------------------------------------------


def opts(**kw):
    base = dict(source="samples/digits_cnn.pt", arch=None, method="magnitude", nm="2:4")
    base |= dict(ift=None, dst=None, sparsity=0.75, quantize=None)
    return SimpleNamespace(**(base | kw))


def test_default_folder_names_the_run(tmp_path, monkeypatch):
    assert run_name(opts()) == "digits_cnn_magnitude_2of4"
    assert run_name(opts(method="maxq", nm="1:4")) == "digits_cnn_maxq_1of4"
    assert run_name(opts(quantize="int8-dynamic")) == "digits_cnn_magnitude_2of4_int8_dynamic"
    assert run_name(opts(ift="wide", dst="rigl")) == "digits_cnn_wide_rigl_s75"
    assert run_name(opts(dst="srigl", sparsity=0.9)) == "digits_cnn_srigl_s90"
    assert run_name(opts(source="path/to/bert-folder/")) == "bert-folder_magnitude_2of4"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits_cnn_magnitude_2of4").mkdir()
    (tmp_path / "digits_cnn_magnitude_2of4-2").mkdir()
    assert default_out(opts()) == Path("digits_cnn_magnitude_2of4-3")


def test_existing_out_is_refused_before_loading_anything(tmp_path):
    result = CliRunner().invoke(
        app, ["convert", str(tmp_path / "no-such-checkpoint.pt"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "already exists" in result.output and "no-such-checkpoint" not in result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("sparsify ")


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "r.json", json.dumps({}))
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


# -- progress --------------------------------------------------------------------------------


def test_progress_without_a_tty_prints_a_line_per_loop_and_step_durations(monkeypatch):
    from sparsify_cli import app as app_module

    buf = io.StringIO()
    monkeypatch.setattr(app_module, "err_console", Console(file=buf, width=100))
    with app_module.progress_hooks(quiet=False) as hooks:
        hooks.status("fine-tuning 7 layers at 2:4 with maxq for 2 epochs")
        for epoch in range(2):
            assert list(hooks.track(range(26), f"epoch {epoch + 1}/2", 26)) == list(range(26))
        hooks.status("exporting")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("  epoch 1/2: 26 done in ") and lines[1].startswith("  epoch 2/2")
    assert lines[2].startswith("- fine-tuning 7 layers at 2:4 with maxq for 2 epochs (")
    assert lines[3].startswith("- exporting (") and lines[3].endswith(" s)")
    quiet = io.StringIO()
    monkeypatch.setattr(app_module, "err_console", Console(file=quiet, width=100))
    with app_module.progress_hooks(quiet=True) as hooks:
        hooks.status("loading")
        list(hooks.track(range(3), "epoch 1/1", 3))
    assert quiet.getvalue() == ""


def test_status_line_names_what_really_runs():
    from sparsify_cli.pipeline import ConvertOptions, _what_runs

    def line(**kw):
        run = SimpleNamespace(opts=ConvertOptions("digits_cnn", **kw))
        run.choices = [SimpleNamespace(selected=True)] * 7 + [SimpleNamespace(selected=False)]
        return _what_runs(run)

    assert line(dst="rigl", sparsity=0.9, epochs=8) == "rigl training for 8 epochs at sparsity 0.9"
    assert line(ift="wide", dst="set").startswith("Sparse-IFT wide, then set training")
    maxq = line(method="maxq", epochs=3)
    assert maxq == "fine-tuning 7 layers at 2:4 with maxq for 3 epochs"
    assert "one-shot" in line()


def test_delta_t_only_with_dynamic_sparse_training():
    from sparsify_cli.pipeline import ConvertOptions

    with pytest.raises(SparsifyError, match="--delta-t"):
        ConvertOptions("digits_cnn", delta_t=10)
    assert ConvertOptions("digits_cnn", dst="rigl", delta_t=10).delta_t == 10


# -- findings (warnings with the option that helps) ------------------------------------------


def test_findings_no_op_export_and_slower_than_dense():
    from sparsify_cli.findings import artifact_findings

    slow = {"batch": 1, "speedup_vs_dense": 0.45, "ratio_low": 0.41, "ratio_high": 0.5}
    unsure = {"batch": 32, "speedup_vs_dense": 0.9, "ratio_low": 0.7, "ratio_high": 1.1}
    report = {
        "recipe": {"options": {}},
        "artifacts": [
            {"path": "model.onnx", "format": "onnx", "latency": [unsure]},
            {"path": "model_int8.onnx", "format": "onnx-int8", "latency": [slow, unsure]},
            {"path": "model_condensed.onnx", "format": "condensed", "layers_condensed": 0},
        ],
    }
    found = artifact_findings(report, vnni=False)
    assert [f["kind"] for f in found] == ["slower-than-dense", "no-op-export"]
    int8, noop = found
    assert int8["message"].startswith("model_int8.onnx is slower than dense: 0.45x at batch 1")
    assert "0.41-0.50x" in int8["message"] and "batch 32" not in int8["message"]  # noise: no
    assert "VNNI" in int8["message"] and "--quantize int8-dynamic" in int8["option"]
    assert "condensed no layer" in noop["message"] and "--dst srigl" in noop["option"]
    assert "--condensed-ops custom" in noop["option"]
    assert [f["kind"] for f in artifact_findings(report, vnni=True)] == [
        "slower-than-dense",
        "no-op-export",
    ]
    report["recipe"]["options"]["ift"] = "wide"
    report["artifacts"][0]["latency"] = [slow]
    wide = artifact_findings(report, vnni=True)[0]
    assert "Sparse Wide" in wide["message"] and "--ift wide" in wide["option"]
    # already condensed with constant fan-in: no advice to do what the run did
    report["recipe"]["options"]["dst"] = "srigl"
    report["artifacts"][0].update(format="condensed", layers_condensed=4)
    wide = artifact_findings(report, vnni=True)[0]
    assert "multiply-adds" in wide["message"] and "drop --ift wide" in wide["option"]
    assert "--export onnx,condensed" not in wide["option"]
    del report["recipe"]["options"]["ift"], report["recipe"]["options"]["dst"]
    report["artifacts"] = [
        {
            "path": "model_condensed.onnx",
            "format": "condensed",
            "latency": [slow],
            "layers_condensed": 3,
        },
        {"path": "model_int8_dynamic.onnx", "format": "onnx-int8-dynamic", "latency": [slow]},
    ]
    condensed, dynamic = artifact_findings(report, vnni=True)
    assert "at 50% zeros (2:4)" in condensed["message"] and "--sparsity 0.9" in condensed["option"]
    assert "quantizes every activation" in dynamic["message"]
    assert dynamic["option"] == "--quantize int8 with --data (static)"
    assert artifact_findings(report, vnni=False)[1]["option"] == "keep the float model.onnx"


def test_findings_name_the_condensed_layer_choice():
    """A condensed export that timing left all dense says so (not "no layer could condense");
    a slow --condensed-layers all artifact points at auto."""
    from sparsify_cli.findings import artifact_findings

    slow = {"batch": 1, "speedup_vs_dense": 0.12, "ratio_low": 0.11, "ratio_high": 0.13}
    noop = {"path": "model_condensed.onnx", "format": "condensed", "layers_condensed": 0}
    report = {"recipe": {"options": {}}, "artifacts": [noop | {"layers_dense_by_timing": 7}]}
    (found,) = artifact_findings(report, vnni=True)
    assert found["kind"] == "no-op-export"
    assert "all 7 eligible layers ran faster dense when timed alone" in found["message"]
    assert "--condensed-layers all" in found["option"]
    every = {**noop, "layers_condensed": 34, "condensed_layers": "all", "latency": [slow]}
    (found,) = artifact_findings({"recipe": {"options": {}}, "artifacts": [every]}, vnni=True)
    assert found["kind"] == "slower-than-dense" and "0.12x at batch 1" in found["message"]
    assert "--condensed-layers all condensed every eligible layer" in found["message"]
    assert found["option"].startswith("--condensed-layers auto")


# -- recipes replay from any folder ----------------------------------------------------------


def test_recipe_paths_are_absolute_and_relative_ones_read_beside_the_recipe(tmp_path, monkeypatch):
    import shutil

    from sparsify_cli.pipeline import ConvertOptions, resolve_passes
    from sparsify_cli.recipe import read_recipe, recipe_dict, write_recipe
    from sparsify_cli.samples import SAMPLES

    ckpt = tmp_path / "ckpt" / "cnn.pt"
    ckpt.parent.mkdir()
    shutil.copy(SAMPLES["digits_cnn"].checkpoint, ckpt)
    monkeypatch.chdir(tmp_path)
    opts = ConvertOptions("ckpt/cnn.pt", data="digits")
    recipe = recipe_dict(opts, resolve_passes(opts))
    assert recipe["options"]["source"] == str(ckpt) and recipe["options"]["data"] == "digits"
    write_recipe(tmp_path / "run" / "recipe.yaml", recipe)
    assert (tmp_path / "run" / "recipe.yaml").read_text().startswith("# sparsify recipe")
    elsewhere = tmp_path / "a" / "b"  # where ../ckpt does not exist
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    replay = read_recipe(tmp_path / "run" / "recipe.yaml", ConvertOptions, {}, resolve_passes)
    assert replay.source == str(ckpt)
    recipe["options"]["source"] = "../ckpt/cnn.pt"  # hand-written: relative to the recipe
    write_recipe(tmp_path / "run" / "recipe.yaml", recipe)
    replay = read_recipe(tmp_path / "run" / "recipe.yaml", ConvertOptions, {}, resolve_passes)
    assert replay.source == str(ckpt)


def test_accuracy_gate_without_labels_is_refused_right_after_loading(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "convert",
            "--arch",
            "sparsify_cli.samples.models:DigitsResNet",
            "--input-shape",
            "1,1,8,8",
            "--out",
            str(tmp_path / "out"),
            "--gate-max-accuracy-drop",
            "1",
        ],
    )
    assert result.exit_code == 1 and "would measure none" in result.output
    assert not (tmp_path / "out").exists()


def test_no_op_condensed_export_warns_in_report_and_terminal(tmp_path):
    """digits_cnn in the standard-op form: its convs stay dense there, its head is not sparse."""
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["convert", "digits_cnn", "--export", "onnx,condensed", "--condensed-ops", "standard"]
        + ["--out", str(out)]
        + ["--duration", "0.02", "--batch-sizes", "1", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    kinds = [w["kind"] for w in report["warnings"]]
    assert "no-op-export" in kinds
    assert "warning: --export condensed condensed no layer" in " ".join(result.output.split())
    assert "condensed no layer" in (out / "report.html").read_text()
