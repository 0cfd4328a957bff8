"""Python API: sparsify inside your own training loop, then export like ``sparsify convert``.

In the style of NVIDIA ASP / ModelOpt: :func:`prepare` picks the layers (the CLI's selection:
Linear/Conv2d whose reduction size divides by M, the output head kept dense) and attaches the
method's masks; it returns a :class:`~sparsify_cli.passes.sparsifier.Sparsifier` whose hooks
your loop calls. ``finalize()`` folds the masks into exact zeros and returns the manifest.

>>> sp = prepare(model, nm="2:4", method="maxq", example=x, epochs=E)  # doctest: +SKIP
>>> for epoch in range(E):                                               # doctest: +SKIP
...     sp.epoch_start(epoch)
...     for xb, yb in loader:
...         loss = F.cross_entropy(model(xb), yb)
...         optimizer.zero_grad(); loss.backward(); optimizer.step()
...         sp.step(optimizer)
>>> manifest = sp.finalize()                                             # doctest: +SKIP
>>> report = export(model, manifest, "out/", formats=("onnx", "int8"),  # doctest: +SKIP
...                 example=x, dense=sp.dense, data="digits")

:func:`export` then writes what ``sparsify convert`` writes (verified ONNX, condensed, int8,
TensorRT, latency against the dense baseline, ``report.json``, ``report.html``) through the
pipeline's own stages (:func:`sparsify_cli.pipeline.export_model`).

There is one implementation: the CLI's fine-tuning loop
(:func:`sparsify_cli.passes.training.fit`) drives the very same ``Sparsifier``, so the same seed,
data order and optimizer give the same masks either way (``tests/test_python_api.py``).
See docs/python_api.md.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from sparsify_cli.passes.asp import ASPConfig
from sparsify_cli.passes.dst import METHODS as DST_METHODS
from sparsify_cli.passes.dst import DSTConfig
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.finetune import FinetuneConfig
from sparsify_cli.passes.inputs import Example
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.maxq import MaxQConfig
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.selection import Selection, select_layers
from sparsify_cli.passes.sparse_ift import ift_targets
from sparsify_cli.passes.sparsifier import Sparsifier
from sparsify_cli.passes.sparsifier import prepare as attach
from sparsify_cli.passes.srste import SRSTEConfig

NM_METHODS = {"asp": ASPConfig, "srste": SRSTEConfig, "maxq": MaxQConfig}
"""``method`` -> the config of an N:M method; DST methods (``rigl``, ``srigl``, ...) take
``sparsity`` instead of ``nm``."""

LOOP_OPTIONS = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"n", "m", "epochs"}
"""Settings of the CLI's own loop (learning rate, optimizer, objective): in your loop they are
yours, so :func:`prepare` refuses them rather than ignore them."""

__all__ = ["Sparsifier", "export", "prepare"]


def _config(method: str, nm: str, epochs: int, sparsity: float, options: dict[str, Any]) -> Any:
    if method in NM_METHODS:
        if options.keys() & LOOP_OPTIONS:
            raise SparsifyError(
                f"prepare() does not take {sorted(options.keys() & LOOP_OPTIONS)}",
                expected="method settings only: your loop owns lr, optimizer and the loss",
                fix="set them on your optimizer and loss",
            )
        pattern = NMPattern.parse(nm)
        return NM_METHODS[method](n=pattern.n, m=pattern.m, epochs=epochs, **options)
    if method in DST_METHODS:
        if "lr" in options:
            raise SparsifyError("prepare() does not take 'lr'", fix="set it on your optimizer")
        return DSTConfig(method=method, sparsity=sparsity, epochs=epochs, **options)
    raise SparsifyError(
        f"unknown method {method!r} for prepare()",
        expected=f"one of {(*NM_METHODS, *DST_METHODS)}",
    )


def prepare(
    model: nn.Module,
    nm: str = "2:4",
    method: str = "maxq",
    example: Example | None = None,
    *,
    epochs: int = 8,
    sparsity: float = 0.75,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    sparsify_head: bool = False,
    seed: int = 0,
    steps_per_epoch: int | None = None,
    keep_dense: bool = True,
    **options: Any,
) -> Sparsifier:
    """Attach ``method``'s masks to ``model`` in place and return the :class:`Sparsifier`.

    ``example`` (a batch: a tensor, or ``name -> tensor`` for several inputs) finds the layers and
    the output head, as in the CLI. ``epochs`` is how many epochs your loop runs (MaxQ's schedule
    and DST's update schedule span them); DST also needs ``steps_per_epoch``. ``options`` are the
    method's own settings (``decay``, ``tau``, ``schedule``, ``delta_t``, ``alpha``, ...). With
    ``keep_dense`` a copy of the dense model is kept as ``sp.dense`` (the baseline
    :func:`export` measures).
    """
    if example is None:
        raise SparsifyError(
            "prepare() needs an example batch",
            expected="example=<a batch of inputs> (a tensor, or name -> tensor)",
        )
    config = _config(method, nm, epochs, sparsity, options)
    selection = Selection(tuple(include), tuple(exclude), sparsify_head)
    if isinstance(config, DSTConfig):
        targets = ift_targets(model, example, selection)
    else:
        choices = select_layers(model, config.m, example, selection)
        targets = [c.name for c in choices if c.selected]
    if not targets:
        raise SparsifyError(
            "prepare() found no layer to sparsify",
            expected="Linear / Conv2d layers whose reduction size divides by M (head excluded)",
            fix="check include/exclude, or sparsify_head=True",
        )
    dense = copy.deepcopy(model).eval() if keep_dense else None
    sp = attach(model, config, targets, seed, steps_per_epoch)
    sp.dense = dense
    sp.example = example
    return sp


EXPORT_SETTINGS = (
    "batch_sizes",
    "threads",
    "bench_seconds",
    "bench_warmup",
    "bench_iterations",
    "parity_atol",
    "condensed_ops",
    "calib_size",
    "calib_method",
    "reduce_range",
    "max_length",
)
"""``sparsify convert`` options that :func:`export` takes as keyword arguments (same meaning,
same checks)."""


def _trained_options(manifest: Manifest) -> tuple[dict[str, Any], list[Any]]:
    """The convert options that describe the training recorded in ``manifest`` (the report's
    method and pattern), and its pass configs."""
    from sparsify_cli.passes.registry import config_from_dict

    configs = [config_from_dict(p) for p in manifest.recipe.get("passes", [])]
    first = configs[0] if configs else None
    patterns = {e.pattern for e in manifest.entries.values()}
    settings: dict[str, Any] = {}
    if isinstance(first, DSTConfig):
        settings = {"dst": first.method, "sparsity": first.sparsity, "epochs": first.epochs}
    elif first is not None and first.name in (*NM_METHODS, "magnitude"):
        settings = {"method": first.name, "nm": f"{first.n}:{first.m}"}
        if first.name in NM_METHODS:
            settings["epochs"] = first.epochs
    elif len(patterns) == 1 and ":" in next(iter(patterns)):
        settings = {"nm": next(iter(patterns))}
    return settings, configs


def export(
    model: nn.Module,
    manifest: Manifest,
    out: str | os.PathLike[str],
    formats: Sequence[str] = ("onnx",),
    *,
    example: Any = None,
    dense: nn.Module | None = None,
    data: Any = None,
    force: bool = False,
    seed: int = 0,
    **settings: Any,
) -> dict[str, Any]:
    """Write ``sparsify convert``'s verified artifacts and report for a model you trained.

    ``model`` and ``manifest`` are what your loop ends with (``manifest = sp.finalize()``);
    ``dense`` is the model before its masks (``sp.dense``), the baseline every artifact is timed
    and compared against; ``example`` a batch of inputs (``sp.example``). ``formats`` names the
    artifacts: ``onnx`` (always), ``condensed``, ``tensorrt``, and one of ``int8`` /
    ``int8-dynamic``. ``data`` (a dataset name, an ``.npz`` as for ``--data``, or a
    :class:`~sparsify_cli.samples.datasets.Dataset`) gives the held-out inputs and labels for
    parity and accuracy and the calibration rows of ``int8``; without it parity runs on
    ``example``, accuracy is not measured (the report's ``accuracy`` is null; a log line says
    so) and ``int8`` is refused. ``settings`` are the convert options of the export stages
    (:data:`EXPORT_SETTINGS`: ``batch_sizes``, ``bench_seconds``, ``threads``, ...). Returns the
    ``report.json`` document; the folder ``out`` holds ``model.onnx``, ``model_dense.onnx``,
    ``manifest.safetensors``, ``model_sparse.safetensors``, ``report.json`` and ``report.html``
    (no ``recipe.yaml``: a recipe cannot replay your loop).
    """
    from sparsify_cli.exporters.formats import QUANT_FILES
    from sparsify_cli.options import ConvertOptions
    from sparsify_cli.pipeline import Hooks, export_model
    from sparsify_cli.samples.datasets import Dataset

    missing = [
        what
        for what, value in (("example=<a batch of inputs> (sp.example)", example),
                            ("dense=<the model before prepare()> (sp.dense)", dense))
        if value is None
    ]  # fmt: skip
    if missing:
        raise SparsifyError(
            "export() needs " + " and ".join(m.split("=")[0] for m in missing),
            expected="; ".join(missing),
            fix="prepare() keeps both on the Sparsifier unless keep_dense=False",
        )
    unknown = sorted(set(settings) - set(EXPORT_SETTINGS))
    if unknown:
        raise SparsifyError(
            f"export() does not take {unknown}", expected=f"settings among {EXPORT_SETTINGS}"
        )
    if isinstance(formats, str):
        formats = tuple(f.strip() for f in formats.split(","))
    quantize = [f for f in formats if f in QUANT_FILES]
    if len(quantize) > 1:
        raise SparsifyError("export() takes one int8 format", found=", ".join(quantize))
    if data is not None and not isinstance(data, (str, os.PathLike, Dataset)):
        raise SparsifyError(
            "export() cannot read this data",
            expected="a dataset name, an .npz path, or a sparsify_cli.samples.datasets.Dataset",
            found=type(data).__name__,
        )
    trained, configs = _trained_options(manifest)
    opts = ConvertOptions(
        source=None,
        out=str(out),
        export=tuple(f for f in formats if f not in QUANT_FILES) or ("onnx",),
        quantize=quantize[0] if quantize else None,
        data=os.fspath(data) if isinstance(data, (str, os.PathLike)) else None,
        force=force,
        seed=seed,
        passes=tuple(configs),
        **trained,
        **{k: tuple(v) if k == "batch_sizes" else v for k, v in settings.items()},
    )
    report, _ = export_model(
        model,
        manifest,
        dense,
        example,
        opts,
        data=data if isinstance(data, Dataset) else None,
        hooks=Hooks(),
    )
    return report
