"""The output head is found from the autograd graph of the output, never from tensor ids."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from sparsify_cli.passes.selection import Selection, output_head, select_layers

transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"


def _bert_encoder(layers: int = 6) -> nn.Module:
    from sparsify_cli.hf import LogitsOnly

    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=50,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return LogitsOnly(transformers.BertModel(config).eval(), ["input_ids", "attention_mask"])


def _tokens() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(0, 50, (1, 16), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.ones(1, 16, dtype=torch.long),
    }


def test_bert_encoder_has_no_linear_head() -> None:
    """A 6-layer BERT encoder returns LayerNorm's output: no Linear is its head, and every
    attention / MLP projection is selected (the id lookup once named layer.5's attention output
    projection as the head, because Python reused a freed tensor's id)."""
    model = _bert_encoder()
    assert output_head(model, _tokens()) is None
    choices = {c.name: c for c in select_layers(model, 4, _tokens(), Selection())}
    linears = [n for n, c in choices.items() if c.op == "Linear" and "pooler" not in n]
    assert len(linears) == 36
    assert all(choices[n].selected for n in linears)


def test_head_found_through_reshapes_and_frozen_weights() -> None:
    """A classifier followed by view-like ops is still the head, even with frozen weights."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(8, 8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.body(x))).unsqueeze(1).flatten(1).squeeze(-1)

    net = Net().eval().requires_grad_(False)
    assert output_head(net, torch.randn(2, 8)) == "fc"
    assert not any(p.requires_grad for p in net.parameters())  # restored
