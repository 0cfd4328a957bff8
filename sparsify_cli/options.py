"""``convert``'s options, built and judged in one place, and the passes they resolve to.

:class:`ConvertOptions` is every setting of a run. Building one checks each value and refuses
any option that would have no effect in this run (``--calib-size`` without ``--quantize``,
``--lr`` for a one-shot method, ``--method`` beside ``--dst``, ...) with a message naming it:
nothing a user types is ignored silently. The CLI (:func:`options_from_cli`), a recipe replay
and library callers all go through the same constructor.

:func:`resolve_passes` is the single place options become pass configs; each pass declares the
group size its layers must divide by (``group_size``: M for N:M passes, 1 for unstructured
ones), so eligibility follows the pass that runs, not ``--nm``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sparsify_cli import validation
from sparsify_cli.passes.errors import SparsifyError

PARITY_ATOL = 1e-4
"""fp32 ONNX Runtime vs PyTorch: max abs difference allowed on the outputs (``--parity-atol``)."""

CONDENSED_OPS = ("custom", "standard")
CONDENSED_LAYERS = ("auto", "all")
"""``--condensed-layers``: time each eligible layer and keep it dense where dense is faster
(``auto``), or condense every eligible layer (``all``: the same file on every run)."""
QUANTIZE_MODES = ("int8", "int8-dynamic")
TRAINED = ("asp", "srste", "maxq")
"""N:M methods that fine-tune and so need training data."""
CALIBRATED = ("wanda", "sparsegpt")
"""One-shot methods that measure activations on calibration data (``--data``, ``--calib-size``)
and take ``--sparsity`` for constant fan-in instead of ``--nm``."""
ONE_SHOT = ("magnitude", *CALIBRATED)
DEFAULT_SPARSITY = 0.75
"""``--ift`` / ``--dst`` sparsity when ``--sparsity`` is not given."""
TENSORRT_PRECISIONS = ("fp16", "int8")
"""``inspect --tensorrt``: precisions the 2:4 prediction knows."""


def _finetune_settings(opts: ConvertOptions) -> dict[str, Any]:
    pattern = opts.pattern
    return {
        "n": pattern.n,
        "m": pattern.m,
        "epochs": opts.epochs,
        "lr": opts.lr,
        "optimizer": opts.optimizer,
        "distill": opts.distill,
    }


def _method_pass(opts: ConvertOptions) -> Any:
    from sparsify_cli.passes import (
        ASPConfig,
        MaxQConfig,
        NMConfig,
        SparseGPTConfig,
        SRSTEConfig,
        WandaConfig,
    )

    n, m, fanin = opts.pattern.n, opts.pattern.m, opts.sparsity
    build: dict[str, Callable[[], Any]] = {
        "magnitude": lambda: NMConfig(n, m),
        "wanda": lambda: WandaConfig(n, m, sparsity=fanin),
        "sparsegpt": lambda: SparseGPTConfig(n, m, sparsity=fanin),
        "asp": lambda: ASPConfig(**_finetune_settings(opts)),
        "srste": lambda: SRSTEConfig(**_finetune_settings(opts)),
        "maxq": lambda: MaxQConfig(**_finetune_settings(opts)),
    }
    return build[opts.method]()


METHODS = (*ONE_SHOT, *TRAINED)
"""``--method`` values; each picks the config of its sparsifying pass (fold always follows)."""


def export_names() -> tuple[str, ...]:
    """``--export`` values: the registered formats (quantized ones come from ``--quantize``)."""
    from sparsify_cli.exporters.artifact import EXPORTERS
    from sparsify_cli.exporters.formats import QUANT_FILES

    return tuple(name for name in EXPORTERS if name not in QUANT_FILES)


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
    """Tokens per example for text ``--data`` (default 128)."""
    out: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sparsify_head: bool = False
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int = 1
    bench_seconds: float = 1.0
    bench_warmup: int | None = None
    bench_iterations: int | None = None
    seed: int = 0
    trust_checkpoint: bool = False
    force: bool = False
    parity_atol: float = PARITY_ATOL
    export: tuple[str, ...] = ("onnx",)
    condensed_ops: str = "custom"
    condensed_layers: str = "auto"
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
    sparsity: float | None = None
    dst: str | None = None
    mask_init: str = "uniform"
    delta_t: int | None = None
    inputs: tuple[str, ...] = ()
    example_input: str | None = None
    passes: tuple[Any, ...] = ()
    """Pass configs a recipe recorded (authoritative); empty: resolved from the options."""

    def __post_init__(self) -> None:
        from sparsify_cli.passes.inputs import parse_input_spec

        self.pattern  # noqa: B018  (validates --nm)
        for text in self.inputs:
            parse_input_spec(text)
        check_choice("--method", self.method, METHODS)
        check_choice("--condensed-ops", self.condensed_ops, CONDENSED_OPS)
        check_choice("--condensed-layers", self.condensed_layers, CONDENSED_LAYERS)
        if self.quantize is not None:
            check_choice("--quantize", self.quantize, QUANTIZE_MODES)
            self.quantize_config()  # validates the calibration settings
        known = export_names()
        unknown = [e for e in self.export if e not in known]
        if unknown or not self.export:
            raise SparsifyError(
                f"unknown --export {','.join(unknown) or '(empty)'}", expected=f"some of {known}"
            )
        if self.max_length is not None and self.max_length < 1:
            raise SparsifyError("--max-length must be >= 1", found=str(self.max_length))
        for flag, value in (("--batch-size", self.batch_size), ("--threads", self.threads)):
            if value < 1:
                raise SparsifyError(f"{flag} must be >= 1", found=str(value))
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise SparsifyError("batch sizes must be >= 1", found=str(self.batch_sizes))
        self.latency_settings()  # validates the timing options
        validation.positive_finite("--lr", self.lr)
        validation.at_least("--epochs", self.epochs, 0)
        validation.seed(self.seed)
        validation.parity_atol(self.parity_atol, PARITY_ATOL)
        refuse_ineffective(self)
        resolve_passes(self)  # every pass config validates its own settings

    @property
    def pattern(self) -> Any:
        from sparsify_cli.passes.pattern import NMPattern

        return NMPattern.parse(self.nm)

    @property
    def sparse_training(self) -> bool:
        """``--ift`` / ``--dst``: the model is transformed / trained sparse (no N:M method)."""
        return bool(self.ift or self.dst)

    @property
    def training_sparsity(self) -> float:
        """``--ift`` / ``--dst`` sparsity: ``--sparsity``, else :data:`DEFAULT_SPARSITY`."""
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity

    @property
    def calibrated(self) -> bool:
        """Whether the method measures activations on calibration rows (Wanda, SparseGPT)."""
        return self.method in CALIBRATED and not self.sparse_training

    @property
    def trains(self) -> bool:
        """Whether a pass of this run trains (and so needs data, a device and a work folder)."""
        return self.method in TRAINED or self.dst is not None

    def quantize_config(self) -> Any:
        from sparsify_cli.exporters.quantize import QuantizeConfig

        return QuantizeConfig(
            self.quantize or "int8",
            self.calib_method,
            self.calib_size,
            self.max_accuracy_drop,
            self.reduce_range,
        )

    def latency_settings(self) -> Any:
        """How ONNX Runtime times this run's artifacts (``--duration``, ``--warmup``, ...)."""
        from sparsify_cli.exporters.latency import LatencySettings

        return LatencySettings(
            tuple(self.batch_sizes),
            self.threads,
            self.bench_warmup,
            self.bench_seconds,
            self.bench_iterations,
        )

    def formats(self) -> tuple[str, ...]:
        """The exporter registry entries this run builds, ``onnx`` first (the others start from
        the sparse ONNX), then ``--export``'s, then ``--quantize``'s."""
        names = ["onnx", *self.export, *([self.quantize] if self.quantize else [])]
        return tuple(dict.fromkeys(names))


