"""``recipe.yaml``: a replay reproduces the artifacts byte for byte; strict reading; gates."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from report_outputs import FAST, cnn_output, invoke

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.pipeline import ConvertOptions, resolve_passes
from sparsify_cli.recipe import read_recipe


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recipe_records_resolved_settings():
    recipe = yaml.safe_load((cnn_output() / "recipe.yaml").read_text())
    assert recipe["sparsify_recipe"] == 1
    opts = recipe["options"]
    assert opts["source"] == "digits_cnn" and opts["nm"] == "2:4" and opts["seed"] == 0
    assert opts["batch_sizes"] == [1] and "out" not in opts and "force" not in opts
    assert recipe["passes"] == [{"pass": "magnitude", "n": 2, "m": 4}, {"pass": "fold"}]


def test_replay_reproduces_identical_artifacts_and_gates_fail(tmp_path):
    """Replay with only --out changed: same masks, manifest and ONNX bytes; the gates (given on
    the command line, not recorded) fail with exit 4 naming the artifact and the shortfall."""
    first = cnn_output()
    again = tmp_path / "again"
    result = invoke(
        "convert",
        "--recipe",
        str(first / "recipe.yaml"),
        "--out",
        str(again),
        "--quiet",
        "--min-speedup",
        "1000",
        "--gate-max-accuracy-drop",
        "0.5",
    )
    assert result.exit_code == 4, result.output
    assert "model.onnx: speedup" in result.output and "short by" in result.output
    assert "model.onnx: accuracy" in result.output and "over --gate-max-accuracy-drop 0.5" in (
        result.output
    )
    for name in (
        "manifest.safetensors",
        "model.onnx",
        "model_dense.onnx",
        "model_sparse.safetensors",
        "recipe.yaml",
    ):
        assert _sha(again / name) == _sha(first / name), name


def _write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_unknown_keys_and_bad_types_are_named(tmp_path):
    base = (cnn_output() / "recipe.yaml").read_text()
    cases = {
        base.replace("  seed: 0", "  seeed: 0"): "unknown option 'seeed'",
        base + "extra: 1\n": "unknown key 'extra'",
        base.replace("- {pass: fold}", "- {pass: fold, when: now}"): "unknown key 'when'",
        base.replace("nm: '2:4'", "nm: 2:4"): "option 'nm'",
        base.replace("seed: 0", "seed: zero"): "option 'seed'",
    }
    for text, message in cases.items():
        with pytest.raises(SparsifyError, match=message):
            read_recipe(_write(tmp_path, text), ConvertOptions, {}, resolve_passes)
    result = invoke("convert", "--recipe", str(_write(tmp_path, base + "extra: 1\n")), *FAST)
    assert result.exit_code == 1 and "unknown key 'extra'" in result.output


def test_command_line_overrides_recipe(tmp_path):
    path = cnn_output() / "recipe.yaml"
    opts = read_recipe(path, ConvertOptions, {"nm": "1:4", "out": "x"}, resolve_passes)
    assert (opts.nm, opts.out, opts.source, opts.batch_sizes) == ("1:4", "x", "digits_cnn", (1,))
    assert resolve_passes(opts)[0].n == 1
    plain = read_recipe(path, ConvertOptions, {}, resolve_passes)
    assert plain.nm == "2:4" and plain.out is None and plain.force is False


def test_the_recipes_passes_are_authoritative(tmp_path):
    """An edited pass list runs as written; an override that would re-resolve it is refused."""
    base = (cnn_output() / "recipe.yaml").read_text()
    edited = _write(
        tmp_path, base.replace("{pass: magnitude, n: 2, m: 4}", "{pass: magnitude, n: 1, m: 4}")
    )
    opts = read_recipe(edited, ConvertOptions, {"out": "x"}, resolve_passes)
    assert [c.name for c in resolve_passes(opts)] == ["magnitude", "fold"]
    assert resolve_passes(opts)[0].n == 1
    with pytest.raises(SparsifyError, match="were edited, and --nm would replace them"):
        read_recipe(edited, ConvertOptions, {"nm": "2:8"}, resolve_passes)
    # an override that leaves the passes alone keeps the edit
    kept = read_recipe(edited, ConvertOptions, {"threads": 2}, resolve_passes)
    assert resolve_passes(kept)[0].n == 1 and kept.threads == 2
