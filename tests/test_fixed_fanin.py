"""Fixed fan-in output layer, SET rewiring, auxiliary objective and a tiny XMC run."""

from __future__ import annotations

import pytest
import torch

from sparsify_cli.passes.fixed_fanin import (
    FixedFanInLinear,
    RewireConfig,
    SETRewiring,
    _FixedFanInFunction,
    prune_mask,
    random_indices,
    rewire,
)
from sparsify_cli.passes.registry import PassContext
from sparsify_cli.passes.sparsifier import CallbackList
from sparsify_cli.passes.training import TrainConfig, fit, make_loader
from sparsify_cli.passes.xmc_data import skewed_xmc
from sparsify_cli.passes.xmc_model import (
    AuxSchedule,
    XMCObjective,
    XMCOutput,
    build_xmc_model,
    label_clusters,
    multi_hot,
    precision_at_k,
)


@pytest.mark.parametrize(
    "d_in,labels,fan_in,batch", [(16, 40, 3, 5), (33, 7, 32, 1), (64, 300, 8, 17)]
)
def test_forward_matches_dense_reference(d_in: int, labels: int, fan_in: int, batch: int) -> None:
    torch.manual_seed(d_in)
    layer = FixedFanInLinear(d_in, labels, fan_in)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(batch, d_in)
    dense = layer.dense_weight()
    assert int((dense != 0).sum(1).max()) <= fan_in
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias, rtol=1e-5, atol=1e-5)
    # leading dims are kept, like nn.Linear
    assert layer(x.view(1, batch, d_in)).shape == (1, batch, labels)


def test_indices_distinct_sorted_int32() -> None:
    idx = random_indices(50, 400, 12, torch.Generator().manual_seed(1))
    assert idx.dtype == torch.int32 and idx.shape == (400, 12)
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # sorted and distinct
    assert int(idx.min()) >= 0 and int(idx.max()) < 50


def test_gradcheck_double() -> None:
    torch.manual_seed(0)
    layer = FixedFanInLinear(9, 13, 4).double()
    x = torch.randn(3, 9, dtype=torch.double, requires_grad=True)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _FixedFanInFunction.apply(x, w, b, layer.indices, 12)  # tiny chunks

    assert torch.autograd.gradcheck(fn, (x, layer.weight, layer.bias))


def test_backward_matches_dense_reference() -> None:
    torch.manual_seed(3)
    layer = FixedFanInLinear(20, 90, 5)
    x = torch.randn(6, 20, requires_grad=True)
    g = torch.randn(6, 90)
    layer(x).backward(g)
    dense = layer.dense_weight().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    (x2 @ dense.T).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, dense.grad.gather(1, layer.indices.long()))
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


def test_chunking_gives_identical_results() -> None:
    torch.manual_seed(5)
    x = torch.randn(8, 30)
    ref = FixedFanInLinear(30, 50, 6).state_dict()
    outs = []
    for chunk in (1, 8 * 6 * 7, 1 << 30):  # one label per chunk, 7 labels, all at once
        layer = FixedFanInLinear(30, 50, 6, chunk_elements=chunk)
        layer.load_state_dict(ref)
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.pow(2).sum().backward()
        outs.append((y.detach(), xi.grad, layer.weight.grad, layer.bias.grad))
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _trained_layer() -> tuple[FixedFanInLinear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layer = FixedFanInLinear(24, 200, 8)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(16, 24)).pow(2).mean().backward()
        opt.step()
    return layer, opt


def _by_input(indices: torch.Tensor, values: torch.Tensor) -> list[dict[int, float]]:
    return [
        dict(zip(r.tolist(), v.tolist(), strict=True)) for r, v in zip(indices, values, strict=True)
    ]


def test_rewire_invariants() -> None:
    layer, opt = _trained_layer()
    state = opt.state[layer.weight]
    before_idx = layer.indices.clone()
    before_w = _by_input(before_idx, layer.weight.detach())
    before_m = _by_input(before_idx, state["exp_avg"])
    before_v = _by_input(before_idx, state["exp_avg_sq"])
    bias_m = opt.state[layer.bias]["exp_avg"].clone()
    prune = prune_mask(layer, RewireConfig(mode="fraction", fraction=0.25), 0, 1)
    assert int(prune.sum()) == int(0.25 * prune.numel())
    n = rewire(layer, prune, opt, torch.Generator().manual_seed(0))
    assert n == int(prune.sum())
    idx = layer.indices
    assert idx.shape == before_idx.shape and idx.dtype == torch.int32  # fan-in kept exactly
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # sorted, no duplicate in a row
    after_w = _by_input(idx, layer.weight.detach())
    after_m = _by_input(idx, state["exp_avg"])
    after_v = _by_input(idx, state["exp_avg_sq"])
    changed = 0
    for r in range(idx.shape[0]):
        pruned_inputs = set(before_idx[r][prune[r]].tolist())
        kept = set(before_idx[r].tolist()) - pruned_inputs
        assert kept <= set(after_w[r])  # kept connections survive ...
        for i in kept:  # ... with their weight and moments
            assert after_w[r][i] == before_w[r][i]
            assert after_m[r][i] == before_m[r][i] and after_v[r][i] == before_v[r][i]
        new = set(after_w[r]) - kept
        assert len(new) == len(pruned_inputs)
        changed += len(new)
        for i in new:  # new connections start at zero with reset moments
            assert after_w[r][i] == 0.0 and after_m[r][i] == 0.0 and after_v[r][i] == 0.0
    assert changed == n
    assert torch.equal(opt.state[layer.bias]["exp_avg"], bias_m)  # other params untouched


