"""MaxQ: schedule, soft-mask formula on hand-made tensors, folding, and a real short fine-tune."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from sparsify_cli.passes import FoldConfig, MaxQConfig, NMConfig, NMPattern, PassContext, run_passes
from sparsify_cli.passes.masks import fold, get_mask
from sparsify_cli.passes.maxq import axis_soft, dense_groups, maxq_soft_mask, preserve_rate
from sparsify_cli.passes.pattern import nm_violations
from sparsify_cli.passes.training import accuracy, make_loader
from sparsify_cli.samples import SAMPLES
from sparsify_cli.samples.datasets import digits


def test_linear_schedule_share_of_dense_groups_per_epoch():
    rates = [preserve_rate("linear", e, 0, 4) for e in range(6)]
    assert rates == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def test_cubic_schedule():
    rates = [preserve_rate("cubic", e, 0, 4) for e in range(5)]
    assert rates == pytest.approx([1.0, 0.75**3, 0.5**3, 0.25**3, 0.0])
    assert preserve_rate("cos", 2, 0, 4) == pytest.approx(math.cos(math.pi / 4))


def test_config_window_ends_fully_nm_on_the_last_epoch():
    cfg = MaxQConfig(epochs=8)  # authors' quarter: dense -> N:M over epochs 0..2
    assert [cfg.rate(e) for e in range(8)] == [1.0, 0.5, 0, 0, 0, 0, 0, 0]
    assert MaxQConfig(epochs=1).rate(0) == 0.0


def test_dense_groups_are_the_smallest_l1_blocks():
    # 1 output row, 4 groups of 4 with L1 norms 10, 1, 5, 2
    w = torch.tensor([[4.0, 3, 2, 1, 0.25, 0.25, 0.25, 0.25, 2, 1, 1, 1, 0.5, 0.5, 0.5, -0.5]])
    assert dense_groups(w, 4, 0.5).tolist() == [False, True, False, True]
    mask = maxq_soft_mask(w, NMPattern(2, 4), rate=0.5)
    nonzero = (mask != 0).reshape(4, 4).sum(1).tolist()
    assert nonzero == [2, 4, 2, 4]  # groups 1 and 3 stay dense, the others are 2:4


def test_axis_soft_by_hand():
    a = torch.tensor([[0.01, 0.02, 0.05, 0.09]])
    # r = 0.5 -> K = 2; thr = (0.02 + 0.05) / 2 = 0.035; hard = [0, 0, 1, 1]
    expected = [0, 0, 1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(-5.5))]
    assert axis_soft(a, 0.5, 1e-2)[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_soft_mask_formula_on_a_conv_weight_by_hand():
    # Conv [out=1, in=4, 1, 2]: two kernel positions, one 2:4 group at each.
    w = torch.tensor([[[[0.01, 0.08]], [[0.02, 0.07]], [[0.05, 0.03]], [[0.09, 0.04]]]])
    mask = maxq_soft_mask(w, NMPattern(2, 4), rate=0.0, tau=1e-2)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    # filter axis: 8 members, K = 4 smallest {.01,.02,.03,.04}, thr = (.04+.05)/2 = .045
    # position axis (k*k = 2 > 1): position 0 members [.01,.02,.05,.09], K=2, thr=.035;
    # position 1 members [.08,.07,.03,.04], K=2, thr=.055.
    # local 2:4 keeps {.05,.09} at position 0 and {.08,.07} at position 1.
    expected = torch.zeros(1, 4, 1, 2)
    expected[0, 2, 0, 0] = 1 + sig((0.05 - 0.045) / 0.01) + sig((0.05 - 0.035) / 0.01)
    expected[0, 3, 0, 0] = 1 + sig((0.09 - 0.045) / 0.01) + sig((0.09 - 0.035) / 0.01)
    expected[0, 0, 0, 1] = 1 + sig((0.08 - 0.045) / 0.01) + sig((0.08 - 0.055) / 0.01)
    expected[0, 1, 0, 1] = 1 + sig((0.07 - 0.045) / 0.01) + sig((0.07 - 0.055) / 0.01)
    assert torch.allclose(mask, expected, atol=1e-6)


def _loaded(name: str) -> nn.Module:
    model = SAMPLES[name].build()
    model.load_state_dict(torch.load(SAMPLES[name].checkpoint, weights_only=True)["state_dict"])
    return model


CNN_TARGETS = ["layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2",
               "layer2.shortcut.0", "layer3.conv1", "layer3.conv2"]  # fmt: skip


def test_fold_equals_masked_model_in_eval_and_is_exact_nm():
    data = digits()
    model = _loaded("digits_cnn")
    ctx = PassContext(
        targets=CNN_TARGETS, train=make_loader(data.x_train[:128], data.y_train[:128], 64, True)
    )
    model = run_passes(model, [MaxQConfig(n=1, m=4, epochs=1)], ctx)
    soft = get_mask(dict(model.named_modules())["layer1.conv1"]).soft
    assert soft.max() > 1.5  # real soft factors, not a binary mask
    x = torch.as_tensor(data.x_test)
    with torch.no_grad():
        masked = model.eval()(x)
        folded_model = fold(copy.deepcopy(model)).eval()
        folded = folded_model(x)
    assert (masked - folded).abs().max() < 1e-6
    modules = dict(folded_model.named_modules())
    for name in CNN_TARGETS:
        w = modules[name].weight.detach().numpy()
        groups = (w != 0).swapaxes(1, -1).reshape(-1, 4).sum(-1)
        assert (groups == 1).all(), name


def test_short_finetune_at_2_4_beats_one_shot_magnitude():
    data = digits()
    ctx = PassContext(
        targets=CNN_TARGETS,
        seed=0,
        train=make_loader(data.x_train, data.y_train, 64, True, seed=0),
    )
    magnitude = run_passes(_loaded("digits_cnn"), [NMConfig(2, 4), FoldConfig()], ctx)
    tuned = run_passes(_loaded("digits_cnn"), [MaxQConfig(n=2, m=4, epochs=1), FoldConfig()], ctx)
    modules = dict(tuned.named_modules())
    for name in CNN_TARGETS:
        assert nm_violations(modules[name].weight.detach().numpy(), NMPattern(2, 4)) == 0
    before = accuracy(magnitude, data.x_test, data.y_test)
    after = accuracy(tuned, data.x_test, data.y_test)
    assert after > before, (before, after)
    assert ctx.manifest["layer1.conv1.weight"].density == pytest.approx(0.5)


def _norm_input_stats(model, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of what BatchNorm ``name`` receives on ``x`` (eval)."""
    seen = []
    bn = dict(model.named_modules())[name]
    handle = bn.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    h = seen[0].transpose(0, 1).flatten(1)
    return h.mean(1), h.var(1)


def test_a_short_maxq_run_ends_with_the_norm_statistics_of_the_trained_model():
    """10 steps of MaxQ scale the kept weights by 1 to ~3; the running statistics (momentum
    0.1) would still mostly describe the dense model. They are re-estimated at the end, so the
    model evaluates and folds with its own statistics (before: 95.74% top-1, NLL 0.22 on
    digits with 300 rows; after: 98.89%, 0.077; docs/maxq.md)."""
    data = digits()
    x, y = data.x_train[:300], data.y_train[:300]
    ctx = PassContext(targets=CNN_TARGETS, seed=0, train=make_loader(x, y, 64, True, seed=0))
    model = run_passes(_loaded("digits_cnn"), [MaxQConfig(n=2, m=4, epochs=2)], ctx)
    assert ctx.metrics["maxq"]["norm_batches"] == 5
    for name in ("layer1.bn1", "layer3.bn2"):
        mean, var = _norm_input_stats(model, name, torch.as_tensor(x))
        bn = dict(model.named_modules())[name]
        scale = var.sqrt() + 1e-3
        assert ((bn.running_mean - mean).abs() / scale).max() < 0.05, name
        assert ((bn.running_var - var).abs() / var).max() < 0.2, name
    assert bn.momentum == 0.1  # restored
