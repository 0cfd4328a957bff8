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

from sparsify_cli.data import load_data, load_input_data
from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.condensed import condense_onnx, kernel_isa
from sparsify_cli.exporters.latency import LatencySettings, measure_latency
from sparsify_cli.exporters.onnx_export import export_onnx, weight_refs
from sparsify_cli.exporters.quantize import QuantizeConfig, quantize_model
from sparsify_cli.exporters.tensorrt import require_tensorrt
from sparsify_cli.exporters.verify import max_abs_diff, verify_pattern
from sparsify_cli.hf import HF_FOLDER, save_hf_folder
from sparsify_cli.html_report import write_html
from sparsify_cli.loading import LoadedModel, file_sha256, load_model
from sparsify_cli.passes import (
    ASPConfig,
    FoldConfig,
    MaxQConfig,
    NMConfig,
    NMPattern,
    PassContext,
    Selection,
    SRSTEConfig,
    distributed,
    run_passes,
    select_layers,
)
from sparsify_cli.passes.atomic import atomic_path
from sparsify_cli.passes.dst import DSTConfig, ShrinkConfig
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.flops import layer_flops
from sparsify_cli.passes.inputs import as_arrays, call, parse_input_spec
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.sparse_ift import SparseIFTConfig, ift_targets
from sparsify_cli.passes.spectral import layer_gaps
from sparsify_cli.passes.training import check_labels, make_loader, predict
from sparsify_cli.recipe import recipe_dict, write_recipe
from sparsify_cli.report import new_report, tool_version, write_report
from sparsify_cli.samples.datasets import Dataset
from sparsify_cli.text_data import DEFAULT_MAX_LENGTH, is_text_data, load_text_data

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
"""fp32 ONNX Runtime vs PyTorch: max abs difference allowed on the outputs."""

EXPORTS = ("onnx", "condensed", "tensorrt")
CONDENSED_OPS = ("custom", "standard")


def _finetune_settings(opts: ConvertOptions, pattern: NMPattern) -> dict[str, Any]:
    return {
        "n": pattern.n,
        "m": pattern.m,
        "epochs": opts.epochs,
        "lr": opts.lr,
        "optimizer": opts.optimizer,
        "distill": opts.distill,
    }


METHODS: dict[str, Callable[[ConvertOptions, NMPattern], Any]] = {
    "magnitude": lambda opts, p: NMConfig(p.n, p.m),
    "asp": lambda opts, p: ASPConfig(**_finetune_settings(opts, p)),
    "srste": lambda opts, p: SRSTEConfig(**_finetune_settings(opts, p)),
    "maxq": lambda opts, p: MaxQConfig(**_finetune_settings(opts, p)),
}
"""``--method`` -> the config of its sparsifying pass (fold always follows)."""

TRAINED = ("asp", "srste", "maxq")
"""Methods that fine-tune and so need training data."""


