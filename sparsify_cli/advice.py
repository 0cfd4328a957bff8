"""Advice: structured warnings a run collects, each naming the option that would help.

A run that "succeeds" can still fail its purpose: a one-shot 1:4 magnitude run of the sample
transformer exits 0 at 95% -> 29% top-1. Such findings are collected as :class:`Advice`
records (``kind``, ``message``, ``option``) in one :class:`AdviceLog` per run, stored in
``report.json`` under ``"warnings"``, printed on the terminal by
:func:`sparsify_cli.report.render` and shown in the headline of ``report.html``. New kinds are
added by calling :meth:`AdviceLog.warn` from the stage that notices them; the renderers need no
change.

The first kind is the accuracy guard (:func:`accuracy_guard`): after the sparsifying passes,
the top-1 drop on labelled held-out data, or without labels the agreement of the sparse model's
outputs with the dense model's (:func:`output_agreement`, mean cosine), is compared with a
threshold, and a run past it is told which method would recover the loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ACCURACY_DROP_WARN = 2.0
"""Top-1 drop (percentage points, dense -> sparse) above which the guard warns."""

AGREEMENT_WARN = 0.95
"""Mean cosine of sparse vs dense outputs below which the guard warns (runs without labels)."""

ONE_SHOT = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class Advice:
    """One warning: what was found (``message``) and the option that would help (``option``)."""

    kind: str
    message: str
    option: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return advice_line(self.to_dict())


def advice_line(warning: dict[str, Any]) -> str:
    """A warning as stored in ``report.json`` -> one sentence ending with the option to try."""
    option = warning.get("option")
    return warning["message"] + (f"; try {option}" if option else "")


@dataclass
class AdviceLog:
    """The warnings of one run, in the order they were found."""

    items: list[Advice] = field(default_factory=list)

    def warn(self, kind: str, message: str, option: str | None = None) -> Advice:
        advice = Advice(kind, message, option)
        self.items.append(advice)
        return advice

    def to_list(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.items]


def output_agreement(
    dense: np.ndarray, sparse: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Mean cosine similarity of ``dense`` and ``sparse`` outputs along their last axis.

    One cosine per output vector (a sample's logits, or a token's hidden state for an encoder
    returning ``[batch, seq, hidden]``); ``weights`` (e.g. the attention mask, shaped like the
    outputs without their last axis) averages over real tokens only. A zero vector on either
    side counts as cosine 0.

    >>> output_agreement(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]]))
    1.0
    """
    a = dense.reshape(-1, dense.shape[-1]).astype(np.float64)
    b = sparse.reshape(-1, sparse.shape[-1]).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1.0), 0.0)
    if weights is None:
        return float(cos.mean())
    w = np.broadcast_to(weights, dense.shape[:-1]).reshape(-1).astype(np.float64)
    return float((cos * w).sum() / max(w.sum(), 1e-12))


def _recovery(method: str, pattern: str, epochs: int) -> str:
    """The option that would recover a drop after ``method``."""
    if method in ("magnitude", "wanda"):
        return "--method sparsegpt"
    if method == "sparsegpt" and "fan-in" in pattern:
        return f"--dst srigl --epochs {epochs}"
    if method == "sparsegpt":
        return f"--method maxq --epochs {epochs}"
    return f"--epochs {2 * epochs}"


def accuracy_guard(
    log: AdviceLog,
    method: str,
    pattern: str,
    epochs: int,
    accuracy: dict[str, Any] | None,
    agreement: float | None,
) -> Advice | None:
    """Warn when sparsification lost more than the thresholds allow; returns the warning.

    ``accuracy`` is the report's accuracy block (top-1 ``dense`` / ``sparse``); without it the
    output ``agreement`` (:func:`output_agreement`) is judged instead. ``method`` is the
    ``--method`` (or ``--dst`` / ``--ift`` description) that ran, ``pattern`` its N:M or
    sparsity, ``epochs`` the fine-tuning epochs a suggestion may name.
    """
    option = _recovery(method, pattern, epochs)
    how = "one-shot " if method in ONE_SHOT else ""
    if accuracy and accuracy.get("dense") is not None and accuracy.get("sparse") is not None:
        drop = 100 * (accuracy["dense"] - accuracy["sparse"])
        if drop > ACCURACY_DROP_WARN:
            return log.warn(
                "accuracy-drop",
                f"{how}{method} at {pattern} lost {drop:.2f} points of top-1 "
                f"({100 * accuracy['dense']:.2f}% -> {100 * accuracy['sparse']:.2f}%), more than "
                f"{ACCURACY_DROP_WARN:g}",
                option,
            )
        return None
    if agreement is not None and agreement < AGREEMENT_WARN:
        return log.warn(
            "low-agreement",
            f"{how}{method} at {pattern}: the sparse model's outputs agree with the dense model's "
            f"at mean cosine {agreement:.3f}, below {AGREEMENT_WARN:g}",
            option,
        )
    return None
