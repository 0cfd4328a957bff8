"""Read an exported artifact back and prove what it claims: the pattern and the numbers.

The pattern check reads each sparsified weight from the file (found through
:func:`sparsify_cli.exporters.onnx_export.weight_refs`) and checks it against the manifest's mask
in the
node's own layout: every nonzero lies inside the mask, and for N:M patterns no group of M along
the node's reduction axis holds more than N nonzeros.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from sparsify_cli.exporters.onnx_export import WeightRef, initializers, weight_refs
from sparsify_cli.passes.manifest import Manifest, TensorEntry
from sparsify_cli.passes.pattern import NMPattern, nm_violations


@dataclass(frozen=True)
class PatternCheck:
    module: str
    pattern: str
    ok: bool
    detail: str


def _mask_in_layout(entry: TensorEntry, ref: WeightRef) -> np.ndarray:
    return entry.mask if ref.in_axis == 1 else np.swapaxes(entry.mask, 0, 1)


def check_weight(weight: np.ndarray, entry: TensorEntry, ref: WeightRef) -> str | None:
    """``None`` when ``weight`` honours ``entry``, else what is wrong."""
    mask = _mask_in_layout(entry, ref)
    if weight.shape != mask.shape:
        return f"{ref.node}: weight shape {weight.shape} != mask shape {mask.shape}"
    outside = int(np.count_nonzero(weight[~mask]))
    if outside:
        return f"{ref.node}: {outside} nonzeros outside the mask"
    if entry.nm is not None:
        bad = nm_violations(weight, NMPattern(*entry.nm), axis=ref.in_axis)
        if bad:
            return (
                f"{ref.node}: {bad} groups with more than {entry.nm[0]} of {entry.nm[1]} nonzeros"
            )
    return None


def verify_pattern(path: str | os.PathLike[str], manifest: Manifest) -> list[PatternCheck]:
    """One :class:`PatternCheck` per manifest entry, read back from the ONNX file at ``path``."""
    model = onnx.load(str(path))
    weights = initializers(model)
    by_module = manifest.by_module()
    refs = weight_refs(model, list(by_module))
    checks = []
    for module, entry in by_module.items():
        found = refs[module]
        if not found:
            checks.append(PatternCheck(module, entry.pattern, False, "no node holds this weight"))
            continue
        problems = [p for ref in found if (p := check_weight(weights[ref.initializer], entry, ref))]
        detail = "; ".join(problems) or ", ".join(f"{r.node} ({r.op})" for r in found)
        checks.append(PatternCheck(module, entry.pattern, not problems, detail))
    return checks


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest ``|a - b|``; ``inf`` when either side holds NaN or Inf (``nan > atol`` is False,
    so a NaN difference would otherwise pass every tolerance)."""
    if not a.size:
        return 0.0
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return float("inf")
    return float(np.max(np.abs(a64 - b64)))