@dataclass(frozen=True)
class ConvertOptions:
    """Every setting of a ``convert`` run (the CLI builds it; the recipe records it)."""

    source: str | None
    nm: str = "2:4"
    arch: str | None = None
    input_shape: str | None = None
    method: str = "magnitude"
    data: str | None = None
    max_length: int | None = None
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
    export: tuple[str, ...] = ("onnx",)
    condensed_ops: str = "custom"
    quantize: str | None = None
    calib_size: int = 256
    calib_method: str = "minmax"
    max_accuracy_drop: float | None = None
    reduce_range: bool | None = None
    epochs: int = 8
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adamw"
    distill: bool = False
    resume: bool = False
    device: str | None = None
    ift: str | None = None
    sparsity: float = 0.75
    dst: str | None = None
    mask_init: str = "uniform"
    inputs: tuple[str, ...] = ()
    example_input: str | None = None

    def __post_init__(self) -> None:
        NMPattern.parse(self.nm)
        for text in self.inputs:
            parse_input_spec(text)
        if self.ift is not None:
            SparseIFTConfig(self.ift, self.sparsity)  # validates
        if self.dst is not None:
            DSTConfig(self.dst, self.sparsity, self.mask_init, epochs=self.epochs)
        unknown = [e for e in self.export if e not in EXPORTS]
        if unknown or not self.export:
            raise SparsifyError(
                f"unknown --export {','.join(unknown) or '(empty)'}", expected=f"some of {EXPORTS}"
            )
        if self.quantize is not None:
            self.quantize_config()
        if self.condensed_ops not in CONDENSED_OPS:
            raise SparsifyError(
                f"unknown --condensed-ops {self.condensed_ops!r}",
                expected=f"one of {CONDENSED_OPS}",
            )
        if self.method not in METHODS:
            raise SparsifyError(
                f"unknown --method {self.method!r}", expected=f"one of {tuple(METHODS)}"
            )
        if self.batch_size < 1:
            raise SparsifyError("--batch-size must be >= 1", found=str(self.batch_size))
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise SparsifyError("batch sizes must be >= 1", found=str(self.batch_sizes))
        if self.threads < 1:
            raise SparsifyError("--threads must be >= 1", found=str(self.threads))
        if self.max_length is not None and not (self.data and is_text_data(self.data)):
            raise SparsifyError(
                "--max-length applies to text --data only",
                fix="pass a text file or .jsonl with --data, or drop --max-length",
            )
        if self.max_length is not None and self.max_length < 1:
            raise SparsifyError("--max-length must be >= 1", found=str(self.max_length))

    def quantize_config(self) -> QuantizeConfig:
        return QuantizeConfig(
            self.quantize or "int8",
            self.calib_method,
            self.calib_size,
            self.max_accuracy_drop,
            self.reduce_range,
        )


@dataclass
class Hooks:
    """How the pipeline talks to its caller: a progress wrapper and a status line."""

    track: Callable[..., Any] = field(default=lambda items, description, total=None: items)
    status: Callable[[str], None] = field(default=lambda message: None)


def default_out(opts: ConvertOptions) -> Path:
    stem = Path(opts.source).stem if opts.source else (opts.arch or "model").rpartition(":")[2]
    return Path(f"{stem}_sparse_{opts.nm.replace(':', 'of')}")


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Delete staging folders left by runs that were killed (their process no longer exists)."""
    for stale in parent.glob(f".{name}.partial-*"):
        pid = stale.name.split("partial-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_out(out: Path, force: bool) -> Path:
    """Check ``out`` can be written; return a fresh staging folder beside it.

    The staging folder's name carries this process id, so a later run can tell a folder left by
    a killed run (removed) from one that another live run is filling (kept).
    """
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
        _remove_stale_staging(parent, out.name)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=parent))
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
    if spec and is_text_data(spec):
        if loaded.hf_folder is None:
            raise SparsifyError(
                f"--data {spec} is text, and only a Hugging Face folder brings a tokenizer",
                expected="a model folder with config.json and its tokenizer files",
                fix="pass the model folder, or the token ids as an .npz (one array per input)",
            )
        max_length = opts.max_length or DEFAULT_MAX_LENGTH
        return load_text_data(spec, loaded.hf_folder, loaded.specs, max_length)
    if spec and not isinstance(loaded.example, torch.Tensor):
        return load_input_data(spec, loaded.specs)
    return load_data(spec, tuple(loaded.example.shape[1:])) if spec else None


def _device(name: str | None) -> torch.device:
    """``--device``: cuda when present unless told otherwise."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SparsifyError(f"unknown --device {name!r}", expected="cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SparsifyError(
            "--device cuda was asked for but CUDA is not available", fix="--device cpu"
        )
    return device


def _workdir(out: Path) -> Path:
    """Where fine-tuning keeps its per-epoch checkpoints: beside ``out``, kept until success."""
    return out.resolve().parent / f".{out.name}.work"


