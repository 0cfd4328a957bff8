"""``report.json`` (schema in DESIGN.md) and its terminal rendering.

Tools read ``report.json``: its core keys are stable and ``schema`` is bumped on any change to
them. Everything here is plain data in, plain data out.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from sparsify_cli import tables
from sparsify_cli.advice import advice_line
from sparsify_cli.exporters.artifact import Artifact, parse_artifacts
from sparsify_cli.passes.atomic import atomic_write_text

SCHEMA = 1


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sparsify-cli")
    except PackageNotFoundError:
        return "0+unknown"


def environment(threads: int) -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tensorrt": None,
    }


def new_report(input_path: str, sha256: str | None, recipe: dict[str, Any], threads: int) -> dict:
    return {
        "schema": SCHEMA,
        "tool_version": tool_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": input_path, "sha256": sha256},
        "recipe": recipe,
        "environment": environment(threads),
        "layers": [],
        "accuracy": None,
        "baseline": None,
        "artifacts": [],
        "warnings": [],
    }


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def render(report: dict[str, Any], console: Console) -> None:
    """Layers, accuracy and artifact latency as tables that fit the console's width."""
    shown = [r for r in report["layers"] if r["op"] in ("Linear", "Conv2d")]
    hidden = len(report["layers"]) - len(shown)
    title = "Layers" + (
        f" ({hidden} norm/other layers left dense: see report.json)" if hidden else ""
    )
    cols = ("layer", "op", "shape", "pattern", "density", "MACs dense", "MACs sparse", "note")
    rows = [
        [
            row["name"],
            row["op"],
            "x".join(map(str, row["shape"])),
            row["pattern"] or "dense",
            f"{row['density']:.3f}",
            tables.count(row["flops_dense"]),
            tables.count(row["flops_sparse"]),
            row["skipped"] or "",
        ]
        for row in shown
    ]
    console.print(
        tables.table(
            title,
            cols,
            rows,
            console.width,
            names=("layer",),
            left=("op", "shape", "pattern", "note"),
            optional=("op", "MACs dense", "density"),
        )
    )
    acc = report.get("accuracy")
    if acc:
        cols = ("dense", "sparse (torch)", "sparse (onnx)", "quantized")
        values = [acc["dense"], acc["sparse"], acc.get("sparse_onnx"), acc.get("quantized")]
        keep = [i for i, v in enumerate(values) if v is not None]
        console.print(
            tables.table(
                f"Accuracy ({acc['metric']}, {acc['samples']} held-out samples)",
                [cols[i] for i in keep],
                [[tables.pct(values[i]) for i in keep]],
                console.width,
            )
        )
    agree = report.get("agreement")
    if agree and not acc:
        console.print(
            f"Output agreement with dense: mean cosine {agree['sparse']:.4f} "
            f"over {agree['samples']} held-out samples"
        )
    entries = _artifact_entries(report)
    console.print(artifact_table(report, entries, console.width))
    if any(r.noisy for _, art in entries for r in art.latency):
        console.print(tables.NOISY_NOTE)
    _render_condensed_kernels(report, console)
    for warning in report.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {escape(advice_line(warning))}", soft_wrap=True)


def _artifact_entries(report: dict[str, Any]) -> list[tuple[str, Artifact]]:
    base, artifacts = parse_artifacts(report)
    return ([(base.path + " (dense)", base)] if base else []) + [(a.path, a) for a in artifacts]


def artifact_table(report: dict[str, Any], entries: list[tuple[str, Artifact]], width: int) -> Any:
    """Every artifact's checks and latency; "vs fp32" only when an int8 artifact has it."""
    fp32 = any("speedup_vs_fp32" in r.extras for _, a in entries for r in a.latency)
    cols = ["artifact", "pattern ok", "parity max|Δ|", "batch", "p50 ms", "p90 ms", "p99 ms"]
    cols += ["samples/s", "vs dense"] + (["vs fp32"] if fp32 else [])
    rows = []
    for i_entry, (name, art) in enumerate(entries):
        checked = not (i_entry == 0 and report.get("baseline"))  # the baseline has no checks
        parity = art.parity.value if art.parity else None
        for i, lat in enumerate(art.latency or [None]):
            first = i == 0 and checked
            row = [
                name if i == 0 else "",
                {True: "yes", False: "NO", None: "-"}[art.pattern_holds] if first else "",
                f"{parity:.1e}" if first and parity is not None else "",
                str(lat.batch) if lat else "-",
                tables.ms(lat.p50_ms if lat else None),
                tables.ms(lat.p90_ms if lat else None),
                tables.ms(lat.p99_ms if lat else None),
                tables.count(lat.throughput if lat else None),
                tables.speedup(lat) if lat else "-",
            ]
            if fp32:
                value = lat.extras.get("speedup_vs_fp32") if lat else None
                row.append("" if value is None else f"{value:.2f}x")
            rows.append(row)
    threads = report["environment"]["threads"]
    return tables.table(
        f"Artifacts (ONNX Runtime CPU, {threads} thread(s))",
        cols,
        rows,
        width,
        names=("artifact",),
        left=("pattern ok",),
        optional=("p90 ms", "samples/s", "parity max|Δ|"),
    )


def _render_condensed_kernels(report: dict[str, Any], console: Console) -> None:
    """Which kernel runs each layer of the condensed artifact, and why a layer stays dense."""
    for art in report["artifacts"]:
        checks = art.get("pattern_checks") or []
        if art.get("format") != "condensed" or not checks:
            continue
        rows = [
            [c["module"], c.get("kernel", ""), ", ".join(c.get("fused", [])), c["detail"]]
            for c in checks
        ]
        cols = ("layer", "kernel", "fused", "detail")
        title = f"{art['path']}: kernel per layer"
        console.print(
            tables.table(title, cols, rows, console.width, ("layer",), cols[1:], ("fused",))
        )
