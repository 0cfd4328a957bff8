"""Condensed (CondensedLinear / CondensedConv custom ops) vs dense ONNX Runtime latency, as tables.

Part 1, single layers: a Linear of each size (in x out) as a one-node dense ONNX model (Gemm,
as torch exports it) and its condensed rewrite, at every sparsity, batch and thread count.
Part 2, end to end: the DigitsTransformer sample at 90% constant fan-in (per row, the k = in/10
largest |w| kept), exported dense by torch's TorchScript exporter, then condensed.
Part 3, convolutions: ResNet-like Conv + Relu layers (3x3 64->64 at 56x56, 128->128 at 28x28,
256->256 at 14x14; 1x1 expansions) at 2:4 (along input channels) and 90% constant fan-in.
Part 4, the DigitsResNet sample (BatchNorm folded by the export) with its convs at 1:8 and 2:4.

DeepSparse columns (Parts 1 and 3): with ``--deepsparse-python PATH`` (the python of a venv where
``pip install deepsparse==1.8.0`` worked; it is no dependency of this project), or when this
interpreter imports deepsparse, the same sparse models (zeros stored in the weights, which
DeepSparse exploits itself) are compiled and timed by DeepSparse in a subprocess right after the
ORT pair; its ratio is dense ORT (this process) / DeepSparse, so it is not interleaved.

Both models of a pair live in real ORT sessions with the same options and are timed in
alternating blocks (dense, condensed, dense, ...) so drift hits both alike; the table shows
medians and the ratio dense / condensed (> 1 means condensed is faster). The kernels' instruction
set (avx512, avx2, portable) is printed first; SPARSIFY_CONDENSED_ISA=avx2 runs the AVX2 paths
on an AVX-512 machine, but dense ORT still runs its AVX-512 kernels there, which understates an
AVX2 machine's ratios. ``--as-avx2`` (Linux, a CPU with CPUID faulting) reruns the benchmark with
AVX-512 hidden from the whole process (``benchmarks/avx2_only.c``, compiled with cc on first use),
so dense ORT and the kernels both run their AVX2 code, as on the issue's target machine.

    python benchmarks/bench_condensed.py            # full table (about a minute)
    python benchmarks/bench_condensed.py --quick    # fewer repetitions
    python benchmarks/bench_condensed.py --sizes 768x3072 --sparsities 0.9 --batches 1
    python -m benchmarks.bench_condensed --no-layers --no-transformer --convs 64x64x56x3 \
        --conv-sparsities 0.9 --batches 1 --threads 1     # one conv layer
    python -m benchmarks.bench_condensed --only-cnn --threads 1       # the digits CNN only
    python -m benchmarks.bench_condensed --as-avx2 --threads 1        # as on an AVX2 machine
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
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
from sparsify_cli.samples.models import DigitsResNet, DigitsTransformer

logger = logging.getLogger(__name__)

SIZES = [(768, 3072), (3072, 768), (4096, 4096)]  # (in, out)
SPARSITIES = [("2:4", 0.5), ("0.75", 0.75), ("0.9", 0.9), ("0.95", 0.95)]
CONVS = [(64, 64, 56, 3), (128, 128, 28, 3), (256, 256, 14, 3), (64, 256, 56, 1), (128, 512, 28, 1)]
CONV_SPARSITIES = [("2:4", 0.5), ("0.9", 0.9)]
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CHECKPOINT = SAMPLES / "digits_transformer.pt"
CNN_CHECKPOINT = SAMPLES / "digits_cnn.pt"
DEEPSPARSE_TIMER = Path(__file__).resolve().parent / "deepsparse_timer.py"
AVX2_ONLY = Path(__file__).resolve().parent / "avx2_only.c"


def constant_fan_in_mask(weight: np.ndarray, sparsity: float, nm: NMPattern | None) -> np.ndarray:
    """N:M by magnitude (the project's mask: groups of M along the input channels), or the
    k = fan_in * (1 - s) largest |w| of each output row (over in x kh x kw for a conv)."""
    if nm is not None:
        return magnitude_nm_mask(torch.from_numpy(weight), nm).numpy()
    flat = weight.reshape(weight.shape[0], -1)
    k = max(1, round(flat.shape[1] * (1 - sparsity)))
    keep = np.argsort(-np.abs(flat), axis=1, kind="stable")[:, :k]
    mask = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    return mask.reshape(weight.shape)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    """Opset 13, IR version 8: what DeepSparse 1.8's bundled ONNX Runtime can load too."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


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
    _save(graph, path)


def dense_conv_onnx(
    weight: np.ndarray, bias: np.ndarray, stride: int, pad: int, size: int, path: Path
) -> None:
    """Conv + Relu as torch's exporter writes a conv layer (BatchNorm folded), dynamic batch,
    ``size x size`` input."""
    out_c, in_c, kh, kw = weight.shape
    nodes = [
        helper.make_node(
            "Conv",
            ["input", "conv.weight", "conv.bias"],
            ["conv_out"],
            kernel_shape=[kh, kw],
            strides=[stride, stride],
            pads=[pad] * 4,
            dilations=[1, 1],
            group=1,
            name="/conv/Conv",
        ),
        helper.make_node("Relu", ["conv_out"], ["output"], name="/relu/Relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_c, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_c, size, size])],
        [
            numpy_helper.from_array(weight, "conv.weight"),
            numpy_helper.from_array(bias, "conv.bias"),
        ],
    )
    _save(graph, path)


def linear_manifest(
    mask: np.ndarray, pattern: str, module: str = "fc", op: str = "Linear"
) -> Manifest:
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    entry = TensorEntry(
        name=f"{module}.weight",
        module=module,
        op=op,
        shape=mask.shape,
        pattern=pattern,
        density=float(mask.mean()),
        fan_in=int(counts.max()),
        ablated=tuple(int(i) for i in np.flatnonzero(counts == 0)),
        mask=mask,
    )
    return Manifest({entry.name: entry})


# "median" (default), or "min" with --best: the fastest call, for a loaded machine, where
# contention only ever adds time and medians of two sessions drift apart by whom it hit.
STATISTIC = "median"


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
    pick = np.min if STATISTIC == "min" else np.median
    return [float(pick(ts)) * 1e3 for ts in times]


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
    ds_python: str | None,
) -> list[tuple]:
    rng = np.random.default_rng(0)
    rows = []
    for in_features, out_features in sizes:
        weight = rng.standard_normal((out_features, in_features)).astype(np.float32)
        bias = rng.standard_normal(out_features).astype(np.float32)
        dense_path = tmp / f"dense_{in_features}x{out_features}.onnx"
        dense_linear_onnx(weight, bias, dense_path)
        for label, sparsity in sparsities:
            mask = constant_fan_in_mask(
                weight, sparsity, NMPattern(2, 4) if label == "2:4" else None
            )
            folded = np.where(mask, weight, 0).astype(np.float32)
            sparse_path = tmp / f"sparse_{in_features}x{out_features}_{label.replace(':', '')}.onnx"
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
                    job = {
                        "path": str(sparse_path),
                        "shape": list(x.shape),
                        "threads": threads,
                        "seconds": budget_s,
                        "statistic": STATISTIC,
                    }
                    (ds_ms,) = deepsparse_ms(ds_python, [job])
                    name = f"{in_features}x{out_features}"
                    rows.append((name, label, batch, threads, d_ms, c_ms, ds_ms, err))
                    print(
                        f"  {name:>10} s={label:<5} b={batch:<3} t={threads} "
                        f"dense {d_ms:8.3f} ms  condensed {c_ms:8.3f} ms  x{d_ms / c_ms:5.2f}"
                        + (f"  deepsparse x{d_ms / ds_ms:5.2f}" if ds_ms else ""),
                        flush=True,
                    )
    return rows


def deepsparse_python(flag: str | None) -> str | None:
    """The interpreter that runs DeepSparse: --deepsparse-python, or this one if it has it."""
    if flag:
        return flag
    return sys.executable if importlib.util.find_spec("deepsparse") else None


def deepsparse_ms(python: str | None, jobs: list[dict]) -> list[float | None]:
    """Median ms of each job under DeepSparse (None without DeepSparse, or where it failed)."""
    if python is None or not jobs:
        return [None] * len(jobs)
    env = dict(os.environ)
    if env.get("SPARSIFY_BENCH_AVX2_ONLY") == "1":
        # --as-avx2: DeepSparse's engine crashes under CPUID faulting; it takes its AVX2 build
        # from NM_ARCH instead (the code it runs on an AVX2 machine)
        env.pop("LD_PRELOAD", None)
        env["NM_ARCH"] = "avx2"
    # errors="replace": DeepSparse's engine log can hold bytes that are not UTF-8
    run = subprocess.run(
        [python, str(DEEPSPARSE_TIMER)],
        env=env,
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        errors="replace",
    )
    if run.returncode != 0:
        logger.warning("DeepSparse timer failed: %s", run.stderr[-500:])
        return [None] * len(jobs)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for job, value in zip(jobs, out, strict=True):
        if isinstance(value, str):
            logger.warning("DeepSparse on %s: %s", job["path"], value)
    return [v if isinstance(v, float) else None for v in out]


def bench_convs(
    tmp: Path,
    budget_s: float,
    min_reps: int,
    convs: list[tuple[int, int, int, int]],
    sparsities: list[tuple[str, float]],
    batches: list[int],
    thread_counts: list[int],
    ds_python: str | None,
) -> list[tuple]:
    """Each Conv + Relu layer dense vs CondensedConv (and DeepSparse on the sparse model)."""
    rng = np.random.default_rng(2)
    rows = []
    for cin, cout, size, k in convs:
        weight = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32) * 0.1
        name = f"{k}x{k} {cin}->{cout}@{size}"
        dense_path = tmp / f"conv_{cin}_{cout}_{size}_{k}.onnx"
        dense_conv_onnx(weight, bias, 1, k // 2, size, dense_path)
        for label, sparsity in sparsities:
            nm = NMPattern(2, 4) if label == "2:4" else None
            mask = constant_fan_in_mask(weight, sparsity, nm)
            folded = np.where(mask, weight, 0).astype(np.float32)
            sparse_path = tmp / f"conv_sparse_{cin}_{cout}_{size}_{k}_{label.replace(':', '')}.onnx"
            cond_path = tmp / "conv_condensed.onnx"
            dense_conv_onnx(folded, bias, 1, k // 2, size, sparse_path)
            manifest = linear_manifest(mask, "2:4" if nm else "fanin", "conv", "Conv2d")
            results = condensed.condense_onnx(sparse_path, manifest, cond_path)
            assert results[0].kernel == condensed.CONV_OP_TYPE, results
            for threads in thread_counts:
                dense = ort.InferenceSession(str(dense_path), options(threads, False))
                cond = ort.InferenceSession(str(cond_path), options(threads, True))
                sparse_ort = ort.InferenceSession(str(sparse_path), options(threads, False))
                for batch in batches:
                    x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
                    feed = {"input": x}
                    want = sparse_ort.run(None, feed)[0]
                    err = float(np.abs(cond.run(None, feed)[0] - want).max())
                    d_ms, c_ms = interleaved([dense, cond], feed, budget_s, min_reps)
                    job = {
                        "path": str(sparse_path),
                        "shape": list(x.shape),
                        "threads": threads,
                        "seconds": budget_s,
                        "statistic": STATISTIC,
                    }
                    (ds_ms,) = deepsparse_ms(ds_python, [job])
                    rows.append((name, label, batch, threads, d_ms, c_ms, ds_ms, err))
                    print(
                        f"  {name:>18} s={label:<4} b={batch:<3} t={threads} dense {d_ms:8.3f} ms"
                        f"  condensed {c_ms:8.3f} ms  x{d_ms / c_ms:5.2f}"
                        + (f"  deepsparse x{d_ms / ds_ms:5.2f}" if ds_ms else ""),
                        flush=True,
                    )
    return rows


def sparse_cnn(pattern: NMPattern) -> tuple[torch.nn.Module, Manifest]:
    """The sample CNN with every conv whose input channels divide by M at N:M, folded (the
    stem, 1 input channel, and the head stay dense, as `sparsify convert --nm` leaves them)."""
    model = DigitsResNet()
    model.load_state_dict(torch.load(CNN_CHECKPOINT, weights_only=True)["state_dict"])
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.in_channels % pattern.m == 0:
            mask = constant_fan_in_mask(module.weight.detach().numpy(), 0.0, pattern)
            attach_mask(module, WeightMask(torch.from_numpy(mask), str(pattern)))
    manifest = Manifest(manifest_entries(model))
    return fold(model), manifest


def bench_cnn(
    tmp: Path,
    budget_s: float,
    min_reps: int,
    patterns: list[str],
    batches: list[int],
    thread_counts: list[int],
) -> list[tuple]:
    rows = []
    rng = np.random.default_rng(3)
    for label in patterns:
        n, m = (int(v) for v in label.split(":"))
        model, manifest = sparse_cnn(NMPattern(n, m))
        dense_path, cond_path = tmp / "cnn.onnx", tmp / "cnn.condensed.onnx"
        export_onnx(model, torch.zeros(1, 1, 8, 8), dense_path)
        results = condensed.condense_onnx(dense_path, manifest, cond_path)
        n_conv = sum(r.kernel == condensed.CONV_OP_TYPE for r in results)
        for threads in thread_counts:
            dense = ort.InferenceSession(str(dense_path), options(threads, False))
            cond = ort.InferenceSession(str(cond_path), options(threads, True))
            for batch in batches:
                feed = {"input": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)}
                with torch.no_grad():
                    ref = model(torch.from_numpy(feed["input"])).numpy()
                parity = float(np.abs(cond.run(None, feed)[0] - ref).max())
                d_ms, c_ms = interleaved([dense, cond], feed, budget_s, min_reps)
                rows.append((label, n_conv, batch, threads, d_ms, c_ms, d_ms / c_ms, parity))
    return rows


def sparse_transformer(sparsity: float = 0.9) -> tuple[torch.nn.Module, Manifest]:
    """The sample transformer with every Linear (in >= 10) at constant fan-in, folded."""
    model = DigitsTransformer()
    model.load_state_dict(torch.load(CHECKPOINT, weights_only=True)["state_dict"])
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.in_features >= 10:
            mask = constant_fan_in_mask(module.weight.detach().numpy(), sparsity, None)
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


def rerun_as_avx2() -> None:
    """Reruns this benchmark (same arguments) in a process that sees no AVX-512 (see
    benchmarks/avx2_only.c), or exits with the reason it cannot."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    if " cpuid_fault" not in flags:
        sys.exit(
            "--as-avx2 needs Linux on a CPU with CPUID faulting (cpuid_fault in /proc/cpuinfo)"
        )
    if " avx512f" not in flags:
        sys.exit("--as-avx2: this CPU has no AVX-512 to hide; run without it")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("--as-avx2 compiles benchmarks/avx2_only.c and needs cc or gcc")
    lib = Path(tempfile.gettempdir()) / f"sparsify_avx2_only_{os.getuid()}.so"
    if not lib.exists() or lib.stat().st_mtime < AVX2_ONLY.stat().st_mtime:
        subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", "-o", str(lib), str(AVX2_ONLY)], check=True
        )
    env = {**os.environ, "LD_PRELOAD": str(lib), "SPARSIFY_BENCH_AVX2_ONLY": "1"}
    argv = [a for a in sys.argv[1:] if a != "--as-avx2"]
    sys.exit(
        subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_condensed", *argv], env=env
        ).returncode
    )


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
    parser.add_argument(
        "--convs",
        default=",".join("x".join(str(v) for v in c) for c in CONVS),
        help="conv layers CINxCOUTxSIZExK, e.g. 64x64x56x3; '' skips the conv part",
    )
    parser.add_argument(
        "--conv-sparsities",
        default=",".join(label for label, _ in CONV_SPARSITIES),
        help="e.g. 2:4,0.9",
    )
    parser.add_argument(
        "--cnn-patterns", default="1:8,2:4", help="N:M of the digits CNN; '' skips it"
    )
    parser.add_argument(
        "--only-cnn", action="store_true", help="only the digits CNN part (batch 1 unless given)"
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="report each session's fastest call instead of its median (loaded machines)",
    )
    parser.add_argument(
        "--deepsparse-python",
        default=None,
        help="python of a venv with deepsparse==1.8.0, for DeepSparse columns",
    )
    parser.add_argument(
        "--as-avx2",
        action="store_true",
        help="hide AVX-512 from the whole process (dense ORT too), as on an AVX2 machine",
    )
    args = parser.parse_args()
    if args.as_avx2:
        rerun_as_avx2()
    as_avx2 = os.environ.get("SPARSIFY_BENCH_AVX2_ONLY") == "1"
    if as_avx2 and torch.backends.cpu.get_cpu_capability() != "AVX2":
        sys.exit("--as-avx2: AVX-512 is still visible (CPUID faulting did not take); no figures")
    global STATISTIC
    STATISTIC = "min" if args.best else "median"
    if args.only_cnn:
        args.no_layers = args.no_transformer = True
        args.convs = ""
    budget_s, min_reps = (0.15, 10) if args.quick else (0.6, 25)
    sizes = [tuple(int(d) for d in s.split("x")) for s in args.sizes.split(",")]
    known = dict(SPARSITIES)
    for flag, labels in (("--sparsities", args.sparsities), ("--conv-sparsities", args.conv_sparsities)):
        unknown = [label for label in labels.split(",") if label not in known]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    sparsities = [(label, known[label]) for label in args.sparsities.split(",")]
    convs = [tuple(int(v) for v in c.split("x")) for c in args.convs.split(",") if c]
    conv_sparsities = [(label, known[label]) for label in args.conv_sparsities.split(",")]
    cnn_patterns = [p for p in args.cnn_patterns.split(",") if p]
    ds_python = deepsparse_python(args.deepsparse_python)
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    print(
        f"onnxruntime {ort.__version__}, kernel library {condensed.library_path().name}, "
        f"kernels: {condensed.kernel_isa()}, statistic: {STATISTIC} of each session's calls"
        + (", AVX-512 hidden from the process (dense ORT on its AVX2 kernels)" if as_avx2 else "")
    )
    with tempfile.TemporaryDirectory() as tmp:
        layers = (
            []
            if args.no_layers
            else bench_layers(
                Path(tmp), budget_s, min_reps, sizes, sparsities, batches, thread_counts, ds_python
            )
        )
        e2e = (
            []
            if args.no_transformer
            else bench_transformer(Path(tmp), budget_s, min_reps, batches, thread_counts)
        )
        conv_rows = bench_convs(
            Path(tmp), budget_s, min_reps, convs, conv_sparsities, batches, thread_counts, ds_python
        )
        cnn = bench_cnn(Path(tmp), budget_s, min_reps, cnn_patterns, batches, thread_counts)
    if layers:
        print("\nSingle layers (in x out), ms, ratio = dense / condensed (and / DeepSparse)")
        print(
            f"| {'layer':>10} | {'s':>5} | {'batch':>5} | {'thr':>3} | {'dense ms':>9} | "
            f"{'cond ms':>9} | {'ratio':>6} | {'DS ms':>8} | {'DS ratio':>8} | {'max err':>8} |"
        )
        print("|" + "|".join("-" * w for w in (12, 7, 7, 5, 11, 11, 8, 10, 10, 10)) + "|")
        for name, label, batch, threads, d_ms, c_ms, ds_ms, err in layers:
            ds = f"{ds_ms:8.3f} | {d_ms / ds_ms:7.2f}x" if ds_ms else f"{'-':>8} | {'-':>8}"
            print(
                f"| {name:>10} | {label:>5} | {batch:>5} | {threads:>3} | {d_ms:9.3f} | "
                f"{c_ms:9.3f} | {d_ms / c_ms:5.2f}x | {ds} | {err:8.1e} |"
            )
    if e2e:
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

    if conv_rows:
        print("\nConv + Relu layers, ms, ratio = dense ORT / condensed (and / DeepSparse)")
        print(
            f"| {'layer':>18} | {'s':>4} | {'batch':>5} | {'thr':>3} | {'dense ms':>9} | "
            f"{'cond ms':>9} | {'ratio':>6} | {'DS ms':>8} | {'DS ratio':>8} | {'max err':>8} |"
        )
        print("|" + "|".join("-" * w for w in (20, 6, 7, 5, 11, 11, 8, 10, 10, 10)) + "|")
        for name, label, batch, threads, d_ms, c_ms, ds_ms, err in conv_rows:
            ds = f"{ds_ms:8.3f} | {d_ms / ds_ms:7.2f}x" if ds_ms else f"{'-':>8} | {'-':>8}"
            print(
                f"| {name:>18} | {label:>4} | {batch:>5} | {threads:>3} | {d_ms:9.3f} | "
                f"{c_ms:9.3f} | {d_ms / c_ms:5.2f}x | {ds} | {err:8.1e} |"
            )
    if cnn:
        print("\nDigitsResNet, convs at N:M (BatchNorm folded), dense ONNX vs condensed ONNX")
        print(
            f"| {'N:M':>4} | {'convs':>5} | {'batch':>5} | {'thr':>3} | {'dense ms':>9} | "
            f"{'cond ms':>9} | {'ratio':>6} | {'vs torch':>8} |"
        )
        print("|" + "|".join("-" * w for w in (6, 7, 7, 5, 11, 11, 8, 10)) + "|")
        for label, n_conv, batch, threads, d_ms, c_ms, ratio, parity in cnn:
            print(
                f"| {label:>4} | {n_conv:>5} | {batch:>5} | {threads:>3} | {d_ms:9.3f} | "
                f"{c_ms:9.3f} | {ratio:5.2f}x | {parity:8.1e} |"
            )


if __name__ == "__main__":
    main()
