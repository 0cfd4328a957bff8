"""``convert``: load -> select -> passes -> fold -> manifest -> export -> verify -> bench -> report.

This is the only place that uses both :mod:`passes` and :mod:`exporters`. Everything is written
into a hidden staging folder beside ``out`` and moved into place only when the whole run
succeeded, so an interrupted run never leaves a half-written artifact under the real name.

:func:`convert` runs the stages in order, each a function of its own: prepare the output, load,
sparsify, save the sparse model, export every requested format (the exporter registry,
:mod:`sparsify_cli.exporters.formats`), measure latency, write the report. The options arrive
checked (:mod:`sparsify_cli.options`).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

import sparsify_cli.exporters.formats  # noqa: F401  (registers the built-in exporters)
from sparsify_cli import validation
from sparsify_cli.advice import AdviceLog, accuracy_guard, output_agreement
from sparsify_cli.data import load_data, load_input_data
from sparsify_cli.exporters.artifact import EXPORTERS, Artifact, ExportStage
from sparsify_cli.exporters.latency import measure_latency
from sparsify_cli.exporters.onnx_export import export_onnx
from sparsify_cli.findings import artifact_findings
from sparsify_cli.hf import HF_FOLDER, save_hf_folder
from sparsify_cli.html_report import write_html
from sparsify_cli.loading import LoadedModel, load_model
from sparsify_cli.naming import default_out
from sparsify_cli.options import ConvertOptions, group_size, resolve_passes
from sparsify_cli.outdir import (
    check_out,
    drop_idle_workdir,
    prepare_out,
    prepare_workdir,
    publish,
    run_inputs,
)
from sparsify_cli.passes import PassContext, Selection, distributed, run_passes, select_layers
from sparsify_cli.passes.atomic import atomic_path, file_sha256
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.flops import layer_flops
from sparsify_cli.passes.inputs import as_arrays, batch_size, call
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.oneshot import calibration_batch
from sparsify_cli.passes.registry import config_to_dict
from sparsify_cli.passes.sparse_ift import ift_targets
from sparsify_cli.passes.spectral import layer_gaps
from sparsify_cli.passes.trace import ModelTrace, trace_model
from sparsify_cli.passes.training import check_labels, make_loader, predict
from sparsify_cli.recipe import recipe_dict, write_recipe
from sparsify_cli.report import new_report, tool_version, write_report
from sparsify_cli.samples.datasets import Dataset
from sparsify_cli.text_data import DEFAULT_MAX_LENGTH, is_text_data, load_text_data

__all__ = ["ConvertOptions", "Hooks", "convert", "export_model", "resolve_passes"]

log = logging.getLogger(__name__)


@dataclass
class Hooks:
    """How the pipeline talks to its caller: a progress wrapper and a status line."""

    track: Callable[..., Any] = field(default=lambda items, description, total=None: items)
    status: Callable[[str], None] = field(default=lambda message: None)


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((outputs.argmax(-1) == labels).mean())


def _dataset(opts: ConvertOptions, loaded: LoadedModel) -> Dataset | None:
    """``--data`` for this model: text (tokenized with a Hugging Face folder's tokenizer), an
    ``.npz`` of named inputs, or one array / a dataset name for a single-input model."""
    spec = opts.data or (loaded.sample.dataset if loaded.sample else None)
    if spec and is_text_data(spec):
        if loaded.hf_folder is None:
            raise SparsifyError(
                f"--data {spec} is text, and only a Hugging Face folder brings a tokenizer",
                expected="a model folder with config.json and its tokenizer files",
                fix="pass the model folder, or the token ids as an .npz (one array per input)",
            )
        max_length = opts.max_length or DEFAULT_MAX_LENGTH
        if loaded.max_sequence is not None:
            max_length = min(max_length, loaded.max_sequence)
        return load_text_data(spec, loaded.hf_folder, loaded.specs, max_length)
    if spec and not isinstance(loaded.example, torch.Tensor):
        return load_input_data(spec, loaded.specs)
    return load_data(spec, tuple(loaded.example.shape[1:])) if spec else None


def _check_training_data(opts: ConvertOptions, data: Dataset | None, loaded: LoadedModel) -> None:
    """A training run has data; labels (cross-entropy) fit the model's logits. One line naming
    the pass otherwise."""
    trains = f"--dst {opts.dst}" if opts.dst else f"--method {opts.method}"
    if data is None:
        raise SparsifyError(
            f"{trains} trains the model and needs training data",
            fix="pass --data (a dataset name such as digits, an .npz with x[, y], or a text "
            "file for a Hugging Face folder)",
        )
    _check_trainable(data, loaded.model, loaded.example, opts.data or "the data")
    if data.y_train is not None and not opts.distill:
        with torch.no_grad():
            output = call(loaded.model.eval(), loaded.example)
        check_labels(output, torch.as_tensor(data.y_train), trains)


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


def _inputs(opts: ConvertOptions) -> list[Path]:
    return run_inputs(opts.source, opts.data, opts.arch, opts.example_input)


def _fingerprint(run: Run) -> dict[str, Any]:
    """What determines a training's result; ``--resume`` refuses a checkpoint if it differs."""
    opts, loaded = run.opts, run.loaded
    data = opts.data or (loaded.sample.dataset if loaded.sample else None)
    return {
        "input_sha256": loaded.sha256,
        "seed": opts.seed,
        "batch_size": opts.batch_size,
        "data_sha256": file_sha256(Path(data)) if data and Path(data).is_file() else data,
        "passes": [config_to_dict(c) for c in run.configs],
    }


def _check_trainable(data: Dataset, model, example, source: str) -> None:
    """Training needs samples left after the held-out split, and labels the outputs can index."""
    validation.trainable_rows(batch_size(data.x_train), source)
    if data.y_train is not None:
        classes = int(predict(model, as_arrays(example)).shape[-1])
        for labels in (data.y_train, data.y_test):
            validation.labels_in_range(labels, classes, source)


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


@dataclass
class Run:
    """What the stages of one ``convert`` share."""

    opts: ConvertOptions
    hooks: Hooks
    out: Path
    need_labels: bool = False
    loaded: LoadedModel | None = None
    data: Dataset | None = None
    staging: Path | None = None
    configs: list[Any] = field(default_factory=list)
    selection: Selection | None = None
    choices: list[Any] = field(default_factory=list)
    ctx: PassContext | None = None
    dense_out: np.ndarray | None = None
    manifest: Manifest | None = None
    recipe: dict[str, Any] | None = None
    sparse_out: np.ndarray | None = None
    trace: ModelTrace | None = None
    """One traced forward of the model (again after Sparse-IFT changed its structure)."""

    @property
    def labels(self) -> np.ndarray | None:
        return self.data.y_test if self.data is not None else None


def _check_early(run: Run) -> None:
    """Refuse what would fail later before any expensive work: an existing ``--out`` without
    ``--force`` (or, with it, one that holds an input of the run), and a format whose
    requirements are missing (TensorRT without a GPU)."""
    check_out(run.out, run.opts.force, _inputs(run.opts))
    for name in run.opts.formats():
        if EXPORTERS[name].check is not None:
            EXPORTERS[name].check(run.opts)


def _load(run: Run) -> None:
    """The model, its example input, the data, and the passes to run with the layers they
    may sparsify (eligibility by the first pass's group size, not by ``--nm``)."""
    opts = run.opts
    run.hooks.status("loading the checkpoint")
    loaded = load_model(
        opts.source,
        opts.arch,
        opts.input_shape,
        opts.trust_checkpoint,
        opts.inputs,
        opts.example_input,
    )
    validation.finite_weights(loaded.model.state_dict())  # before any other check
    validation.batch_allocation("--batch-sizes", opts.batch_sizes, loaded.specs)
    run.loaded, run.data = loaded, _dataset(opts, loaded)
    if run.need_labels and (run.data is None or run.data.y_test is None):
        raise SparsifyError(
            "--gate-max-accuracy-drop needs accuracy, and this run would measure none",
            fix="pass --data with labelled held-out samples (a dataset name or .npz)",
        )
    torch.manual_seed(opts.seed)
    if opts.trains:
        _check_training_data(opts, run.data, loaded)
    if opts.calibrated and run.data is None:
        raise SparsifyError(
            f"--method {opts.method} measures activations and needs calibration data",
            fix="pass --data (a dataset name such as digits, or an .npz with the model's inputs); "
            "--calib-size sets how many training rows are used",
        )
    run.configs = resolve_passes(opts)
    group = group_size(run.configs)
    run.selection = Selection(opts.include, opts.exclude, opts.sparsify_head, head=loaded.head)
    run.trace = trace_model(loaded.model, loaded.example)  # the one forward of the dense model
    run.choices = select_layers(loaded.model, group, loaded.example, run.selection, run.trace)
    if not any(c.selected for c in run.choices):
        what = f"at {opts.pattern}" if group > 1 else "with this run's passes"
        raise SparsifyError(
            f"no layer can be sparsified {what}",
            expected=f"Linear / Conv2d layers whose input size divides by {group}",
            found="; ".join(f"{c.name}: {c.reason}" for c in run.choices[:6]) or "no layers",
            fix="check --include/--exclude" + (", or choose a smaller M" if group > 1 else ""),
        )


def _training_context(run: Run) -> PassContext:
    """Targets, data loaders, device, work folder and (for DST after Sparse-IFT) the teacher."""
    opts, loaded, data = run.opts, run.loaded, run.data
    targets = [c.name for c in run.choices if c.selected]
    ctx = PassContext(
        targets=targets, example=loaded.example, seed=opts.seed, track=run.hooks.track
    )
    if opts.sparse_training:
        ctx.targets = ift_targets(loaded.model, loaded.example, run.selection, run.trace)
    if opts.trains:
        ctx.device = _device(opts.device)
        loader = distributed.sharded_loader if distributed.is_distributed() else make_loader
        ctx.train = loader(
            data.x_train, data.y_train, opts.batch_size, shuffle=True, seed=opts.seed
        )
        ctx.eval = make_loader(data.x_test, data.y_test, 256, shuffle=False)
        workdir = _workdir(run.out)
        if distributed.is_main():
            prepare_workdir(workdir, _fingerprint(run), opts.resume)
        ctx.workdir, ctx.resume = workdir, opts.resume
    if opts.calibrated:  # SparseGPT / Wanda: one batch of training rows, on the device
        ctx.device = _device(opts.device)
        ctx.calibration = calibration_batch(data.x_train, opts.calib_size, ctx.device)
    if opts.ift and opts.dst and (opts.distill or data.y_train is None):
        ctx.teacher = copy.deepcopy(loaded.model)  # the dense model, before Sparse-IFT
    return ctx


def _what_runs(run: Run) -> str:
    """The status line of the sparsifying step, naming what really runs."""
    opts, layers = run.opts, sum(c.selected for c in run.choices)
    if opts.ift or opts.dst:
        steps = [f"Sparse-IFT {opts.ift}"] if opts.ift else []
        steps += [f"{opts.dst} training for {opts.epochs} epochs"] if opts.dst else []
        return f"{', then '.join(steps)} at sparsity {opts.training_sparsity:g}"
    if opts.trains:
        return (
            f"fine-tuning {layers} layers at {opts.nm} with {opts.method} for {opts.epochs} epochs"
        )
    return f"sparsifying {layers} layers at {opts.nm} ({opts.method}, one-shot)"


def _baseline(run: Run, dense: nn.Module) -> None:
    """The dense model's ONNX (timed beside the artifacts) and its outputs on the check inputs
    (what accuracy, agreement and the guard compare with)."""
    loaded = run.loaded
    run.hooks.status("exporting the dense baseline")
    export_onnx(dense, loaded.example, run.staging / "model_dense.onnx", loaded.specs)
    run.dense_out = predict(dense, _check_x(run))


def _sparsify(run: Run) -> bool:
    """Export the dense baseline, run the passes; ``False`` on a torchrun rank that is done."""
    loaded = run.loaded
    _baseline(run, loaded.model)
    run.hooks.status(_what_runs(run))
    run.ctx = _training_context(run)
    distributed.agree()  # every rank is ready to train (or all stop, with one message)
    loaded.model = run_passes(loaded.model, run.configs, run.ctx).cpu()
    if distributed.handoff():  # rank 0 alone writes the artifacts; this rank is done
        return False
    if run.opts.sparse_training:  # the report lists the transformed model's layers
        run.trace = trace_model(loaded.model, loaded.example)
        run.choices = select_layers(loaded.model, 1, loaded.example, run.selection, run.trace)
    return True


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each its own storage: tied weights (an LM head sharing the word
    embeddings) are stored under every name, so the file loads with a strict load_state_dict
    (safetensors refuses tensors that share memory)."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.contiguous() if ptr not in seen else value.clone()
        seen.add(ptr)
    return out


def _save(run: Run) -> None:
    """Recipe, manifest, sparse weights (and the Hugging Face folder) into staging."""
    loaded, staging = run.loaded, run.staging
    if run.recipe is None:  # a convert run: replayable with --recipe
        run.recipe = recipe_dict(run.opts, run.configs)
        write_recipe(staging / "recipe.yaml", run.recipe)
    versions = {"sparsify": tool_version(), "torch": torch.__version__}
    run.manifest = Manifest(run.ctx.manifest, recipe=run.recipe, versions=versions)
    run.manifest.save(staging / "manifest.safetensors")
    with atomic_path(staging / "model_sparse.safetensors") as tmp:
        save_file(
            _unshared(loaded.model.state_dict()),
            str(tmp),
            metadata={"sparsify_sample": loaded.sample.name} if loaded.sample else None,
        )
    if loaded.hf_folder is not None:
        save_hf_folder(loaded.model, loaded.hf_folder, staging / HF_FOLDER)


def _check_x(run: Run) -> Any:
    """The held-out inputs parity, accuracy and the agreement guard use (the example without
    data)."""
    return run.data.x_test if run.data is not None else as_arrays(run.loaded.example)


def _agreement(dense: np.ndarray, sparse: np.ndarray, check_x: Any) -> dict[str, Any]:
    """Mean cosine of sparse vs dense outputs on the held-out inputs (real tokens only when the
    model takes an attention mask shaped like its outputs' leading axes)."""
    mask = check_x.get("attention_mask") if isinstance(check_x, dict) else None
    if mask is not None and tuple(mask.shape) != tuple(dense.shape[:-1]):
        mask = None
    return {
        "metric": "cosine",
        "samples": int(dense.shape[0]),
        "sparse": output_agreement(dense, sparse, mask),
    }


def _guard(run: Run, report: dict[str, Any]) -> None:
    """The accuracy guard (:func:`sparsify_cli.advice.accuracy_guard`) into ``warnings``."""
    opts = run.opts
    if opts.sparse_training:
        method = f"--dst {opts.dst}" if opts.dst else f"--ift {opts.ift}"
        pattern = f"sparsity {opts.training_sparsity:g}"
    else:
        method, pattern = opts.method, getattr(run.configs[0], "label", opts.nm)
    advice = AdviceLog()
    accuracy_guard(
        advice, method, pattern, opts.epochs, report["accuracy"], report["agreement"]["sparse"]
    )
    report["warnings"] = advice.to_list()


def _export_all(run: Run) -> dict[str, Artifact]:
    """Every requested format through the exporter registry, ``onnx`` first (by name)."""
    loaded, data = run.loaded, run.data
    run.hooks.status("exporting and verifying the sparse ONNX")
    sparse_onnx = run.staging / "model.onnx"
    export_onnx(loaded.model, loaded.example, sparse_onnx, loaded.specs)
    check_x = _check_x(run)
    stage = ExportStage(
        folder=run.staging,
        onnx=sparse_onnx,
        manifest=run.manifest,
        check_x=check_x,
        reference=predict(loaded.model, check_x),
        labels=run.labels,
        calib_x=data.x_train if data is not None else None,
        options=run.opts,
        layers=[c.name for c in run.choices],
        specs=loaded.specs,
        status=run.hooks.status,
    )
    for name in run.opts.formats():
        exporter = EXPORTERS[name]
        if name != "onnx":
            run.hooks.status(f"exporting {exporter.description}")
        stage.built[name] = exporter.build(stage)
    run.sparse_out = stage.reference
    return stage.built


def _measure(run: Run, artifacts: dict[str, Artifact]) -> list[Any]:
    """Time the dense baseline and every ONNX Runtime artifact in one interleaved run; returns
    the baseline's rows. int8 rows also get ``speedup_vs_fp32`` (same run)."""
    opts, staging = run.opts, run.staging
    run.hooks.status("timing dense and sparse in ONNX Runtime")
    settings = opts.latency_settings()
    timed = {k: a for k, a in artifacts.items() if EXPORTERS[k].ort_timed}
    latency = measure_latency(
        {"dense": staging / "model_dense.onnx", **{k: staging / a.path for k, a in timed.items()}},
        run.loaded.specs,
        settings,
        baseline="dense",
        track=run.hooks.track,
    )
    for name, art in timed.items():
        art.latency = latency[name]
        ref = EXPORTERS[name].fp32_reference
        if ref is not None and ref in timed:
            art.latency = [
                r.with_(speedup_vs_fp32=f.p50_ms / r.p50_ms)
                for r, f in zip(art.latency, latency[ref], strict=True)
            ]
    return latency["dense"]


def _report(run: Run, built: dict[str, Artifact], dense_latency: list[Any]) -> dict[str, Any]:
    """``report.json``'s document (DESIGN.md schema) from the typed artifacts."""
    opts, model, example = run.opts, run.loaded.model, run.loaded.example
    report = new_report(run.loaded.source, run.loaded.sha256, asdict(opts), opts.threads)
    report["recipe"] = run.recipe
    report["inputs"] = [
        {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "low": s.low, "high": s.high}
        for s in run.loaded.specs
    ]
    report["training"] = run.ctx.metrics
    flops = layer_flops(model, example, run.trace)
    report["layers"] = _layer_rows(run.choices, run.manifest.entries, flops, model)
    labels = run.labels
    quantized = built.get(opts.quantize) if opts.quantize else None
    if labels is not None:
        report["accuracy"] = {
            "metric": "top1",
            "samples": int(len(labels)),
            "dense": _accuracy(run.dense_out, labels),
            "sparse": _accuracy(run.sparse_out, labels),
            "sparse_onnx": built["onnx"].accuracy,
            "quantized": quantized.accuracy if quantized else None,
        }
    report["agreement"] = _agreement(run.dense_out, run.sparse_out, _check_x(run))
    _guard(run, report)
    dense = run.staging / "model_dense.onnx"
    report["baseline"] = Artifact(
        "onnx",
        dense.name,
        dense.stat().st_size,
        latency=dense_latency,
        accuracy=report["accuracy"]["dense"] if report["accuracy"] else None,
    ).to_dict()
    report["artifacts"] = [a.to_dict() for a in built.values()]
    if "tensorrt" in built:
        report["environment"]["tensorrt"] = built["tensorrt"].extras.get("tensorrt")
    return report


def _publish(run: Run) -> dict[str, Any]:
    """The stages after sparsifying, shared by ``convert`` and :func:`export_model`: save the
    manifest and weights, export and verify every format, time them beside the dense baseline,
    write ``report.json`` and ``report.html``, and move the staging folder into place."""
    _save(run)
    artifacts = _export_all(run)
    report = _report(run, artifacts, _measure(run, artifacts))
    report["warnings"] = report.get("warnings", []) + artifact_findings(report)
    write_report(run.staging / "report.json", report)
    write_html(run.staging, report)
    publish(run.staging, run.out)
    return report


def convert(
    opts: ConvertOptions, hooks: Hooks = Hooks(), need_labels: bool = False
) -> tuple[dict[str, Any], Path]:
    """Run the whole conversion; returns the report and the output folder.

    ``need_labels`` (an accuracy gate follows) refuses a run without labelled held-out data
    right after loading, before any work whose result the gate could not judge.
    """
    run = Run(opts, hooks, Path(opts.out) if opts.out else default_out(opts), need_labels)
    _check_early(run)
    _load(run)
    lock = None
    if distributed.is_main():
        run.staging, lock = prepare_out(run.out, opts.force, _inputs(opts))
    else:  # other ranks never write beside --out; their scratch is private and removed
        run.staging = Path(tempfile.mkdtemp(prefix=f"sparsify-rank{distributed.rank()}-"))
    try:
        if not _sparsify(run):
            return run.ctx.metrics, run.out
        report = _publish(run)
        if run.ctx.workdir is not None:
            shutil.rmtree(run.ctx.workdir, ignore_errors=True)
    finally:
        if run.staging.exists():
            shutil.rmtree(run.staging, ignore_errors=True)
        if lock is not None:
            lock.release()
        drop_idle_workdir(run.ctx.workdir if run.ctx else None)
    return report, run.out


def _check_trained(model: nn.Module, manifest: Manifest) -> None:
    """The model is folded (no masks left) and its weights hold the manifest's zeros."""
    from sparsify_cli.passes.masks import masked_modules

    left = [name for name, _ in masked_modules(model)]
    if left:
        raise SparsifyError(
            "the model still carries its training masks",
            found=", ".join(left[:6]),
            fix="call manifest = sp.finalize() before export()",
        )
    if not manifest.entries:
        raise SparsifyError(
            "the manifest lists no sparse tensor", fix="pass the manifest sp.finalize() returned"
        )
    modules = dict(model.named_modules())
    for name, entry in manifest.entries.items():
        module = modules.get(entry.module)
        weight = getattr(module, "weight", None) if module is not None else None
        if weight is None or tuple(weight.shape) != tuple(entry.mask.shape):
            raise SparsifyError(
                f"the manifest's {name} is not a weight of this model",
                expected=f"a weight of shape {list(entry.mask.shape)} at {entry.module}",
                found="no such weight" if weight is None else f"shape {list(weight.shape)}",
                fix="export the model that sp.finalize() folded, with its manifest",
            )
        stray = int(((weight.detach().cpu().numpy() != 0) & ~entry.mask).sum())
        if stray:
            raise SparsifyError(
                f"{entry.module}'s weight has {stray} nonzeros where the manifest's mask is off",
                fix="do not train after sp.finalize(), or prepare and finalize again",
            )


def _specs_of(example: Any) -> tuple[Any, ...]:
    from sparsify_cli.passes.inputs import InputSpec, spec_of

    if isinstance(example, torch.Tensor):
        return (InputSpec("input", tuple(example.shape)),)
    return tuple(spec_of(name, t.detach().cpu().numpy()) for name, t in example.items())


def _api_choices(run: Run, manifest: Manifest) -> None:
    """The report's layer rows follow the manifest: a layer is sparse exactly when it has an
    entry (the user's ``prepare`` chose them), whatever the default selection would say."""
    group = group_size(run.configs)
    run.trace = trace_model(run.loaded.model, run.loaded.example)
    choices = select_layers(run.loaded.model, group, run.loaded.example, run.selection, run.trace)
    sparse = set(manifest.by_module())
    run.choices = [
        replace(
            c,
            reason=None
            if c.name in sparse
            else (c.reason or "kept dense (not in the manifest: prepare() did not select it)"),
        )
        for c in choices
    ]


def export_model(
    model: nn.Module,
    manifest: Manifest,
    dense: nn.Module,
    example: Any,
    opts: ConvertOptions,
    data: Dataset | None = None,
    hooks: Hooks = Hooks(),
) -> tuple[dict[str, Any], Path]:
    """The artifacts and report of ``convert`` for a model trained outside it (the Python API).

    ``model`` is folded (``sp.finalize()`` returned ``manifest``), ``dense`` is the model before
    its masks (the baseline timed and compared with), ``example`` a batch of its inputs. The run
    object is built from them and the same stages as ``convert`` run: baseline, save, export and
    verify, latency, report (:func:`_publish`). ``opts`` carries the export settings; its
    ``data`` (or ``data``, already loaded) gives held-out inputs and labels. No ``recipe.yaml``
    is written: the training ran in the caller's loop, which a recipe cannot replay.
    """
    _check_trained(model, manifest)
    validation.finite_weights(model.state_dict())
    specs = _specs_of(example)
    validation.batch_allocation("batch_sizes", opts.batch_sizes, specs)
    run = Run(opts, hooks, Path(opts.out) if opts.out else Path("sparsify-out"))
    _check_early(run)
    run.loaded = LoadedModel(model.eval(), example, "python api", None, None, specs)
    run.data = data if data is not None else _dataset(opts, run.loaded)
    if opts.quantize == "int8" and run.data is None:
        raise SparsifyError(
            "int8 calibrates on data, and export() was given none",
            fix="pass data= (a dataset name, an .npz, or a Dataset), or int8-dynamic",
        )
    if run.data is None or run.data.y_test is None:
        log.warning("export(): no labelled data given, so no accuracy is measured")
    run.configs = list(opts.passes)
    run.selection = Selection(opts.include, opts.exclude, opts.sparsify_head)
    _api_choices(run, manifest)
    run.ctx = PassContext(targets=[c.name for c in run.choices if c.selected], example=example)
    run.ctx.manifest = dict(manifest.entries)
    run.recipe = {
        **recipe_dict(opts, run.configs),
        "trained_by": "sparsify_cli.api (the caller's own training loop; not replayable)",
    }
    run.staging, lock = prepare_out(run.out, opts.force, _inputs(opts))
    try:
        _baseline(run, dense.eval())
        report = _publish(run)
    finally:
        if run.staging.exists():
            shutil.rmtree(run.staging, ignore_errors=True)
        lock.release()
    return report, run.out
