"""The sparsity manifest: what every exporter reads instead of re-deriving masks from zeros.

Per sparsified tensor: its pattern (``"2:4"``, ``"fanin"``), the reduction axis, the constant
fan-in ``k`` when every active neuron keeps the same count, the ablated (all-masked) neurons,
the density and the bool mask itself. Stored as one safetensors file: masks as BOOL tensors,
everything else in the JSON header (``__metadata__["sparsify"]``) with the recipe and versions.

This module is the format only (numpy + safetensors); building entries from a model lives in
:mod:`sparsify_cli.passes.masks`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from sparsify_cli.passes.atomic import atomic_path
from sparsify_cli.passes.errors import SparsifyError

MANIFEST_SCHEMA = 1


@dataclass(frozen=True)
class TensorEntry:
    """One sparsified weight. ``mask`` follows the torch layout ``[out, in, *kernel]``."""

    name: str
    module: str
    op: str
    shape: tuple[int, ...]
    pattern: str
    density: float
    fan_in: int | None
    ablated: tuple[int, ...]
    mask: np.ndarray = field(repr=False, compare=False)

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` when the pattern is N:M, else ``None``."""
        if ":" not in self.pattern:
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


@dataclass
class Manifest:
    entries: dict[str, TensorEntry]
    recipe: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def by_module(self) -> dict[str, TensorEntry]:
        return {e.module: e for e in self.entries.values()}

    def save(self, path: str | os.PathLike[str]) -> None:
        header = {
            "schema": MANIFEST_SCHEMA,
            "recipe": self.recipe,
            "versions": self.versions,
            "tensors": [
                {k: v for k, v in asdict(e).items() if k != "mask"} for e in self.entries.values()
            ],
        }
        tensors = {
            name: np.ascontiguousarray(e.mask.astype(bool)) for name, e in self.entries.items()
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"sparsify": json.dumps(header)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        path = Path(path)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as fh:
                header = json.loads((fh.metadata() or {})["sparsify"])
            masks = load_file(str(path))
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
            raise SparsifyError(
                f"cannot read sparsity manifest {path}",
                expected="a safetensors file written by sparsify",
                found=type(err).__name__,
            ) from err
        entries = {}
        for item in header["tensors"]:
            item["shape"] = tuple(item["shape"])
            item["ablated"] = tuple(item["ablated"])
            entries[item["name"]] = TensorEntry(**item, mask=masks[item["name"]])
        return cls(entries, header.get("recipe", {}), header.get("versions", {}))
