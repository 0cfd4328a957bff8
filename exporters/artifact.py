"""One artifact contract: what every exporter returns and what every report reads.

An exporter (ONNX, condensed, int8, TensorRT, or one added later) returns an :class:`Artifact`;
``report.json``, the terminal tables, ``report.html``, ``sparsify bench`` and the CI gates read
the same typed rows back with :meth:`Artifact.from_dict` / :meth:`LatencyRow.from_dict`. So a new
format, or a new runtime's timing, changes none of them: its own figures travel in ``extras``.

The dict form keeps the ``report.json`` keys of DESIGN.md (``parity_max_abs``, ``pattern_ok``,
``latency: [{batch, p50_ms, ...}]``) and adds ``parity`` (reference, metric, value, tolerance)
and each exporter's extras as further top-level keys.

The exporter registry (:data:`EXPORTERS`) maps a format name to how it is built: its parity
tolerance and ``build(stage) -> Artifact``. The pipeline loops over the requested names.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify_cli.passes.atomic import file_sha256
from sparsify_cli.passes.errors import SparsifyError


@dataclass(frozen=True)
class LatencyRow:
    """Latency of one artifact at one batch size, whatever runtime timed it.

    ``p50_ms`` .. ``mean_ms`` are per call in milliseconds, ``throughput`` samples per second.
    ``speedup_vs_dense`` is the dense baseline's median over this median (same run);
    ``ratio_low`` / ``ratio_high`` bound it (a confidence interval, when the timer gives one) and
    ``noisy`` flags a figure too unstable to trust. Runtime-specific figures (TensorRT's GPU
    compute and host latency statistics, int8's ``speedup_vs_fp32``) go in ``extras``.
    """

    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    iterations: int | None = None
    speedup_vs_dense: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None
    noisy: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        core = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        core.pop("extras")
        return {**core, **self.extras}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyRow:
        """Inverse of :meth:`to_dict` (unknown keys become ``extras``)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        try:
            return cls(
                **{k: v for k, v in data.items() if k in names},
                extras={k: v for k, v in data.items() if k not in names},
            )
        except TypeError as err:
            raise SparsifyError(
                "a latency row lacks a required key",
                expected="batch, p50_ms, p90_ms, p99_ms, mean_ms, throughput",
                found=", ".join(sorted(data)) or "no keys",
            ) from err

    def with_(self, **changes: Any) -> LatencyRow:
        """A copy with ``changes``; keys that are not fields are added to ``extras``."""
        names = {f.name for f in dataclasses.fields(self)}
        extras = {k: v for k, v in changes.items() if k not in names}
        fields = {k: v for k, v in changes.items() if k in names}
        return dataclasses.replace(self, **fields, extras={**self.extras, **extras})


@dataclass(frozen=True)
class Parity:
    """How closely an artifact reproduces its reference: ``metric(artifact, reference)``.

    ``ok`` needs a finite value (a NaN difference is never within any tolerance).
    """

    reference: str
    metric: str
    value: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value) and self.value <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