SPECTRAL_MAX_WEIGHTS = 1 << 24
"""Layers larger than this skip the spectral gaps (an SVD per kernel position)."""


def _spectral(entry, module) -> dict[str, float] | None:
    """Ramanujan and weighted spectral gaps of a sparse layer's mask graph (Sparse-IFT sec. 5)."""
    if entry is None or entry.mask.size > SPECTRAL_MAX_WEIGHTS:
        return None
    gaps = layer_gaps(entry.module, entry.mask, module.weight.detach().cpu().numpy())
    return {"ramanujan_gap": gaps.ramanujan_gap, "weighted_gap": gaps.weighted_gap}


def _layer_rows(choices, manifest: dict, flops: dict, model) -> list[dict[str, Any]]:
    rows = []
    modules = dict(model.named_modules())
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
                "spectral": _spectral(entry, modules.get(choice.name)),
            }
        )
    return rows


def _tensorrt_artifact(
    opts: ConvertOptions,
    staging: Path,
    sparse_onnx: Path,
    choices,
    manifest: Manifest,
    check_x: np.ndarray,
    torch_out: np.ndarray,
) -> dict[str, Any]:
    """Dense and 2:4 fp16 engines of the sparse ONNX: which layers run sparse, parity, latency."""
    import onnx

    from sparsify_cli.exporters.tensorrt.export import export_tensorrt
    from sparsify_cli.exporters.tensorrt.runtime import TimingSettings

    refs = weight_refs(onnx.load(str(sparse_onnx)), [c.name for c in choices])
    artifact = export_tensorrt(
        sparse_onnx,
        staging,
        node_map={module: [r.node for r in found] for module, found in refs.items()},
        patterns={e.module: e.pattern for e in manifest.entries.values()},
        check_x=check_x,
        reference=torch_out,
        batch_sizes=opts.batch_sizes,
        timing=TimingSettings(duration_s=opts.bench_seconds),
    )
    artifact["sha256"] = file_sha256(staging / artifact["path"])
    if not artifact["parity"]["ok"]:
        raise SparsifyError(
            "the TensorRT engine does not match the PyTorch model",
            expected=f"max abs difference <= {artifact['parity_atol']:.3g}",
            found=f"{artifact['parity_max_abs']:.3g}",
        )
    return artifact


def _parity(
    path: Path, what: str, check_x: Any, torch_out: np.ndarray, atol: float
) -> tuple[np.ndarray, float]:
    """Outputs of ``path`` in ONNX Runtime and their max abs difference from PyTorch's.

    A difference above ``atol`` is an error naming the artifact.
    """
    outputs = runtime.run(runtime.session(path), check_x)
    parity = max_abs_diff(outputs, torch_out)
    if parity > atol:
        raise SparsifyError(
            f"the {what} does not match the PyTorch model",
            expected=f"max abs difference <= {atol:g}",
            found=f"{parity:.3g}",
        )
    return outputs, parity


def _condensed_artifact(
    opts: ConvertOptions,
    staging: Path,
    sparse_onnx: Path,
    manifest: Manifest,
    check_x: np.ndarray,
    torch_out: np.ndarray,
    labels: np.ndarray | None,
) -> dict[str, Any]:
    """Constant fan-in layers as values + indices (``CondensedLinear`` or stock ops), checked.

    The pattern check compares each condensed layer's fan-in with the manifest's; parity is
    against the same PyTorch outputs as the plain ONNX, with the same tolerance.
    """
    path = staging / "model_condensed.onnx"
    results = condense_onnx(sparse_onnx, manifest, path, ops=opts.condensed_ops)
    entries = manifest.by_module()
    checks = [
        {
            "module": r.module,
            "pattern": entries[r.module].pattern,
            "ok": r.skipped is not None or r.fan_in == entries[r.module].fan_in,
            "detail": r.skipped or f"k={r.fan_in} over {r.active_rows}/{r.out_features} rows",
        }
        for r in results
    ]
    outputs, parity = _parity(path, "condensed ONNX", check_x, torch_out, opts.parity_atol)
    return {
        "format": "condensed",
        "path": path.name,
        "size_bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "condensed_ops": opts.condensed_ops,
        # which kernel set produced the latency below (avx512, avx2 or portable)
        "kernels": kernel_isa() if opts.condensed_ops == "custom" else None,
        "layers_condensed": sum(r.skipped is None for r in results),
        "parity_max_abs": parity,
        "parity_atol": opts.parity_atol,
        "pattern_ok": all(c["ok"] for c in checks),
        "pattern_checks": checks,
        "accuracy": _accuracy(outputs, labels),
    }


