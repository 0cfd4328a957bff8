"""``convert --export tensorrt`` end to end on a CPU: a stand-in engine backend replaces only what
needs a GPU (building, running and timing engines); everything after it is the real code: the
artifact entry, report.json, the terminal table, report.html, ``sparsify report`` and the gates.

The stand-in "engine" is the ONNX file itself, run in ONNX Runtime, so parity and accuracy are
real numbers; its build log and inspector JSON name every weight node as eligible and picked, in
TensorRT's own formats (parsed by the real parsers).
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from report_outputs import invoke
from test_tensorrt_cpu import _Recorder, _trt_enums

from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.artifact import Artifact, LatencyRow
from sparsify_cli.exporters.tensorrt import parse_engine_info, parse_sparsity_log
from sparsify_cli.exporters.tensorrt.build import BuiltEngine
from sparsify_cli.exporters.tensorrt.config import configure_build
from sparsify_cli.exporters.tensorrt.export import EngineBackend, use_backend
from sparsify_cli.exporters.tensorrt.runtime import TrtLatencyRow
from sparsify_cli.exporters.tensorrt.stats import latency_stats
from sparsify_cli.gates import check_gates

ONNX_TO_TRT = {1: "DT_FLOAT", 6: "DT_INT32", 7: "DT_INT64", 9: "DT_BOOL", 10: "DT_HALF"}


def _onnx_network(graph):
    """What TensorRT's parser declares for the graph's inputs: shapes with -1 on symbolic axes."""
    inits = {i.name for i in graph.initializer}
    tensors = [
        SimpleNamespace(
            name=i.name,
            shape=tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim
            ),
            dtype=ONNX_TO_TRT[i.type.tensor_type.elem_type],
        )  # fmt: skip
        for i in graph.input
        if i.name not in inits
    ]
    return SimpleNamespace(num_inputs=len(tensors), get_input=tensors.__getitem__)


def _fake_build(onnx_path, engine_path, settings):
    """The real profile construction (configure_build) on the ONNX file's inputs; the "engine"
    is the ONNX file."""
    graph = onnx.load(str(onnx_path)).graph
    _, profiles, _ = configure_build(
        _Recorder("builder", []), _onnx_network(graph), settings, _trt_enums()
    )
    shutil.copyfile(onnx_path, engine_path)
    nodes = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    log = ""
    if settings.sparse_weights:
        log = (
            f"[I] [TRT] (Sparsity) Layers eligible for sparse math: {', '.join(nodes)}\n"
            "[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: "
            f"{', '.join(nodes)}\n"
        )
    tactic = "sm80_xmma_fprop_sparse_conv_f16" if settings.sparse_weights else "sm80_xmma_fprop"
    info = json.dumps(
        {
            "Layers": [
                {
                    "Name": n,
                    "LayerType": "CaskConvolution",
                    "Inputs": [{"Format/Datatype": "Channel major FP16 format"}],
                    "TacticName": tactic,
                    "Metadata": f"[ONNX Layer: {n}]",
                }
                for n in nodes
            ]
        }
    )
    log_path = engine_path.with_suffix(".build.log")
    info_path = engine_path.with_suffix(".layers.json")
    log_path.write_text(log)
    info_path.write_text(info)
    return BuiltEngine(
        engine_path,
        settings,
        0.01,
        parse_sparsity_log(log),
        parse_engine_info(info),
        log_path,
        info_path,
        tuple(profiles),
    )


def _fake_measure(engines, sample_shape, batch_sizes, timing, baseline=None):
    """Per-query times where the sparse engine is 1.5x faster (GPU compute) than dense."""
    rows = {}
    for name in engines:
        factor = 1.0 if name == "dense" else 1 / 1.5
        rows[name] = [
            TrtLatencyRow(
                b,
                latency_stats([factor * b * t for t in (0.10, 0.11, 0.12)]),
                latency_stats([factor * b * t + 0.05 for t in (0.10, 0.11, 0.12)]),
                1000.0,
                1000.0 * b,
            )
            for b in batch_sizes
        ]
    return {
        name: [
            TrtLatencyRow(
                r.batch,
                r.gpu_compute,
                r.host_latency,
                r.queries_per_s,
                r.samples_per_s,
                base.gpu_compute.median_ms / r.gpu_compute.median_ms,
            )
            for r, base in zip(rs, rows[baseline], strict=True)
        ]
        for name, rs in rows.items()
    }


FAKE = EngineBackend(
    check=lambda: None,
    build=_fake_build,
    infer=lambda path, x: runtime.run(runtime.session(path), x),
    measure=_fake_measure,
    version=lambda: "10.0-fake",
)


@pytest.fixture(scope="module")
def trt_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "out"
    with use_backend(FAKE):
        result = invoke(
            "convert", "digits_cnn", "--export", "onnx,tensorrt", "--out", str(out),
            "--batch-sizes", "1,4", "--bench-seconds", "0.05",
            "--min-speedup", "0.01", "--gate-max-accuracy-drop", "50",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output


def test_tensorrt_run_publishes_report_html_and_passes_both_gates(trt_out):
    """Before the common LatencyRow this run ended in KeyError 'p50_ms' after the engines were
    built, and the accuracy gate could never pass (no accuracy on the TensorRT artifact)."""
    out, output = trt_out
    report = json.loads((out / "report.json").read_text())
    trt = next(a for a in report["artifacts"] if a["format"] == "tensorrt")
    assert trt["path"] == "model_fp16_2of4.engine" and (out / trt["path"]).is_file()
    assert trt["accuracy"] is not None and trt["accuracy"] > 0.5
    assert trt["parity"]["ok"] and trt["parity"]["reference"] == "pytorch"
    assert trt["pattern_ok"] is None  # its sparse layers are in sparse_layers instead
    assert trt["sparse_layers"]["picked_sparse"] == trt["sparse_layers"]["masked"] > 0
    assert report["environment"]["tensorrt"] == "10.0-fake"
    rows = [LatencyRow.from_dict(r) for r in trt["latency"]]
    assert [r.batch for r in rows] == [1, 4]
    assert all(r.speedup_vs_dense == pytest.approx(1.5) for r in rows)
    assert rows[0].p50_ms == pytest.approx(0.11 / 1.5)  # the GPU compute median
    assert set(rows[0].extras["host_latency_ms"]) >= {"median_ms", "p99_ms"}
    html = (out / "report.html").read_text()
    assert "model_fp16_2of4.engine" in html and "1.50x" in html
    assert "model_fp16_2of4.engine" in " ".join(output.split())
    assert check_gates(report, max_accuracy_drop=50) == []

    def engine_failures(bar: float) -> list[str]:
        return [f for f in check_gates(report, min_speedup=bar) if f.startswith("model_fp16")]

    assert engine_failures(1.4) == [] and len(engine_failures(1.6)) == 2  # both batch sizes


def test_sparsify_report_regenerates_the_tensorrt_html(trt_out, tmp_path):
    out, _ = trt_out
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    result = invoke("report", str(copy))
    assert result.exit_code == 0, result.output
    assert "model_fp16_2of4.engine" in (copy / "report.html").read_text()


def test_tensorrt_latency_row_maps_gpu_compute_and_keeps_trtexec_figures():
    row = TrtLatencyRow(
        8, latency_stats([1.0, 2.0, 3.0]), latency_stats([2.0, 3.0, 4.0]), 500.0, 4000.0, 1.25
    ).to_row()
    assert (row.batch, row.p50_ms, row.mean_ms, row.throughput) == (8, 2.0, 2.0, 4000.0)
    assert (row.iterations, row.speedup_vs_dense) == (3, 1.25)
    again = LatencyRow.from_dict(row.to_dict())
    assert again == row and again.extras["queries_per_s"] == 500.0


def test_artifact_from_an_old_report_entry_without_parity_block():
    art = Artifact.from_dict(
        {"format": "onnx", "path": "m.onnx", "size_bytes": 3, "parity_max_abs": 1e-6,
         "parity_atol": 1e-4, "pattern_ok": True, "latency": [
             {"batch": 1, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0,
              "throughput": 1.0, "iterations": 30, "speedup_vs_dense": 1.1}]}
    )  # fmt: skip
    assert art.parity.ok and art.pattern_holds and art.latency[0].speedup_vs_dense == 1.1
    assert Artifact.from_dict(art.to_dict()).to_dict() == art.to_dict()


def test_nan_parity_never_passes():
    from sparsify_cli.exporters.artifact import Parity

    assert not Parity("pytorch", "max_abs", float("nan"), 1.0).ok
    assert Parity("pytorch", "max_abs", 0.5, 1.0).ok
    assert np.isinf(Parity("onnx-fp32", "max_abs", 3.0, float("inf")).tolerance)


def test_tensorrt_takes_a_model_with_token_ids_and_attention_mask(tmp_path):
    """A Hugging Face encoder (input_ids, attention_mask: int64 [batch, sequence]) converts with
    --export tensorrt: one profile per input, the sequence axis ranged, integers kept."""
    from hf_tiny import tiny_bert

    folder = tiny_bert(tmp_path / "bert")
    out = tmp_path / "out"
    with use_backend(FAKE):
        result = invoke(
            "convert", str(folder), "--export", "onnx,tensorrt", "--out", str(out),
            "--batch-sizes", "1,2", "--bench-seconds", "0.02",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    (trt,) = [a for a in report["artifacts"] if a["format"] == "tensorrt"]
    assert trt["parity"]["ok"]
    inputs = {p["name"]: p for p in trt["inputs"]}
    assert set(inputs) == {"input_ids", "attention_mask"}
    for p in inputs.values():
        seq = p["opt"][1]
        assert p["dtype"] == "int64" and seq > 1
        assert (p["min"], p["opt"], p["max"]) == ([1, 1], [2, seq], [2, seq])
    assert [list(a) for a in trt["build_settings"]["dynamic_axes"]] == [
        [name, 1, 1, seq, seq] for name in ("input_ids", "attention_mask")
    ]
