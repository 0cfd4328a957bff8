"""Why MaxQ's held-out NLL is higher than ASP's / SR-STE's: calibration of the trained N:M CNN.

Run: ``python -m benchmarks.bench_maxq_calibration [--epochs 5] [--seeds 0 1 2]``
(a few minutes per seed on 2 CPU cores).

For the digits CNN (every sparsified conv is followed by BatchNorm, the head stays dense), each
method is trained with the same recipe (AdamW lr 1e-3, cosine, batch 64) and scored on the
held-out split: top-1, NLL, expected calibration error (15 bins) and the mean max-softmax
confidence. Rows:

* ``asp``, ``srste``, ``maxq``: the methods as shipped (MaxQ folds its soft factors
  ``1 + m_filter + m_position`` into the weights, as the authors' ``weight_transfer.py --mode 1``);
* ``maxq-hard``: the same MaxQ run, but deployed with the hard N:M mask (soft factors dropped
  at folding, BatchNorm statistics left as trained): what deploying the hard mask would do;
* ``maxq-fresh``: the same MaxQ run, folded with the soft factors recomputed from the final
  weights (the authors' ``rep_weight``) instead of those of the last training forward;
* ``maxq-nosoft``: MaxQ trained without the soft factors (incremental sparsity and decay only).

``best T`` is the temperature that minimises the held-out NLL of ``logits / T`` (T > 1: the
model is over-confident), ``NLL at best T`` that minimum: what is left once the logit scale
is corrected.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from sparsify_cli.loading import load_model
from sparsify_cli.passes import (
    ASPConfig,
    FoldConfig,
    MaxQConfig,
    PassContext,
    Selection,
    SRSTEConfig,
    run_passes,
    select_layers,
)
from sparsify_cli.passes import maxq as maxq_module
from sparsify_cli.passes.masks import dense_weight, get_mask
from sparsify_cli.passes.training import make_loader, predict
from sparsify_cli.samples.datasets import DATASETS

BINS = 15


def scores(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    t = torch.from_numpy(logits).double()
    prob = t.softmax(-1)
    conf, pred = prob.max(-1)
    correct = (pred.numpy() == y).astype(float)
    edges = np.linspace(0, 1, BINS + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf.numpy() > lo) & (conf.numpy() <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf.numpy()[sel].mean())
    labels = torch.from_numpy(y)
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 97))
    best_t = min(grid, key=lambda T: float(F.cross_entropy(t / T, labels)))
    return {
        "top1": 100 * correct.mean(),
        "nll": float(F.cross_entropy(t, labels)),
        "ece": 100 * ece,
        "conf": 100 * float(conf.mean()),
        "best_T": float(best_t),
        "nll_at_T": float(F.cross_entropy(t / best_t, labels)),
    }


@torch.no_grad()
def folded_copy(trained, dense, factor):
    """A plain copy of ``dense`` holding ``trained``'s parameters and buffers, each MaxQ weight
    folded as ``W * factor(mask, W)``. (Folding a deep copy of a parametrized model would
    remove the parametrization class both copies share.)"""
    out = copy.deepcopy(dense)
    modules = dict(trained.named_modules())
    for name, module in out.named_modules():
        src = modules[name]
        mask = get_mask(src) if parametrize.is_parametrized(src, "weight") else None
        for pname, param in module.named_parameters(recurse=False):
            if pname == "weight" and mask is not None:
                weight = dense_weight(src)
                param.copy_(weight * factor(mask, weight))
            else:
                param.copy_(getattr(src, pname))
        for bname, buf in module.named_buffers(recurse=False):
            buf.copy_(getattr(src, bname))
    return out.eval()


def train(method: str, epochs: int, seed: int, data, base, targets, nm=(2, 4)):
    model = copy.deepcopy(base.model)
    torch.manual_seed(seed)
    ctx = PassContext(targets=targets, example=base.example, seed=seed)
    ctx.train = make_loader(data.x_train, data.y_train, 64, shuffle=True, seed=seed)
    settings = {"n": nm[0], "m": nm[1], "epochs": epochs, "lr": 1e-3}
    config = {"asp": ASPConfig, "srste": SRSTEConfig}.get(method, MaxQConfig)(**settings)
    if method == "maxq-nosoft":
        original = maxq_module.axis_soft
        maxq_module.axis_soft = lambda a, r, tau: torch.zeros_like(a)
        try:
            model = run_passes(model, [config], ctx)
        finally:
            maxq_module.axis_soft = original
    else:
        model = run_passes(model, [config], ctx)
    rows = {}
    if method == "maxq":  # other foldings of the same run, built apart (see folded_copy)
        rows["maxq-hard"] = folded_copy(model, base.model, lambda mask, w: mask.mask.float())
        rows["maxq-fresh"] = folded_copy(  # authors' weight_transfer.py: factors from final W
            model, base.model, lambda mask, w: maxq_module.maxq_soft_mask(w, mask.nm, 0.0, mask.tau)
        )
    rows[method] = run_passes(model, [FoldConfig()], PassContext())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nm", default="2:4")
    parser.add_argument(
        "--train-rows", type=int, default=None, help="train on the first N rows (a harder regime)"
    )
    args = parser.parse_args()
    nm = tuple(int(v) for v in args.nm.split(":"))
    torch.set_num_threads(args.threads)
    base = load_model("digits_cnn")
    data = DATASETS["digits"]()
    if args.train_rows:
        data = dataclasses.replace(
            data, x_train=data.x_train[: args.train_rows], y_train=data.y_train[: args.train_rows]
        )
    choices = select_layers(base.model, nm[1], base.example, Selection())
    targets = [c.name for c in choices if c.selected]
    dense = scores(predict(base.model, data.x_test), data.y_test)
    results: dict[str, list[dict[str, float]]] = {"dense": [dense]}
    for seed in args.seeds:
        for method in ("asp", "srste", "maxq", "maxq-nosoft"):
            trained = train(method, args.epochs, seed, data, base, targets, nm)
            for name, model in trained.items():
                s = scores(predict(model, data.x_test), data.y_test)
                results.setdefault(name, []).append(s)
                print(f"seed {seed} {name:>12}: " + "  ".join(f"{k} {v:.3f}" for k, v in s.items()))
    print(
        f"\n{len(args.seeds)} seed(s), {args.epochs} epochs, {args.nm}, "
        f"{len(data.y_train)} training rows, {len(data.y_test)} test images"
    )
    print("| method | top-1 % | NLL | ECE % | mean confidence % | best T | NLL at best T |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        mean = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
        print(
            f"| {name} | {mean['top1']:.2f} | {mean['nll']:.4f} | {mean['ece']:.2f} "
            f"| {mean['conf']:.2f} | {mean['best_T']:.2f} | {mean['nll_at_T']:.4f} |"
        )


if __name__ == "__main__":
    main()
