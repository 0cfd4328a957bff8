"""One real ``sparsify convert`` output shared by the inspect/bench/report/recipe tests.

Cached per process (a convert takes seconds): every test reads it, none modifies it.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from sparsify_cli.app import app

FAST = ("--bench-seconds", "0.05", "--batch-sizes", "1", "--quiet")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@functools.cache
def cnn_output() -> Path:
    """``convert digits_cnn --nm 2:4`` (accuracy on the digits held-out split, gates that pass)."""
    root = Path(tempfile.mkdtemp(prefix="sparsify-report-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    out = root / "cnn"
    result = invoke(
        "convert",
        "digits_cnn",
        "--nm",
        "2:4",
        "--out",
        str(out),
        *FAST,
        "--min-speedup",
        "0.01",
        "--gate-max-accuracy-drop",
        "50",
    )
    assert result.exit_code == 0, result.output
    return out
