"""Extreme multi-label model, losses, auxiliary objective and P@k (Ullah et al., NeurIPS 2024,
arXiv 2411.03171).

Architecture (paper Sec. 3 / Fig. 1): encoder -> optional dense intermediate layer (wide, ReLU)
-> fixed fan-in sparse classifier. A sparse classifier passes a weak gradient back to the
encoder; the paper's two remedies are the intermediate layer and an **auxiliary objective**
(Sec. 3 "Auxiliary objective"): a small dense *meta* head on the encoder output predicts label
clusters (a cluster is positive when any of its labels is), mixed in as

    loss_t = (1 - a_t) * L_main + a_t * BCE(meta_logits, cluster_targets)

with ``a_t`` cosine-decayed from ``a_0`` (0.4-0.5) to 0 and switched off after a cutoff epoch --
kept to the end it hurts, because cluster prediction competes with the fine-grained task.

Labels are carried as padded index rows ``[B, K]`` (``-1`` = no label) rather than ``[B, L]``
multi-hot matrices, so a dataset of millions of labels stays small; the dense ``[B, L]`` target
is built per batch only (256 MB fp32 for B = 64 at L = 1M, the same size as the logits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cli.passes.fixed_fanin import FixedFanInLinear
from sparsify_cli.passes.sparsifier import Callbacks


class XMCOutput(NamedTuple):
    """Training-mode output when a meta head exists (eval mode returns ``logits`` alone)."""

    logits: torch.Tensor
    meta_logits: torch.Tensor


class XMCModel(nn.Module):
    """``encoder -> [intermediate] -> classifier`` plus an optional meta head on the encoder.

    Like torchvision's GoogLeNet auxiliary logits, the meta head only shows in training mode, so
    :func:`sparsify_cli.passes.training.predict` and exports see plain ``[B, L]`` logits.
    """

    def __init__(
        self,
        encoder: nn.Module,
        classifier: nn.Module,
        intermediate: nn.Module | None = None,
        meta_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.classifier = encoder, classifier
        self.intermediate, self.meta_head = intermediate, meta_head

    def forward(self, x: torch.Tensor) -> torch.Tensor | XMCOutput:
        h = self.encoder(x)
        z = self.intermediate(h) if self.intermediate is not None else h
        logits = self.classifier(z)
        if self.training and self.meta_head is not None:
            return XMCOutput(logits, self.meta_head(h))
        return logits


def build_xmc_model(
    d_in: int,
    d_enc: int,
    num_labels: int,
    fan_in: int | None,
    intermediate: int | None = None,
    num_clusters: int | None = None,
    seed: int = 0,
) -> XMCModel:
    """An MLP encoder with the paper's head: ``fan_in=None`` gives the dense baseline."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(d_in, d_enc), nn.ReLU(), nn.Linear(d_enc, d_enc))
    width = d_enc
    inter = None
    if intermediate is not None:
        inter = nn.Sequential(nn.Linear(d_enc, intermediate), nn.ReLU())
        width = intermediate
    if fan_in is None:
        classifier: nn.Module = nn.Linear(width, num_labels)
    else:
        classifier = FixedFanInLinear(width, num_labels, fan_in, generator=gen)
    meta = nn.Linear(d_enc, num_clusters) if num_clusters else None
    return XMCModel(encoder, classifier, inter, meta)


def multi_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Padded label rows ``[B, K]`` (``-1`` = none) -> float ``[B, num_classes]`` targets."""
    out = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device)
    out.scatter_(1, torch.where(labels < 0, num_classes, labels), 1.0)
    return out[:, :num_classes]


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets)


def squared_hinge_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean(max(0, 1 - s * y)^2)`` with ``s = +-1`` per label (one-vs-all squared hinge)."""
    signs = 2.0 * targets - 1.0
    return F.relu(1.0 - signs * logits).square().mean()


LOSSES = {"bce": bce_loss, "squared_hinge": squared_hinge_loss}


@dataclass(frozen=True)
class AuxSchedule:
    """``a_t = a_0 (1 + cos(pi e / cutoff)) / 2`` for epoch ``e < cutoff``, else exactly 0."""

    a0: float = 0.5
    cutoff_epoch: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.a0 <= 1 or self.cutoff_epoch <= 0:
            raise ValueError("0 <= a0 <= 1 and cutoff_epoch > 0 required")

    def weight(self, epoch: float) -> float:
        if epoch >= self.cutoff_epoch:
            return 0.0
        return self.a0 * 0.5 * (1.0 + math.cos(math.pi * epoch / self.cutoff_epoch))


