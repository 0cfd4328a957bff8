"""Dynamic sparse training: update invariants, SRigL constant fan-in, ablated neurons removed from
the exported ONNX, and a short real run on digits."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.onnx_export import export_onnx, initializers
from sparsify_cli.passes.dst import DSTConfig, ShrinkConfig, _Rewirer, init_masks, rewire_fanin
from sparsify_cli.passes.fold import FoldConfig
from sparsify_cli.passes.masks import dense_weight, get_mask
from sparsify_cli.passes.registry import PassContext, run_passes
from sparsify_cli.passes.sparse_ift import ift_targets
from sparsify_cli.passes.training import accuracy, make_loader
from sparsify_cli.samples import SAMPLES
from sparsify_cli.samples.datasets import digits


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, rewirer: _Rewirer, step: int):
    x = torch.randn(16, 1, 8, 8)
    rewirer.before_step(model, step)
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("method", ["set", "rigl"])
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_rewire_invariants(method: str, opt: str) -> None:
    model = _mlp()
    targets = ["1", "3"]
    config = DSTConfig(method, 0.8, delta_t=1, alpha=0.3)
    budgets = init_masks(model, config, targets, seed=0)
    layers = {n: model.get_submodule(n) for n in targets}
    rewirer = _Rewirer(layers, config, total_steps=100, budgets=budgets, last="3", seed=0)
    params = model.parameters()
    optimizer = (
        torch.optim.SGD(params, lr=0.1, momentum=0.9) if opt == "sgd" else torch.optim.AdamW(params)
    )
    _step(model, optimizer, rewirer, 0)
    _step(model, optimizer, rewirer, 1)  # an update step: RigL captures dense grads
    assert set(rewirer.grads) == (set(targets) if method == "rigl" else set())
    for name, module in layers.items():
        mask = get_mask(module).mask
        if method == "rigl":
            assert (rewirer.grads[name][~mask] != 0).any()  # dense: nonzero where mask is off
        assert (dense_weight(module).grad[~mask] == 0).all()  # optimizer sees masked grads
        old = mask.clone()
        grown = rewirer.update(name, module, optimizer, fraction=0.3)
        new = get_mask(module).mask
        assert int(new.sum()) == int(old.sum()) == budgets[name]  # density exactly constant
        assert grown.any() and (grown == (new & ~old)).all()
        assert (dense_weight(module)[grown] == 0).all()  # grown weights start at 0
        for state in optimizer.state[dense_weight(module)].values():
            if isinstance(state, torch.Tensor) and state.shape == grown.shape:
                assert (state[grown] == 0).all()  # their optimizer state is reset
    rewirer.close()


def test_rigl_grows_largest_dense_gradient() -> None:
    from sparsify_cli.passes.dst import rewire_unstructured

    weight = torch.tensor([[3.0, 0.1, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]])
    mask = weight != 0
    grad = torch.tensor([[0.0, 0.0, 5.0, 1.0], [0.0, 0.0, 0.5, 0.2]])
    new = rewire_unstructured(weight, grad, mask, 0.25, "rigl", torch.Generator())
    assert new.tolist() == [[True, False, True, False], [True, True, False, False]]


def test_srigl_constant_fanin_and_ablation() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 16)
    weight[:3] *= 1e-3  # three weak neurons: few salient weights -> ablated
    mask = torch.zeros(8, 16, dtype=torch.bool)
    mask[:, :4] = True
    grad = torch.randn(8, 16)
    grad[:3] *= 1e-3
    new = rewire_fanin(weight * mask, grad, mask, 0.3, budget=32, gamma_sal=0.9, ablate=True)
    counts = new.sum(1)
    assert (counts[:3] == 0).all()
    active = counts[counts > 0]
    assert (active == active[0]).all() and int(active[0]) == 32 // 5
    assert int(new.sum()) <= 32


def test_srigl_training_keeps_constant_fanin_exactly() -> None:
    data = digits()
    model = _mlp()
    ctx = PassContext(
        targets=["1", "3"], train=make_loader(data.x_train[:512], data.y_train[:512], 64, True)
    )
    config = DSTConfig("srigl", 0.9, epochs=3, lr=3e-3, delta_t=4, gamma_sal=0.9)
    model = run_passes(model, [config], ctx)
    assert ctx.metrics["dst"]["updates"] >= 3
    for name in ctx.targets:
        holder = get_mask(model.get_submodule(name))
        assert holder.pattern == "fanin"
        counts = holder.mask.sum(1)
        active = counts[counts > 0]
        assert len(active) and (active == active[0]).all()


def _ablate(model: nn.Module, name: str, rows: list[int]) -> None:
    holder = get_mask(model.get_submodule(name))
    holder.mask[rows] = False


def test_ablated_neurons_removed_from_onnx(tmp_path) -> None:
    model = _mlp()
    with torch.no_grad():
        model[1].bias[:4] = torch.tensor([0.5, -0.5, 0.2, 0.0])  # constant outputs after ReLU
    ctx = PassContext(targets=["1", "3"])
    model = run_passes(model, [DSTConfig("srigl", 0.75, epochs=0)], ctx)
    _ablate(model, "1", [0, 1, 2, 3])
    x = torch.randn(32, 1, 8, 8)
    reference = model.eval()(x).detach()
    model = run_passes(model, [ShrinkConfig(), FoldConfig()], ctx)
    assert ctx.metrics["shrink_ablated"][0]["removed"] == 4
    entries = ctx.manifest
    assert entries["1.weight"].shape == (44, 64) and entries["1.weight"].ablated == ()
    assert entries["1.weight"].fan_in == 16 and entries["3.weight"].fan_in is not None
    path = tmp_path / "model.onnx"
    export_onnx(model, x[:1], path)
    shapes = sorted(w.shape for w in initializers(onnx.load(str(path))).values() if w.ndim == 2)
    assert (44, 64) in shapes or (64, 44) in shapes  # the smaller dense layer, not zero rows
    out = runtime.run(runtime.session(path), x.numpy())
    np.testing.assert_allclose(out, reference.numpy(), atol=1e-5)


def test_shrink_in_cnn_keeps_padded_nonzero_constants() -> None:
    spec = SAMPLES["digits_cnn"]
    model = spec.build()
    model.load_state_dict(torch.load(spec.checkpoint, weights_only=True)["state_dict"])
    example = torch.zeros(spec.input_shape)
    ctx = PassContext(targets=ift_targets(model, example))
    model = run_passes(model, [DSTConfig("srigl", 0.75, epochs=0)], ctx)
    with torch.no_grad():
        model.layer1.bn1.bias[:2] = torch.tensor([-1.0, 1.0])  # relu: zero, nonzero constant
    _ablate(model, "layer1.conv1", [0, 1])
    x = torch.randn(8, 1, 8, 8)
    reference = model.eval()(x).detach()
    shrunk = run_passes(copy.deepcopy(model), [ShrinkConfig()], ctx)
    row = next(r for r in ctx.metrics["shrink_ablated"] if r["layer"] == "layer1.conv1")
    assert row["removed"] == 1 and row["kept"] == 1 and row["reason"]
    assert shrunk.layer1.conv1.weight.shape[0] == 31 and shrunk.layer1.conv2.weight.shape[1] == 31
    torch.testing.assert_close(shrunk.eval()(x), reference, rtol=1e-5, atol=1e-5)


def test_short_dst_run_learns_from_scratch() -> None:
    data = digits()
    spec = SAMPLES["digits_cnn"]
    torch.manual_seed(0)
    model = spec.build()  # random init, no checkpoint
    example = torch.zeros(spec.input_shape)
    ctx = PassContext(
        targets=ift_targets(model, example),
        train=make_loader(data.x_train, data.y_train, 64, True),
    )
    config = DSTConfig("rigl", 0.75, placement="random", epochs=2, lr=3e-3, delta_t=10)
    model = run_passes(model, [config], ctx)
    assert ctx.metrics["dst"]["updates"] >= 3
    assert accuracy(model, data.x_test, data.y_test) > 0.6  # chance is 0.1


def test_default_update_interval_gives_a_short_run_its_updates():
    """delta_t unset: T_end / 10 steps, so one digits epoch (26 steps) updates ~10 times (at
    the papers' fixed 100 steps, the samples' default 8 epochs made one update)."""
    data = digits()
    spec = SAMPLES["digits_cnn"]
    torch.manual_seed(0)
    model = spec.build()
    example = torch.zeros(spec.input_shape)
    train = make_loader(data.x_train, data.y_train, 64, True)
    ctx = PassContext(targets=ift_targets(model, example), train=train)
    run_passes(model, [DSTConfig("set", 0.75, epochs=1)], ctx)
    t_end = int(0.75 * len(train))
    assert ctx.metrics["dst"]["delta_t"] == t_end // 10
    assert ctx.metrics["dst"]["updates"] == (t_end - 1) // (t_end // 10)
