"""``sparsify inspect``: pick the right reader for a path and build the per-layer document.

* an ``.onnx`` file: :func:`sparsify_cli.exporters.inspect_onnx.inspect_onnx` (any ONNX model);
* an output folder of ``convert``, or its ``model_sparse.safetensors``: the folded sparse
  model (a shipped sample's, the ``hf_model/`` folder of a Hugging Face run, or the one
  ``--arch`` builds), with the declared pattern of every
  manifest entry beside the pattern read from the weights. A folder is data: the module its
  recipe names is never imported; without ``--arch`` its ``model.onnx`` is read instead;
* anything else (a checkpoint or a sample name): the dense model as ``convert`` would load it,
  which tells what a run at ``--nm`` would sparsify and why it would leave a layer dense.

The document is ``{"kind": "sparsify-inspect", "schema": 1, "source", "format", "nm",
"layers": [...], "totals": {...}}``; layers are :meth:`LayerInfo.to_dict` rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsify_cli.exporters.inspect_onnx import inspect_onnx
from sparsify_cli.hf import HF_FOLDER
from sparsify_cli.loading import load_model
from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.inspect import inspect_model
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.passes.pattern import NMPattern
from sparsify_cli.passes.selection import Selection

INSPECT_KIND = "sparsify-inspect"
INSPECT_SCHEMA = 1
SPARSE_WEIGHTS = "model_sparse.safetensors"
MANIFEST = "manifest.safetensors"


def _totals(layers: list[dict[str, Any]]) -> dict[str, Any]:
    params = sum(r["params"] for r in layers)
    dense, sparse = sum(r["flops_dense"] for r in layers), sum(r["flops_sparse"] for r in layers)
    return {
        "layers": len(layers),
        "eligible": sum(r["eligible"] for r in layers),
        "nm_layers": sum(r["nm"] is not None for r in layers),
        "params": params,
        "nonzero_params": sum(r["nonzero_params"] for r in layers),
        "flops_dense": dense,
        "flops_sparse": sparse,
    }


def inspect_path(
    source: str,
    nm: str | None = None,
    arch: str | None = None,
    input_shape: str | None = None,
    selection: Selection | None = None,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """The per-layer document for ``source`` (see the module docstring for what is accepted).

    ``nm`` sets the group size eligibility is judged for; for an output folder it defaults to
    the run's own ``--nm`` (and the run's include/exclude), otherwise to 2:4.
    """
    path = Path(source)
    if path.is_dir() and (path / SPARSE_WEIGHTS).is_file():
        path = path / SPARSE_WEIGHTS
    if path.suffix == ".onnx" and path.is_file():
        m = NMPattern.parse(nm or "2:4").m
        layers = [r.to_dict() for r in inspect_onnx(path, m)]
        return _doc(source, "onnx", nm or "2:4", layers)
    declared: dict[str, str] = {}
    manifest_path = path.parent / MANIFEST
    if path.name == SPARSE_WEIGHTS and manifest_path.is_file():
        manifest = Manifest.load(manifest_path)
        options = manifest.recipe.get("options", {})
        declared = {e.module: e.pattern for e in manifest.entries.values()}
        if arch is None and options.get("arch"):
            return _folder_as_data(path.parent, str(options["arch"]), nm, declared)
        if (path.parent / HF_FOLDER / "config.json").is_file():
            path = path.parent / HF_FOLDER  # a Hugging Face run: its sparse save_pretrained folder
        input_shape = input_shape or options.get("input_shape")
        nm = nm or options.get("nm")
        selection = selection or Selection(
            tuple(options.get("include", ())),
            tuple(options.get("exclude", ())),
            bool(options.get("sparsify_head", False)),
        )
    nm = nm or "2:4"
    loaded = load_model(str(path), arch, input_shape, trust_checkpoint)
    rows = inspect_model(
        loaded.model, loaded.example, NMPattern.parse(nm).m, selection or Selection()
    )
    layers = [{**r.to_dict(), "declared": declared.get(r.name)} for r in rows]
    doc = _doc(source, "torch", nm, layers)
    if not declared:  # a dense checkpoint: what --nm would do to each layer
        add_projection(doc, NMPattern.parse(nm))
    return doc


def add_projection(doc: dict[str, Any], pattern: NMPattern) -> dict[str, Any]:
    """Add to every layer what ``convert --nm pattern`` would leave (``at_nm``: density and
    MACs per sample), and the totals of that: eligible layers keep ``N/M`` of their weights and
    MACs, the others stay as they are."""
    for r in doc["layers"]:
        keep = pattern.density if r["eligible"] else 1.0
        r["at_nm"] = {
            "density": r["density"] * keep,
            "flops_sparse": round(r["flops_sparse"] * keep),
        }
    doc["totals"]["flops_at_nm"] = sum(r["at_nm"]["flops_sparse"] for r in doc["layers"])
    return doc


def _folder_as_data(
    folder: Path, arch: str, nm: str | None, declared: dict[str, str]
) -> dict[str, Any]:
    """An output folder whose model is built by a user's module: read its ``model.onnx``.

    The recipe names the module, but a file never decides what code runs: rebuilding the torch
    model takes ``--arch`` on the command line.
    """
    onnx_path = folder / "model.onnx"
    rebuild = f"sparsify inspect {folder} --arch {arch}"
    if not onnx_path.is_file():
        raise SparsifyError(
            f"{folder} has no model.onnx, and its model is built by code its recipe names",
            fix=f"to rebuild it with that code, run: {rebuild}",
        )
    m = NMPattern.parse(nm or "2:4").m
    layers = [
        {**r.to_dict(), "declared": declared.get(r.module)} for r in inspect_onnx(onnx_path, m)
    ]
    doc = _doc(str(folder), "onnx", nm or "2:4", layers)
    doc["note"] = f"read from model.onnx without importing {arch}; torch view: {rebuild}"
    return doc


def add_tensorrt_prediction(doc: dict[str, Any], precision: str = "fp16") -> dict[str, Any]:
    """Add to every layer whether 2:4 is likely to pay on TensorRT (``tensorrt_2of4``, reason).

    Shapes are passed as ``[out, in, *kernel]`` whatever layout the file stores them in.
    """
    from sparsify_cli.exporters.tensorrt.predict import predict_sparse_benefit

    rows = [
        {
            "name": r.get("name") or r.get("node"),
            "op": r["op"],
            "shape": r["shape"] if r["in_axis"] == 1 else [r["shape"][1], r["shape"][0]],
            "precision": precision,
        }
        for r in doc["layers"]
    ]
    for layer, verdict in zip(doc["layers"], predict_sparse_benefit(rows), strict=True):
        layer["tensorrt_2of4"] = verdict["tensorrt_2of4"]
        layer["tensorrt_reason"] = verdict["reason"]
    doc["tensorrt_precision"] = precision
    return doc


def _doc(source: str, fmt: str, nm: str, layers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": INSPECT_KIND,
        "schema": INSPECT_SCHEMA,
        "source": source,
        "format": fmt,
        "nm": nm,
        "layers": layers,
        "totals": _totals(layers),
    }


def render_inspect(doc: dict[str, Any], console: Any) -> None:
    """The per-layer table and the totals line, for the terminal (fits the console's width)."""
    from sparsify_cli import tables

    declared = any(r.get("declared") for r in doc["layers"])
    cols = ["layer", "op", "shape", "axis", "eligible", "pattern", "density", "fan-in"]
    cols += ["declared"] if declared else []
    cols += ["params", "MACs dense", "MACs sparse"]
    tensorrt = "tensorrt_precision" in doc
    cols += [f"TensorRT 2:4 ({doc['tensorrt_precision']})"] if tensorrt else []
    projected = "flops_at_nm" in doc["totals"]
    at = f"at {doc['nm']}"
    cols += [f"density {at}", f"MACs {at}"] if projected else []
    rows = []
    for r in doc["layers"]:
        row = [
            r.get("name") or r.get("module") or r.get("node"),
            r["op"],
            "x".join(map(str, r["shape"])),
            str(r["in_axis"]),
            "yes" if r["eligible"] else f"no: {r['reason']}",
            r["nm"] or ("dense" if r["density"] == 1 else "unstructured"),
            f"{r['density']:.3f}",
            "-" if r["fan_in"] is None else str(r["fan_in"]),
        ]
        row += [r.get("declared") or "-"] if declared else []
        row += [tables.count(r[k]) for k in ("params", "flops_dense", "flops_sparse")]
        row += [f"{r['tensorrt_2of4']}: {r['tensorrt_reason']}"] if tensorrt else []
        if projected:
            at = r["at_nm"]
            row += [f"{at['density']:.3f}", tables.count(at["flops_sparse"])]
        rows.append(row)
    title = f"{doc['source']} ({doc['format']}; eligibility at {doc['nm']})"
    text = {"op", "shape", "eligible", "pattern", "declared", cols[-1] if tensorrt else "op"}
    optional = ("axis", "op", "params", "fan-in", "MACs sparse", "density", "MACs dense")
    console.print(tables.table(title, cols, rows, console.width, ("layer",), tuple(text), optional))
    if doc.get("note"):
        console.print(doc["note"], highlight=False, markup=False)
    t = doc["totals"]
    console.print(
        f"{t['layers']} layers, {t['eligible']} eligible, {t['nm_layers']} hold an N:M pattern; "
        f"params {t['nonzero_params']:,} nonzero of {t['params']:,}; "
        f"MACs/sample {t['flops_sparse']:,} sparse of {t['flops_dense']:,}"
        + (
            f"; at {doc['nm']}: {t['flops_at_nm']:,} "
            f"({100 * t['flops_at_nm'] / max(t['flops_dense'], 1):.0f}% of dense)"
            if "flops_at_nm" in t
            else ""
        )
    )
