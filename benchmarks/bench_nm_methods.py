"""Accuracy of N:M methods on the shipped samples: dense vs magnitude vs ASP vs SR-STE vs MaxQ.

    nice -n 19 python -m benchmarks.bench_nm_methods            # 3 seeds
    nice -n 19 python -m benchmarks.bench_nm_methods --quick    # 1 seed
    python -m benchmarks.bench_nm_methods --seeds 1 2           # add seeds to the results file
    python -m benchmarks.bench_nm_methods --table               # the table of the results file

Every trained method gets the same epochs, optimizer, learning rate and batch size, on the
digits training split; accuracy is top-1 on the 180 held-out images (1 image = 0.56 points).
Rows are appended to ``--results`` (JSON lines) as they finish, seed by seed, so an interrupted
sweep still leaves a usable table; the Markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sparsify_cli.passes import (
    ASPConfig,
    FoldConfig,
    MaxQConfig,
    NMConfig,
    NMPattern,
    PassContext,
    Selection,
    SRSTEConfig,
    run_passes,
    select_layers,
)
from sparsify_cli.passes.training import accuracy, make_loader
from sparsify_cli.samples import SAMPLES
from sparsify_cli.samples.datasets import digits

METHODS = {"magnitude": NMConfig, "asp": ASPConfig, "srste": SRSTEConfig, "maxq": MaxQConfig}
PATTERNS = ("2:4", "1:4", "1:8")


def run_one(sample: str, method: str, nm: str, seed: int, epochs: int, lr: float) -> float:
    data = digits()
    spec = SAMPLES[sample]
    model = spec.build()
    model.load_state_dict(torch.load(spec.checkpoint, weights_only=True)["state_dict"])
    pattern = NMPattern.parse(nm)
    example = torch.zeros(spec.input_shape)
    targets = [c.name for c in select_layers(model, pattern.m, example, Selection()) if c.selected]
    ctx = PassContext(
        targets=targets,
        seed=seed,
        train=make_loader(data.x_train, data.y_train, 64, shuffle=True, seed=seed),
        eval=make_loader(data.x_test, data.y_test, 256, shuffle=False),
    )
    kwargs = {"n": pattern.n, "m": pattern.m}
    if method != "magnitude":
        kwargs.update(epochs=epochs, lr=lr)
    model = run_passes(model, [METHODS[method](**kwargs), FoldConfig()], ctx)
    return accuracy(model, data.x_test, data.y_test)


def table(rows: list[dict]) -> str:
    methods = ["dense", *METHODS]
    lines = [
        "| sample | N:M | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for sample in SAMPLES:
        dense = json.loads(SAMPLES[sample].card.read_text())["dense_accuracy"] * 100
        for nm in PATTERNS:
            cells = [f"{dense:.2f}"]
            for method in METHODS:
                acc = [
                    r["accuracy"] * 100
                    for r in rows
                    if (r["sample"], r["nm"], r["method"]) == (sample, nm, method)
                ]
                cells.append(f"{np.mean(acc):.2f} ± {np.std(acc):.2f}" if acc else "-")
            lines.append(f"| {sample} | {nm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one seed instead of three")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/nm_methods.jsonl"))
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="run only these seeds and append their rows (magnitude is deterministic: not rerun)",
    )
    parser.add_argument("--table", action="store_true", help="print the table of --results")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.results.read_text().splitlines()]))
        return
    torch.set_num_threads(1)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    rows = []
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a" if args.seeds else "w") as fh:
        for seed in seeds:
            for sample in SAMPLES:
                for nm in PATTERNS:
                    for method in METHODS:
                        if method == "magnitude" and (seed != seeds[0] or args.seeds):
                            continue  # deterministic: one run is the whole distribution
                        start = time.perf_counter()
                        acc = run_one(sample, method, nm, seed, args.epochs, args.lr)
                        row = {
                            "sample": sample,
                            "nm": nm,
                            "method": method,
                            "seed": seed,
                            "epochs": args.epochs,
                            "lr": args.lr,
                            "accuracy": acc,
                            "seconds": round(time.perf_counter() - start, 1),
                        }
                        rows.append(row)
                        fh.write(json.dumps(row) + "\n")
                        fh.flush()
    print(table(rows))


if __name__ == "__main__":
    main()
