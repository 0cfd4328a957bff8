"""Dense vs 2:4 TensorRT engines on one GPU: fp16 and int8, batch sizes 1..256.

Run on a machine with an NVIDIA GPU (Ampere, Ada, Hopper), a CUDA build of torch and TensorRT 10::

    pip install -e '.[tensorrt]'
    python benchmarks/bench_tensorrt.py --out bench_trt            # about 10-20 minutes on an H100
    python benchmarks/bench_tensorrt.py --batches 1,32 --precisions fp16 --seconds 1   # quick look

The model is a plain wide CNN (256-512 channel 3x3 convolutions, 512->1024->1000 GEMMs): the
layer sizes where NVIDIA reports 2:4 kernels winning. Its weights are random, pruned 2:4 by
magnitude through the project's own passes and folded, then exported once to ONNX; int8 uses a
Q/DQ copy made with ONNX Runtime's static quantization (per-channel symmetric weights, so zeros
stay zero). For every precision and batch size, a dense and a 2:4 engine are built from the same
ONNX with a static profile at that batch (``SPARSE_WEIGHTS`` is the only difference) and timed
interleaved, trtexec-style. The table prints the median GPU compute time of each, their ratio,
p99 host latency and how many masked layers TensorRT actually ran sparse. Everything is also
written to ``<out>/bench_tensorrt.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsify_cli.exporters.onnx_export import export_onnx, weight_refs
from sparsify_cli.exporters.tensorrt import BuildSettings, merge_layer_rows, require_tensorrt
from sparsify_cli.exporters.tensorrt.export import build_pair
from sparsify_cli.exporters.tensorrt.runtime import TimingSettings, measure_engines
from sparsify_cli.passes import (
    FoldConfig,
    NMConfig,
    PassContext,
    Selection,
    run_passes,
    select_layers,
)

INPUT_SHAPE = (3, 32, 32)


def wide_convnet(seed: int = 0) -> nn.Module:
    """3x32x32 -> 1000 logits through 256/512-channel convolutions and 1024-wide GEMMs."""
    torch.manual_seed(seed)

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    model = nn.Sequential(
        *block(3, 256, 1),
        *block(256, 256, 1),
        *block(256, 512, 2),
        *block(512, 512, 1),
        *block(512, 512, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1000),
    )
    return model.eval()


def sparsify_2of4(model: nn.Module) -> tuple[nn.Module, dict[str, str], list[str]]:
    """Prune every eligible layer 2:4 by magnitude, fold; (model, patterns, all weight layers)."""
    example = torch.randn(1, *INPUT_SHAPE)
    choices = select_layers(model, 4, example, Selection())
    ctx = PassContext(targets=[c.name for c in choices if c.selected], example=example)
    model = run_passes(model, [NMConfig(2, 4), FoldConfig()], ctx).eval()
    patterns = {e.module: e.pattern for e in ctx.manifest.values()}
    return model, patterns, [c.name for c in choices]


def make_qdq(onnx_path: Path, qdq_path: Path, calibration: np.ndarray) -> None:
    """Int8 Q/DQ copy of ``onnx_path`` for TensorRT explicit quantization (ONNX Runtime PTQ)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                [{"input": calibration[i : i + 8]} for i in range(0, len(calibration), 8)]
            )

        def get_next(self):
            return next(self._batches, None)

    quantize_static(
        str(onnx_path),
        str(qdq_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )


def prepare(out: Path) -> tuple[Path, Path, dict[str, list[str]], dict[str, str], nn.Module]:
    """Sparse fp32 ONNX, its int8 Q/DQ copy, module -> ONNX nodes, patterns, the torch model."""
    out.mkdir(parents=True, exist_ok=True)
    model, patterns, modules = sparsify_2of4(wide_convnet())
    onnx_path = out / "wide_2of4.onnx"
    export_onnx(model, torch.randn(1, *INPUT_SHAPE), onnx_path)
    import onnx

    refs = weight_refs(onnx.load(str(onnx_path)), modules)
    node_map = {m: [r.node for r in found] for m, found in refs.items()}
    qdq_path = out / "wide_2of4_int8_qdq.onnx"
    rng = np.random.default_rng(0)
    make_qdq(onnx_path, qdq_path, rng.standard_normal((64, *INPUT_SHAPE), dtype=np.float32))
    return onnx_path, qdq_path, node_map, patterns, model


def run(
    out: Path, precisions: Sequence[str], batches: Sequence[int], timing: TimingSettings
) -> list[dict]:
    onnx_path, qdq_path, node_map, patterns, _ = prepare(out)
    results = []
    for precision in precisions:
        source = qdq_path if precision == "int8" else onnx_path
        for batch in batches:
            settings = BuildSettings(
                precision=precision,
                min_batch=batch,
                opt_batch=batch,
                max_batch=batch,
                timing_cache=str(out / "timing.cache"),
            )
            dense, sparse = build_pair(source, out, settings, stem=f"wide_b{batch}")
            rows = merge_layer_rows(node_map, patterns, sparse.layers, sparse.sparsity)
            masked = [r for r in rows if r.masked]
            latency = measure_engines(
                {"dense": dense.path, "sparse": sparse.path},
                INPUT_SHAPE,
                [batch],
                timing,
                baseline="dense",
            )
            d, s = latency["dense"][0], latency["sparse"][0]
            results.append(
                {
                    "precision": precision,
                    "batch": batch,
                    "dense": d.to_dict(),
                    "sparse": s.to_dict(),
                    "speedup": s.speedup_vs_dense,
                    "masked": len(masked),
                    "picked_sparse": sum(r.picked_sparse for r in masked),
                    "layers": [r.to_dict() for r in rows],
                }
            )
            print(
                f"{precision:>5} {batch:>5} {d.gpu_compute.median_ms:>10.3f} "
                f"{s.gpu_compute.median_ms:>10.3f} {s.speedup_vs_dense:>8.2f}x "
                f"{d.host_latency.p99_ms:>10.3f} {s.host_latency.p99_ms:>10.3f} "
                f"{sum(r.picked_sparse for r in masked):>3}/{len(masked)}",
                flush=True,
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_trt"))
    parser.add_argument("--precisions", default="fp16,int8")
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per engine")
    parser.add_argument("--warmup-ms", type=float, default=200.0)
    parser.add_argument("--cuda-graph", action="store_true", help="replay enqueues as CUDA graphs")
    args = parser.parse_args(argv)
    require_tensorrt()
    import tensorrt

    timing = TimingSettings(args.warmup_ms, args.seconds, cuda_graph=args.cuda_graph)
    print(f"# {torch.cuda.get_device_name()} | TensorRT {tensorrt.__version__} | {timing}")
    print("# GPU compute = CUDA events around enqueue; host = H2D + compute + D2H; medians in ms")
    print(
        f"{'prec':>5} {'batch':>5} {'dense_ms':>10} {'2:4_ms':>10} {'speedup':>9} "
        f"{'dense_p99h':>10} {'2:4_p99h':>10} sparse/masked"
    )
    results = run(
        args.out,
        [p.strip() for p in args.precisions.split(",")],
        [int(b) for b in args.batches.split(",")],
        timing,
    )
    (args.out / "bench_tensorrt.json").write_text(
        json.dumps({"timing": asdict(timing), "results": results}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