def check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SparsifyError(f"unknown {flag} {value!r}", expected=f"one of {allowed}")


DEFAULTS = {f.name: f.default for f in dataclasses.fields(ConvertOptions)}


def _ineffective(opts: ConvertOptions) -> list[tuple[str, str]]:
    """``(option, why it has no effect here)`` for every option set away from its default that
    this run would not use."""
    from sparsify_cli.text_data import is_text_data

    changed = {name for name, default in DEFAULTS.items() if getattr(opts, name) != default}
    rules: list[tuple[tuple[str, ...], bool, str]] = [
        (
            ("calib_method", "max_accuracy_drop", "reduce_range"),
            opts.quantize is None,
            "it applies to int8 quantization; add --quantize int8",
        ),
        (
            ("calib_size",),
            opts.quantize is None and not opts.calibrated,
            "it applies to int8 quantization and --method wanda / sparsegpt",
        ),
        (
            ("calib_method", "max_accuracy_drop"),
            opts.quantize == "int8-dynamic",
            "int8-dynamic has no calibration; use --quantize int8",
        ),
        (
            ("calib_size",),
            opts.quantize == "int8-dynamic" and not opts.calibrated,
            "int8-dynamic has no calibration; use --quantize int8",
        ),
        (
            ("condensed_ops", "condensed_layers"),
            "condensed" not in opts.export,
            "it applies to the condensed export; add --export onnx,condensed",
        ),
        (
            ("condensed_layers",),
            opts.condensed_ops == "standard",
            "the standard-op form condenses every eligible layer (timing applies to the custom "
            "kernels); use --condensed-ops custom",
        ),
        (
            ("sparsity",),
            not opts.sparse_training and opts.method not in CALIBRATED,
            "it applies to --ift / --dst and to --method wanda / sparsegpt (constant fan-in); "
            "N:M sparsity is set by --nm",
        ),
        (
            ("nm",),
            opts.calibrated and opts.sparsity is not None,
            "--sparsity asks for constant fan-in instead of N:M; drop one of them",
        ),
        (("mask_init",), opts.dst is None, "it applies to --dst"),
        (
            ("delta_t",),
            opts.dst in (None, "static"),
            "it sets how often --dst set, rigl or srigl update their masks",
        ),
        (
            ("max_length",),
            not (opts.data and is_text_data(opts.data)),
            "it applies to text --data only (a .txt or .jsonl for a Hugging Face folder)",
        ),
        (
            ("method", "nm"),
            opts.sparse_training,
            "--ift / --dst replace the N:M method; drop it, or drop --ift / --dst",
        ),
        (
            ("device",),
            not opts.trains and not opts.calibrated,
            f"--method {opts.method} neither trains nor calibrates on a device",
        ),
        (
            ("epochs", "lr", "batch_size", "optimizer", "distill", "resume"),
            not opts.trains,
            f"--method {opts.method} is one-shot (no training); use --method asp, srste, maxq "
            "or --dst",
        ),
    ]
    found = []
    for names, applies, why in rules:
        if applies:
            found += [(name, why) for name in names if name in changed]
    return found


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refuse_ineffective(opts: ConvertOptions) -> None:
    """Raise naming the first option that would have no effect in the run ``opts`` describes."""
    found = _ineffective(opts)
    if found:
        name, why = found[0]
        others = sorted({flag(n) for n, _ in found[1:]} - {flag(name)})
        raise SparsifyError(
            f"{flag(name)} has no effect in this run: {why}",
            found=f"also without effect: {', '.join(others)}" if others else None,
            fix=f"remove {flag(name)}",
        )


