"""Value checks on what a user hands in: numbers, seeds, shapes, labels, weights, documents.

Each check is a small pure function that returns the value it accepted or raises
:class:`SparsifyError` naming the option, what it expected and what it found. They sit where
the options are built (``ConvertOptions``, the ``bench`` command, the recipe reader), so a bad
value is refused in one line before any work instead of surfacing later as an internal error
(``nan`` learning rates, seeds that overflow, inputs too large to allocate, ``inf`` timing
budgets that never end).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsify_cli.passes.errors import SparsifyError

if TYPE_CHECKING:  # passes.inputs imports torch; the CLI's --help must not
    from sparsify_cli.passes.inputs import InputSpec

SEED_MAX = 2**63 - 1
"""torch and numpy both take seeds in ``[0, 2**63)``; larger ones overflow inside them."""

SECURITY_OPTIONS = ("trust_checkpoint",)
"""Options that let a file run code: accepted from the command line only, never from a file."""


def positive_finite(option: str, value: Any) -> float:
    """``value`` as a float that is > 0 and finite (``--lr``, ``--bench-seconds``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SparsifyError(f"{option} must be a number", found=repr(value))
    if not math.isfinite(value) or value <= 0:
        raise SparsifyError(
            f"{option} must be a positive finite number", expected="> 0", found=repr(value)
        )
    return float(value)


def at_least(option: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low`` (``--epochs``, ``--threads``, ``--batch-size``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SparsifyError(f"{option} must be an integer >= {low}", found=repr(value))
    return value


def seed(value: Any) -> int:
    """``--seed``: an integer in ``[0, 2**63)`` (torch's and numpy's range)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise SparsifyError(
            "--seed is out of range", expected=f"an integer in [0, {SEED_MAX}]", found=repr(value)
        )
    return value


def parity_atol(value: Any, default: float) -> float:
    """The parity tolerance a run records: positive, finite and no looser than ``default``.

    A recipe could otherwise switch verification off (``parity_atol: 1e9``); no option loosens
    the exporter's tolerance, so anything above its default is refused.
    """
    atol = positive_finite("parity_atol", value)
    if atol > default:
        raise SparsifyError(
            "parity_atol is looser than the exporter's tolerance",
            expected=f"0 < parity_atol <= {default:g}",
            found=repr(value),
            fix="remove parity_atol from the recipe (verification cannot be loosened)",
        )
    return atol


def memory_limit() -> int:
    """Bytes one array may take: a quarter of physical memory (so the model still fits)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return max(total // 4, 1 << 28)


def allocation(what: str, shape: Sequence[int], itemsize: int = 4) -> tuple[int, ...]:
    """``shape`` if an array of it fits in :func:`memory_limit`, else an error naming ``what``."""
    elements = math.prod(int(d) for d in shape)
    limit = memory_limit()
    if elements * itemsize > limit:
        raise SparsifyError(
            f"{what} is too large to allocate",
            expected=f"at most {limit / 2**30:.1f} GiB per array (a quarter of this machine's "
            "memory)",
            found=f"shape {list(shape)}: {elements * itemsize / 2**30:.3g} GiB",
            fix="pass a smaller shape or batch size",
        )
    return tuple(shape)


def itemsize(spec: InputSpec) -> int:
    """Bytes per element of the input ``spec``."""
    from sparsify_cli.passes.inputs import DTYPES

    return int(np.dtype(DTYPES[spec.dtype][1]).itemsize)


def batch_allocation(option: str, batches: Iterable[int], specs: Sequence[InputSpec]) -> None:
    """A batch of every size in ``batches`` of the inputs ``specs`` must fit in memory."""
    sample = sum(math.prod(s.shape[1:]) * itemsize(s) for s in specs)
    for batch in batches:
        allocation(f"{option} {batch}", (batch, sample), itemsize=1)


def finite_weights(tensors: Mapping[str, Any]) -> None:
    """Refuse NaN or Inf in any floating tensor (named), before anything else is checked.

    Parity and accuracy computed on such a model mean nothing, and a NaN compares false
    against every tolerance.
    """
    bad = []
    for name, tensor in tensors.items():
        array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad.append(f"{name} ({int((~np.isfinite(array)).sum())} values)")
    if bad:
        raise SparsifyError(
            "the model's weights contain NaN or Inf",
            found="; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""),
            fix="check the checkpoint: the training that wrote it diverged",
        )


def labels_in_range(labels: np.ndarray | None, classes: int, source: str) -> None:
    """Class ids must index the model's ``classes`` outputs."""
    if labels is None or not len(labels):
        return
    top = int(labels.max())
    if top >= classes:
        raise SparsifyError(
            f"the labels in {source} do not fit the model's outputs",
            expected=f"class ids in [0, {classes})",
            found=f"class id {top}",
        )


def trainable_rows(rows: int, source: str) -> None:
    """Training needs at least one sample to train on besides the held-out ones."""
    if rows < 1:
        raise SparsifyError(
            f"{source} leaves no samples to train on",
            expected="at least 2 samples (one is held out for evaluation)",
            found=f"{rows} training samples",
        )


def no_security_options(options: Mapping[str, Any], source: str) -> None:
    """A file never turns on an option that lets a file run code (:data:`SECURITY_OPTIONS`)."""
    for key in options:
        if key in SECURITY_OPTIONS:
            flag = "--" + key.replace("_", "-")
            raise SparsifyError(
                f"recipe {source} sets the security option {key!r}",
                expected=f"{key} only on the command line ({flag})",
                fix=f"remove {key!r} from the recipe and pass {flag} yourself if you trust the "
                "checkpoint",
            )


def report_document(doc: Any, source: str) -> dict[str, Any]:
    """``report.json`` must be a sparsify report before anything renders it."""
    from sparsify_cli.report import SCHEMA

    problems = []
    if not isinstance(doc, dict):
        problems.append(f"a {type(doc).__name__}, not a mapping")
    else:
        if doc.get("schema") != SCHEMA:
            problems.append(f"schema {doc.get('schema')!r}")
        if not isinstance(doc.get("input"), dict) or not isinstance(doc["input"].get("path"), str):
            problems.append("no input.path")
        for key in ("layers", "artifacts"):
            if not isinstance(doc.get(key), list):
                problems.append(f"no {key} list")
    if problems:
        raise SparsifyError(
            f"{source} is not a sparsify report",
            expected=f"the report.json of sparsify convert (schema {SCHEMA})",
            found=", ".join(problems),
        )
    return doc
