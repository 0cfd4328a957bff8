"""torch -> torch passes: masks, N:M, folding, and the training passes built on them.

Every built-in pass is registered by :mod:`sparsify_cli.passes.builtin`, which the registry
loads on its first lookup, so ``config_from_dict({"pass": "dst"})`` works from anywhere.
Importing this package is cheap: the names below load their module (and torch) on first use,
so the command line's ``--help`` and the exporters' light modules (manifest, pattern, errors,
atomic) never pay for torch or the training code. Nothing here imports ``exporters`` or any
other part of ``sparsify_cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ASPConfig": "asp",
    "DSTConfig": "dst",
    "FoldConfig": "fold",
    "LayerChoice": "selection",
    "MaxQConfig": "maxq",
    "NMConfig": "magnitude",
    "NMPattern": "pattern",
    "PassContext": "registry",
    "SRSTEConfig": "srste",
    "Selection": "selection",
    "ShrinkConfig": "dst",
    "SparseGPTConfig": "oneshot",
    "SparseIFTConfig": "sparse_ift",
    "SparsifyError": "errors",
    "config_from_dict": "registry",
    "config_to_dict": "registry",
    "registered_passes": "registry",
    "run_passes": "registry",
    "select_layers": "selection",
    "WandaConfig": "oneshot",
}
"""Public name -> the module of this package that defines it."""

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
