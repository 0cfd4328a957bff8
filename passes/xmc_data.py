"""A synthetic extreme multi-label task with a power-law label distribution.

Real XMC data (Amazon-3M, Wiki-500K) is long-tailed: a few head labels appear in many samples,
most labels in a handful -- the property the paper (arXiv 2411.03171) stresses sets XMC apart
from the usual DST benchmarks. This generator reproduces it without downloads:

* label ``j`` has a prototype ``u_j`` in an ``r``-dim latent space and prior ``p_j ~ (j+1)^-a``
  (Zipf, exponent ``zipf_a``);
* a sample draws 1..``max_labels`` labels without replacement from ``p``; its latent is the sum
  of their prototypes plus Gaussian noise;
* features are ``tanh(z A) + noise`` with a fixed random ``A [r, d]`` -- a nonlinearity the
  encoder has to undo, so encoder learning (what the auxiliary objective helps) matters.

Learnable (the labels are a function of the latent up to noise) but not trivial: tail labels
have few examples and the prototypes of co-occurring labels interfere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class XMCData:
    """Features float32 ``[N, d]``; labels int64 ``[N, max_labels]`` padded with ``-1``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_labels: int

    def label_counts(self) -> np.ndarray:
        y = self.y_train[self.y_train >= 0]
        return np.bincount(y, minlength=self.num_labels)


def skewed_xmc(
    num_labels: int = 2000,
    n_train: int = 20000,
    n_test: int = 2000,
    d_feat: int = 128,
    latent_dim: int = 64,
    max_labels: int = 5,
    zipf_a: float = 1.0,
    latent_noise: float = 0.3,
    feature_noise: float = 0.1,
    seed: int = 0,
) -> XMCData:
    """Generate train and test splits of the skewed task (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_labels, latent_dim, generator=gen)
    protos /= protos.norm(dim=1, keepdim=True)
    mixing = torch.randn(latent_dim, d_feat, generator=gen) * (2.0 / latent_dim**0.5)
    prior = (torch.arange(num_labels, dtype=torch.float64) + 1.0).pow(-zipf_a)
    prior = (prior / prior.sum()).float()
    n = n_train + n_test
    labels = torch.full((n, max_labels), -1, dtype=torch.long)
    counts = torch.randint(1, max_labels + 1, (n,), generator=gen)
    for s in range(0, n, 1024):
        e = min(n, s + 1024)
        drawn = torch.multinomial(prior.expand(e - s, -1), max_labels, generator=gen)
        keep = torch.arange(max_labels) < counts[s:e].unsqueeze(1)
        labels[s:e] = torch.where(keep, drawn, -1)
    z = (protos[labels.clamp(0)] * (labels >= 0).unsqueeze(2)).sum(1)
    z += latent_noise * torch.randn(n, latent_dim, generator=gen)
    x = torch.tanh(z @ mixing) + feature_noise * torch.randn(n, d_feat, generator=gen)
    labels = labels.sort(dim=1, descending=True).values  # valid ids first, -1 padding last
    x_np, y_np = x.numpy().astype(np.float32), labels.numpy()
    return XMCData(x_np[:n_train], y_np[:n_train], x_np[n_train:], y_np[n_train:], num_labels)
