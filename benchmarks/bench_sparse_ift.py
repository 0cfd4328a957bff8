"""Sparse-IFT at equal FLOPs and equal epochs: dense vs each family x {static, rigl, srigl}.

Every run warm-starts from the shipped dense checkpoint and trains the same number of epochs
with the same optimizer and schedule (AdamW, cosine); the dense row is the dense model
fine-tuned for those epochs too. Prints a Markdown table (mean +- std over seeds) of test
accuracy on the 180 held-out digits, and the FLOP ratio of each sparse model to the dense one.

    nice -n 19 python benchmarks/bench_sparse_ift.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsify_cli.passes.dst import DSTConfig
from sparsify_cli.passes.flops import layer_flops
from sparsify_cli.passes.registry import PassContext, run_passes
from sparsify_cli.passes.sparse_ift import FAMILIES, SparseIFTConfig, ift_targets
from sparsify_cli.passes.training import TrainConfig, accuracy, cross_entropy, fit, make_loader
from sparsify_cli.samples import SAMPLES
from sparsify_cli.samples.datasets import digits

EPOCHS = {"digits_cnn": 2, "digits_transformer": 1}


def run(
    sample: str, family: str | None, method: str | None, args, seed: int
) -> tuple[float, float]:
    spec = SAMPLES[sample]
    data = digits()
    torch.manual_seed(seed)
    model = spec.build()
    model.load_state_dict(torch.load(spec.checkpoint, weights_only=True)["state_dict"])
    example = torch.zeros(spec.input_shape)
    dense_flops = sum(f.dense for f in layer_flops(model, example).values())
    train = make_loader(data.x_train, data.y_train, 64, shuffle=True, seed=seed)
    ctx = PassContext(targets=ift_targets(model, example), example=example, train=train, seed=seed)
    epochs = args.epochs or EPOCHS[sample]
    if family is None:
        fit(model, train, TrainConfig(epochs=epochs, lr=args.lr), ctx, cross_entropy())
    else:
        dst = DSTConfig(method, args.sparsity, epochs=epochs, lr=args.lr, delta_t=args.delta_t)
        model = run_passes(model, [SparseIFTConfig(family, args.sparsity), dst], ctx)
    flops = sum(f.sparse for f in layer_flops(model, example).values())
    return accuracy(model, data.x_test, data.y_test), flops / dense_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed instead of three")
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--epochs", type=int, default=0, help="0: per-sample default")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--delta-t", type=int, default=10, help="steps between mask updates")
    parser.add_argument("--samples", default="digits_cnn,digits_transformer")
    parser.add_argument("--methods", default="static,rigl,srigl")
    parser.add_argument("--families", default=",".join(FAMILIES), help="Sparse-IFT families")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [0] if args.quick else [0, 1, 2]
    families = args.families.split(",")
    rows = [(None, None)] + [(f, m) for f in families for m in args.methods.split(",")]
    print(f"s={args.sparsity}, seeds={seeds}, delta_t={args.delta_t}, lr={args.lr}\n")
    print("| sample | epochs | model | DST | FLOPs / dense | top-1 (mean +- std) | s/run |")
    print("|---|---|---|---|---|---|---|")
    for sample in args.samples.split(","):
        for family, method in rows:
            start = time.perf_counter()
            results = [run(sample, family, method, args, seed) for seed in seeds]
            accs = [100 * a for a, _ in results]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            took = (time.perf_counter() - start) / len(seeds)
            print(
                f"| {sample} | {args.epochs or EPOCHS[sample]} | {family or 'dense'} | "
                f"{method or '-'} | {results[0][1]:.4f} | {statistics.mean(accs):.2f} +- {std:.2f}"
                f" | {took:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
