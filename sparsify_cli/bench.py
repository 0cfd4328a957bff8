"""``sparsify bench``: time artifacts in ONNX Runtime beside their dense baseline.

Every artifact is compared with *its own* dense model: the ``model_dense.onnx`` of the output
folder it came from, or the one beside a lone ``.onnx`` file (``--baseline`` names one for all).
Artifacts that share a baseline are timed together in one interleaved run; each group in turn.

The result is a small versioned JSON document (``kind: "sparsify-bench"``, ``schema: 2``)::

    {"kind": "sparsify-bench", "schema": 2, "tool_version": str, "created": str,
     "environment": {...same as report.json...},
     "settings": {"batch_sizes": [int], "threads": int, "warmup": int|null, "seconds": float,
                  "iterations": int | null, "round_size": int, "min_rounds": int,
                  "target": float, "max_factor": float, "noisy_width": float},
     "data": str | null,                   # the --data spec accuracy was measured on
     "baselines": [ARTIFACT],
     "artifacts": [ARTIFACT + {"baseline": str | null}]}   # the path of its baseline
    ARTIFACT = {"path": str, "size_bytes": int, "sha256": str, "accuracy": float | null,
                "inputs": {name: [int]},   # shapes timed, batch axis first (1)
                "latency": [{"batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput",
                             "iterations", "speedup_vs_dense", "ratio_low", "ratio_high",
                             "noisy"}]}

``artifacts`` have the shape ``report.json`` gives them, so :mod:`sparsify_cli.gates` judges
both documents alike (each artifact against the baseline it names).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sparsify_cli import tables, validation
from sparsify_cli.data import load_data
from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.artifact import Artifact, LatencyRow
from sparsify_cli.exporters.latency import LatencySettings, measure_latency
from sparsify_cli.exporters.onnx_file import read_onnx
from sparsify_cli.passes.atomic import file_sha256
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import InputSpec, parse_dims
from sparsify_cli.report import environment, tool_version

BENCH_KIND = "sparsify-bench"
BENCH_SCHEMA = 2
DENSE_NAME = "model_dense.onnx"

Group = tuple[Path | None, list[Path]]
"""A baseline (or none) and the artifacts timed against it."""


def collect(paths: Sequence[str | Path], baseline: str | Path | None) -> list[Group]:
    """The artifacts to time, grouped by the dense baseline each is compared with.

    A folder contributes every ``*.onnx`` in it, its ``model_dense.onnx`` being their baseline; a
    lone file is compared with the ``model_dense.onnx`` beside it, if there is one. ``baseline``
    replaces all of these with one file for every artifact.
    """
    explicit = Path(baseline) if baseline else None
    if explicit is not None and not explicit.is_file():
        raise SparsifyError(f"baseline not found: {explicit}", expected="an .onnx file")
    groups: dict[Path | None, list[Path]] = {}
    for item in map(Path, paths):
        if item.is_dir():
            models = sorted(item.glob("*.onnx"))
            if not models:
                raise SparsifyError(
                    f"no .onnx artifact in folder {item}",
                    expected="an output folder of sparsify convert",
                )
            dense = item / DENSE_NAME
            base = explicit or (dense if dense.is_file() else None)
            groups.setdefault(base, []).extend(m for m in models if m.name != DENSE_NAME)
        elif item.is_file():
            beside = item.parent / DENSE_NAME
            base = explicit or (beside if beside.is_file() and beside != item else None)
            groups.setdefault(base, []).append(item)
        else:
            raise SparsifyError(
                f"artifact not found: {item}", expected="an output folder or an .onnx file"
            )
    bases = {b.resolve() for b in groups if b is not None}
    out = []
    for base, items in groups.items():
        unique = list(dict.fromkeys(i for i in items if i.resolve() not in bases))
        if unique:
            out.append((base, unique))
    if not out:
        raise SparsifyError(
            "nothing to time besides the baseline", fix="pass an output folder or .onnx files"
        )
    return out


ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


def parse_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """``--shapes NAME:DIMS[,NAME:DIMS]`` (DIMS ``x``-separated, batch first) -> name -> dims."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, _, dims = part.strip().rpartition(":")
        shape = parse_dims(dims, commas=False)
        if not name or shape is None:
            raise SparsifyError(
                f"cannot read --shapes {text!r}",
                expected="NAME:DIMS[,NAME:DIMS], dims x-separated with the batch first, "
                "e.g. input_ids:1x128,attention_mask:1x128",
                found=repr(part),
            )
        out[name] = shape
    return out