def test_rewire_when_almost_dense_row() -> None:
    # fan-in 7 of 8 inputs: the only free input must be found, never a duplicate
    layer = FixedFanInLinear(8, 50, 7)
    rewire(layer, torch.ones(50, 7, dtype=torch.bool), None, torch.Generator().manual_seed(0))
    assert bool((layer.indices[:, 1:] > layer.indices[:, :-1]).all())
    assert bool((layer.weight == 0).all())


def test_threshold_schedule_and_stop() -> None:
    cfg = RewireConfig(interval=10, tau_start=0.02, tau_end=1e-4, stop_fraction=0.66)
    taus = [cfg.tau(s, 100) for s in range(0, 67, 11)]
    assert taus[0] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
    assert cfg.tau(66, 100) == pytest.approx(1e-4)
    layer, opt = _trained_layer()
    model = torch.nn.Sequential(layer)
    cb = SETRewiring(RewireConfig(interval=10, mode="fraction", fraction=0.2), total_steps=100)
    for step in range(100):
        before = layer.indices.clone()
        cb.after_step(model, opt, step)
        changed = not torch.equal(before, layer.indices)
        assert changed == (step in (10, 20, 30, 40, 50, 60))  # never at or after 66% of 100
    assert [s for s, _ in cb.rewired] == [10, 20, 30, 40, 50, 60]


def test_aux_schedule_decays_then_off() -> None:
    sched = AuxSchedule(a0=0.5, cutoff_epoch=4)
    ws = [sched.weight(e / 2) for e in range(12)]
    assert ws[0] == 0.5
    assert all(a > b for a, b in zip(ws[:8], ws[1:8], strict=False))
    assert all(w == 0.0 for w in ws[8:])


def test_aux_objective_mixes_cluster_loss() -> None:
    clusters = torch.tensor([0, 0, 1, 1, 2])
    labels = torch.tensor([[1, -1], [2, 4]])
    logits = torch.zeros(2, 5)
    meta = torch.tensor([[9.0, -9.0, -9.0], [-9.0, 9.0, 9.0]])  # exactly the positive clusters
    obj = XMCObjective(5, steps_per_epoch=10, clusters=clusters, schedule=AuxSchedule(0.4, 1.0))
    main = obj(logits, (None, labels))
    obj.before_step(None, 0)
    mixed = obj(XMCOutput(logits, meta), (None, labels))
    assert float(mixed) == pytest.approx(0.6 * float(main), rel=1e-3)  # aux term ~ 0
    obj.before_step(None, 10)  # epoch 1 = cutoff
    assert float(obj(XMCOutput(logits, meta), (None, labels))) == pytest.approx(float(main))
    assert multi_hot(labels, 5).tolist() == [[0, 1, 0, 0, 0], [0, 0, 1, 0, 1]]


@pytest.fixture
def one_thread():
    """Two threads on the shared 2-core machine thrash (0.5 s/step vs 5 ms); use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_synthetic_run_learns(one_thread: None) -> None:
    torch.manual_seed(0)
    data = skewed_xmc(
        num_labels=200, n_train=3000, n_test=500, d_feat=32, latent_dim=32, zipf_a=0.8, seed=1
    )
    clusters = label_clusters(data.x_train, data.y_train, data.num_labels, 16)
    assert clusters.shape == (200,) and int(clusters.max()) < 16
    model = build_xmc_model(32, 64, data.num_labels, fan_in=8, num_clusters=16, seed=0)
    untrained = precision_at_k(model, data.x_test, data.y_test)
    cfg = TrainConfig(epochs=8, lr=1e-2, batch_size=64)
    loader = make_loader(data.x_train, data.y_train, cfg.batch_size, shuffle=True)
    total = cfg.epochs * len(loader)
    obj = XMCObjective(data.num_labels, len(loader), "bce", clusters, AuxSchedule(0.5, 3))
    rewiring = SETRewiring(RewireConfig(interval=50, mode="fraction", fraction=0.2), total)
    fit(model, loader, cfg, PassContext(), obj, CallbackList(obj, rewiring))
    assert rewiring.rewired  # SET actually ran during training
    p = precision_at_k(model, data.x_test, data.y_test)
    counts = torch.as_tensor(data.label_counts())
    chance = float(counts.max()) / len(data.x_train)  # P@1 of always answering the top label
    assert p[1] > chance + 0.15 and p[1] > untrained[1] + 0.3, (p, chance, untrained)
    assert isinstance(model.eval()(torch.as_tensor(data.x_test[:2])), torch.Tensor)  # logits only
