"""A Hugging Face model folder (save_pretrained) through ``sparsify convert FOLDER --nm 2:4``."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from sparsify_cli.app import app
from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.verify import max_abs_diff
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.pattern import NMPattern, nm_violations

transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

ATTENTION_AND_MLP = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Tiny random BERT classifier saved with save_pretrained, converted once through the CLI."""
    root = tmp_path_factory.mktemp("hf")
    config = transformers.BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=100,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(root / "bert")
    (root / "bert" / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # a tokenizer file to carry over
    out = root / "out"
    result = CliRunner().invoke(
        app,
        [
            "convert",
            str(root / "bert"),
            "--nm",
            "2:4",
            "--out",
            str(out),
            "--batch-sizes",
            "1,4",
            "--bench-seconds",
            "0.05",
            "--json",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return root, out, json.loads(result.output[result.output.index("{") :])


def _linear_names(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["layers"]}


def test_attention_and_mlp_linears_hold_2_4_in_onnx(converted) -> None:
    _, out, report = converted
    layers = _linear_names(report)
    expected = {f"hf.bert.encoder.layer.{i}.{part}" for i in range(2) for part in ATTENTION_AND_MLP}
    assert {n for n, r in layers.items() if r["pattern"] == "2:4"} == expected
    art = report["artifacts"][0]
    assert art["pattern_ok"]
    assert {c["module"] for c in art["pattern_checks"] if c["ok"]} == expected
    assert art["parity_max_abs"] <= 1e-4
    # embeddings, norms, pooler and classifier stay dense and are listed with the reason
    assert layers["hf.classifier"]["skipped"].startswith("output head kept dense")
    assert layers["hf.bert.pooler.dense"]["skipped"].startswith("output head kept dense")
    assert "Embedding is not sparsified" in layers["hf.bert.embeddings.word_embeddings"]["skipped"]
    assert "LayerNorm" in layers["hf.bert.embeddings.LayerNorm"]["skipped"]


def test_onnx_has_dynamic_batch_and_sequence(converted) -> None:
    """Token ids and mask, batch and sequence axes named; a shorter padded batch matches torch."""
    _, out, _ = converted
    model = onnx.load(str(out / "model.onnx"))
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert dims == {
        "input_ids": ["batch", "sequence"],
        "attention_mask": ["batch", "sequence"],
    }
    sparse = transformers.BertForSequenceClassification.from_pretrained(
        out / "hf_model", local_files_only=True
    ).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (3, 20))
    mask = np.ones((3, 20), np.int64)
    mask[1, 12:] = 0
    onnx_out = runtime.run(
        runtime.session(out / "model.onnx"), {"input_ids": ids, "attention_mask": mask}
    )
    with torch.no_grad():
        ref = sparse(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    assert max_abs_diff(onnx_out, ref.numpy()) <= 1e-4


def test_sparse_folder_round_trips_into_from_pretrained(converted) -> None:
    """The reloaded folder equals the dense model with the manifest's masks applied."""
    root, out, _ = converted
    dense = transformers.BertForSequenceClassification.from_pretrained(
        root / "bert", local_files_only=True
    ).eval()
    sparse = transformers.BertForSequenceClassification.from_pretrained(
        out / "hf_model", local_files_only=True
    ).eval()
    manifest = Manifest.load(out / "manifest.safetensors")
    assert len(manifest.entries) == 12
    masked = dict(dense.named_modules())
    with torch.no_grad():
        for entry in manifest.entries.values():
            module = masked[entry.module.removeprefix("hf.")]
            module.weight.mul_(torch.from_numpy(entry.mask))
            weight = dict(sparse.named_modules())[entry.module.removeprefix("hf.")].weight
            assert nm_violations(weight.numpy(), NMPattern(2, 4), axis=1) == 0
            assert torch.equal(weight, module.weight)
        ids = torch.randint(0, 100, (2, 32))
        assert torch.equal(sparse(input_ids=ids).logits, dense(input_ids=ids).logits)
    saved = load_file(str(out / "hf_model" / "model.safetensors"))
    assert not any(".mask" in k or "parametrizations" in k for k in saved)
    assert (out / "hf_model" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"


def test_roberta_positions_after_the_padding_index_fit_the_example(tmp_path) -> None:
    """RoBERTa numbers positions from ``padding_idx + 1``: with a table of exactly
    ``max_position_embeddings`` rows, an example (or text) that long indexes past it in ONNX
    Runtime. The example and the timing inputs are cut to what the model can embed."""
    from sparsify_cli import hf

    config = transformers.RobertaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=40,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.RobertaModel(config)
    assert hf.max_sequence(model) == 38
    assert hf.default_specs(config, hf.max_sequence(model))[0].shape == (1, 38)
    assert (
        hf.max_sequence(
            transformers.BertModel(
                transformers.BertConfig(
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=64,
                    max_position_embeddings=40,
                )
            )
        )
        == 40
    )
    model.save_pretrained(tmp_path / "roberta")
    args = ["convert", str(tmp_path / "roberta"), "--nm", "2:4", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--bench-seconds", "0.05", "--quiet"])
    assert result.exit_code == 0, result.output
