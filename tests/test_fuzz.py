"""Fuzzing the parsers of user input: every input is either accepted or refused with a
SparsifyError; nothing else escapes (no ValueError, KeyError, TypeError or IndexError)."""

from __future__ import annotations

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparsify_cli.data import load_data
from sparsify_cli.loading import parse_input_shape
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.pipeline import ConvertOptions, resolve_passes
from sparsify_cli.recipe import read_recipe

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
NM_LIKE = st.from_regex(r"\A\s?-?\d{0,3}\s?:\s?-?\d{0,3}(:\d)?\s?\Z")


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXT, NM_LIKE))
def test_nm_parser(text):
    try:
        pattern = NMPattern.parse(text)
    except SparsifyError:
        return
    assert 1 <= pattern.n < pattern.m
    assert NMPattern.parse(str(pattern)) == pattern


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXT, st.from_regex(r"\A\d{1,3}([,x]\d{0,3}){0,4}\Z")))
def test_input_shape_parser(text):
    try:
        shape = parse_input_shape(text)
    except SparsifyError:
        return
    assert len(shape) >= 2 and all(isinstance(d, int) and d >= 1 for d in shape)


OPTION_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    TEXT,
    st.lists(st.integers(-2, 64), max_size=3),
)
RECIPES = st.one_of(
    TEXT,
    st.dictionaries(
        st.sampled_from(["sparsify_recipe", "options", "passes", "extra"]),
        st.one_of(st.integers(0, 2), OPTION_VALUES),
        max_size=4,
    ),
    st.fixed_dictionaries(
        {
            "sparsify_recipe": st.just(1),
            "options": st.dictionaries(
                st.sampled_from(
                    [
                        "source",
                        "nm",
                        "method",
                        "epochs",
                        "batch_sizes",
                        "threads",
                        "seed",
                        "lr",
                        "bogus",
                        "export",
                        "quantize",
                    ]
                ),
                OPTION_VALUES,
                max_size=5,
            ),
            "passes": st.one_of(
                st.none(), st.lists(st.dictionaries(TEXT, OPTION_VALUES), max_size=2)
            ),
        }
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(RECIPES)
def test_recipe_loading(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    try:
        opts = read_recipe(path, ConvertOptions, {}, resolve_passes)
    except SparsifyError:
        return
    assert isinstance(opts, ConvertOptions)


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.float16]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9),
    elements={"allow_nan": True} if False else None,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(["x", "y", "x_test", "y_test", "z"]), ARRAYS, max_size=4))
def test_npz_data_loader(tmp_path, arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    try:
        data = load_data(str(path), (1, 8, 8))
    except SparsifyError:
        return
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1:] == (1, 8, 8)
    assert np.isfinite(data.x_train).all() and len(data.x_test) >= 1
    if data.y_train is not None:
        assert data.y_train.dtype == np.int64 and len(data.y_train) == len(data.x_train)


def _tiny_onnx(folder) -> bytes:
    """A real exported model small enough to mutate quickly (Linear -> ReLU -> Linear)."""
    import torch

    from sparsify_cli.exporters.onnx_export import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    export_onnx(model, torch.zeros(1, 8), folder / "tiny.onnx")
    return (folder / "tiny.onnx").read_bytes()


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "overwrite", "insert"]),
        st.floats(0, 1),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=3,
)


def _mutate(data: bytes, mutations) -> bytes:
    for kind, where, noise in mutations:
        at = int(where * max(len(data) - 1, 0))
        if kind == "flip" and data:
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "overwrite":
            data = data[:at] + noise + data[at + len(noise) :]
        elif kind == "insert":
            data = data[:at] + noise + data[at:]
    return data


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(MUTATIONS)
def test_inspect_and_bench_on_mutated_onnx(tmp_path, mutations):
    """Mutated real ONNX files: inspect and bench exit 0 or 1 with one line, never a traceback."""
    from typer.testing import CliRunner

    from sparsify_cli.app import app

    tiny = tmp_path / "tiny.onnx"
    original = tiny.read_bytes() if tiny.exists() else _tiny_onnx(tmp_path)
    path = tmp_path / "mutated.onnx"
    path.write_bytes(_mutate(original, mutations))
    bench = ["bench", str(path), "--bench-seconds", "0.01", "--batch-sizes", "1"]
    for args in (["inspect", str(path)], bench):
        result = CliRunner().invoke(app, args)
        assert result.exit_code in (0, 1), (args, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output and "internal error" not in result.output
