"""``sparsify bench``: the versioned JSON document and the CI gates, on a real output folder."""

from __future__ import annotations

import json

from report_outputs import cnn_output, invoke

TIMING = ("--bench-seconds", "0.02", "--batch-sizes", "1,4", "--quiet")
ROW_KEYS = {
    "batch",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "throughput",
    "iterations",
    "speedup_vs_dense",
}
ARTIFACT_KEYS = {"path", "size_bytes", "sha256", "accuracy", "latency"}


def test_bench_json_schema():
    out = cnn_output()
    result = invoke("bench", str(out), *TIMING, "--data", "digits", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) == {
        "kind",
        "schema",
        "tool_version",
        "created",
        "environment",
        "settings",
        "input_shape",
        "data",
        "baseline",
        "artifacts",
    }
    assert (doc["kind"], doc["schema"]) == ("sparsify-bench", 1)
    assert {"cpu", "cores", "threads", "python", "torch", "onnxruntime"} <= set(doc["environment"])
    assert doc["settings"]["batch_sizes"] == [1, 4] and doc["settings"]["threads"] == 1
    assert doc["input_shape"] == [1, 8, 8] and doc["data"] == "digits"
    base = doc["baseline"]
    assert set(base) == ARTIFACT_KEYS and base["path"].endswith("model_dense.onnx")
    assert [a["path"].rsplit("/", 1)[-1] for a in doc["artifacts"]] == ["model.onnx"]
    for entry in (base, *doc["artifacts"]):
        assert set(entry) == ARTIFACT_KEYS and len(entry["sha256"]) == 64
        assert [r["batch"] for r in entry["latency"]] == [1, 4]
        for row in entry["latency"]:
            assert ROW_KEYS <= set(row)  # the schema's keys; LatencyRow may add more
            assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
            assert row["speedup_vs_dense"] > 0
    assert all(r["speedup_vs_dense"] == 1.0 for r in base["latency"])
    # accuracy measured in ONNX Runtime equals what convert measured on the same split
    report = json.loads((out / "report.json").read_text())
    assert base["accuracy"] == report["accuracy"]["dense"]
    assert doc["artifacts"][0]["accuracy"] == report["accuracy"]["sparse_onnx"]


def test_bench_files_with_explicit_baseline_and_table():
    out = cnn_output()
    result = invoke(
        "bench", str(out / "model.onnx"), "--baseline", str(out / "model_dense.onnx"), *TIMING
    )
    assert result.exit_code == 0, result.output
    assert "model_dense.onnx (dense)" in result.output and "1.00x" in result.output


def test_bench_gates_pass_and_fail():
    out = cnn_output()
    ok = invoke(
        "bench",
        str(out),
        *TIMING,
        "--data",
        "digits",
        "--min-speedup",
        "0.01",
        "--gate-max-accuracy-drop",
        "50",
    )
    assert ok.exit_code == 0, ok.output
    slow = invoke("bench", str(out), *TIMING, "--min-speedup", "1000")
    assert slow.exit_code == 4
    assert "model.onnx: speedup" in slow.output and "below --min-speedup 1000.00x" in slow.output
    assert "at batch 1" in slow.output and "at batch 4" in slow.output
    drop = invoke("bench", str(out), *TIMING, "--data", "digits", "--gate-max-accuracy-drop", "0.5")
    assert drop.exit_code == 4 and "over --gate-max-accuracy-drop 0.5" in drop.output
    no_data = invoke("bench", str(out), *TIMING, "--gate-max-accuracy-drop", "0.5")
    assert no_data.exit_code == 1 and "--data" in no_data.output


def test_bench_user_errors(tmp_path):
    missing = invoke("bench", str(tmp_path / "nothing"), *TIMING)
    assert missing.exit_code == 1 and "not found" in missing.output
    empty = invoke("bench", str(tmp_path), *TIMING)
    assert empty.exit_code == 1 and "no .onnx" in empty.output
