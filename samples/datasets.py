"""Offline datasets that ship inside installed packages (no download at run time)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLIT_SEED = 0
TEST_FRACTION = 0.1


@dataclass(frozen=True)
class Dataset:
    """Float32 inputs, int64 labels (``None`` for unlabeled data), a fixed held-out split."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None


def holdout_split(x: np.ndarray, y: np.ndarray | None, fraction: float = TEST_FRACTION) -> Dataset:
    """The fixed split used when data has no test set: seed 0, ``fraction`` held out."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = max(1, int(round(len(x) * fraction)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(
        x[train], None if y is None else y[train], x[test], None if y is None else y[test]
    )


def digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 10 classes) as ``[N, 1, 8, 8]`` in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    return holdout_split(x, bunch.target.astype(np.int64))


DATASETS = {"digits": digits}
