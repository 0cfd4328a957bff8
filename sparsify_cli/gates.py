"""CI gates: fail a ``convert`` or ``bench`` run whose artifacts miss a speedup or accuracy bar.

Both read the same document shape (``report.json`` and the bench JSON share it): a
``baseline`` with ``latency`` rows and ``accuracy``, and ``artifacts`` with ``path``,
``latency`` rows (``speedup_vs_dense``) and ``accuracy``.

* ``min_speedup``: every artifact must reach ``speedup_vs_dense >= X`` at *every* timed batch
  size (time only the batch sizes you deploy with to gate on those). A row that carries the 95%
  interval of its speedup (``ratio_low``, ``ratio_high``) passes only when the whole interval
  clears the bar: an interval that straddles it fails too, with its own message, because the
  measurement cannot tell which side the artifact is on (time longer with ``--duration``, or on a
  quieter machine).
* ``max_accuracy_drop``: every artifact's top-1 accuracy may be at most ``Y`` percentage points
  below its dense baseline's, measured on the same held-out samples. An artifact of a bench run
  names its own baseline (``baseline``: a path in ``baselines``); otherwise the document's single
  ``baseline`` is meant.

A missed gate is exit code :data:`GATE_EXIT` (4), distinct from user errors (1) and internal
errors (3), and the artifacts stay written so the pipeline can keep them for inspection.
"""

from __future__ import annotations

from typing import Any

from sparsify_cli.exporters.artifact import Artifact, LatencyRow, parse_artifacts
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
            failures += [
                f"{art.path}: {miss}"
                for row in art.latency
                if (miss := speed_miss(row, min_speedup))
            ]
    if max_accuracy_drop is not None:
        owners = [_baseline_of(doc, base, a) for a in artifacts]
        denses = [b.accuracy if b is not None else None for b in owners]
        unmeasured = [a.path for a in artifacts if a.accuracy is None]
        if any(d is None for d in denses) or unmeasured:
            raise SparsifyError(
                "--gate-max-accuracy-drop needs accuracy, and this run measured none"
                + (f" for {', '.join(unmeasured)}" if unmeasured else ""),
                fix="pass --data with labelled held-out samples (a dataset name or .npz)",
            )
        for art, dense in zip(artifacts, denses, strict=True):
            drop = 100 * (dense - art.accuracy)
            if drop > max_accuracy_drop:
                failures.append(
                    f"{art.path}: accuracy {100 * art.accuracy:.2f}% is {drop:.2f} points "
                    f"below dense {100 * dense:.2f}%, over --gate-max-accuracy-drop "
                    f"{max_accuracy_drop:g} (by {drop - max_accuracy_drop:.2f} points)"
                )
    return failures


def speed_miss(row: LatencyRow, bar: float) -> str | None:
    """Why one latency row misses ``--min-speedup bar`` (``None`` when it clears it)."""
    speed, low, high = row.speedup_vs_dense, row.ratio_low, row.ratio_high
    where = f"at batch {row.batch}"
    if low is None or high is None:  # a figure without an interval is judged as it is
        if speed >= bar:
            return None
        return (
            f"speedup {speed:.2f}x {where} is below --min-speedup {bar:.2f}x "
            f"(short by {bar - speed:.2f}x)"
        )
    if low >= bar:
        return None
    if high < bar:
        return (
            f"speedup {speed:.2f}x (95% interval {low:.2f}-{high:.2f}x) {where} is below "
            f"--min-speedup {bar:.2f}x (short by {bar - speed:.2f}x)"
        )
    return (
        f"speedup {speed:.2f}x {where} cannot be told from --min-speedup {bar:.2f}x: its 95% "
        f"interval {low:.2f}-{high:.2f}x straddles the bar (time longer with --duration, or on "
        "a quieter machine)"
    )


def _baseline_of(doc: dict[str, Any], base: Artifact | None, art: Artifact) -> Artifact | None:
    """The dense entry ``art`` is compared with: its own (bench) or the document's one."""
    if "baseline" in art.extras:
        own = [Artifact.from_dict(b) for b in doc.get("baselines") or []]
        return next((b for b in own if b.path == art.extras["baseline"]), None)
    return base
