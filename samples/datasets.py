"""Offline datasets that ship inside installed packages (no download at run time)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsify_cli.passes.inputs import Arrays, batch_size, rows

SPLIT_SEED = 0
TEST_FRACTION = 0.1


@dataclass(frozen=True)
class Dataset:
    """Inputs (one float32 array, or ``name -> array`` for several model inputs), int64 labels
    (``None`` for unlabeled data), a fixed held-out split."""

    x_train: Arrays
    y_train: np.ndarray | None
    x_test: Arrays
    y_test: np.ndarray | None


def holdout_split(x: Arrays, y: np.ndarray | None, fraction: float = TEST_FRACTION) -> Dataset:
    """The fixed split used when data has no test set: seed 0, ``fraction`` held out.

    ``x`` is one array or ``name -> array`` (several model inputs, split alike).
    """
    order = np.random.default_rng(SPLIT_SEED).permutation(batch_size(x))
    n_test = max(1, int(round(len(order) * fraction)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(
        rows(x, train),
        None if y is None else y[train],
        rows(x, test),
        None if y is None else y[test],
    )


def digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 10 classes) as ``[N, 1, 8, 8]`` in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    return holdout_split(x, bunch.target.astype(np.int64))


DATASETS = {"digits": digits}
