"""Train the shipped samples reproducibly on offline data: ``python -m sparsify_cli.samples.train
[NAME ...]``.

Writes ``samples/NAME.pt`` (the checkpoint ``sparsify convert`` reads) and ``samples/NAME.json``
(dense test accuracy, epochs, seed). Same seed, same machine -> same checkpoint.
"""

from __future__ import annotations

import argparse
import json

import torch

from sparsify_cli.passes.atomic import atomic_path, atomic_write_text
from sparsify_cli.passes.registry import PassContext
from sparsify_cli.passes.training import TrainConfig, accuracy, cross_entropy, fit, make_loader
from sparsify_cli.samples import SAMPLES, Sample
from sparsify_cli.samples.datasets import DATASETS


def train_sample(sample: Sample, seed: int = 0) -> float:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    data = DATASETS[sample.dataset]()
    model = sample.build()
    cfg = TrainConfig(
        epochs=sample.epochs,
        lr=sample.lr,
        weight_decay=0.05,
        batch_size=64,
        label_smoothing=0.1,
        warmup_epochs=1,
    )
    loader = make_loader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=seed)
    history = fit(
        model,
        loader,
        cfg,
        PassContext(seed=seed),
        cross_entropy(cfg.label_smoothing),
        evaluate=lambda m: accuracy(m, data.x_test, data.y_test),
    )
    acc = accuracy(model, data.x_test, data.y_test)
    with atomic_path(sample.checkpoint) as tmp:
        torch.save({"sparsify_sample": sample.name, "state_dict": model.state_dict()}, tmp)
    card = {
        "name": sample.name,
        "dataset": sample.dataset,
        "dense_accuracy": acc,
        "epochs": cfg.epochs,
        "seed": seed,
        "final_loss": history.loss[-1],
    }
    atomic_write_text(sample.card, json.dumps(card, indent=2) + "\n")
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"samples to train (default: all of {list(SAMPLES)})"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.names or SAMPLES:
        print(f"{name}: dense test accuracy {train_sample(SAMPLES[name], args.seed):.4f}")


if __name__ == "__main__":
    main()