def recorded_inputs(path: Path) -> dict[str, InputSpec]:
    """The inputs ``convert`` timed the artifacts of ``path``'s folder with (``report.json``
    ``"inputs"``), by name; empty for a file without such a report beside it."""
    try:
        doc = json.loads((path.parent / "report.json").read_text(encoding="utf-8"))
        return {
            item["name"]: InputSpec(
                item["name"],
                tuple(item["shape"]),
                item["dtype"],
                low=item["low"],
                high=item["high"],
            )
            for item in doc.get("inputs") or []
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SparsifyError):
        return {}  # no report, an older one, or not ours: --shapes decides


def input_specs(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> list[InputSpec]:
    """The inputs of ``path`` at one sample (batch 1). A dynamic axis besides the batch takes
    its size from ``shapes`` (``--shapes``), else from the inputs ``convert`` recorded beside
    the file (:func:`recorded_inputs`, which also give integer inputs their value range; else
    they are fed values in ``[0, 2)``)."""
    graph = read_onnx(path, load_weights=False).graph
    inits = {i.name for i in graph.initializer}
    recorded = recorded_inputs(path)
    specs = []
    real = [i for i in graph.input if i.name not in inits]
    for value in real:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        given = shapes.get(value.name, shapes.get("") if len(real) == 1 else None)
        known = recorded.get(value.name)
        if given is None and known is not None and any(d is None for d in dims[1:]):
            given = known.shape
        if given is not None:
            if len(given) != len(dims) or any(
                d is not None and g != d for g, d in zip(given[1:], dims[1:], strict=False)
            ):
                raise SparsifyError(
                    f"--shapes {value.name}:{'x'.join(map(str, given))} does not fit {path}",
                    expected="x".join("?" if d is None else str(d) for d in dims),
                )
            dims = [1, *given[1:]]
        if any(d is None for d in dims[1:]):
            raise SparsifyError(
                f"{path} input {value.name!r} has a dynamic axis besides the batch",
                fix=f"pass --shapes {value.name}:"
                + "x".join(
                    "1" if i == 0 else "N" if d is None else str(d) for i, d in enumerate(dims)
                ),
            )
        dtype = ONNX_DTYPES.get(tensor.elem_type)
        if dtype is None:
            raise SparsifyError(
                f"{path} input {value.name!r} has an element type bench cannot feed",
                found=onnx.TensorProto.DataType.Name(tensor.elem_type),
            )
        low, high = (known.low, known.high) if known and known.dtype == dtype else (0, 2)
        specs.append(InputSpec(value.name, (1, *dims[1:]), dtype, low=low, high=high))
    unknown = set(shapes) - {s.name for s in specs} - {""}
    if unknown:
        raise SparsifyError(
            f"--shapes names inputs {path} does not have: {', '.join(sorted(unknown))}",
            expected=", ".join(s.name for s in specs),
        )
    return specs


def _entry(path: Path, specs: list[InputSpec], rows: list[Any], accuracy: float | None):
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "accuracy": accuracy,
        "inputs": {s.name: list(s.shape) for s in specs},
        "latency": [r.to_dict() for r in rows],
    }


def _signature(specs: list[InputSpec]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(s.name if len(specs) > 1 else "", s.shape, s.dtype) for s in specs]