class XMCObjective(Callbacks):
    """The multi-label objective for :func:`sparsify_cli.passes.training.fit` (pass it as callback
    too).

    ``batch[1]`` holds padded label rows. With ``clusters`` ([L] cluster id per label) and a
    ``schedule`` the auxiliary cluster loss is mixed in; ``before_step`` tracks the step so
    ``a_t`` follows the schedule per step (fractional epochs).
    """

    def __init__(
        self,
        num_labels: int,
        steps_per_epoch: int,
        loss: str = "bce",
        clusters: torch.Tensor | None = None,
        schedule: AuxSchedule | None = None,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.num_labels, self.steps_per_epoch = num_labels, max(1, steps_per_epoch)
        self.main = LOSSES[loss]
        self.clusters, self.schedule = clusters, schedule
        self.step = 0

    def before_step(self, model: nn.Module, step: int) -> None:
        self.step = step

    def aux_weight(self) -> float:
        if self.schedule is None or self.clusters is None:
            return 0.0
        return self.schedule.weight(self.step / self.steps_per_epoch)

    def __call__(
        self, out: torch.Tensor | XMCOutput, batch: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        labels = batch[1]
        logits = out.logits if isinstance(out, XMCOutput) else out
        main = self.main(logits, multi_hot(labels, self.num_labels))
        a = self.aux_weight()
        if not isinstance(out, XMCOutput) or a == 0.0:
            return main
        assert self.clusters is not None
        cluster_rows = torch.where(labels < 0, -1, self.clusters.to(labels.device)[labels.clamp(0)])
        targets = multi_hot(cluster_rows, out.meta_logits.shape[1])
        return (1.0 - a) * main + a * bce_loss(out.meta_logits, targets)


def label_clusters(
    x: np.ndarray,
    labels: np.ndarray,
    num_labels: int,
    num_clusters: int,
    iters: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Cluster id ``[L]`` per label: spherical k-means on PIFA label embeddings.

    PIFA (positive instance feature aggregation, as in the XMC tree methods the paper's meta
    objective borrows from): a label's embedding is the normalised sum of the normalised features
    of its training samples. Labels never seen get a zero embedding and fall in cluster 0's
    neighbourhood arbitrarily -- they carry no signal either way.
    """
    feats = F.normalize(torch.as_tensor(x, dtype=torch.float32).flatten(1), dim=1)
    lab = torch.as_tensor(labels, dtype=torch.long)
    rows = torch.arange(lab.shape[0]).unsqueeze(1).expand_as(lab)
    keep = lab >= 0
    emb = torch.zeros(num_labels, feats.shape[1])
    emb.index_add_(0, lab[keep], feats[rows[keep]])
    emb = F.normalize(emb, dim=1)
    gen = torch.Generator().manual_seed(seed)
    centers = emb[torch.randperm(num_labels, generator=gen)[:num_clusters]].clone()
    assign = torch.zeros(num_labels, dtype=torch.long)
    for _ in range(iters):
        assign = (emb @ centers.T).argmax(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, emb)
        empty = sums.norm(dim=1) == 0
        centers = torch.where(empty.unsqueeze(1), centers, F.normalize(sums, dim=1))
    return assign


@torch.no_grad()
def precision_at_k(
    model: nn.Module,
    x: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 3, 5),
    batch_size: int = 256,
) -> dict[int, float]:
    """P@k = mean over samples of ``|top-k(scores) & Y| / k`` (the XMC standard metric).

    Scores are ranked per batch, so only ``[batch, L]`` logits exist at any time.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = dict.fromkeys(ks, 0.0)
    kmax = max(ks)
    for i in range(0, len(x), batch_size):
        scores = model(torch.as_tensor(x[i : i + batch_size]).to(device))
        top = scores.topk(kmax, dim=1).indices.cpu()
        lab = torch.as_tensor(labels[i : i + batch_size], dtype=torch.long)
        relevant = (top.unsqueeze(2) == lab.unsqueeze(1)).any(2).float()  # [B, kmax]
        for k in ks:
            hits[k] += float(relevant[:, :k].sum()) / k
    model.train(was_training)
    return {k: hits[k] / len(x) for k in ks}