def resolve_passes(opts: ConvertOptions) -> list[Any]:
    """The pass configs a run with ``opts`` executes (recorded in recipes; a recipe's own list,
    in ``opts.passes``, runs as recorded).

    ``--ift`` / ``--dst`` run Sparse-IFT, then dynamic sparse training (with the run's
    ``--epochs``, ``--lr``, ``--optimizer`` and ``--distill``) and the removal of ablated
    neurons; otherwise ``--method`` picks the N:M pass. Fold always comes last.
    """
    from sparsify_cli.passes import FoldConfig
    from sparsify_cli.passes.dst import DSTConfig, ShrinkConfig
    from sparsify_cli.passes.sparse_ift import SparseIFTConfig

    if opts.passes:
        return list(opts.passes)
    if not opts.sparse_training:
        return [_method_pass(opts), FoldConfig()]
    configs: list[Any] = []
    if opts.ift:
        configs.append(SparseIFTConfig(opts.ift, opts.training_sparsity))
    if opts.dst:
        dst = DSTConfig(
            opts.dst,
            opts.training_sparsity,
            opts.mask_init,
            epochs=opts.epochs,
            lr=opts.lr,
            optimizer=opts.optimizer,
            distill=opts.distill,
            delta_t=opts.delta_t,
        )
        configs += [dst, ShrinkConfig()]
    return configs + [FoldConfig()]


def group_size(configs: list[Any]) -> int:
    """What a layer's reduction size must divide by for the first (sparsifying) pass."""
    return int(getattr(configs[0], "group_size", 1) or 1)


def options_from_cli(
    params: Mapping[str, Any],
    given: set[str],
    recipe: Any = None,
) -> ConvertOptions:
    """:class:`ConvertOptions` from the parsed command line (``given``: the options typed on it).

    With ``recipe``, the recipe's options are the base and the typed ones override them.
    """
    from sparsify_cli.recipe import read_recipe

    if recipe is not None:
        overrides = {k: v for k, v in params.items() if k in given}
        return read_recipe(recipe, ConvertOptions, overrides, resolve_passes)
    return ConvertOptions(**params)