def _time_group(
    base: Path | None,
    artifacts: list[Path],
    settings: LatencySettings,
    shapes: Mapping[str, tuple[int, ...]],
    data: str | None,
    track: Callable[..., Any] | None,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    models = ([base] if base else []) + artifacts
    specs = {p: input_specs(p, shapes) for p in models}
    first = specs[models[0]]
    odd = [f"{p}: {_signature(s)}" for p, s in specs.items() if _signature(s) != _signature(first)]
    if odd:
        raise SparsifyError(
            f"the artifacts compared with {base or models[0]} take different inputs",
            expected=f"{_signature(first)} for every one",
            found="; ".join(odd),
            fix="bench them separately, or give each its own folder's model_dense.onnx",
        )
    validation.batch_allocation("--batch-sizes", settings.batch_sizes, first)
    names = {str(p): p for p in models}
    # one input keeps the artifact's own name for it; several are fed by name
    feed: Any = first if len(first) > 1 else first[0].shape[1:]
    latency = measure_latency(names, feed, settings, str(base) if base else None, track)
    accuracy: dict[str, float | None] = dict.fromkeys(names)
    if data is not None:
        if len(first) > 1 or first[0].dtype != "float32":
            raise SparsifyError(
                "bench --data measures accuracy of models with one float input",
                found=", ".join(f"{s.name} ({s.dtype})" for s in first),
            )
        dataset = load_data(data, first[0].shape[1:])
        if dataset.y_test is None:
            raise SparsifyError(f"--data {data} has no labels", expected="arrays y (and y_test)")
        for name, path in names.items():
            out = runtime.run(runtime.session(path, settings.threads), dataset.x_test)
            accuracy[name] = float(np.mean(out.argmax(-1) == dataset.y_test))
    entries = {p: _entry(p, specs[p], latency[str(p)], accuracy[str(p)]) for p in models}
    arts = [{**entries[p], "baseline": str(base) if base else None} for p in artifacts]
    return (entries[base] if base else None), arts


def bench(
    paths: Sequence[str | Path],
    settings: LatencySettings,
    baseline: str | Path | None = None,
    data: str | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    track: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Time every artifact of ``paths`` against its baseline; see the schema.

    ``shapes`` gives the dynamic axes (besides the batch) of inputs by name (``--shapes``; a
    model with one input also takes the name ``""``). With ``data`` (a dataset name or .npz),
    top-1 accuracy of every model on its held-out split is measured in ONNX Runtime too.
    """
    baselines, artifacts = [], []
    for base, items in collect(paths, baseline):
        base_entry, arts = _time_group(base, items, settings, shapes or {}, data, track)
        baselines += [base_entry] if base_entry else []
        artifacts += arts
    return {
        "kind": BENCH_KIND,
        "schema": BENCH_SCHEMA,
        "tool_version": tool_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(settings.threads),
        "settings": {**asdict(settings), "batch_sizes": list(settings.batch_sizes)},
        "data": data,
        "baselines": baselines,
        "artifacts": artifacts,
    }


LATENCY_COLUMNS = (
    "artifact",
    "accuracy",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "samples/s",
    "calls",
    "vs dense",
)
"""The latency table's columns, shared by the terminal (bench) and report.html."""

OPTIONAL = ("calls", "p90 ms", "accuracy", "samples/s")
"""Latency columns a narrow terminal leaves out, first to last (the JSON keeps them)."""


def latency_cells(name: str, accuracy: float | None, row: LatencyRow) -> list[str]:
    """One latency row formatted for :data:`LATENCY_COLUMNS`."""
    return [
        name,
        tables.pct(accuracy),
        str(row.batch),
        tables.ms(row.p50_ms),
        tables.ms(row.p90_ms),
        tables.ms(row.p99_ms),
        tables.count(row.throughput),
        tables.count(row.iterations),
        tables.speedup(row),
    ]


def latency_rows(entries: Sequence[tuple[str, Artifact]]) -> tuple[list[str], list[list[str]]]:
    """Columns and cells of every ``(name, artifact entry)``: name and accuracy on an entry's
    first row only; the accuracy column only when some entry has one."""
    rows = []
    for name, art in entries:
        for i, r in enumerate(art.latency):
            cells = latency_cells(name, art.accuracy, r)
            rows.append(cells if i == 0 else ["", "", *cells[2:]])
    if any(art.accuracy is not None for _, art in entries):
        return list(LATENCY_COLUMNS), rows
    return [c for c in LATENCY_COLUMNS if c != "accuracy"], [r[:1] + r[2:] for r in rows]


def bench_entries(doc: dict[str, Any]) -> list[tuple[str, Artifact]]:
    """Every baseline followed by the artifacts compared with it (those without one last)."""
    bases = [Artifact.from_dict(b) for b in doc["baselines"]]
    arts = [Artifact.from_dict(a) for a in doc["artifacts"]]
    entries = []
    for base in bases:
        entries.append((base.path + " (dense)", base))
        entries += [(a.path, a) for a in arts if a.extras.get("baseline") == base.path]
    return entries + [(a.path, a) for a in arts if a.extras.get("baseline") is None]


def render_bench(doc: dict[str, Any], console: Any) -> None:
    """Latency (and accuracy, when measured) of every model, each baseline before its own."""
    env = doc["environment"]
    entries = bench_entries(doc)
    cols, rows = latency_rows(entries)
    title = f"ONNX Runtime CPU, {env['threads']} thread(s), {env['cpu']}"
    grid = tables.table(title, cols, rows, console.width, names=("artifact",), optional=OPTIONAL)
    console.print(grid)
    if any(r.noisy for _, a in entries for r in a.latency):
        console.print(tables.NOISY_NOTE)
