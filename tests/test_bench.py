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
    "ratio_low",
    "ratio_high",
    "noisy",
}
ARTIFACT_KEYS = {"path", "size_bytes", "sha256", "accuracy", "inputs", "latency"}


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
        "data",
        "baselines",
        "artifacts",
    }
    assert (doc["kind"], doc["schema"]) == ("sparsify-bench", 2)
    assert {"cpu", "cores", "threads", "python", "torch", "onnxruntime"} <= set(doc["environment"])
    assert doc["settings"]["batch_sizes"] == [1, 4] and doc["settings"]["threads"] == 1
    assert doc["data"] == "digits"
    (base,) = doc["baselines"]
    assert set(base) == ARTIFACT_KEYS and base["path"].endswith("model_dense.onnx")
    assert [a["path"].rsplit("/", 1)[-1] for a in doc["artifacts"]] == ["model.onnx"]
    assert doc["artifacts"][0]["baseline"] == base["path"]
    for entry in (base, *doc["artifacts"]):
        assert set(entry) - {"baseline"} == ARTIFACT_KEYS and len(entry["sha256"]) == 64
        assert entry["inputs"] == {"input": [1, 1, 8, 8]}
        assert [r["batch"] for r in entry["latency"]] == [1, 4]
        for row in entry["latency"]:
            assert ROW_KEYS <= set(row)  # the schema's keys; LatencyRow may add more
            assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
            assert row["speedup_vs_dense"] > 0 and row["iterations"] >= 10
            assert row["ratio_low"] <= row["ratio_high"] and isinstance(row["noisy"], bool)
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


def test_bench_of_a_text_model_folder_reads_the_inputs_convert_recorded(tmp_path):
    """A transformer's ONNX has a dynamic sequence axis; ``convert`` records the inputs it
    timed (shape, dtype, token range) in report.json, and ``bench out/`` uses them."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from hf_tiny import tiny_bert

    folder = tiny_bert(tmp_path / "bert")
    out = tmp_path / "out"
    assert invoke("convert", str(folder), "--nm", "2:4", "--out", str(out), *TIMING).exit_code == 0
    recorded = json.loads((out / "report.json").read_text())["inputs"]
    assert [(i["name"], i["shape"], i["dtype"]) for i in recorded] == [
        ("input_ids", [1, 64], "int64"),
        ("attention_mask", [1, 64], "int64"),
    ]
    assert (recorded[0]["low"], recorded[0]["high"]) == (0, 120)
    result = invoke("bench", str(out), *TIMING, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["artifacts"][0]["inputs"] == {"input_ids": [1, 64], "attention_mask": [1, 64]}
    shorter = invoke(
        "bench", str(out), *TIMING, "--json", "--shapes", "input_ids:1x16,attention_mask:1x16"
    )
    assert json.loads(shorter.output)["artifacts"][0]["inputs"]["input_ids"] == [1, 16]
