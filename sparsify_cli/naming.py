"""Where ``convert`` writes: a default folder named after the run, and the refusal of an
existing ``--out`` before any work (this module imports no torch, so the check takes
milliseconds, not the seconds that loading takes).

The default name says what the run did, so runs that differ land in different folders::

    digits_cnn_magnitude_2of4          sparsify convert digits_cnn --nm 2:4
    digits_cnn_maxq_1of4               ... --nm 1:4 --method maxq
    digits_cnn_magnitude_2of4_int8     ... --quantize int8
    digits_cnn_wide_rigl_s75           ... --ift wide --dst rigl --sparsity 0.75

A default name that is taken gets the first free ``-2``, ``-3``, ... suffix (a run never
replaces a folder it was not told to); an ``--out`` that exists is refused unless ``--force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsify_cli.passes.errors import SparsifyError


def run_name(opts: Any) -> str:
    """``STEM_METHOD_PATTERN[_QUANT]`` for a run with ``opts`` (a ``ConvertOptions``)."""
    if opts.source:
        stem = Path(str(opts.source).rstrip("/")).stem
    else:
        stem = (opts.arch or "model").rpartition(":")[2]
    parts = [stem]
    if opts.ift or opts.dst:
        parts += [p for p in (opts.ift, opts.dst) if p]
        sparsity = getattr(opts, "training_sparsity", opts.sparsity)  # None: the default
        parts.append(f"s{round(100 * sparsity)}")
    else:
        parts += [opts.method, opts.nm.replace(":", "of")]
    if opts.quantize:
        parts.append(opts.quantize.replace("-", "_"))
    return "_".join(parts)


def default_out(opts: Any) -> Path:
    """The run's folder in the current directory: :func:`run_name`, or its first free
    ``-N`` variant."""
    name = run_name(opts)
    out, n = Path(name), 2
    while out.exists():
        out, n = Path(f"{name}-{n}"), n + 1
    return out


def refuse_existing(out: str | Path | None, force: bool) -> None:
    """An ``--out`` that exists is an error unless ``--force`` (``None``: the default name,
    which never collides)."""
    if out is None or force or not Path(out).exists():
        return
    raise SparsifyError(
        f"output folder {out} already exists",
        fix="choose another --out, or pass --force to replace it "
        "(without --out, each run gets a new folder named after it)",
    )
