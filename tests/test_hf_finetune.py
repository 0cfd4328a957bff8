"""Trained passes on a Hugging Face folder with text ``--data``, end to end through the CLI.

A tiny BERT encoder (random weights, its own WordPiece tokenizer, sentence-transformers files)
fine-tuned with ``--method maxq`` and ``--dst srigl`` on a plain text file (no labels:
distillation from the dense model on the attention-masked hidden states); a tiny classifier with
a labelled .jsonl (cross-entropy). Checks: exact pattern in the ONNX file, parity, and that
``out/hf_model`` reloads with ``from_pretrained`` and as a ``SentenceTransformer``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from sparsify_cli.app import app
from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.onnx_export import weight_refs
from sparsify_cli.exporters.verify import max_abs_diff
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.pattern import NMPattern, nm_violations

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
os.environ["HF_HUB_OFFLINE"] = "1"

from hf_tiny import tiny_bert, write_text  # noqa: E402

FAST = ["--batch-sizes", "1", "--bench-seconds", "0.02", "--json", "--quiet"]


def _convert(*args: str) -> dict:
    result = CliRunner().invoke(app, ["convert", *args, *FAST])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_ft")
    folder = tiny_bert(root / "bert", sentence_transformers=True)
    return root, folder, write_text(root / "train.txt", 48)


@pytest.fixture(scope="module")
def maxq_run(encoder):
    root, folder, text = encoder
    out = root / "maxq"
    report = _convert(
        str(folder), "--method", "maxq", "--data", str(text), "--max-length", "16",
        "--batch-size", "16", "--epochs", "1", "--out", str(out),
    )  # fmt: skip
    return out, report


def _ids(batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq // 2 :] = 0
    return rng.integers(5, 120, (batch, seq)), mask


def test_maxq_distils_on_text_and_onnx_is_exact_2_4(maxq_run) -> None:
    out, report = maxq_run
    assert report["training"]["maxq"]["loss"][0] > 0  # trained (distillation MSE)
    art = report["artifacts"][0]
    assert art["pattern_ok"] and art["parity_max_abs"] <= 1e-4
    manifest = Manifest.load(out / "manifest.safetensors")
    assert len(manifest.entries) >= 10
    model = onnx.load(str(out / "model.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    refs = weight_refs(model, [e.module for e in manifest.entries.values()])
    for entry in manifest.entries.values():
        assert refs[entry.module], entry.module
        for ref in refs[entry.module]:  # read from the file: every group of 4 holds exactly 2
            w = np.moveaxis(weights[ref.initializer], ref.in_axis, -1)
            assert ((w.reshape(-1, 4) != 0).sum(1) == 2).all(), entry.module


def test_maxq_hf_model_reloads_with_from_pretrained(maxq_run) -> None:
    out, _ = maxq_run
    sparse = transformers.AutoModel.from_pretrained(out / "hf_model", local_files_only=True).eval()
    ids, mask = _ids(3, 12)
    with torch.no_grad():
        ref = sparse(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    onnx_out = runtime.run(
        runtime.session(out / "model.onnx"), {"input_ids": ids, "attention_mask": mask}
    )
    assert max_abs_diff(onnx_out, ref.last_hidden_state.numpy()) <= 1e-4
    manifest = Manifest.load(out / "manifest.safetensors")
    modules = dict(sparse.named_modules())
    for entry in manifest.entries.values():
        weight = modules[entry.module.removeprefix("hf.")].weight.detach().numpy()
        assert nm_violations(weight, NMPattern(2, 4), axis=1) == 0
        assert np.array_equal(weight != 0, entry.mask)


def test_sentence_transformers_folder_keeps_its_files_and_loads(maxq_run, encoder) -> None:
    out, _ = maxq_run
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (out / "hf_model" / name).is_file(), name
    assert (out / "hf_model" / "tokenizer.json").is_file()
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(out / "hf_model"), device="cpu", local_files_only=True)
    emb = model.encode(["the movie was great", "the food felt awful"], convert_to_numpy=True)
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
    dense = st.SentenceTransformer(str(encoder[1]), device="cpu", local_files_only=True)
    assert not np.allclose(emb, dense.encode(["the movie was great", "the food felt awful"]))


def test_srigl_distils_on_text_with_constant_fan_in(encoder) -> None:
    root, folder, text = encoder
    out = root / "srigl"
    report = _convert(
        str(folder), "--dst", "srigl", "--sparsity", "0.5", "--data", str(text),
        "--max-length", "16", "--batch-size", "16", "--epochs", "1", "--out", str(out),
    )  # fmt: skip
    assert report["training"]["dst"]["loss"][0] > 0
    art = report["artifacts"][0]
    assert art["pattern_ok"] and art["parity_max_abs"] <= 1e-4
    sparse = transformers.AutoModel.from_pretrained(out / "hf_model", local_files_only=True)
    modules = dict(sparse.named_modules())
    manifest = Manifest.load(out / "manifest.safetensors")
    assert manifest.entries
    for entry in manifest.entries.values():
        weight = modules[entry.module.removeprefix("hf.")].weight.detach()
        fan_in = (weight != 0).sum(1)
        assert (fan_in[fan_in > 0] == entry.fan_in).all()


def test_labelled_jsonl_trains_a_classifier_with_cross_entropy(tmp_path) -> None:
    folder = tiny_bert(tmp_path / "cls", classifier=True)
    data = write_text(tmp_path / "train.jsonl", 60, labels=True)
    report = _convert(
        str(folder), "--method", "srste", "--data", str(data), "--batch-size", "16",
        "--epochs", "1", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert report["accuracy"]["metric"] == "top1" and report["accuracy"]["samples"] == 6
    assert report["training"]["srste"]["accuracy"][0] is not None


def test_text_errors_are_one_line(encoder, tmp_path) -> None:
    root, folder, text = encoder
    runner = CliRunner()
    labelled = write_text(tmp_path / "train.jsonl", 20, labels=True)
    result = runner.invoke(
        app, ["convert", str(folder), "--method", "asp", "--data", str(labelled),
              "--out", str(tmp_path / "a")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--method asp got labelled data, but the model outputs" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["convert", "digits_cnn", "--method", "asp", "--data", str(text),
              "--out", str(tmp_path / "b")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "only a Hugging Face folder brings a tokenizer" in result.output
    result = runner.invoke(
        app, ["convert", str(folder), "--max-length", "8", "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 1 and "--max-length has no effect in this run" in result.output


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic"])
def test_int8_of_the_text_folder_keeps_pattern_and_parity(encoder, tmp_path, mode) -> None:
    """Calibration from the same text data; the integer inputs are never quantized."""
    _, folder, text = encoder
    out = tmp_path / mode
    report = _convert(
        str(folder), "--data", str(text), "--max-length", "16", "--quantize", mode,
        "--out", str(out),
    )  # fmt: skip
    (q,) = [a for a in report["artifacts"] if a["format"].startswith("onnx-int8")]
    assert q["pattern_ok"]
    assert q["sqnr_db"] >= 25.0, q["sqnr_db"]  # parity of int8 vs the fp32 sparse ONNX
    if mode == "int8":
        assert q["quantization"]["calib_rows"] == 43  # 48 lines, 10% held out
    model = onnx.load(str(out / q["path"]))
    integer_inputs = {"input_ids", "attention_mask"}
    assert {i.name for i in model.graph.input} == integer_inputs
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
            assert not integer_inputs & set(node.input), node.name
    assert any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph.node)


def test_sparsegpt_calibrates_on_text_tokenized_by_the_folder(encoder) -> None:
    """One-shot SparseGPT takes the same text --data as the trained passes (issue 16)."""
    root, folder, text = encoder
    out = root / "sparsegpt"
    report = _convert(
        str(folder), "--method", "sparsegpt", "--data", str(text), "--max-length", "16",
        "--calib-size", "32", "--out", str(out),
    )  # fmt: skip
    art = report["artifacts"][0]
    assert art["pattern_ok"] and art["parity_max_abs"] <= 1e-4
    layers = [row for row in report["layers"] if row["pattern"] == "2:4"]
    assert len(layers) >= 12  # q/k/v/o + 2 MLP linears in each of the 2 layers