def resolve_passes(opts: ConvertOptions) -> list[Any]:
    """The pass configs a run with ``opts`` executes (recorded in, and checked by, recipes).

    ``--ift`` / ``--dst`` run Sparse-IFT, then dynamic sparse training and the removal of
    ablated neurons; otherwise ``--method`` picks the N:M pass. Fold always comes last.
    """
    if not (opts.ift or opts.dst):
        return [METHODS[opts.method](opts, NMPattern.parse(opts.nm)), FoldConfig()]
    configs: list[Any] = []
    if opts.ift:
        configs.append(SparseIFTConfig(opts.ift, opts.sparsity))
    if opts.dst:
        configs += [
            DSTConfig(opts.dst, opts.sparsity, opts.mask_init, epochs=opts.epochs),
            ShrinkConfig(),
        ]
    return configs + [FoldConfig()]


QUANT_FILES = {"int8": "model_int8.onnx", "int8-dynamic": "model_int8_dynamic.onnx"}
QUANT_FORMATS = {"int8": "onnx-int8", "int8-dynamic": "onnx-int8-dynamic"}


def _quant_artifact(quant, checks, latency, fp32_latency) -> dict[str, Any]:
    """The int8 artifact's report entry; each latency row adds ``speedup_vs_fp32`` (fp32 sparse
    median / int8 median, same measure_latency run)."""
    return {
        "format": QUANT_FORMATS[quant.mode],
        "path": quant.path.name,
        "size_bytes": quant.path.stat().st_size,
        "sha256": file_sha256(quant.path),
        "parity_max_abs": quant.max_abs_diff,
        "sqnr_db": quant.sqnr_db,
        "accuracy": quant.accuracy,
        "accuracy_fp32_sparse": quant.fp32_accuracy,
        "quantization": quant.to_dict(),
        "pattern_ok": all(c.ok for c in checks),
        "pattern_checks": [asdict(c) for c in checks],
        "latency": [
            {**r.to_dict(), "speedup_vs_fp32": f.p50_ms / r.p50_ms}
            for r, f in zip(latency, fp32_latency, strict=True)
        ],
    }


