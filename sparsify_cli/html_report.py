"""``report.html``: the human report of a run, one self-contained file readable offline.

Built from ``report.json`` alone (so ``sparsify report OUTDIR`` regenerates it): tables of the
key numbers and three matplotlib plots embedded as base64 PNG data URIs (no script, stylesheet
or image is fetched from anywhere):

* accuracy vs median latency, one point per artifact (dense baseline included) and batch size;
* density per layer, sparsified layers and layers left dense (with the reason) apart;
* latency percentiles p50 / p90 / p99 per artifact at every timed batch size.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from sparsify_cli.advice import advice_line  # noqa: E402
from sparsify_cli.bench import LATENCY_COLUMNS, latency_cells  # noqa: E402
from sparsify_cli.exporters.artifact import LatencyRow, parse_artifacts  # noqa: E402
from sparsify_cli.passes.atomic import atomic_write_text  # noqa: E402

REPORT_HTML = "report.html"


def _png(fig: Any) -> str:
    """``data:`` URI of ``fig`` as PNG; the figure is closed (Agg keeps no window)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(report: dict[str, Any]) -> list[tuple[str, float | None, list[LatencyRow]]]:
    """``(name, accuracy, latency rows)`` of the dense baseline and every artifact."""
    base, artifacts = parse_artifacts(report)
    out = [(f"{base.path} (dense)", base.accuracy, base.latency)] if base else []
    return out + [(art.path, art.accuracy, art.latency) for art in artifacts]


def accuracy_latency_plot(report: dict[str, Any]) -> str | None:
    """Accuracy (%) against p50 latency (ms); ``None`` when the run measured no accuracy."""
    points = [(n, a, rows) for n, a, rows in _series(report) if a is not None and rows]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    markers = "osD^vP*X"
    for i, (name, acc, rows) in enumerate(points):
        xs = [r.p50_ms for r in rows]
        ax.plot(xs, [100 * acc] * len(xs), markers[i % len(markers)], label=name, markersize=8)
        for r in rows:
            ax.annotate(
                f"b{r.batch}",
                (r.p50_ms, 100 * acc),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per batch (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def density_plot(report: dict[str, Any]) -> str | None:
    """Horizontal bars: the density of every Linear / Conv layer, sparsified ones coloured."""
    layers = [r for r in report.get("layers", []) if r["op"] in ("Linear", "Conv2d")]
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.28 * len(layers)))
    colours = ["tab:blue" if r.get("pattern") else "tab:gray" for r in layers]
    ax.barh(range(len(layers)), [r["density"] for r in layers], color=colours)
    ax.set_yticks(range(len(layers)), [r["name"] for r in layers], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_title("Per-layer density (blue: sparsified, grey: left dense)")
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def latency_plot(report: dict[str, Any]) -> str | None:
    """One panel per batch size: p50, p90 and p99 bars for every artifact."""
    series = [(n, rows) for n, _, rows in _series(report) if rows]
    batches = sorted({r.batch for _, rows in series for r in rows})
    if not batches:
        return None
    fig, axes = plt.subplots(
        1, len(batches), figsize=(3.6 * len(batches) + 1.5, 3.6), squeeze=False
    )
    width = 0.8 / 3
    for ax, batch in zip(axes[0], batches, strict=True):
        for j, (pct, colour) in enumerate(
            zip(("p50", "p90", "p99"), ("tab:green", "tab:orange", "tab:red"), strict=True)
        ):
            values = [
                next((getattr(r, f"{pct}_ms") for r in rows if r.batch == batch), 0.0)
                for _, rows in series
            ]
            ax.bar(
                [i + (j - 1) * width for i in range(len(series))],
                values,
                width,
                color=colour,
                label=pct,
            )
        ax.set_xticks(
            range(len(series)), [n for n, _ in series], rotation=20, ha="right", fontsize=8
        )
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("latency (ms)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Latency percentiles per artifact")
    return _png(fig)


def _esc(value: Any) -> str:
    """Every value from report.json is text to show, never markup (whatever its type)."""
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _figure(uri: str | None, alt: str, missing: str) -> str:
    if uri is None:
        return f"<p class='note'>{html.escape(missing)}</p>"
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}"></figure>'


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right;font-size:13px}th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%}.note{color:#666;font-style:italic}pre{background:#f6f6f6;padding:1em;
overflow:auto;font-size:12px}
.warning{background:#fff4d6;border-left:4px solid #e0a000;padding:.5em 1em}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page for ``report`` (a ``report.json`` document)."""
    env = report.get("environment", {})
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>sparsify report: {_esc(report['input']['path'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>sparsify report: {_esc(report['input']['path'])}</h1>",
        f"<p>created {_esc(report.get('created', ''))}, sparsify "
        f"{_esc(report.get('tool_version', ''))}; {_esc(env.get('cpu'))}, "
        f"{_esc(env.get('threads'))} thread(s), onnxruntime {_esc(env.get('onnxruntime'))}, "
        f"torch {_esc(env.get('torch'))}</p>",
    ]
    parts += [
        f"<p class='warning'><b>warning:</b> {html.escape(advice_line(w))}</p>"
        for w in report.get("warnings") or []
    ]
    acc = report.get("accuracy")
    agree = report.get("agreement")
    if agree and not acc:
        parts.append(
            f"<p>Output agreement with dense: mean cosine <b>{agree['sparse']:.4f}</b> over "
            f"{agree['samples']} held-out samples</p>"
        )
    if acc:
        parts.append(f"<h2>Accuracy ({_esc(acc['metric'])}, {_esc(acc['samples'])} samples)</h2>")
        parts.append(
            _table(
                ["dense", "sparse (torch)", "sparse (onnx)", "quantized"],
                [
                    [
                        _pct(acc["dense"]),
                        _pct(acc["sparse"]),
                        _pct(acc.get("sparse_onnx")),
                        _pct(acc.get("quantized")),
                    ]
                ],
            )
        )
    parts.append("<h2>Artifacts</h2>")
    rows = []
    for name, accuracy, latency in _series(report):
        rows += [latency_cells(name, accuracy, r) for r in latency]
    parts.append(_table(list(LATENCY_COLUMNS), rows))
    parts.append(
        _figure(
            accuracy_latency_plot(report),
            "accuracy vs latency",
            "No accuracy plot: this run had no labelled data (pass --data).",
        )
    )
    parts.append(_figure(latency_plot(report), "latency percentiles", "No latency measured."))
    parts.append("<h2>Layers</h2>")
    parts.append(_figure(density_plot(report), "per-layer density", "No Linear/Conv layers."))
    parts.append(
        _table(
            ["layer", "op", "shape", "pattern", "density", "MACs dense", "MACs sparse", "note"],
            [
                [
                    r["name"],
                    r["op"],
                    "x".join(map(str, r["shape"])),
                    r.get("pattern") or "dense",
                    f"{r['density']:.3f}",
                    f"{r['flops_dense']:,}",
                    f"{r['flops_sparse']:,}",
                    r.get("skipped") or "",
                ]
                for r in report.get("layers", [])
                if r["op"] in ("Linear", "Conv2d")
            ],
        )
    )
    parts.append("<h2>Recipe</h2>")
    parts.append(f"<pre>{html.escape(json.dumps(report.get('recipe'), indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(folder: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report.html`` into ``folder`` (atomically) and return its path."""
    path = Path(folder) / REPORT_HTML
    atomic_write_text(path, render_html(report))
    return path
