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
from rich.table import Table

from sparsify_cli.advice import advice_line
from sparsify_cli.exporters.artifact import parse_artifacts
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render(report: dict[str, Any], console: Console) -> None:
    """Layers, accuracy and artifact latency as rich tables."""
    shown = [r for r in report["layers"] if r["op"] in ("Linear", "Conv2d")]
    hidden = len(report["layers"]) - len(shown)
    title = "Layers" + (
        f" ({hidden} norm/other layers left dense: see report.json)" if hidden else ""
    )
    layers = Table(title=title, show_lines=False)
    for col in ("layer", "op", "shape", "pattern", "density", "MACs dense", "MACs sparse", "note"):
        layers.add_column(col, justify="right" if col.startswith(("MACs", "density")) else "left")
    for row in shown:
        layers.add_row(
            row["name"],
            row["op"],
            "x".join(map(str, row["shape"])),
            row["pattern"] or "dense",
            f"{row['density']:.3f}",
            f"{row['flops_dense']:,}",
            f"{row['flops_sparse']:,}",
            row["skipped"] or "",
        )
    console.print(layers)
    acc = report.get("accuracy")
    if acc:
        table = Table(title=f"Accuracy ({acc['metric']}, {acc['samples']} held-out samples)")
        for col in ("dense", "sparse (torch)", "sparse (onnx)", "quantized"):
            table.add_column(col, justify="right")
        table.add_row(
            _pct(acc["dense"]),
            _pct(acc["sparse"]),
            _pct(acc.get("sparse_onnx")),
            _pct(acc.get("quantized")),
        )
        console.print(table)
    agree = report.get("agreement")
    if agree and not acc:
        console.print(
            f"Output agreement with dense: mean cosine {agree['sparse']:.4f} "
            f"over {agree['samples']} held-out samples"
        )
    arts = Table(
        title=f"Artifacts (ONNX Runtime CPU, {report['environment']['threads']} thread(s))"
    )
    for col in (
        "artifact",
        "pattern ok",
        "parity max|Δ|",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        "vs dense",
        "vs fp32",
    ):
        arts.add_column(col, justify="left" if col in ("artifact", "pattern ok") else "right")
    base, artifacts = parse_artifacts(report)
    rows = [(base.path + " (dense)", "", None, base.latency)] if base else []
    for art in artifacts:
        parity = art.parity.value if art.parity else None
        ok = {True: "yes", False: "NO", None: "-"}[art.pattern_holds]
        rows.append((art.path, ok, parity, art.latency))
    for name, ok, parity, latency in rows:
        for i, lat in enumerate(latency or [None]):
            first = i == 0
            speed = lat.speedup_vs_dense if lat else None
            fp32 = lat.extras.get("speedup_vs_fp32") if lat else None
            arts.add_row(
                name if first else "",
                ok if first else "",
                f"{parity:.2e}" if parity is not None and first else "",
                str(lat.batch) if lat else "-",
                *(
                    f"{getattr(lat, k, 0) if lat else 0:.3f}"
                    for k in ("p50_ms", "p90_ms", "p99_ms")
                ),
                f"{lat.throughput if lat else 0:,.0f}",
                "-" if speed is None else f"{speed:.2f}x",
                "" if fp32 is None else f"{fp32:.2f}x",
            )
    console.print(arts)
    _render_condensed_kernels(report, console)
    for warning in report.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {escape(advice_line(warning))}", soft_wrap=True)


def _render_condensed_kernels(report: dict[str, Any], console: Console) -> None:
    """Which kernel runs each layer of the condensed artifact, and why a layer stays dense."""
    for art in report["artifacts"]:
        checks = art.get("pattern_checks") or []
        if art.get("format") != "condensed" or not checks:
            continue
        table = Table(title=f"{art['path']}: kernel per layer")
        for col in ("layer", "kernel", "fused", "detail"):
            table.add_column(col)
        for c in checks:
            table.add_row(
                c["module"], c.get("kernel", ""), ", ".join(c.get("fused", [])), c["detail"]
            )
        console.print(table)
