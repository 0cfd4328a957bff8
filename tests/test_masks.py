"""Mask parametrizations, folding, the pass registry and layer selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsify_cli.passes import (
    FoldConfig,
    NMConfig,
    PassContext,
    Selection,
    run_passes,
    select_layers,
)
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.masks import get_mask, masked_modules
from sparsify_cli.passes.pattern import nm_violations
from sparsify_cli.passes.registry import config_from_dict, config_to_dict
from sparsify_cli.samples import SAMPLES


def _sample(name):
    s = SAMPLES[name]
    model = s.build()
    model.load_state_dict(torch.load(s.checkpoint, weights_only=True)["state_dict"])
    return model.eval(), torch.randn(4, *s.input_shape[1:])


def test_mask_is_a_saved_bool_buffer_and_fold_matches_masked():
    model, x = _sample("digits_cnn")
    targets = [c.name for c in select_layers(model, 4, x[:1]) if c.selected]
    ctx = PassContext(targets=targets)
    run_passes(model, [NMConfig(2, 4)], ctx)
    state = model.state_dict()
    mask_keys = [k for k in state if k.endswith(".mask")]
    assert len(mask_keys) == len(targets)
    assert all(state[k].dtype == torch.bool for k in mask_keys)
    masked_out = model(x)
    run_passes(model, [FoldConfig()], ctx)
    assert masked_modules(model) == []
    assert not any(k.endswith(".mask") or "parametrizations" in k for k in model.state_dict())
    torch.testing.assert_close(model(x), masked_out, rtol=0, atol=0)
    modules = dict(model.named_modules())
    for name in targets:
        assert nm_violations(modules[name].weight.detach().numpy(), NMConfig(2, 4).pattern) == 0
    assert set(ctx.manifest) == {f"{t}.weight" for t in targets}
    assert all(e.pattern == "2:4" and e.fan_in is not None for e in ctx.manifest.values())


def test_masked_state_dict_round_trips_into_a_fresh_model():
    model, x = _sample("digits_transformer")
    targets = [c.name for c in select_layers(model, 4, x[:1]) if c.selected]
    run_passes(model, [NMConfig(1, 4)], PassContext(targets=targets))
    fresh, _ = _sample("digits_transformer")
    run_passes(fresh, [NMConfig(2, 4)], PassContext(targets=targets))  # different masks
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))
    assert torch.equal(
        get_mask(dict(fresh.named_modules())[targets[0]]).mask,
        get_mask(dict(model.named_modules())[targets[0]]).mask,
    )


def test_fold_before_sparsify_is_an_error_naming_the_allowed_order():
    model, _ = _sample("digits_cnn")
    with pytest.raises(SparsifyError, match="cannot follow 'fold'"):
        run_passes(model, [FoldConfig(), NMConfig()], PassContext())


def test_configs_round_trip_and_reject_unknown_keys():
    cfg = NMConfig(1, 8)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(SparsifyError, match="unknown key 'nn'"):
        config_from_dict({"pass": "magnitude", "n": 2, "nn": 4})
    with pytest.raises(SparsifyError, match="unknown pass"):
        config_from_dict({"pass": "nope"})


def test_selection_lists_every_layer_with_a_reason():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(8, 8, 3, groups=8, padding=1)
            self.conv = nn.Conv2d(8, 16, 3, padding=1)
            self.norm = nn.BatchNorm2d(16)
            self.odd = nn.Linear(16, 30)
            self.mid = nn.Linear(30, 12)
            self.head = nn.Linear(12, 5)

        def forward(self, x):
            x = self.norm(self.conv(self.dw(x))).mean((2, 3))
            return self.head(self.mid(self.odd(x)))

    choices = {c.name: c for c in select_layers(Net(), 4, torch.randn(1, 8, 4, 4))}
    assert "depthwise" in choices["dw"].reason
    assert choices["conv"].selected
    assert "BatchNorm2d" in choices["norm"].reason
    assert choices["odd"].selected
    assert choices["mid"].reason == "in_features 30 not divisible by 4"
    assert "output head" in choices["head"].reason
    excluded = {
        c.name: c
        for c in select_layers(
            Net(), 4, torch.randn(1, 8, 4, 4), Selection(exclude=("co*",), sparsify_head=True)
        )
    }
    assert "--exclude" in excluded["conv"].reason and excluded["head"].selected
    only = {
        c.name: c
        for c in select_layers(Net(), 4, torch.randn(1, 8, 4, 4), Selection(include=("odd",)))
    }
    assert only["odd"].selected and only["conv"].reason == "not matched by --include"
