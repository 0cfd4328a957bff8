"""Sparse-IFT: iso-FLOPs on both samples, shapes per family, exact warm starts, spectral gaps."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from sparsify_cli.passes.chains import hidden_chains, resize_chain
from sparsify_cli.passes.flops import layer_flops
from sparsify_cli.passes.masks import get_mask, masked_modules
from sparsify_cli.passes.registry import PassContext, run_passes
from sparsify_cli.passes.sparse_ift import SparseIFTConfig, ift_targets, solve_width
from sparsify_cli.passes.spectral import graph_gaps, spectral_report
from sparsify_cli.samples import SAMPLES


def _load(sample: str) -> tuple[torch.nn.Module, torch.Tensor]:
    spec = SAMPLES[sample]
    model = spec.build()
    model.load_state_dict(torch.load(spec.checkpoint, weights_only=True)["state_dict"])
    return model.eval(), torch.randn(spec.input_shape)


def _transform(sample: str, family: str, sparsity: float):
    model, example = _load(sample)
    dense = sum(f.dense for f in layer_flops(model, example).values())
    ctx = PassContext(targets=ift_targets(model, example), example=example)
    model = run_passes(model, [SparseIFTConfig(family, sparsity)], ctx)
    return model, example, ctx, dense


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("family", ["wide", "parallel", "factorized", "doped"])
@pytest.mark.parametrize("sample", ["digits_cnn", "digits_transformer"])
def test_iso_flops(sample: str, family: str, sparsity: float) -> None:
    model, example, ctx, dense = _transform(sample, family, sparsity)
    sparse = sum(f.sparse for f in layer_flops(model, example).values())
    assert abs(sparse / dense - 1) < 0.01
    assert {n for n, _ in masked_modules(model)} == set(ctx.targets)
    assert model(example).shape == (1, 10)


def test_targets_keep_stem_and_head_dense() -> None:
    model, example = _load("digits_cnn")
    targets = ift_targets(model, example)
    assert "stem.0" not in targets and "fc" not in targets and "layer2.shortcut.0" in targets
    model, example = _load("digits_transformer")
    targets = ift_targets(model, example)
    assert "embed" not in targets and "head" not in targets and "blocks.0.attn.q" in targets


def test_wide_widens_only_private_hidden_dims() -> None:
    dense, _ = _load("digits_cnn")
    model, _, _, _ = _transform("digits_cnn", "wide", 0.75)
    for block in ("layer1", "layer2", "layer3"):
        old, new = dense.get_submodule(block), model.get_submodule(block)
        assert new.conv1.in_channels == old.conv1.in_channels
        assert new.conv2.out_channels == old.conv2.out_channels  # residual width unchanged
        assert new.conv1.out_channels == new.bn1.num_features == new.conv2.in_channels
        assert new.conv1.out_channels > 3 * old.conv1.out_channels
    assert model.fc.weight.shape == dense.fc.weight.shape
    tmodel, _, _, _ = _transform("digits_transformer", "wide", 0.75)
    fc1 = tmodel.blocks[0].fc1
    assert fc1.in_features == 192 and fc1.out_features == tmodel.blocks[0].fc2.in_features > 768
    assert tmodel.blocks[0].attn.q.weight.shape == (192, 192)


def test_width_factor_formulas() -> None:
    s = 0.75
    assert solve_width(1, 0, 0, s) == pytest.approx(math.sqrt(1 / (1 - s)))
    assert solve_width(0, 1, 0, s) == pytest.approx(1 / (1 - s))
    k = solve_width(2, 3, 5, s)
    assert (1 - s) * (2 * k * k + 3 * k + 5) == pytest.approx(10)


def test_family_shapes() -> None:
    model, _, ctx, _ = _transform("digits_cnn", "parallel", 0.75)
    par = model.layer1.conv1
    assert len(par.branches) == 4 and isinstance(model.layer1.bn1, torch.nn.Identity)
    assert all(isinstance(b[1], torch.nn.BatchNorm2d) for b in par.branches)
    model, _, _, _ = _transform("digits_cnn", "factorized", 0.75)
    d = math.ceil(9 * 32 * 32 / (0.25 * (9 * 32 + 32)))
    u, v = model.layer1.conv1
    assert u.weight.shape == (d, 32, 3, 3) and v.weight.shape == (32, d, 1, 1)
    model, _, _, _ = _transform("digits_transformer", "doped", 0.75)
    doped = model.blocks[0].fc1
    rank = math.floor(0.75 * 192 * 768 / (192 + 768))
    assert doped.lowrank[0].weight.shape == (rank, 192)
    assert doped.sparse.weight.shape == (768, 192)


@pytest.mark.parametrize("sample", ["digits_cnn", "digits_transformer"])
def test_parallel_warm_start_is_exact(sample: str) -> None:
    """Disjoint parts of W in B copies (BN shifts / B) sum to the dense layer in eval mode."""
    dense, example = _load(sample)
    x = torch.randn(8, *example.shape[1:])
    reference = dense(x)
    model, _, ctx, _ = _transform(sample, "parallel", 0.75)
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-4)
    masks = [get_mask(model.get_submodule(n)).mask for n in ctx.targets[:4]]
    assert not (masks[0] & masks[1]).any()  # disjoint partition


def test_spectral_gaps() -> None:
    ram, weighted, d_avg = graph_gaps(np.ones((4, 4), bool), np.ones((4, 4)))
    assert d_avg == 4 and ram == pytest.approx(2 * math.sqrt(3)) and weighted == pytest.approx(4)
    model, _, ctx, _ = _transform("digits_cnn", "doped", 0.75)
    report = spectral_report(model)
    assert [r.layer for r in report] == list(ctx.targets)
    assert all(np.isfinite(r.weighted_gap) and r.d_avg > 1 for r in report)


class PlainCNN(torch.nn.Module):
    """conv -> relu -> conv -> relu -> maxpool -> flatten -> fc -> relu -> fc, no residuals, no
    BatchNorm: the only private hidden dimension runs through the pooling and the flatten."""

    def __init__(self, flatten: str) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.flat = torch.nn.Flatten()
        self.fc1 = torch.nn.Linear(16 * 4 * 4, 32)
        self.fc2 = torch.nn.Linear(32, 10)
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        if self.flatten == "module":
            x = self.flat(x)
        elif self.flatten == "view":
            x = x.view(x.size(0), -1)
        else:
            x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("flatten", ["function", "module", "view"])
def test_wide_widens_through_pooling_and_flatten(flatten: str) -> None:
    """A plain CNN (held out from the samples): conv2's channels widen, and with them fc1's
    inputs at every pooled position; the stem's input and the head's output stay, FLOPs equal."""
    torch.manual_seed(0)
    model, example = PlainCNN(flatten).eval(), torch.randn(2, 1, 8, 8)
    dense = sum(f.dense for f in layer_flops(model, example).values())
    targets = ift_targets(model, example)
    assert targets == ["conv2", "fc1"]
    with torch.no_grad():
        before = model(example)
    # widened before masking: fresh conv2 rows feed zero fc1 columns, the function is unchanged
    chain = next(c for c in hidden_chains(model, through_pooling=True) if c.producer == "conv2")
    assert (chain.consumer, chain.positions) == ("fc1", 16)
    widened = copy.deepcopy(model)
    resize_chain(widened, chain, torch.cat([torch.arange(16), torch.full((5,), -1)]))
    assert widened.fc1.in_features == 21 * 16
    with torch.no_grad():
        torch.testing.assert_close(widened(example), before)
    ctx = PassContext(targets=targets, example=example)
    model = run_passes(model, [SparseIFTConfig("wide", 0.75)], ctx)
    assert model.conv1.weight.shape == (8, 1, 3, 3) and model.fc2.weight.shape == (10, 32)
    assert model.conv2.out_channels == 64 and model.fc1.in_features == 64 * 16  # k = 1/(1-s)
    sparse = sum(f.sparse for f in layer_flops(model, example).values())
    assert abs(sparse / dense - 1) < 0.01
    assert model(example).shape == (2, 10)
    # without through_pooling (removing ablated neurons) no chain crosses the pool
    assert all(c.positions == 1 and c.producer != "conv2" for c in hidden_chains(model))
