"""``report.html``: the human report of a run, one self-contained file readable offline.

Built from ``report.json`` alone (so ``sparsify report OUTDIR`` regenerates it): a headline
(method, pattern, accuracy dense -> sparse, the best speed-up with its 95% interval, warnings),
tables of the key numbers (text left-aligned, numbers right-aligned, every value escaped), the
recipe as YAML, and matplotlib plots embedded as base64 PNG data URIs (no script, stylesheet or
image is fetched from anywhere):

* accuracy vs median latency, one panel per batch size, one point per artifact (dense included);
* latency per artifact: p50 beside p99, each bar labelled with its value, one panel per batch;
* training curves (loss, held-out accuracy per epoch) of the passes that trained;
* density per layer, sparsified layers and layers left dense (with the reason) apart.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import yaml  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, MaxNLocator  # noqa: E402

from sparsify_cli import tables  # noqa: E402
from sparsify_cli.advice import advice_line  # noqa: E402
from sparsify_cli.bench import latency_rows  # noqa: E402
from sparsify_cli.exporters.artifact import Artifact, LatencyRow, parse_artifacts  # noqa: E402
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
    """Accuracy (%) against p50 latency (ms), one panel per batch size (latencies of different
    batch sizes are not comparable); ``None`` when the run measured no accuracy."""
    points = [(n, a, rows) for n, a, rows in _series(report) if a is not None and rows]
    if not points:
        return None
    batches = sorted({r.batch for _, _, rows in points for r in rows})
    fig, axes = plt.subplots(
        1, len(batches), figsize=(4.2 * len(batches) + 1.0, 3.8), squeeze=False
    )
    markers = "osD^vP*X"
    for ax, batch in zip(axes[0], batches, strict=True):
        for i, (name, acc, rows) in enumerate(points):
            row = next((r for r in rows if r.batch == batch), None)
            if row is None:
                continue
            ax.plot(row.p50_ms, 100 * acc, markers[i % len(markers)], label=name, ms=8)
        ax.set_title(f"batch {batch}")
        ax.set_xlabel("p50 latency (ms)")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
        ax.margins(x=0.25, y=0.25)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    fig.suptitle("Accuracy vs latency (ONNX Runtime)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return _png(fig)


def training_plot(report: dict[str, Any]) -> str | None:
    """Loss (and held-out accuracy, when evaluated) per epoch of every training pass."""
    curves = {
        name: m
        for name, m in (report.get("training") or {}).items()
        if isinstance(m, dict) and m.get("loss")
    }
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, m in curves.items():
        epochs = range(1, len(m["loss"]) + 1)
        ax.plot(epochs, m["loss"], "o-", label=f"{name} loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    accs = {
        n: m["accuracy"]
        for n, m in curves.items()
        if any(a is not None for a in m.get("accuracy") or [])
    }
    if accs:
        right = ax.twinx()
        for name, acc in accs.items():
            epochs = [i + 1 for i, a in enumerate(acc) if a is not None]
            right.plot(
                epochs, [100 * a for a in acc if a is not None], "s--", label=f"{name} top-1"
            )
        right.set_ylabel("held-out top-1 (%)")
        lines = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8)
    else:
        ax.legend(fontsize=8)
    ax.set_title("Training curves")
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
    """One panel per batch size: p50 and p99 per artifact as horizontal bars, each labelled
    with its value, so a small p50 stays legible beside a long p99 tail."""
    series = [(n, rows) for n, _, rows in _series(report) if rows]
    batches = sorted({r.batch for _, rows in series for r in rows})
    if not batches:
        return None
    height = 0.9 + 0.55 * len(series)
    fig, axes = plt.subplots(len(batches), 1, figsize=(7.2, height * len(batches)), squeeze=False)
    width = 0.38
    for ax, batch in zip(axes[:, 0], batches, strict=True):
        for j, (pct, colour) in enumerate((("p50", "tab:green"), ("p99", "tab:red"))):
            values = [
                next((getattr(r, f"{pct}_ms") for r in rows if r.batch == batch), 0.0)
                for _, rows in series
            ]
            ys = [i + (j - 0.5) * width for i in range(len(series))]
            bars = ax.barh(ys, values, width, color=colour, label=pct)
            ax.bar_label(bars, [f"{v:.3g} ms" for v in values], padding=3, fontsize=8)
        ax.set_yticks(range(len(series)), [n for n, _ in series], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.set_xlabel("latency per call (ms)")
        ax.margins(x=0.25)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Latency: median (p50) and tail (p99) per artifact")
    fig.tight_layout()
    return _png(fig)


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], text: tuple[str, ...] = ()) -> str:
    """A table whose ``text`` columns (and the first) are left-aligned, numbers right-aligned;
    every cell escaped."""
    left = {i for i, h in enumerate(header) if i == 0 or h in text}
    head = "".join(
        f"<th{' class=t' if i in left else ''}>{_esc(h)}</th>" for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=t' if i in left else ''}>{_esc(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(uri: str | None, alt: str, missing: str) -> str:
    if uri is None:
        return f"<p class='note'>{_esc(missing)}</p>"
    return f'<figure><img src="{uri}" alt="{_esc(alt)}"></figure>'


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _what_ran(report: dict[str, Any]) -> tuple[str, str]:
    """(method, pattern) of the run, from its recipe."""
    o = (report.get("recipe") or {}).get("options") or {}
    if o.get("ift") or o.get("dst"):
        method = " + ".join(
            p for p in (o.get("ift") and f"Sparse-IFT {o['ift']}", o.get("dst") and o["dst"]) if p
        )
        return method, f"sparsity {o.get('sparsity')}"
    return str(o.get("method", "?")), str(o.get("nm", "?"))


def _best_speedup(artifacts: list[Artifact]) -> str:
    rows = [(a.path, r) for a in artifacts for r in a.latency if r.speedup_vs_dense is not None]
    if not rows:
        return "not measured"
    path, r = max(rows, key=lambda pr: pr[1].speedup_vs_dense)
    spread = (
        f" (95% interval {r.ratio_low:.2f}-{r.ratio_high:.2f}x)"
        if r.ratio_low is not None and r.ratio_high is not None
        else ""
    )
    noisy = ", noisy: rerun with a longer --duration" if r.noisy else ""
    return f"{r.speedup_vs_dense:.2f}x{spread}: {path} at batch {r.batch}{noisy}"


def headline(report: dict[str, Any]) -> str:
    """Method, pattern, accuracy dense -> sparse, the best speed-up with its spread, warnings."""
    method, pattern = _what_ran(report)
    items = [("method", method), ("pattern", pattern)]
    acc = report.get("accuracy")
    if acc:
        text = f"dense {tables.pct(acc['dense'])} -> sparse {tables.pct(acc.get('sparse_onnx'))}"
        if acc.get("quantized") is not None:
            text += f" -> int8 {tables.pct(acc['quantized'])}"
        items.append((f"accuracy ({acc['metric']}, {acc['samples']} held-out)", text))
    items.append(("best speed-up vs dense", _best_speedup(parse_artifacts(report)[1])))
    rows = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items)
    warnings = "".join(
        f"<p class='warning'><b>warning:</b> {_esc(advice_line(w))}</p>"
        for w in report.get("warnings") or []
    )
    return f"<section class='headline'><dl>{rows}</dl>{warnings}</section>"


def _details(art: Artifact) -> str:
    """What is particular to an artifact: int8 calibration and exclusions, condensed kernels."""
    x = art.extras
    q = x.get("quantization")
    if q:
        excluded = q.get("excluded") or []
        parts = [
            "static QDQ" if q.get("mode") == "int8" else "dynamic (weights only)",
            f"SQNR {x['sqnr_db']:.1f} dB" if x.get("sqnr_db") is not None else None,
            f"{q.get('calib_rows')} calibration rows" if q.get("calib_rows") else None,
            f"excluded (kept float): {', '.join(excluded)}" if excluded else "no node kept float",
            "7-bit weights (reduce range)" if q.get("reduce_range") else None,
        ]
        return "; ".join(p for p in parts if p)
    if art.format == "condensed":
        kernels = f"{x['kernels']} kernels" if x.get("kernels") else "stock ONNX ops"
        condensed = x.get("layers_condensed")
        timed = x.get("layers_dense_by_timing")
        dense = f", {timed} kept dense (faster dense, timed alone)" if timed else ""
        return f"{x.get('condensed_ops')} ops, {kernels}; {condensed} layers condensed{dense}"
    return ""


def artifacts_table(report: dict[str, Any]) -> str:
    """Pattern, parity, size and particulars of every artifact."""
    base, artifacts = parse_artifacts(report)
    rows = []
    if base:
        size = _size(base.size_bytes)
        rows.append([f"{base.path} (dense)", base.format, "-", "-", size, "dense baseline"])
    for art in artifacts:
        p = art.parity
        rows.append(
            [
                art.path,
                art.format,
                {True: "held", False: "BROKEN", None: "-"}[art.pattern_holds],
                "-" if p is None else f"{p.value:.1e} (<= {p.tolerance:g})",
                _size(art.size_bytes),
                _details(art),
            ]
        )
    header = ["artifact", "format", "pattern", "parity max|Δ|", "size", "details"]
    return _table(header, rows, text=("format", "pattern", "details"))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right;font-size:13px}th{background:#f3f3f3}td.t,th.t{text-align:left}
td:first-child{white-space:nowrap}
img{max-width:100%}.note{color:#666;font-style:italic}pre{background:#f6f6f6;padding:1em;
overflow:auto;font-size:12px}.headline{background:#f5f8ff;border:1px solid #cdd9f0;padding:.5em 1em}
.headline dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;margin:.3em 0}
.headline dt{font-weight:bold}.headline dd{margin:0}
.warning{background:#fff4d6;border-left:4px solid #e0a000;padding:.5em 1em}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page for ``report`` (a ``report.json`` document); every value escaped."""
    env = report.get("environment", {})
    source = _esc(report["input"]["path"])
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>sparsify report: {source}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>sparsify report: {source}</h1>",
        f"<p>created {_esc(report.get('created', ''))}, sparsify "
        f"{_esc(report.get('tool_version', ''))}; {_esc(env.get('cpu'))}, "
        f"{_esc(env.get('threads'))} thread(s), onnxruntime {_esc(env.get('onnxruntime'))}, "
        f"torch {_esc(env.get('torch'))}</p>",
        headline(report),
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
        values = [acc["dense"], acc["sparse"], acc.get("sparse_onnx"), acc.get("quantized")]
        cols = ["dense", "sparse (torch)", "sparse (onnx)", "quantized"]
        keep = [i for i, v in enumerate(values) if v is not None]
        parts.append(_table([cols[i] for i in keep], [[tables.pct(values[i]) for i in keep]]))
    parts.append("<h2>Artifacts</h2>")
    parts.append(artifacts_table(report))
    parts.append("<h2>Latency</h2>")
    base, artifacts = parse_artifacts(report)
    entries = ([(f"{base.path} (dense)", base)] if base else []) + [(a.path, a) for a in artifacts]
    parts.append(_table(*latency_rows(entries)))
    if any(r.noisy for _, a in entries for r in a.latency):
        parts.append(f"<p class='note'>{_esc(tables.NOISY_NOTE)}</p>")
    parts.append(
        _figure(
            accuracy_latency_plot(report),
            "accuracy vs latency",
            "No accuracy plot: this run had no labelled data (pass --data).",
        )
    )
    parts.append(_figure(latency_plot(report), "latency percentiles", "No latency measured."))
    curves = training_plot(report)
    if curves is not None:
        parts.append("<h2>Training</h2>")
        parts.append(_figure(curves, "training curves", ""))
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
            text=("op", "shape", "pattern", "note"),
        )
    )
    parts.append("<h2>Recipe</h2>")
    recipe = yaml.safe_dump(report.get("recipe"), sort_keys=False, default_flow_style=None)
    parts.append(f"<pre>{_esc(recipe)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(folder: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report.html`` into ``folder`` (atomically) and return its path."""
    path = Path(folder) / REPORT_HTML
    atomic_write_text(path, render_html(report))
    return path