def convert(opts: ConvertOptions, hooks: Hooks = Hooks()) -> tuple[dict[str, Any], Path]:
    """Run the whole conversion; returns the report and the output folder."""
    pattern = NMPattern.parse(opts.nm)
    out = Path(opts.out) if opts.out else default_out(opts)
    if out.exists() and not opts.force:  # fail before any expensive work
        _prepare_out(out, force=False)
    if "tensorrt" in opts.export:
        require_tensorrt()  # no GPU / no TensorRT: say so now, not after fine-tuning
    hooks.status("loading the checkpoint")
    loaded = load_model(
        opts.source,
        opts.arch,
        opts.input_shape,
        opts.trust_checkpoint,
        opts.inputs,
        opts.example_input,
    )
    multi_input = not isinstance(loaded.example, torch.Tensor)
    if multi_input and "tensorrt" in opts.export:
        raise SparsifyError(
            "--export tensorrt takes models with one float input",
            found=f"inputs {', '.join(loaded.example)}",
        )
    data = _dataset(opts, loaded)
    torch.manual_seed(opts.seed)
    model, example = loaded.model, loaded.example
    trains = f"--dst {opts.dst}" if opts.dst else f"--method {opts.method}"
    trained = opts.method in TRAINED or bool(opts.dst)
    if trained and data is None:
        raise SparsifyError(
            f"{trains} trains the model and needs training data",
            fix="pass --data (a dataset name such as digits, an .npz with x[, y], or a text "
            "file for a Hugging Face folder)",
        )
    if trained and data.y_train is not None and not opts.distill:
        with torch.no_grad():
            check_labels(call(model, example), torch.as_tensor(data.y_train), trains)
    selection = Selection(opts.include, opts.exclude, opts.sparsify_head, head=loaded.head)
    choices = select_layers(model, pattern.m, example, selection)
    targets = [c.name for c in choices if c.selected]
    if not targets:
        raise SparsifyError(
            f"no layer can be sparsified at {pattern}",
            expected=f"Linear / Conv2d layers whose input size divides by {pattern.m}",
            found="; ".join(f"{c.name}: {c.reason}" for c in choices[:6]) or "no layers",
            fix="check --include/--exclude, or choose a smaller M",
        )
    if distributed.is_main():
        staging = _prepare_out(out, opts.force)
    else:  # other ranks never write beside --out; their scratch is private and removed
        staging = Path(tempfile.mkdtemp(prefix=f"sparsify-rank{distributed.rank()}-"))
    try:
        hooks.status("exporting the dense baseline")
        dense_onnx = staging / "model_dense.onnx"
        export_onnx(model, example, dense_onnx, loaded.specs)
        dense_out = predict(model, data.x_test) if data is not None else None

        hooks.status(f"sparsifying {len(targets)} layers at {pattern} ({opts.method})")
        ctx = PassContext(targets=targets, example=example, seed=opts.seed, track=hooks.track)
        configs = resolve_passes(opts)
        sparse_training = bool(opts.ift or opts.dst)
        if sparse_training:
            ctx.targets = ift_targets(model, example, selection)
        if opts.method in TRAINED or sparse_training:
            ctx.device = _device(opts.device)
            loader = distributed.sharded_loader if distributed.is_distributed() else make_loader
            ctx.train = loader(
                data.x_train, data.y_train, opts.batch_size, shuffle=True, seed=opts.seed
            )
            ctx.eval = make_loader(data.x_test, data.y_test, 256, shuffle=False)
        if opts.method in TRAINED:
            workdir = _workdir(out)
            if workdir.exists() and not opts.resume and distributed.is_main():
                shutil.rmtree(workdir)
            if distributed.is_main():
                workdir.mkdir(parents=True, exist_ok=True)
            ctx.workdir, ctx.resume = workdir, opts.resume
        distributed.agree()  # every rank is ready to train (or all stop, with one message)
        model = run_passes(model, configs, ctx).cpu()
        if distributed.handoff():  # rank 0 alone writes the artifacts; this rank is done
            return ctx.metrics, out
        if sparse_training:  # the report lists the transformed model's layers
            choices = select_layers(model, 1, example, selection)
        recipe = recipe_dict(opts, configs)
        write_recipe(staging / "recipe.yaml", recipe)
        manifest = Manifest(
            ctx.manifest,
            recipe=recipe,
            versions={
                "sparsify": tool_version(),
                "torch": torch.__version__,
            },
        )
        manifest.save(staging / "manifest.safetensors")
        with atomic_path(staging / "model_sparse.safetensors") as tmp:
            save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()},
                str(tmp),
                metadata={"sparsify_sample": loaded.sample.name} if loaded.sample else None,
            )
        if loaded.hf_folder is not None:
            save_hf_folder(model, loaded.hf_folder, staging / HF_FOLDER)

        hooks.status("exporting and verifying the sparse ONNX")
        sparse_onnx = staging / "model.onnx"
        export_onnx(model, example, sparse_onnx, loaded.specs)
        checks = verify_pattern(sparse_onnx, manifest)
        bad = [c for c in checks if not c.ok]
        if bad:
            raise SparsifyError(
                "the exported ONNX does not hold the sparsity pattern",
                found="; ".join(f"{c.module}: {c.detail}" for c in bad),
            )
        check_x = data.x_test if data is not None else as_arrays(example)
        torch_out = predict(model, check_x)
        onnx_out, parity = _parity(
            sparse_onnx, "exported ONNX", check_x, torch_out, opts.parity_atol
        )

        quant = None
        if opts.quantize is not None:
            hooks.status(f"quantizing the sparse ONNX ({opts.quantize})")
            quant = quantize_model(
                sparse_onnx,
                staging / QUANT_FILES[opts.quantize],
                opts.quantize_config(),
                data.x_train if data is not None else None,
                check_x,
                data.y_test if data is not None else None,
            )
            quant_checks = verify_pattern(quant.path, manifest)
            bad = [c for c in quant_checks if not c.ok]
            if bad:
                raise SparsifyError(
                    "the int8 ONNX does not hold the sparsity pattern",
                    found="; ".join(f"{c.module}: {c.detail}" for c in bad),
                )

        condensed = None
        if "condensed" in opts.export:
            hooks.status(f"condensing constant fan-in layers ({opts.condensed_ops} ops)")
            condensed = _condensed_artifact(
                opts,
                staging,
                sparse_onnx,
                manifest,
                check_x,
                torch_out,
                data.y_test if data is not None else None,
            )

        hooks.status("timing dense and sparse in ONNX Runtime")
        settings = LatencySettings(
            tuple(opts.batch_sizes), opts.threads, seconds=opts.bench_seconds
        )
        latency = measure_latency(
            {
                "dense": dense_onnx,
                "onnx": sparse_onnx,
                **({"int8": quant.path} if quant else {}),
                **({"condensed": staging / condensed["path"]} if condensed else {}),
            },
            loaded.specs,
            settings,
            baseline="dense",
            track=hooks.track,
        )

        report = new_report(loaded.source, loaded.sha256, asdict(opts), opts.threads)
        report["recipe"] = recipe
        report["training"] = ctx.metrics
        report["layers"] = _layer_rows(
            choices, manifest.entries, layer_flops(model, example), model
        )
        if data is not None and data.y_test is not None:
            report["accuracy"] = {
                "metric": "top1",
                "samples": int(len(data.y_test)),
                "dense": _accuracy(dense_out, data.y_test),
                "sparse": _accuracy(torch_out, data.y_test),
                "sparse_onnx": _accuracy(onnx_out, data.y_test),
                "quantized": quant.accuracy if quant else None,
            }
        report["baseline"] = {
            "format": "onnx",
            "path": dense_onnx.name,
            "size_bytes": dense_onnx.stat().st_size,
            "latency": [r.to_dict() for r in latency["dense"]],
            "accuracy": report["accuracy"]["dense"] if report["accuracy"] else None,
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
                "accuracy": report["accuracy"]["sparse_onnx"] if report["accuracy"] else None,
            }
        )
        if quant is not None:
            report["artifacts"].append(
                _quant_artifact(quant, quant_checks, latency["int8"], latency["onnx"])
            )
        if condensed is not None:
            condensed["latency"] = [r.to_dict() for r in latency["condensed"]]
            report["artifacts"].append(condensed)
        if "tensorrt" in opts.export:
            hooks.status("building, checking and timing dense and 2:4 TensorRT engines (fp16)")
            trt_artifact = _tensorrt_artifact(
                opts, staging, sparse_onnx, choices, manifest, check_x, torch_out
            )
            report["environment"]["tensorrt"] = trt_artifact["tensorrt"]
            report["artifacts"].append(trt_artifact)
        write_report(staging / "report.json", report)
        write_html(staging, report)
        _publish(staging, out)
        if ctx.workdir is not None:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return report, out
