"""Condensed (CondensedLinear custom op) vs dense ONNX Runtime latency, printed as a table.

Part 1, single layers: a Linear of each size (in x out) as a one-node dense ONNX model (Gemm,
as torch exports it) and its condensed rewrite, at every sparsity, batch and thread count.
Part 2, end to end: the DigitsTransformer sample at 90% constant fan-in (per row, the k = in/10
largest |w| kept), exported dense by torch's TorchScript exporter, then condensed.

Both models of a pair live in real ORT sessions with the same options and are timed in
alternating blocks (dense, condensed, dense, ...) so drift hits both alike; the table shows
medians and the ratio dense / condensed (> 1 means condensed is faster). The kernels' instruction
set (avx512, avx2, portable) is printed first; SPARSIFY_CONDENSED_ISA=avx2 runs the AVX2 paths
on an AVX-512 machine.

    python benchmarks/bench_condensed.py            # full table (about a minute)
    python benchmarks/bench_condensed.py --quick    # fewer repetitions
    python benchmarks/bench_condensed.py --sizes 768x3072 --sparsities 0.9 --batches 1
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsify_cli.exporters import condensed
from sparsify_cli.exporters.onnx_export import export_onnx
from sparsify_cli.passes.manifest import Manifest, TensorEntry
from sparsify_cli.passes.masks import (
    WeightMask,
    attach_mask,
    fold,
    magnitude_nm_mask,
    manifest_entries,
)
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.samples.models import DigitsTransformer

logger = logging.getLogger(__name__)

SIZES = [(768, 3072), (3072, 768), (4096, 4096)]  # (in, out)
SPARSITIES = [("2:4", 0.5), ("0.75", 0.75), ("0.9", 0.9), ("0.95", 0.95)]
CHECKPOINT = Path(__file__).resolve().parents[1] / "samples" / "digits_transformer.pt"


def constant_fan_in_mask(weight: np.ndarray, sparsity: float, nm: bool) -> np.ndarray:
    """2:4 by magnitude (the project's N:M mask), or the k = in * (1 - s) largest |w| per row."""
    if nm:
        return magnitude_nm_mask(torch.from_numpy(weight), NMPattern(2, 4)).numpy()
    k = max(1, round(weight.shape[1] * (1 - sparsity)))
    keep = np.argsort(-np.abs(weight), axis=1, kind="stable")[:, :k]
    mask = np.zeros(weight.shape, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    return mask


def dense_linear_onnx(weight: np.ndarray, bias: np.ndarray, path: Path) -> None:
    """One Linear as torch's exporter writes it for a 2-D input: Gemm(transB=1), dynamic batch."""
    out_features, in_features = weight.shape
    node = helper.make_node(
        "Gemm", ["input", "fc.weight", "fc.bias"], ["output"], transB=1, name="/fc/Gemm"
    )
    graph = helper.make_graph(
        [node],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_features])],
        [numpy_helper.from_array(weight, "fc.weight"), numpy_helper.from_array(bias, "fc.bias")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def linear_manifest(mask: np.ndarray, pattern: str) -> Manifest:
    counts = mask.sum(axis=1)
    entry = TensorEntry(
        name="fc.weight",
        module="fc",
        op="Linear",
        shape=mask.shape,
        pattern=pattern,
        density=float(mask.mean()),
        fan_in=int(counts.max()),
        ablated=tuple(int(i) for i in np.flatnonzero(counts == 0)),
        mask=mask,
    )
    return Manifest({entry.name: entry})


def interleaved(
    sessions: list[ort.InferenceSession],
    feed: dict[str, np.ndarray],
    budget_s: float,
    min_reps: int,
    rounds: int = 4,
) -> list[float]:
    """Median latency (ms) of each session, timed in alternating blocks (ABAB...).

    Alternating spreads machine drift over both sessions alike. Blocks of many calls rather than
    single calls because each session owns a thread pool whose idle workers spin for a while
    (ONNX Runtime's default, what a deployment gets): right after a switch the other session's
    workers still hold cores. Run call by call, that cost the 2-thread dense Linear half its
    speed; in blocks it touches only the first calls of each, which the median ignores.
    """
    for sess in sessions:
        for _ in range(3):
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    block_s = budget_s / (rounds * len(sessions))
    for _ in range(rounds):
        for sess, ts in zip(sessions, times, strict=True):
            start, calls = time.perf_counter(), 0
            while calls < -(-min_reps // rounds) or time.perf_counter() - start < block_s:
                t0 = time.perf_counter()
                sess.run(None, feed)
                ts.append(time.perf_counter() - t0)
                calls += 1
    return [float(np.median(ts)) * 1e3 for ts in times]


def options(threads: int, custom: bool) -> ort.SessionOptions:
    if custom:
        return condensed.session_options(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return opts


def bench_layers(
    tmp: Path,
    budget_s: float,
    min_reps: int,
    sizes: list[tuple[int, int]],
    sparsities: list[tuple[str, float]],
    batches: list[int],
    thread_counts: list[int],
) -> list[tuple]:
    rng = np.random.default_rng(0)
    rows = []
    for in_features, out_features in sizes:
        weight = rng.standard_normal((out_features, in_features)).astype(np.float32)
        bias = rng.standard_normal(out_features).astype(np.float32)
        dense_path = tmp / f"dense_{in_features}x{out_features}.onnx"
        dense_linear_onnx(weight, bias, dense_path)
        for label, sparsity in sparsities:
            mask = constant_fan_in_mask(weight, sparsity, nm=label == "2:4")
            folded = np.where(mask, weight, 0).astype(np.float32)
            sparse_path = tmp / "sparse.onnx"
            cond_path = tmp / "condensed.onnx"
            dense_linear_onnx(folded, bias, sparse_path)
            pattern = "2:4" if label == "2:4" else "fanin"
            condensed.condense_onnx(sparse_path, linear_manifest(mask, pattern), cond_path)
            for threads in thread_counts:
                dense = ort.InferenceSession(str(dense_path), options(threads, False))
                cond = ort.InferenceSession(str(cond_path), options(threads, True))
                for batch in batches:
                    x = rng.standard_normal((batch, in_features)).astype(np.float32)
                    feed = {"input": x}
                    err = float(np.abs(cond.run(None, feed)[0] - (x @ folded.T + bias)).max())
                    d_ms, c_ms = interleaved([dense, cond], feed, budget_s, min_reps)
                    rows.append(
                        (
                            f"{in_features}x{out_features}",
                            label,
                            batch,
                            threads,
                            d_ms,
                            c_ms,
                            d_ms / c_ms,
                            err,
                        )
                    )
                    print(
                        f"  {rows[-1][0]:>10} s={label:<5} b={batch:<3} t={threads} "
                        f"dense {d_ms:8.3f} ms  condensed {c_ms:8.3f} ms  x{d_ms / c_ms:5.2f}",
                        flush=True,
                    )
    return rows


def sparse_transformer(sparsity: float = 0.9) -> tuple[torch.nn.Module, Manifest]:
    """The sample transformer with every Linear (in >= 10) at constant fan-in, folded."""
    model = DigitsTransformer()
    model.load_state_dict(torch.load(CHECKPOINT, weights_only=True)["state_dict"])
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.in_features >= 10:
            mask = constant_fan_in_mask(module.weight.detach().numpy(), sparsity, nm=False)
            attach_mask(module, WeightMask(torch.from_numpy(mask), "fanin"))
    manifest = Manifest(manifest_entries(model))
    return fold(model), manifest


def export_dense(model: torch.nn.Module, path: Path) -> None:
    export_onnx(model, torch.zeros(1, 1, 8, 8), path)


def bench_transformer(
    tmp: Path, budget_s: float, min_reps: int, batches: list[int], thread_counts: list[int]
) -> list[tuple]:
    model, manifest = sparse_transformer()
    dense_path, cond_path = tmp / "transformer.onnx", tmp / "transformer.condensed.onnx"
    export_dense(model, dense_path)
    condensed.condense_onnx(dense_path, manifest, cond_path)
    rng = np.random.default_rng(1)
    rows = []
    for threads in thread_counts:
        dense = ort.InferenceSession(str(dense_path), options(threads, False))
        cond = ort.InferenceSession(str(cond_path), options(threads, True))
        for batch in batches:
            feed = {"input": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)}
            with torch.no_grad():
                ref = model(torch.from_numpy(feed["input"])).numpy()
            out_d, out_c = dense.run(None, feed)[0], cond.run(None, feed)[0]
            parity = float(np.abs(out_c - out_d).max())
            d_ms, c_ms = interleaved([dense, cond], feed, budget_s, min_reps)
            rows.append(
                (
                    "transformer",
                    "0.9",
                    batch,
                    threads,
                    d_ms,
                    c_ms,
                    d_ms / c_ms,
                    parity,
                    float(np.abs(out_c - ref).max()),
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--sizes", default=",".join(f"{i}x{o}" for i, o in SIZES), help="layers, e.g. 768x3072"
    )
    parser.add_argument(
        "--sparsities", default=",".join(label for label, _ in SPARSITIES), help="e.g. 2:4,0.9"
    )
    parser.add_argument("--batches", default="1,64", help="e.g. 1,64")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, e.g. 1,2")
    parser.add_argument("--no-layers", action="store_true", help="skip the single-layer part")
    parser.add_argument("--no-transformer", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    budget_s, min_reps = (0.15, 10) if args.quick else (0.6, 25)
    sizes = [tuple(int(d) for d in s.split("x")) for s in args.sizes.split(",")]
    known = dict(SPARSITIES)
    sparsities = [(label, known[label]) for label in args.sparsities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    print(
        f"onnxruntime {ort.__version__}, kernel library {condensed.library_path().name}, "
        f"kernels: {condensed.kernel_isa()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        layers = (
            []
            if args.no_layers
            else bench_layers(
                Path(tmp), budget_s, min_reps, sizes, sparsities, batches, thread_counts
            )
        )
        e2e = (
            []
            if args.no_transformer
            else bench_transformer(Path(tmp), budget_s, min_reps, batches, thread_counts)
        )
    print("\nSingle layers (in x out), median ms, ratio = dense / condensed")
    print(
        f"| {'layer':>10} | {'s':>5} | {'batch':>5} | {'thr':>3} | {'dense ms':>9} | "
        f"{'cond ms':>9} | {'ratio':>6} | {'max err':>8} |"
    )
    print("|" + "|".join("-" * w for w in (12, 7, 7, 5, 11, 11, 8, 10)) + "|")
    for name, label, batch, threads, d_ms, c_ms, ratio, err in layers:
        print(
            f"| {name:>10} | {label:>5} | {batch:>5} | {threads:>3} | {d_ms:9.3f} | "
            f"{c_ms:9.3f} | {ratio:5.2f}x | {err:8.1e} |"
        )
    print("\nDigitsTransformer, 90% constant fan-in, dense ONNX vs condensed ONNX")
    print(
        f"| {'batch':>5} | {'thr':>3} | {'dense ms':>9} | {'cond ms':>9} | {'ratio':>6} | "
        f"{'vs dense onnx':>13} | {'vs torch':>8} |"
    )
    print("|" + "|".join("-" * w for w in (7, 5, 11, 11, 8, 15, 10)) + "|")
    for _, _, batch, threads, d_ms, c_ms, ratio, parity, vs_torch in e2e:
        print(
            f"| {batch:>5} | {threads:>3} | {d_ms:9.3f} | {c_ms:9.3f} | {ratio:5.2f}x | "
            f"{parity:13.1e} | {vs_torch:8.1e} |"
        )


if __name__ == "__main__":
    main()
