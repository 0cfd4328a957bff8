"""``convert``: load -> select -> passes -> fold -> manifest -> export -> verify -> bench -> report.

This is the only place that uses both :mod:`passes` and :mod:`exporters`. Everything is written
into a hidden staging folder beside ``out`` and moved into place only when the whole run
succeeded, so an interrupted run never leaves a half-written artifact under the real name.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from exporters import runtime
from exporters.latency import LatencySettings, measure_latency
from exporters.onnx_export import export_onnx
from exporters.verify import max_abs_diff, verify_pattern
from passes import (
    FoldConfig,
    NMConfig,
    NMPattern,
    PassContext,
    Selection,
    run_passes,
    select_layers,
)
from passes.atomic import atomic_path
from passes.dst import DSTConfig, ShrinkConfig
from passes.errors import SparsifyError
from passes.flops import layer_flops
from passes.manifest import Manifest
from passes.registry import config_to_dict
from passes.sparse_ift import SparseIFTConfig, ift_targets
from passes.training import make_loader, predict
from samples.datasets import Dataset
from sparsify_cli.data import load_data
from sparsify_cli.loading import LoadedModel, file_sha256, load_model
from sparsify_cli.report import new_report, write_report

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
"""fp32 ONNX Runtime vs PyTorch: max abs difference allowed on the outputs."""

METHODS = ("magnitude",)


@dataclass(frozen=True)
class ConvertOptions:
    """Every setting of a ``convert`` run (the CLI builds it; the recipe records it)."""

    source: str
    nm: str = "2:4"
    arch: str | None = None
    input_shape: str | None = None
    method: str = "magnitude"
    data: str | None = None
    out: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sparsify_head: bool = False
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int = 1
    bench_seconds: float = 1.0
    seed: int = 0
    trust_checkpoint: bool = False
    force: bool = False
    parity_atol: float = PARITY_ATOL
    ift: str | None = None
    sparsity: float = 0.75
    dst: str | None = None
    mask_init: str = "uniform"
    epochs: int = 10

    def __post_init__(self) -> None:
        NMPattern.parse(self.nm)
        if self.ift is not None:
            SparseIFTConfig(self.ift, self.sparsity)  # validates
        if self.dst is not None:
            DSTConfig(self.dst, self.sparsity, self.mask_init, epochs=self.epochs)
        if self.method not in METHODS:
            raise SparsifyError(f"unknown --method {self.method!r}", expected=f"one of {METHODS}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise SparsifyError("batch sizes must be >= 1", found=str(self.batch_sizes))
        if self.threads < 1:
            raise SparsifyError("--threads must be >= 1", found=str(self.threads))


@dataclass
class Hooks:
    """How the pipeline talks to its caller: a progress wrapper and a status line."""

    track: Callable[..., Any] = field(default=lambda items, description, total=None: items)
    status: Callable[[str], None] = field(default=lambda message: None)


def default_out(opts: ConvertOptions) -> Path:
    stem = Path(opts.source).stem
    return Path(f"{stem}_sparse_{opts.nm.replace(':', 'of')}")


def _prepare_out(out: Path, force: bool) -> Path:
    """Check ``out`` can be written; return a fresh staging folder beside it."""
    if out.exists() and not force:
        raise SparsifyError(
            f"output folder {out} already exists",
            fix="choose another --out, or pass --force to replace it",
        )
    if out.exists() and not out.is_dir():
        raise SparsifyError(f"--out {out} is a file, not a folder")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as err:
        raise SparsifyError(
            f"cannot write the output folder {out}",
            found=f"{type(err).__name__}: {err}",
            fix="choose a writable --out",
        ) from err


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to ``out`` (replacing an old one only now)."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.resolve().parent))
        os.replace(out, trash / out.name)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((outputs.argmax(-1) == labels).mean())


def _dataset(opts: ConvertOptions, loaded: LoadedModel) -> Dataset | None:
    spec = opts.data or (loaded.sample.dataset if loaded.sample else None)
    return load_data(spec, tuple(loaded.example.shape[1:])) if spec else None


def _layer_rows(choices, manifest: dict, flops: dict) -> list[dict[str, Any]]:
    rows = []
    for choice in choices:
        entry = manifest.get(f"{choice.name}.weight")
        f = flops.get(choice.name)
        rows.append(
            {
                "name": choice.name,
                "op": choice.op,
                "shape": list(choice.shape),
                "pattern": entry.pattern if entry else None,
                "density": entry.density if entry else 1.0,
                "fan_in": entry.fan_in if entry else None,
                "skipped": choice.reason,
                "flops_dense": f.dense if f else 0,
                "flops_sparse": f.sparse if f else 0,
            }
        )
    return rows


def _sparse_training(
    opts: ConvertOptions, model, example, data: Dataset | None, ctx: PassContext
) -> tuple[list[Any], list[Any]]:
    """Passes and layer choices for ``--ift`` / ``--dst`` (Sparse-IFT, then DST, then fold)."""
    selection = Selection(opts.include, opts.exclude, opts.sparsify_head)
    ctx.targets = ift_targets(model, example, selection)
    if data is not None and data.y_train is not None:
        ctx.train = make_loader(data.x_train, data.y_train, 64, shuffle=True, seed=opts.seed)
    configs: list[Any] = []
    if opts.ift:
        configs.append(SparseIFTConfig(opts.ift, opts.sparsity))
    if opts.dst:
        configs += [
            DSTConfig(opts.dst, opts.sparsity, opts.mask_init, epochs=opts.epochs),
            ShrinkConfig(),
        ]
    return configs + [FoldConfig()], select_layers(model, 1, example, selection)


def convert(opts: ConvertOptions, hooks: Hooks = Hooks()) -> tuple[dict[str, Any], Path]:
    """Run the whole conversion; returns the report and the output folder."""
    pattern = NMPattern.parse(opts.nm)
    out = Path(opts.out) if opts.out else default_out(opts)
    if out.exists() and not opts.force:  # fail before any expensive work
        _prepare_out(out, force=False)
    hooks.status("loading the checkpoint")
    loaded = load_model(opts.source, opts.arch, opts.input_shape, opts.trust_checkpoint)
    data = _dataset(opts, loaded)
    torch.manual_seed(opts.seed)
    model, example = loaded.model, loaded.example
    choices = select_layers(
        model, pattern.m, example, Selection(opts.include, opts.exclude, opts.sparsify_head)
    )
    targets = [c.name for c in choices if c.selected]
    if not targets:
        raise SparsifyError(
            f"no layer can be sparsified at {pattern}",
            expected=f"Linear / Conv2d layers whose input size divides by {pattern.m}",
            found="; ".join(f"{c.name}: {c.reason}" for c in choices[:6]) or "no layers",
            fix="check --include/--exclude, or choose a smaller M",
        )
    staging = _prepare_out(out, opts.force)
    try:
        hooks.status("exporting the dense baseline")
        dense_onnx = staging / "model_dense.onnx"
        export_onnx(model, example, dense_onnx)
        dense_out = predict(model, data.x_test) if data is not None else None

        hooks.status(f"sparsifying {len(targets)} layers at {pattern} ({opts.method})")
        ctx = PassContext(targets=targets, example=example, seed=opts.seed, track=hooks.track)
        configs = [NMConfig(pattern.n, pattern.m), FoldConfig()]
        if opts.ift or opts.dst:
            configs, choices = _sparse_training(opts, model, example, data, ctx)
        model = run_passes(model, configs, ctx)
        if opts.ift:  # the report lists the transformed model's layers
            choices = select_layers(model, 1, example, Selection(opts.include, opts.exclude))
        manifest = Manifest(
            ctx.manifest,
            recipe={"options": asdict(opts), "passes": [config_to_dict(c) for c in configs]},
            versions={
                "sparsify": new_report("", None, {}, 1)["tool_version"],
                "torch": torch.__version__,
            },
        )
        manifest.save(staging / "manifest.safetensors")
        with atomic_path(staging / "model_sparse.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))

        hooks.status("exporting and verifying the sparse ONNX")
        sparse_onnx = staging / "model.onnx"
        export_onnx(model, example, sparse_onnx)
        checks = verify_pattern(sparse_onnx, manifest)
        bad = [c for c in checks if not c.ok]
        if bad:
            raise SparsifyError(
                "the exported ONNX does not hold the sparsity pattern",
                found="; ".join(f"{c.module}: {c.detail}" for c in bad),
            )
        check_x = data.x_test if data is not None else example.numpy()
        torch_out = predict(model, check_x)
        onnx_out = runtime.run(runtime.session(sparse_onnx), check_x)
        parity = max_abs_diff(onnx_out, torch_out)
        if parity > opts.parity_atol:
            raise SparsifyError(
                "the exported ONNX does not match the PyTorch model",
                expected=f"max abs difference <= {opts.parity_atol:g}",
                found=f"{parity:.3g}",
            )

        hooks.status("timing dense and sparse in ONNX Runtime")
        settings = LatencySettings(
            tuple(opts.batch_sizes), opts.threads, seconds=opts.bench_seconds
        )
        latency = measure_latency(
            {"dense": dense_onnx, "onnx": sparse_onnx},
            tuple(example.shape[1:]),
            settings,
            baseline="dense",
            track=hooks.track,
        )

        report = new_report(loaded.source, loaded.sha256, asdict(opts), opts.threads)
        report["recipe"] = {"options": asdict(opts), "passes": [config_to_dict(c) for c in configs]}
        report["layers"] = _layer_rows(choices, manifest.entries, layer_flops(model, example))
        if data is not None and data.y_test is not None:
            report["accuracy"] = {
                "metric": "top1",
                "samples": int(len(data.y_test)),
                "dense": _accuracy(dense_out, data.y_test),
                "sparse": _accuracy(torch_out, data.y_test),
                "sparse_onnx": _accuracy(onnx_out, data.y_test),
                "quantized": None,
            }
        report["baseline"] = {
            "format": "onnx",
            "path": dense_onnx.name,
            "size_bytes": dense_onnx.stat().st_size,
            "latency": [r.to_dict() for r in latency["dense"]],
        }
        report["artifacts"].append(
            {
                "format": "onnx",
                "path": sparse_onnx.name,
                "size_bytes": sparse_onnx.stat().st_size,
                "sha256": file_sha256(sparse_onnx),
                "parity_max_abs": parity,
                "parity_atol": opts.parity_atol,
                "pattern_ok": all(c.ok for c in checks),
                "pattern_checks": [asdict(c) for c in checks],
                "latency": [r.to_dict() for r in latency["onnx"]],
            }
        )
        write_report(staging / "report.json", report)
        _publish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return report, out
