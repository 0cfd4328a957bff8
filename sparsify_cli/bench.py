"""``sparsify bench``: time artifacts in ONNX Runtime beside their dense baseline.

The result is a small versioned JSON document (``kind: "sparsify-bench"``, ``schema: 1``)::

    {"kind": "sparsify-bench", "schema": 1, "tool_version": str, "created": str,
     "environment": {...same as report.json...},
     "settings": {"batch_sizes": [int], "threads": int, "seconds": float, "warmup": int,
                  "min_iterations": int, "round_size": int},
     "input_shape": [int],                 # one sample, without the batch axis
     "data": str | null,                   # the --data spec accuracy was measured on
     "baseline": ARTIFACT | null,
     "artifacts": [ARTIFACT]}
    ARTIFACT = {"path": str, "size_bytes": int, "sha256": str, "accuracy": float | null,
                "latency": [{"batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput",
                             "iterations", "speedup_vs_dense"}]}

``baseline`` and ``artifacts`` have the shape ``report.json`` gives them, so
:mod:`sparsify_cli.gates` judges both documents alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sparsify_cli import validation
from sparsify_cli.data import load_data
from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.artifact import LatencyRow, parse_artifacts
from sparsify_cli.exporters.latency import LatencySettings, measure_latency
from sparsify_cli.exporters.onnx_file import read_onnx
from sparsify_cli.passes.atomic import file_sha256
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inputs import InputSpec
from sparsify_cli.report import environment, tool_version

BENCH_KIND = "sparsify-bench"
BENCH_SCHEMA = 1
DENSE_NAME = "model_dense.onnx"


def collect(
    paths: Sequence[str | Path], baseline: str | Path | None
) -> tuple[list[Path], Path | None]:
    """The artifacts to time and the baseline: folders contribute every ``*.onnx`` in them,
    their ``model_dense.onnx`` being the baseline unless ``baseline`` names one."""
    artifacts: list[Path] = []
    found_base = Path(baseline) if baseline else None
    for item in map(Path, paths):
        if item.is_dir():
            models = sorted(item.glob("*.onnx"))
            if not models:
                raise SparsifyError(
                    f"no .onnx artifact in folder {item}",
                    expected="an output folder of sparsify convert",
                )
            for model in models:
                if model.name == DENSE_NAME:
                    found_base = found_base or model
                else:
                    artifacts.append(model)
        elif item.is_file():
            artifacts.append(item)
        else:
            raise SparsifyError(
                f"artifact not found: {item}", expected="an output folder or an .onnx file"
            )
    if found_base is not None and not found_base.is_file():
        raise SparsifyError(f"baseline not found: {found_base}", expected="an .onnx file")
    artifacts = [a for a in dict.fromkeys(artifacts) if a != found_base]
    if not artifacts:
        raise SparsifyError(
            "nothing to time besides the baseline", fix="pass an output folder or .onnx files"
        )
    return artifacts, found_base


def sample_shape(path: Path) -> tuple[int, ...]:
    """The input shape of one sample (the first input without its batch axis), from the file."""
    graph = read_onnx(path, load_weights=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if not inputs or not inputs[0].type.HasField("tensor_type"):
        raise SparsifyError(f"{path} has no tensor input to time")
    dims = [
        d.dim_value if d.HasField("dim_value") else None
        for d in inputs[0].type.tensor_type.shape.dim[1:]
    ]
    if any(d is None or d < 1 for d in dims):
        raise SparsifyError(
            f"{path} has a dynamic input shape besides the batch axis",
            fix="pass --input-shape for one sample, batch first, e.g. 1,3,32,32",
        )
    return tuple(dims)  # type: ignore[arg-type]


def _entry(path: Path, rows: list[Any], accuracy: float | None) -> dict[str, Any]:
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "accuracy": accuracy,
        "latency": [r.to_dict() for r in rows],
    }


def bench(
    paths: Sequence[str | Path],
    settings: LatencySettings,
    baseline: str | Path | None = None,
    data: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    track: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Time every artifact of ``paths`` and the baseline in one interleaved run; see the schema.

    With ``data`` (a dataset name or .npz), top-1 accuracy of every model on its held-out
    split is measured in ONNX Runtime too.
    """
    artifacts, base = collect(paths, baseline)
    models = ([base] if base else []) + artifacts
    shapes = {p: input_shape or sample_shape(p) for p in models}
    shape = shapes[models[0]]
    odd = [f"{p}: {list(s)}" for p, s in shapes.items() if s != shape]
    if odd:
        raise SparsifyError(
            "the artifacts take different input shapes",
            expected=f"{list(shape)} for every one",
            found="; ".join(odd),
        )
    validation.batch_allocation(
        "--batch-sizes", settings.batch_sizes, [InputSpec("input", (1, *shape))]
    )
    names = {str(p): p for p in models}
    latency = measure_latency(
        names, shape, settings, baseline=str(base) if base else None, track=track
    )
    accuracy: dict[str, float | None] = dict.fromkeys(names)
    if data is not None:
        dataset = load_data(data, shape)
        if dataset.y_test is None:
            raise SparsifyError(f"--data {data} has no labels", expected="arrays y (and y_test)")
        for name, path in names.items():
            out = runtime.run(runtime.session(path, settings.threads), dataset.x_test)
            accuracy[name] = float(np.mean(out.argmax(-1) == dataset.y_test))
    return {
        "kind": BENCH_KIND,
        "schema": BENCH_SCHEMA,
        "tool_version": tool_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(settings.threads),
        "settings": {**asdict(settings), "batch_sizes": list(settings.batch_sizes)},
        "input_shape": list(shape),
        "data": data,
        "baseline": _entry(base, latency[str(base)], accuracy[str(base)]) if base else None,
        "artifacts": [_entry(p, latency[str(p)], accuracy[str(p)]) for p in artifacts],
    }


LATENCY_COLUMNS = (
    "artifact",
    "accuracy",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "samples/s",
    "vs dense",
)
"""The latency table's columns, shared by the terminal (bench) and report.html."""


def latency_cells(name: str, accuracy: float | None, row: LatencyRow) -> list[str]:
    """One latency row formatted for :data:`LATENCY_COLUMNS`."""
    speed = row.speedup_vs_dense
    return [
        name,
        "-" if accuracy is None else f"{100 * accuracy:.2f}%",
        str(row.batch),
        f"{row.p50_ms:.3f}",
        f"{row.p90_ms:.3f}",
        f"{row.p99_ms:.3f}",
        f"{row.throughput:,.0f}",
        "-" if speed is None else f"{speed:.2f}x",
    ]


def render_bench(doc: dict[str, Any], console: Any) -> None:
    """Latency (and accuracy, when measured) of every model, the baseline first."""
    from rich.table import Table

    env = doc["environment"]
    table = Table(title=f"ONNX Runtime CPU, {env['threads']} thread(s), {env['cpu']}")
    for col in LATENCY_COLUMNS:
        table.add_column(col, justify="left" if col == "artifact" else "right")
    base, artifacts = parse_artifacts(doc)
    entries = ([(base, " (dense)")] if base else []) + [(a, "") for a in artifacts]
    for art, tag in entries:
        for i, r in enumerate(art.latency):
            cells = latency_cells(art.path + tag, art.accuracy, r)
            if i:  # name and accuracy only on an artifact's first row
                cells[:2] = ["", ""]
            table.add_row(*cells)
    console.print(table)
