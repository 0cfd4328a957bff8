"""Mask topology as bipartite graphs: Ramanujan gap and weighted spectral gap per sparse layer.

Sparse-IFT (Thangarasa et al., sec. 5, after Hoang et al. 2023) views a sparse layer as a
bipartite graph, inputs x outputs, one edge per nonzero (a conv: one graph per kernel position,
the gaps averaged). The adjacency ``[[0, B], [B^T, 0]]`` of a biadjacency ``B`` has eigenvalues
``+-`` the singular values of ``B``, so ``mu_0`` and ``mu_hat`` (the largest non-trivial
eigenvalue) are its first two singular values.

- Ramanujan gap ``2 sqrt(d_avg - 1) - mu_hat(B)`` on the unweighted mask,
  ``d_avg = 2 |E| / (n_in + n_out)``;
- weighted spectral gap ``mu_0(|W|) - mu_hat(|W|)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from sparsify_cli.passes.masks import dense_weight, get_mask, masked_modules


@dataclass(frozen=True)
class SpectralGaps:
    layer: str
    ramanujan_gap: float
    weighted_gap: float
    d_avg: float


def _top2(matrix: np.ndarray) -> tuple[float, float]:
    values = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    return float(values[0]), float(values[1]) if len(values) > 1 else 0.0


def graph_gaps(mask: np.ndarray, weight: np.ndarray) -> tuple[float, float, float]:
    """``(ramanujan_gap, weighted_gap, d_avg)`` of one biadjacency ``[out, in]``.

    >>> g = graph_gaps(np.ones((4, 4), bool), np.ones((4, 4)))  # K_{4,4}: mu_hat = 0
    >>> round(g[0], 4), round(g[1], 4)
    (3.4641, 4.0)
    """
    d_avg = 2 * float(mask.sum()) / sum(mask.shape)
    _, mu_hat = _top2(mask.astype(np.float64))
    w0, w1 = _top2(np.abs(weight) * mask)
    ramanujan = 2 * np.sqrt(d_avg - 1) - mu_hat if d_avg >= 1 else float("nan")
    return float(ramanujan), w0 - w1, d_avg


def layer_gaps(name: str, mask: np.ndarray, weight: np.ndarray) -> SpectralGaps:
    """Gaps of a Linear ``[out, in]`` or, averaged over kernel positions, a Conv2d."""
    if mask.ndim == 2:
        graphs = [(mask, weight)]
    else:
        graphs = [(mask[:, :, i, j], weight[:, :, i, j]) for i, j in np.ndindex(mask.shape[2:])]
    gaps = np.array([graph_gaps(m, w) for m, w in graphs])
    mean = np.nanmean(gaps, axis=0) if np.isfinite(gaps[:, 0]).any() else gaps.mean(0)
    return SpectralGaps(name, float(mean[0]), float(mean[1]), float(mean[2]))


def spectral_report(model: nn.Module) -> list[SpectralGaps]:
    """:class:`SpectralGaps` of every masked layer of ``model`` (call before folding)."""
    return [
        layer_gaps(
            name,
            get_mask(mod).mask.cpu().numpy(),
            dense_weight(mod).detach().cpu().numpy(),
        )
        for name, mod in masked_modules(model)
    ]
