"""Models built from other packages' layers, which are not plain ``nn.Linear`` calls.

* GPT-2 (transformers): its projections are ``Conv1D`` (``x @ W + b``, ``W`` stored
  ``[in, out]``). They are read as the Linear they compute, sparsified, condensed, and written back
  in ``Conv1D``'s layout so ``from_pretrained`` loads ``out/hf_model``.
* ``nn.TransformerEncoder`` (torch): ``nn.MultiheadAttention`` runs ``out_proj`` (a Linear
  subclass) as ``F.linear`` inside its own scope, and a freshly built encoder's layers are
  deep copies, so torch's exporter stores their equal weights once behind ``Identity`` nodes.
  Every layer is still found, checked and condensed in every artifact.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from report_outputs import invoke

from sparsify_cli.exporters.condensed import session_options
from tests.conftest import FAST

transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

ENCODER = """
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.enc(self.proj(x)).mean(1))
"""


def _convert(source, out, *args: str) -> dict:
    """``sparsify convert SOURCE ARGS --out OUT`` (fast timing); its report.json."""
    result = invoke("convert", str(source), *args, "--out", str(out), *FAST)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_gpt2_conv1d_projections_are_sparsified_condensed_and_reload(tmp_path) -> None:
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        vocab_size=100,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "out"
    # every layer condensed, whichever kernel is faster on this CPU
    args = ("--nm", "2:4", "--export", "onnx,condensed", "--condensed-layers", "all")
    report = _convert(tmp_path / "gpt2", out, *args)
    projections = {
        f"hf.transformer.h.{i}.{part}"
        for i in range(2)
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert {r["name"] for r in report["layers"] if r["pattern"] == "2:4"} == projections
    assert {r["op"] for r in report["layers"] if r["name"] in projections} == {"Linear"}
    for artifact in report["artifacts"]:
        checks = {c["module"]: c["ok"] for c in artifact["pattern_checks"]}
        assert checks == dict.fromkeys(projections, True), artifact["path"]
    condensed = next(a for a in report["artifacts"] if a["format"] == "condensed")
    assert condensed["layers_condensed"] == len(projections)

    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out / "hf_model").eval()
    conv1d = reloaded.transformer.h[0].attn.c_attn
    assert type(conv1d).__name__ == "Conv1D" and conv1d.weight.shape == (32, 96)
    groups = (conv1d.weight.t().reshape(96, -1, 4) != 0).sum(-1)  # N:M along the inputs
    assert int(groups.max()) == 2
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = reloaded(input_ids=ids, attention_mask=mask).logits.numpy()
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    for name, options in (("model.onnx", None), ("model_condensed.onnx", session_options())):
        sess = ort.InferenceSession(str(out / name), options)
        assert np.abs(sess.run(None, feed)[0] - ref).max() < 1e-4, name


def test_transformer_encoder_with_deep_copied_layers_in_every_artifact(tmp_path) -> None:
    (tmp_path / "encmodels.py").write_text(ENCODER)
    sys.path.insert(0, str(tmp_path))
    try:
        import encmodels

        torch.manual_seed(0)
        torch.save(encmodels.Encoder().state_dict(), tmp_path / "enc.pt")  # layers equal
        out = tmp_path / "out"
        report = _convert(
            tmp_path / "enc.pt", out, "--arch", "encmodels:Encoder", "--input-shape", "1,8,16",
            "--nm", "2:4", "--export", "onnx,condensed", "--condensed-layers", "all",
            "--quantize", "int8-dynamic",
        )  # fmt: skip
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("encmodels", None)
    sparse = {r["name"] for r in report["layers"] if r["pattern"] == "2:4"}
    expected = {"proj"} | {
        f"enc.layers.{i}.{part}"
        for i in range(2)
        for part in ("self_attn.out_proj", "linear1", "linear2")
    }
    assert sparse == expected
    formats = set()
    for artifact in report["artifacts"]:
        formats.add(artifact["format"])
        checks = {c["module"]: c["ok"] for c in artifact["pattern_checks"]}
        assert checks == dict.fromkeys(expected, True), artifact["path"]
    assert {"onnx", "condensed"} <= formats and len(report["artifacts"]) >= 3
    condensed = next(a for a in report["artifacts"] if a["format"] == "condensed")
    assert condensed["layers_condensed"] == len(expected)


def test_hf_vision_folder_gets_pixel_values_and_condensed_convs(tmp_path) -> None:
    """A transformers CNN (ResNet) has no vocab_size: the example is ``pixel_values`` from
    ``num_channels`` (224 x 224 without an ``image_size``), and its convs are condensed."""
    config = transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5
    )
    torch.manual_seed(0)
    transformers.ResNetForImageClassification(config).save_pretrained(tmp_path / "resnet")
    out = tmp_path / "out"
    args = ("--nm", "2:4", "--export", "onnx,condensed", "--condensed-layers", "all")
    report = _convert(tmp_path / "resnet", out, *args)
    (given,) = onnx.load(str(out / "model.onnx")).graph.input
    dims = [d.dim_value or d.dim_param for d in given.type.tensor_type.shape.dim]
    assert (given.name, dims) == ("pixel_values", ["batch", 3, 224, 224])
    convs = {r["name"] for r in report["layers"] if r["op"] == "Conv2d" and r["pattern"] == "2:4"}
    assert len(convs) >= 6
    condensed = next(a for a in report["artifacts"] if a["format"] == "condensed")
    assert condensed["pattern_ok"] and condensed["parity"]["ok"]
    kernels = {c["module"]: c["kernel"] for c in condensed["pattern_checks"]}
    assert {kernels[name] for name in convs} == {"CondensedConv"}


def test_a_config_with_neither_tokens_nor_images_asks_for_the_inputs() -> None:
    from sparsify_cli import hf
    from sparsify_cli.passes.errors import SparsifyError

    with pytest.raises(SparsifyError, match="neither vocab_size .* nor num_channels") as err:
        hf.default_specs(transformers.PretrainedConfig())
    assert "--input NAME:SHAPE:DTYPE" in str(err.value.fix)


def test_encoder_decoder_t5_reads_text_shifted_into_the_decoder(tmp_path) -> None:
    """T5 needs ``decoder_input_ids``: the example has them, and text data feeds the decoder the
    text shifted right, so one-shot calibration on a text file runs end to end."""
    sys.path.insert(0, str(Path(__file__).parent))
    from hf_tiny import save_tokenizer, sentences, write_text

    folder = tmp_path / "t5"
    folder.mkdir()
    save_tokenizer(folder, [t for t, _ in sentences(200, seed=99)])
    config = transformers.T5Config(
        vocab_size=120,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    text = write_text(tmp_path / "train.txt", 60)
    out = tmp_path / "out"
    args = ("--nm", "2:4", "--method", "sparsegpt", "--data", str(text))
    report = _convert(folder, out, *args)
    names = [i.name for i in onnx.load(str(out / "model.onnx")).graph.input]
    assert names == ["input_ids", "attention_mask", "decoder_input_ids"]
    assert report["agreement"]["samples"] >= 6  # the held-out texts, not the random example
    sparse = [r for r in report["layers"] if r["pattern"] == "2:4"]
    assert any("decoder" in r["name"] for r in sparse) and any(
        "encoder" in r["name"] for r in sparse
    )
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out / "hf_model")
    assert reloaded.config.is_encoder_decoder
