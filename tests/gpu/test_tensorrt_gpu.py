"""Real TensorRT engines on a real GPU: dense vs 2:4, fp16 and int8 (Q/DQ).

Skipped without CUDA + TensorRT (``pytest -m gpu`` on a GPU machine runs them). The model is the
benchmark's wide CNN (256/512-channel convolutions, 512->1024 GEMM), pruned 2:4 through the
project's passes; the checks are: TensorRT parses and builds both engines, the sparse engine
matches PyTorch (fp16) or ONNX Runtime on the same Q/DQ model (int8) within
:data:`sparsify_cli.exporters.tensorrt.stats.PARITY_RTOL`, every masked layer is found in the
engine, at least one masked layer runs a sparse kernel, and the dense/2:4 latency ratio is printed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsify_cli.exporters.tensorrt import (
    merge_layer_rows,
    missing_requirements,
    parity,
    sparsity_warnings,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(bool(missing_requirements()), reason="needs CUDA and TensorRT"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from benchmarks.bench_tensorrt import prepare

    return prepare(tmp_path_factory.mktemp("trt"))


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_dense_and_2of4_engines_parity_sparse_picked_and_ratio(prepared, tmp_path, precision):
    from benchmarks.bench_tensorrt import INPUT_SHAPE
    from sparsify_cli.exporters import runtime as ort_runtime
    from sparsify_cli.exporters.tensorrt import BuildSettings
    from sparsify_cli.exporters.tensorrt.export import build_pair
    from sparsify_cli.exporters.tensorrt.runtime import (
        EngineRunner,
        TimingSettings,
        measure_engines,
    )

    onnx_path, qdq_path, node_map, patterns, model = prepared
    source = qdq_path if precision == "int8" else onnx_path
    settings = BuildSettings(precision=precision, min_batch=1, opt_batch=32, max_batch=64)
    dense, sparse = build_pair(source, tmp_path, settings)

    x = np.random.default_rng(1).standard_normal((64, *INPUT_SHAPE), dtype=np.float32)
    if precision == "int8":  # the engine must reproduce the quantized model it was built from
        reference = ort_runtime.run(ort_runtime.session(qdq_path), x)
    else:
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
    for built in (dense, sparse):
        check = parity(EngineRunner(built.path).infer(x), reference, precision)
        assert check.ok, (built.path.name, check)

    rows = merge_layer_rows(node_map, patterns, sparse.layers, sparse.sparsity)
    masked = [r for r in rows if r.masked]
    assert len(masked) == len(patterns) == 5
    assert all(r.engine_layer for r in masked), [r for r in masked if not r.engine_layer]
    assert sparse.sparsity.found, sparse.log_path.read_text()[-2000:]
    assert all(r.eligible for r in masked), sparsity_warnings(rows, sparse.sparsity, True)
    assert any(r.picked_sparse for r in masked), sparsity_warnings(rows, sparse.sparsity, True)
    assert not dense.sparsity.picked  # no SPARSE_WEIGHTS, no sparse kernel

    latency = measure_engines(
        {"dense": dense.path, "sparse": sparse.path},
        INPUT_SHAPE,
        [1, 32],
        TimingSettings(warmup_ms=100, duration_s=0.5),
        baseline="dense",
    )
    for d, s in zip(latency["dense"], latency["sparse"], strict=True):
        assert d.gpu_compute.count >= 10 and s.host_latency.median_ms >= s.gpu_compute.median_ms
        print(
            f"{precision} batch {s.batch}: dense {d.gpu_compute.median_ms:.3f} ms, "
            f"2:4 {s.gpu_compute.median_ms:.3f} ms, speedup {s.speedup_vs_dense:.2f}x, "
            f"{sum(r.picked_sparse for r in masked)}/{len(masked)} layers sparse"
        )


def test_cuda_graph_timing_runs(prepared, tmp_path):
    from benchmarks.bench_tensorrt import INPUT_SHAPE
    from sparsify_cli.exporters.tensorrt import BuildSettings
    from sparsify_cli.exporters.tensorrt.build import build_engine
    from sparsify_cli.exporters.tensorrt.runtime import TimingSettings, measure_engines

    onnx_path = prepared[0]
    built = build_engine(onnx_path, tmp_path / "g.engine", BuildSettings(max_batch=8, opt_batch=8))
    (row,) = measure_engines(
        {"e": built.path}, INPUT_SHAPE, [8], TimingSettings(duration_s=0.3, cuda_graph=True)
    )["e"]
    assert row.gpu_compute.count >= 10 and row.queries_per_s > 0


def test_multi_input_encoder_builds_with_a_profile_per_input_and_matches(tmp_path):
    """A tiny BERT (int64 input_ids + attention_mask, dynamic batch and sequence) through the
    real parser, builder and runner: one profile per input, integers fed as integers."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hf_tiny import tiny_bert

    from sparsify_cli.exporters.onnx_export import export_onnx
    from sparsify_cli.exporters.tensorrt import BuildSettings
    from sparsify_cli.exporters.tensorrt.build import build_engine
    from sparsify_cli.exporters.tensorrt.config import axis_ranges
    from sparsify_cli.exporters.tensorrt.runtime import (
        EngineRunner,
        TimingSettings,
        measure_engines,
    )
    from sparsify_cli.loading import load_model

    loaded = load_model(str(tiny_bert(tmp_path / "bert")))
    onnx_path = tmp_path / "bert.onnx"
    export_onnx(loaded.model, loaded.example, onnx_path, loaded.specs)
    rng = np.random.default_rng(0)
    x = {s.name: s.random(4, rng) for s in loaded.specs}
    settings = BuildSettings(
        precision="fp32", opt_batch=4, max_batch=4, dynamic_axes=axis_ranges(loaded.specs, x)
    )
    built = build_engine(onnx_path, tmp_path / "bert.engine", settings)
    assert {p.name for p in built.inputs} == {"input_ids", "attention_mask"}
    assert all(p.dtype in ("int32", "int64") for p in built.inputs)
    with torch.no_grad():
        reference = loaded.model(*(torch.from_numpy(x[s.name]) for s in loaded.specs)).numpy()
    assert parity(EngineRunner(built.path).infer(x), reference, "fp32").ok
    (row,) = measure_engines({"e": built.path}, loaded.specs, [4], TimingSettings(duration_s=0.2))[
        "e"
    ]
    assert row.gpu_compute.count >= 10
