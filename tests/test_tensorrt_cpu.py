"""The TensorRT exporter's CPU-testable parts: settings, log and inspector parsing, per-layer
merge, statistics, parity, the will-2:4-pay prediction, and the clear CLI error without CUDA."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from sparsify_cli.exporters.tensorrt import (
    BuildSettings,
    apply_settings,
    latency_stats,
    merge_layer_rows,
    missing_requirements,
    parity,
    parse_engine_info,
    parse_sparsity_log,
    predict_sparse_benefit,
    sparsity_warnings,
)
from sparsify_cli.exporters.tensorrt.config import (
    axis_ranges,
    configure_build,
    input_profiles,
)
from sparsify_cli.exporters.tensorrt.runtime import engine_feed, random_feed
from sparsify_cli.exporters.tensorrt.sparsity_log import layer_tokens
from sparsify_cli.exporters.tensorrt.stats import speedup, throughput
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import InputSpec

# ---------------------------------------------------------------- builder settings


class _Recorder:
    """Stands in for IBuilderConfig / IBuilder / the profile: logs every call and attribute set
    as ``("owner.method", args, kwargs)``; a call returns a recorder named after it."""

    def __init__(self, name: str, log: list) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_log", log)

    def __getattr__(self, method):
        def record(*args, **kwargs):
            self._log.append((f"{self._name}.{method}", args, kwargs))
            return _Recorder(method, self._log)

        return record

    def __setattr__(self, attr, value):
        self._log.append((f"{self._name}.{attr} =", (value,), {}))

    def __repr__(self) -> str:
        return f"<{self._name}>"


def _trt_enums():
    flags = SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32", SPARSE_WEIGHTS="SPARSE")
    return SimpleNamespace(
        DataType=SimpleNamespace(
            FLOAT="DT_FLOAT",
            HALF="DT_HALF",
            INT32="DT_INT32",
            INT64="DT_INT64",
            BOOL="DT_BOOL",
            INT8="DT_INT8",
        ),  # fmt: skip
        BuilderFlag=flags,
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        ProfilingVerbosity=SimpleNamespace(DETAILED="DETAILED"),
    )


def _apply(settings: BuildSettings) -> list[tuple]:
    log: list[tuple] = []
    config, builder = _Recorder("config", log), _Recorder("builder", log)
    profiles = input_profiles({"input": ((-1, 1, 8, 8), "float32")}, settings)
    apply_settings(settings, config, builder, _trt_enums(), profiles)
    return [(name, tuple(map(repr_or_value, args)), kw) for name, args, kw in log]


def repr_or_value(value):
    return repr(value) if isinstance(value, _Recorder) else value


def _flags(calls, method="config.set_flag"):
    return [args[0] for name, args, _ in calls if name == method]


def test_fp16_sparse_settings_set_flags_pool_profile_and_cache():
    calls = _apply(BuildSettings("fp16", opt_batch=32, max_batch=256))
    assert _flags(calls) == ["FP16", "SPARSE"]
    assert ("config.set_memory_pool_limit", ("WORKSPACE", 4 << 30), {}) in calls
    assert ("config.profiling_verbosity =", ("DETAILED",), {}) in calls
    assert ("config.builder_optimization_level =", (3,), {}) in calls
    profile_calls = [c for c in calls if "optimization_profile" in c[0] or "set_shape" in c[0]]
    assert profile_calls == [
        ("builder.create_optimization_profile", (), {}),
        (
            "create_optimization_profile.set_shape",
            ("input", (1, 1, 8, 8), (32, 1, 8, 8), (256, 1, 8, 8)),
            {},
        ),
        ("config.add_optimization_profile", ("<create_optimization_profile>",), {}),
    ]
    assert ("config.create_timing_cache", (b"",), {}) in calls
    assert (
        "config.set_timing_cache",
        ("<create_timing_cache>",),
        {"ignore_mismatch": False},
    ) in calls


def test_int8_enables_fp16_too_dense_build_skips_sparse_fp32_clears_tf32():
    assert _flags(_apply(BuildSettings("int8", sparse_weights=False))) == ["FP16", "INT8"]
    calls = _apply(BuildSettings("fp32"))
    assert _flags(calls) == ["SPARSE"]
    assert _flags(calls, "config.clear_flag") == ["TF32"]


def test_profile_shapes_cover_the_batch_axis_and_timing_cache_file_is_reused(tmp_path):
    settings = BuildSettings(min_batch=1, opt_batch=8, max_batch=64)
    assert settings.profile_shapes((3, 32, 32)) == ((1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))
    cache_file = tmp_path / "trt.cache"
    cache_file.write_bytes(b"cached-tactics")
    calls = _apply(BuildSettings(timing_cache=str(cache_file)))
    assert ("config.create_timing_cache", (b"cached-tactics",), {}) in calls


# ---------------------------------------------------------------- several inputs

TOKEN_SPECS = (
    InputSpec("input_ids", (1, 16), "int64", {0: "batch", 1: "sequence"}, 0, 30522),
    InputSpec("attention_mask", (1, 16), "int64", {0: "batch", 1: "sequence"}, 1, 2),
    InputSpec("pixel", (1, 3, 8, 8), "float32"),
)


def _network(**inputs):
    """A parsed-network stand-in: ``name=(shape with -1 on dynamic axes, trt.DataType)``."""
    tensors = [SimpleNamespace(name=n, shape=shape, dtype=dt) for n, (shape, dt) in inputs.items()]
    return SimpleNamespace(num_inputs=len(tensors), get_input=tensors.__getitem__)


def test_every_input_gets_its_profile_with_sequence_ranges_and_integer_dtypes():
    check_x = {"input_ids": np.zeros((5, 24), np.int64), "attention_mask": np.ones((5, 24))}
    axes = axis_ranges(TOKEN_SPECS, check_x)  # the longest length seen: the check inputs' 24
    assert axes == (("input_ids", 1, 1, 24, 24), ("attention_mask", 1, 1, 24, 24))
    settings = BuildSettings(opt_batch=8, max_batch=32, dynamic_axes=axes)
    network = _network(
        input_ids=((-1, -1), "DT_INT32"),  # the ONNX parser's int32 ids, or int64 in TRT 10
        attention_mask=((-1, -1), "DT_INT64"),
        pixel=((-1, 3, 8, 8), "DT_FLOAT"),
    )
    log: list[tuple] = []
    config, profiles, _ = configure_build(
        _Recorder("builder", log), network, settings, _trt_enums()
    )
    assert [(p.name, p.min, p.opt, p.max, p.dtype) for p in profiles] == [
        ("input_ids", (1, 1), (8, 24), (32, 24), "int32"),
        ("attention_mask", (1, 1), (8, 24), (32, 24), "int64"),
        ("pixel", (1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8), "float32"),
    ]
    shapes = [args for name, args, _ in log if name.endswith(".set_shape")]
    assert shapes == [(p.name, p.min, p.opt, p.max) for p in profiles]  # one profile, all inputs
    assert [n for n, _, _ in log].count("create_builder_config.add_optimization_profile") == 1
    assert ("builder.create_builder_config", (), {}) in log


def test_a_dynamic_axis_without_a_range_is_refused_by_name():
    network = _network(input_ids=((-1, -1), "DT_INT64"))
    with pytest.raises(SparsifyError, match="input_ids has dynamic axis 1 and no range"):
        configure_build(_Recorder("builder", []), network, BuildSettings(), _trt_enums())
    with pytest.raises(SparsifyError, match="axis >= 1"):
        BuildSettings(dynamic_axes=(("input_ids", 1, 8, 4, 16),))


def test_engine_feed_keeps_integer_inputs_integer_and_refuses_what_does_not_fit():
    ids = np.array([[101, 2023, 102]], np.int64)
    fed = engine_feed({"input_ids": ids, "mask": np.ones((1, 3), np.int64)},
                      {"input_ids": "int32", "mask": "int64"})  # fmt: skip
    assert fed["input_ids"].dtype == np.int32 and fed["input_ids"].tolist() == ids.tolist()
    assert fed["mask"].dtype == np.int64
    one = engine_feed(np.zeros((2, 4), np.float64), {"x": "float16"})  # a bare array: the input
    assert one["x"].dtype == np.float16
    with pytest.raises(SparsifyError, match="int32 and got float32"):
        engine_feed({"input_ids": ids.astype(np.float32)}, {"input_ids": "int32"})
    with pytest.raises(SparsifyError, match="do not fit"):
        engine_feed({"input_ids": ids + (1 << 40)}, {"input_ids": "int32"})
    with pytest.raises(SparsifyError, match="missing \\['mask'\\]"):
        engine_feed({"input_ids": ids}, {"input_ids": "int32", "mask": "int64"})
    with pytest.raises(SparsifyError, match="several inputs and got one array"):
        engine_feed(ids, {"input_ids": "int32", "mask": "int64"})


def test_timing_feeds_valid_values_of_every_input():
    x = random_feed(TOKEN_SPECS, 4, np.random.default_rng(0))
    assert x["input_ids"].shape == (4, 16) and x["input_ids"].dtype == np.int64
    assert 0 <= x["input_ids"].min() and x["input_ids"].max() < 30522
    assert (x["attention_mask"] == 1).all() and x["pixel"].dtype == np.float32
    single = random_feed((1, 8, 8), 3, np.random.default_rng(0))  # a sample shape, as before
    assert single.shape == (3, 1, 8, 8) and single.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"precision": "bf8"},
        {"min_batch": 4, "opt_batch": 2},
        {"optimization_level": 7},
        {"workspace_bytes": 10},
    ],
)
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(SparsifyError):
        BuildSettings(**kwargs)


# ---------------------------------------------------------------- build log

TRTEXEC_LOG = """\
[08/05/2024-12:06:54] [I] [TRT] Total Activation Memory: 7864832
[08/05/2024-12:06:54] [I] [TRT] (Sparsity) Layers eligible for sparse math: MatMul_401, Conv_619 \
+ Relu_620, Conv_622 + Relu_623, Conv_626
[08/05/2024-12:06:54] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for \
layers: Conv_619 + Relu_620, Conv_626
[08/05/2024-12:06:54] [I] [TRT] [MemUsageChange] TensorRT-managed allocation in building engine
"""

WRAPPED_LOG = """\
[07/19/2022-11:58:20] [I] [TRT] (Sparsity) Layers eligible for sparse math: Conv_22, MatMul_51, Mat
Mul_69, Gemm_725
[07/19/2022-11:58:20] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for \
layers:
[07/19/2022-11:58:21] [I] Engine built in 31.1935 sec.
"""

PYTHON_LOGGER_LOG = """\
[I] [TRT] Local timing cache in use.
[I] [TRT] (Sparsity) Layers eligible for sparse math: /blocks.0/fc1/MatMul, /features/conv2/Conv \
+ /features/relu2/Relu
[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: \
/features/conv2/Conv + /features/relu2/Relu
"""


def test_log_parser_reads_trtexec_lines_with_fused_names():
    parsed = parse_sparsity_log(TRTEXEC_LOG)
    assert parsed.found
    assert parsed.eligible == (
        "MatMul_401",
        "Conv_619 + Relu_620",
        "Conv_622 + Relu_623",
        "Conv_626",
    )
    assert parsed.picked == ("Conv_619 + Relu_620", "Conv_626")


def test_log_parser_joins_wrapped_lists_and_reads_empty_picked_list():
    parsed = parse_sparsity_log(WRAPPED_LOG)
    assert parsed.eligible == ("Conv_22", "MatMul_51", "MatMul_69", "Gemm_725")
    assert parsed.picked == ()
    assert parsed.found


def test_log_without_sparsity_lines_is_not_found_and_last_build_wins():
    assert not parse_sparsity_log("[I] [TRT] Engine built.").found
    two_builds = WRAPPED_LOG + TRTEXEC_LOG
    assert parse_sparsity_log(two_builds).picked == ("Conv_619 + Relu_620", "Conv_626")


def test_layer_tokens_split_fusions_profiles_and_myelin_regions():
    assert layer_tokens("/a/Conv + /a/Relu [profile 1]") == ("/a/Conv", "/a/Relu")
    assert layer_tokens("{ForeignNode[/b/MatMul.../b/Add]}") == ("/b/MatMul", "/b/Add")


# ---------------------------------------------------------------- engine inspector

INSPECTOR_JSON = json.dumps(
    {
        "Layers": [
            {
                "Name": "/features/conv1/Conv + /features/relu1/Relu",
                "LayerType": "CaskConvolution",
                "Inputs": [
                    {
                        "Name": "input",
                        "Location": "Device",
                        "Dimensions": [32, 64, 56, 56],
                        "Format/Datatype": "Channel major FP16 format where channel % 8 == 0",
                    }
                ],
                "Outputs": [],
                "ParameterType": "Convolution",
                "TacticName": "sm90_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc",
                "Metadata": (
                    "[ONNX Layer: /features/conv1/Conv]\x1f[ONNX Layer: /features/relu1/Relu]"
                ),
            },
            {
                "Name": "/features/conv2/Conv + /features/relu2/Relu",
                "LayerType": "CaskConvolution",
                "Inputs": [
                    {
                        "Name": "t1",
                        "Dimensions": [32, 256, 56, 56],
                        "Format/Datatype": (
                            "Thirty-two wide channel vectorized row major Int8 format"
                        ),
                    }
                ],
                "Outputs": [],
                "TacticName": "sm80_xmma_fprop_sparse_conv_interleaved_i8i8_i8i32_f32_nchw_vect_c",
                "Metadata": (
                    "[ONNX Layer: /features/conv2/Conv]\x1e[ONNX Layer: /features/relu2/Relu]"
                ),
            },
            {
                "Name": "/head/Gemm",
                "LayerType": "CaskGemmMatrixMultiply",
                "Inputs": [{"Name": "t2", "Dimensions": [32, 256], "DataType": "Half"}],
                "Outputs": [],
                "TacticName": "sm80_xmma_gemm_f16f16_f16f32_f32_tn_n",
            },
            {"Name": "/head/Gemm [profile 1]", "LayerType": "CaskGemmMatrixMultiply"},
        ],
        "Bindings": ["input", "output"],
    }
)


def test_inspector_parser_reads_names_precision_tactic_and_onnx_nodes():
    layers = parse_engine_info(INSPECTOR_JSON)
    assert [layer.name for layer in layers] == [
        "/features/conv1/Conv + /features/relu1/Relu",
        "/features/conv2/Conv + /features/relu2/Relu",
        "/head/Gemm",
    ]
    conv1, conv2, head = layers
    assert (conv1.precision, conv2.precision, head.precision) == ("fp16", "int8", "fp16")
    assert conv1.onnx_nodes == ("/features/conv1/Conv", "/features/relu1/Relu")
    assert conv2.onnx_nodes == ("/features/conv2/Conv", "/features/relu2/Relu")
    assert head.onnx_nodes == ("/head/Gemm",)  # no Metadata: taken from the layer name
    assert (conv1.sparse_tactic, conv2.sparse_tactic, head.sparse_tactic) == (False, True, False)


def test_inspector_parser_accepts_layer_names_only_and_rejects_other_json():
    (layer,) = parse_engine_info(json.dumps({"Layers": ["/a/Conv + /a/Relu"], "Bindings": []}))
    assert layer.onnx_nodes == ("/a/Conv", "/a/Relu") and layer.precision is None
    with pytest.raises(SparsifyError, match="Layers"):
        parse_engine_info('{"layers": 3}')
    with pytest.raises(SparsifyError):
        parse_engine_info("not json")


# ---------------------------------------------------------------- merge into rows

NODE_MAP = {
    "features.conv1": ["/features/conv1/Conv"],
    "features.conv2": ["/features/conv2/Conv"],
    "head": ["/head/Gemm"],
}


def test_merge_rows_marks_masked_eligible_picked_and_precision():
    log = parse_sparsity_log(
        "[I] [TRT] (Sparsity) Layers eligible for sparse math: /features/conv2/Conv + "
        "/features/relu2/Relu, /head/Gemm, /other/MatMul\n"
        "[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: "
        "/features/conv2/Conv + /features/relu2/Relu\n"
    )
    patterns = {"features.conv2": "2:4", "head": "2:4"}
    rows = merge_layer_rows(NODE_MAP, patterns, parse_engine_info(INSPECTOR_JSON), log)
    by = {r.module: r for r in rows}
    assert not by["features.conv1"].masked and not by["features.conv1"].eligible
    conv2 = by["features.conv2"]
    assert conv2.masked and conv2.eligible and conv2.picked_sparse and conv2.sparse_tactic
    assert conv2.precision == "int8"
    assert conv2.engine_layer == "/features/conv2/Conv + /features/relu2/Relu"
    head = by["head"]
    assert head.masked and head.eligible and not head.picked_sparse and head.precision == "fp16"
    (extra,) = [r for r in rows if r.module is None]  # reported by TensorRT, matches no module
    assert extra.engine_layer == "/other/MatMul" and extra.eligible
    warnings = sparsity_warnings(rows, log, sparse_build=True)
    assert warnings == ["eligible but a dense kernel was faster: head"]
    assert rows[1].to_dict()["masked"] is True


def test_warning_says_plainly_when_a_2of4_model_picked_no_sparse_kernel():
    log = parse_sparsity_log(WRAPPED_LOG)  # eligible list without our layers, picked empty
    rows = merge_layer_rows(NODE_MAP, {"features.conv2": "2:4"}, [], log)
    warnings = sparsity_warnings(rows, log, sparse_build=True)
    assert warnings[0].startswith(
        "the model is 2:4 sparse (1 masked layers) but TensorRT picked no"
    )
    assert any("not eligible" in w and "features.conv2" in w for w in warnings)
    no_lines = parse_sparsity_log("")
    assert "nothing is proven sparse" in sparsity_warnings(rows, no_lines, True)[0]
    assert sparsity_warnings(rows, no_lines, sparse_build=False) == []


# ---------------------------------------------------------------- statistics and parity


def test_latency_stats_match_hand_computed_percentiles():
    stats = latency_stats([float(v) for v in range(1, 101)])  # 1..100 ms
    assert (stats.min_ms, stats.max_ms, stats.count) == (1.0, 100.0, 100)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p95_ms == pytest.approx(95.05)
    assert stats.p99_ms == pytest.approx(99.01)
    assert latency_stats([2.0]).p99_ms == 2.0
    with pytest.raises(ValueError):
        latency_stats([])
    with pytest.raises(ValueError):
        latency_stats([1.0, float("nan")])


def test_throughput_and_speedup():
    assert throughput(queries=500, batch=32, wall_seconds=2.0) == (250.0, 8000.0)
    assert speedup(dense_median_ms=3.0, sparse_median_ms=2.0) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        throughput(1, 1, 0.0)


def test_parity_uses_a_tolerance_relative_to_the_output_scale():
    ref = np.array([[10.0, -20.0, 5.0], [1.0, 2.0, 3.0]])
    close = ref + 0.15  # 0.15 <= 1e-2 * 20
    check = parity(close, ref, "fp16")
    assert check.ok and check.tolerance == pytest.approx(0.2) and check.top1_agreement == 1.0
    far = ref.copy()
    far[1] = [3.0, 2.0, 1.0]  # off by 2 > 0.2, and the top-1 of row 1 flips
    check = parity(far, ref, "fp16")
    assert not check.ok and check.top1_agreement == 0.5
    assert parity(far, ref, "int8").tolerance == pytest.approx(2.0)
    with pytest.raises(ValueError):
        parity(ref[:1], ref, "fp16")


# ---------------------------------------------------------------- prediction


def test_prediction_per_layer():
    rows = [
        {"name": "big", "op": "Conv2d", "shape": [512, 256, 3, 3]},
        {"name": "mid", "op": "Linear", "shape": [192, 768]},
        {"name": "small", "op": "Conv2d", "shape": [64, 32, 3, 3]},
        {"name": "odd", "op": "Linear", "shape": [1000, 520], "precision": "int8"},
        {"name": "dw", "op": "Conv2d", "shape": [512, 1, 3, 3], "groups": 512},
        {"name": "fp32", "op": "Linear", "shape": [1024, 1024], "precision": "fp32"},
        {"name": "thin", "op": "Linear", "shape": [1024, 1024], "gemm_m": 1},
        {"name": "norm", "op": "LayerNorm", "shape": [768]},
    ]
    verdicts = {p["name"]: p["tensorrt_2of4"] for p in predict_sparse_benefit(rows)}
    assert verdicts == {
        "big": "likely",
        "mid": "maybe",
        "small": "unlikely",
        "odd": "unlikely",
        "dw": "unlikely",
        "fp32": "unlikely",
        "thin": "maybe",
        "norm": "unlikely",
    }
    reasons = {p["name"]: p["reason"] for p in predict_sparse_benefit(rows)}
    assert "multiples of 32" in reasons["odd"] and "grouped" in reasons["dw"]


# ---------------------------------------------------------------- CLI without CUDA


@pytest.mark.skipif(not missing_requirements(), reason="this machine has CUDA and TensorRT")
def test_cli_export_tensorrt_fails_early_with_one_clear_message(tmp_path, monkeypatch):
    from sparsify_cli import app as cli
    from sparsify_cli import pipeline

    def must_not_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the TensorRT check")

    monkeypatch.setattr(pipeline, "load_model", must_not_load)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli.app, ["convert", "digits_cnn", "--export", "onnx,tensorrt", "--out", str(out)]
    )
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "error: --export tensorrt needs an NVIDIA GPU with CUDA and TensorRT" in text
    assert "tensorrt Python package is not installed" in text or "sees no CUDA GPU" in text
    assert "pip install 'sparsify-cli[tensorrt]'" in text
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a staging folder


def test_cli_rejects_unknown_export_format(tmp_path):
    from sparsify_cli import app as cli

    result = CliRunner().invoke(
        cli.app, ["convert", "digits_cnn", "--export", "onnx,coreml", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "unknown --export coreml" in " ".join(result.output.split())
