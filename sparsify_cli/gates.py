"""CI gates: fail a ``convert`` or ``bench`` run whose artifacts miss a speedup or accuracy bar.

Both read the same document shape (``report.json`` and the bench JSON share it): a
``baseline`` with ``latency`` rows and ``accuracy``, and ``artifacts`` with ``path``,
``latency`` rows (``speedup_vs_dense``) and ``accuracy``.

* ``min_speedup``: every artifact must reach ``speedup_vs_dense >= X`` at *every* timed batch
  size (time only the batch sizes you deploy with to gate on those).
* ``max_accuracy_drop``: every artifact's top-1 accuracy may be at most ``Y`` percentage points
  below the dense baseline's, measured on the same held-out samples.

A missed gate is exit code :data:`GATE_EXIT` (4), distinct from user errors (1) and internal
errors (3), and the artifacts stay written so the pipeline can keep them for inspection.
"""

from __future__ import annotations

from typing import Any

from sparsify_cli.exporters.artifact import parse_artifacts
from sparsify_cli.passes.errors import SparsifyError

GATE_EXIT = 4


def check_gates(
    doc: dict[str, Any], min_speedup: float | None = None, max_accuracy_drop: float | None = None
) -> list[str]:
    """One message per missed gate (empty when every artifact passes).

    Raises :class:`SparsifyError` when a gate cannot be judged (no timing, or no accuracy).
    """
    failures = []
    base, artifacts = parse_artifacts(doc)
    if min_speedup is not None:
        for art in artifacts:
            if not art.latency or any(r.speedup_vs_dense is None for r in art.latency):
                raise SparsifyError(
                    f"--min-speedup cannot be checked for {art.path}: no dense baseline timing",
                    fix="time the dense baseline in the same run (--baseline FILE for bench)",
                )
            for row in art.latency:
                speed = row.speedup_vs_dense
                if speed < min_speedup:
                    failures.append(
                        f"{art.path}: speedup {speed:.2f}x at batch {row.batch} is below "
                        f"--min-speedup {min_speedup:.2f}x (short by {min_speedup - speed:.2f}x)"
                    )
    if max_accuracy_drop is not None:
        dense = base.accuracy if base else None
        unmeasured = [a.path for a in artifacts if a.accuracy is None]
        if dense is None or unmeasured:
            raise SparsifyError(
                "--gate-max-accuracy-drop needs accuracy, and this run measured none"
                + (f" for {', '.join(unmeasured)}" if dense is not None else ""),
                fix="pass --data with labelled held-out samples (a dataset name or .npz)",
            )
        for art in artifacts:
            drop = 100 * (dense - art.accuracy)
            if drop > max_accuracy_drop:
                failures.append(
                    f"{art.path}: accuracy {100 * art.accuracy:.2f}% is {drop:.2f} points "
                    f"below dense {100 * dense:.2f}%, over --gate-max-accuracy-drop "
                    f"{max_accuracy_drop:g} (by {drop - max_accuracy_drop:.2f} points)"
                )
    return failures
