"""Large output spaces benchmark (Ullah et al., NeurIPS 2024, arXiv 2411.03171) on CPU.

Part ``memory``: one training step (forward + backward + AdamW) of the output layer alone,
``hidden -> L`` with a batch of encoder features, fixed fan-in vs dense ``nn.Linear``. Each
configuration runs in a fresh subprocess and reports its peak RSS (``ru_maxrss``), so one
configuration's allocations never inflate another's. A dense configuration whose estimated
footprint exceeds 75% of MemAvailable is not attempted (the machine is shared).

Part ``accuracy``: the synthetic skewed task (sparsify_cli.passes.xmc_data), P@1/3/5 for a dense
classifier, fixed fan-in without and with the auxiliary cluster objective, all trained with
sparsify_cli.passes.training.fit.

    nice -n 19 python benchmarks/bench_xmc.py memory
    nice -n 19 python benchmarks/bench_xmc.py accuracy
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _one(kind: str, labels: int, hidden: int, fan_in: int, batch: int, steps: int) -> dict:
    """Runs inside the subprocess: build, warm up one step, time ``steps`` steps."""
    from sparsify_cli.passes.fixed_fanin import FixedFanInLinear
    from sparsify_cli.passes.xmc_model import bce_loss, multi_hot

    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if kind == "dense":
        layer: torch.nn.Module = torch.nn.Linear(hidden, labels)
    else:
        layer = FixedFanInLinear(hidden, labels, fan_in)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    x = torch.randn(batch, hidden, requires_grad=True)  # stands for the encoder output
    y = torch.randint(0, labels, (batch, 5))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = bce_loss(layer(x), multi_hot(y, labels))
        opt.zero_grad(set_to_none=True)
        x.grad = None
        loss.backward()
        opt.step()
        if i:  # step 0 allocates the Adam state
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() for p in layer.parameters())
    return {
        "kind": kind,
        "labels": labels,
        "params": params,
        "peak_rss_gib": peak / 2**30,
        "layer_rss_gib": (peak - base) / 2**30,
        "step_s": statistics.median(times),
    }


def memory(hidden: int, fan_in: int, batch: int, steps: int) -> list[dict]:
    configs = [("fixed", 131072), ("fixed", 1048576), ("dense", 131072), ("dense", 262144)]
    configs += [("dense", 524288), ("dense", 1048576)]
    rows = []
    for kind, labels in configs:
        width = hidden if kind == "dense" else fan_in
        # weight + grad + 2 Adam moments, logits/targets/grads of [B, L], x2 margin for temps
        estimate = 4 * 4 * labels * width + 6 * 4 * batch * labels
        if kind == "dense" and estimate > 0.75 * _available_bytes():
            rows.append({"kind": kind, "labels": labels, "skipped": f"~{estimate / 2**30:.1f} GiB"})
            continue
        cmd = [sys.executable, __file__, "_one", kind, str(labels), str(hidden), str(fan_in)]
        cmd += [str(batch), str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            rows.append({"kind": kind, "labels": labels, "failed": proc.stderr.strip()[-200:]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\nOutput layer {hidden} -> L, batch {batch}, fan-in {fan_in}, AdamW, median of {steps}")
    print("| layer | labels | params | peak RSS GiB | RSS over import GiB | step s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "dense nn.Linear" if r["kind"] == "dense" else f"fixed fan-in f={fan_in}"
        if "params" in r:
            print(
                f"| {name} | {r['labels']:,} | {r['params'] / 1e6:.1f}M | {r['peak_rss_gib']:.2f}"
                f" | {r['layer_rss_gib']:.2f} | {r['step_s']:.2f} |"
            )
        else:
            why = r.get("skipped") and f"not run: needs {r['skipped']}" or r.get("failed")
            print(f"| {name} | {r['labels']:,} | - | - | - | {why} |")
    return rows


def accuracy(args: argparse.Namespace) -> list[dict]:
    from sparsify_cli.passes.fixed_fanin import RewireConfig, SETRewiring
    from sparsify_cli.passes.registry import PassContext
    from sparsify_cli.passes.sparsifier import CallbackList
    from sparsify_cli.passes.training import TrainConfig, fit, make_loader
    from sparsify_cli.passes.xmc_data import skewed_xmc
    from sparsify_cli.passes.xmc_model import (
        AuxSchedule,
        XMCObjective,
        build_xmc_model,
        label_clusters,
        precision_at_k,
    )

    torch.set_num_threads(1)  # 2 threads thrash on the shared 2 cores
    data = skewed_xmc(args.labels, args.n_train, 2000, d_feat=args.d_feat, seed=0)
    counts = data.label_counts()
    top = torch.as_tensor(counts).topk(5).indices.numpy()
    pop = {
        k: float((data.y_test[:, :, None] == top[None, None, :k]).any(1).sum(1).mean()) / k
        for k in (1, 3, 5)
    }
    clusters = label_clusters(data.x_train, data.y_train, data.num_labels, args.clusters)
    cfg = TrainConfig(epochs=args.epochs, lr=2e-3, batch_size=128)
    loader = make_loader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=0)
    total = cfg.epochs * len(loader)
    variants = [
        ("dense classifier", None, False),
        (f"fixed fan-in f={args.fan_in}, no aux", args.fan_in, False),
        (f"fixed fan-in f={args.fan_in}, aux", args.fan_in, True),
    ]
    rows = [{"name": "most frequent labels (no model)", "p": pop, "secs": 0.0}]
    for name, fan_in, aux in variants:
        model = build_xmc_model(
            args.d_feat,
            args.hidden,
            data.num_labels,
            fan_in,
            num_clusters=args.clusters if aux else None,
            seed=0,
        )
        sched = AuxSchedule(a0=0.5, cutoff_epoch=args.cutoff) if aux else None
        objective = XMCObjective(data.num_labels, len(loader), "bce", clusters, sched)
        callbacks = [objective]
        if fan_in is not None:
            rewire = RewireConfig(interval=args.interval, mode="threshold", tau_start=0.02)
            callbacks.append(SETRewiring(rewire, total, seed=0))
        t0 = time.perf_counter()
        fit(model, loader, cfg, PassContext(), objective, CallbackList(*callbacks))
        p = precision_at_k(model, data.x_test, data.y_test)
        rows.append({"name": name, "p": p, "secs": time.perf_counter() - t0})
    counts_sorted = sorted(counts.tolist(), reverse=True)
    print(
        f"\nSynthetic skewed task: L={args.labels}, {args.n_train} train / 2000 test, features "
        f"{args.d_feat}, encoder {args.hidden}, label count head {counts_sorted[0]}, median "
        f"{int(statistics.median(counts_sorted))}; {args.epochs} epochs, AdamW, BCE, "
        f"{args.clusters} PIFA clusters, a0=0.5 cutoff epoch {args.cutoff}"
    )
    print(f"Sparsity of the classifier: {1 - args.fan_in / args.hidden:.1%} (fan-in {args.fan_in})")
    print("| model | P@1 | P@3 | P@5 | train s |")
    print("|---|---|---|---|---|")
    for r in rows:
        p = r["p"]
        print(f"| {r['name']} | {p[1]:.3f} | {p[3]:.3f} | {p[5]:.3f} | {r['secs']:.0f} |")
    return rows


def main() -> None:
    sys.path.insert(0, str(ROOT))
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        kind, labels, hidden, fan_in, batch, steps = sys.argv[2:8]
        torch.set_num_threads(1)  # 2 threads thrash on the shared 2 cores
        print(json.dumps(_one(kind, int(labels), int(hidden), int(fan_in), int(batch), int(steps))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["memory", "accuracy"])
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--fan-in", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--labels", type=int, default=5000)
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--d-feat", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--cutoff", type=float, default=4.0)
    parser.add_argument("--interval", type=int, default=300)
    args = parser.parse_args()
    if args.part == "memory":
        memory(args.hidden or 768, args.fan_in or 32, args.batch, args.steps)
    else:
        args.hidden, args.fan_in = args.hidden or 256, args.fan_in or 8
        accuracy(args)


if __name__ == "__main__":
    main()