@dataclass
class Artifact:
    """One exported file with everything proven and measured about it."""

    format: str
    path: str
    size_bytes: int
    sha256: str | None = None
    parity: Parity | None = None
    pattern_checks: list[dict[str, Any]] = field(default_factory=list)
    accuracy: float | None = None
    latency: list[LatencyRow] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    pattern_ok: bool | None = None
    """``None``: derived from ``pattern_checks`` (all ok; ``None`` when there are none, as for
    the dense baseline or a TensorRT engine, whose sparse layers are reported apart)."""

    @classmethod
    def of_file(cls, format: str, path: Path, **kwargs: Any) -> Artifact:
        """An artifact for the file at ``path`` (name, size and sha256 read from it)."""
        return cls(format, path.name, path.stat().st_size, file_sha256(path), **kwargs)

    @property
    def pattern_holds(self) -> bool | None:
        if self.pattern_ok is not None or not self.pattern_checks:
            return self.pattern_ok
        return all(c.get("ok", False) for c in self.pattern_checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "parity_max_abs": self.parity.value if self.parity else None,
            "parity_atol": self.parity.tolerance if self.parity else None,
            "parity": self.parity.to_dict() if self.parity else None,
            "pattern_ok": self.pattern_holds,
            "pattern_checks": list(self.pattern_checks),
            "accuracy": self.accuracy,
            "latency": [r.to_dict() for r in self.latency],
            **self.extras,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifact:
        """Read a ``report.json`` / bench artifact entry (older entries without ``parity``,
        ``format`` or ``pattern_ok`` too)."""
        data = dict(data)
        if not isinstance(data.get("path"), str):
            raise SparsifyError(
                "an artifact entry has no path", expected="'path': a file name", found=str(data)
            )
        parity = data.pop("parity", None)
        value, atol = data.pop("parity_max_abs", None), data.pop("parity_atol", None)
        if isinstance(parity, Mapping) and {"reference", "metric", "value"} <= set(parity):
            parsed = Parity(
                parity["reference"], parity["metric"], parity["value"], parity.get("tolerance")
            )
        elif value is not None:
            parsed = Parity("pytorch", "max_abs", value, math.inf if atol is None else atol)
        else:
            parsed = None
        known = {f.name for f in dataclasses.fields(cls)} - {"parity", "latency", "extras"}
        fields = {k: data.pop(k) for k in list(data) if k in known}
        rows = [LatencyRow.from_dict(r) for r in data.pop("latency", None) or []]
        fields.setdefault("format", "onnx")
        fields.setdefault("size_bytes", 0)
        return cls(parity=parsed, latency=rows, extras=data, **fields)


def parse_artifacts(doc: Mapping[str, Any]) -> tuple[Artifact | None, list[Artifact]]:
    """``(baseline, artifacts)`` of a ``report.json`` or bench document, typed."""
    base = doc.get("baseline")
    arts = doc.get("artifacts") or []
    if not isinstance(arts, list) or (base is not None and not isinstance(base, Mapping)):
        raise SparsifyError(
            "the report's baseline / artifacts are malformed",
            expected="baseline: an object or null; artifacts: a list",
        )
    return (Artifact.from_dict(base) if base else None), [Artifact.from_dict(a) for a in arts]


# --- the exporter registry -----------------------------------------------------------------


@dataclass
class ExportStage:
    """What an exporter may use: the staging folder, the verified sparse ONNX and its manifest,
    the check inputs with PyTorch's outputs and labels, and the run's options (read by
    attribute; the exporter layer does not know their type).

    ``built`` holds the artifacts exported so far in this run, by format (``onnx`` is first).
    """

    folder: Path
    onnx: Path
    manifest: Any
    check_x: Any
    reference: Any
    labels: Any = None
    calib_x: Any = None
    options: Any = None
    layers: Sequence[str] = ()
    specs: Sequence[Any] = ()
    """The model's inputs (:class:`~sparsify_cli.passes.inputs.InputSpec`), in call order."""
    status: Callable[[str], None] = lambda message: None
    built: dict[str, Artifact] = field(default_factory=dict)


@dataclass(frozen=True)
class Exporter:
    """One registered format.

    ``tolerance(stage)`` is the parity bound its artifact is held to; ``build(stage)`` writes the
    file into ``stage.folder`` and returns its :class:`Artifact` (parity and pattern proven).
    ``ort_timed``: the file is timed in ONNX Runtime beside the dense baseline (TensorRT times its
    own engines). ``fp32_reference``: latency rows also get ``speedup_vs_fp32`` against that
    format's rows (int8 against the fp32 sparse ONNX). ``check`` runs before any expensive work
    (TensorRT: is a GPU there?). Every format takes every model ``load_model`` accepts (one
    float input, several, integer inputs).
    """

    name: str
    description: str
    tolerance: Callable[[ExportStage], float]
    build: Callable[[ExportStage], Artifact]
    ort_timed: bool = True
    fp32_reference: str | None = None
    check: Callable[[Any], None] | None = None


EXPORTERS: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    """Add ``exporter`` to :data:`EXPORTERS` (its name must be new)."""
    if exporter.name in EXPORTERS:
        raise ValueError(f"exporter {exporter.name!r} registered twice")
    EXPORTERS[exporter.name] = exporter
    return exporter


def require_parity(artifact: Artifact, what: str) -> Artifact:
    """Raise naming ``what`` unless ``artifact.parity`` holds (NaN never does)."""
    p = artifact.parity
    if p is not None and not p.ok:
        raise SparsifyError(
            f"the {what} does not match the PyTorch model",
            expected=f"{p.metric} difference <= {p.tolerance:.3g}",
            found=f"{p.value:.3g}",
        )
    return artifact


def require_pattern(artifact: Artifact, what: str) -> Artifact:
    """Raise naming every layer whose pattern ``artifact`` does not hold."""
    bad = [c for c in artifact.pattern_checks if not c.get("ok")]
    if bad:
        raise SparsifyError(
            f"the {what} does not hold the sparsity pattern",
            found="; ".join(f"{c['module']}: {c['detail']}" for c in bad),
        )
    return artifact
