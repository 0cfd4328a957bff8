"""Golden masks and property tests for the N:M pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsify_cli.passes.errors import SparsifyError
from sparsify_cli.passes.masks import magnitude_nm_mask
from sparsify_cli.passes.pattern import NMPattern, fan_in, nm_violations


def test_golden_2of4_weights_1_to_8():
    w = torch.arange(1.0, 9.0).reshape(1, 8)
    assert magnitude_nm_mask(w, NMPattern(2, 4)).int().tolist() == [[0, 0, 1, 1, 0, 0, 1, 1]]


def test_golden_1of4_and_4of8_and_signs():
    w = torch.tensor([[1.0, -8.0, 3.0, 2.0, -5.0, 6.0, 7.0, -4.0]])
    assert magnitude_nm_mask(w, NMPattern(1, 4)).int().tolist() == [[0, 1, 0, 0, 0, 0, 1, 0]]
    assert magnitude_nm_mask(w, NMPattern(4, 8)).int().tolist() == [[0, 1, 0, 0, 1, 1, 1, 0]]


def test_ties_keep_the_earlier_weight():
    w = torch.ones(1, 4)
    assert magnitude_nm_mask(w, NMPattern(2, 4)).int().tolist() == [[1, 1, 0, 0]]


def test_conv_groups_run_along_input_channels():
    # [out=1, in=4, kh=1, kw=2]: groups are the 4 input channels at each kernel position.
    w = torch.tensor([[[[1.0, 40.0]], [[2.0, 30.0]], [[3.0, 20.0]], [[4.0, 10.0]]]])
    mask = magnitude_nm_mask(w, NMPattern(2, 4))
    assert mask[0, :, 0, 0].int().tolist() == [0, 0, 1, 1]
    assert mask[0, :, 0, 1].int().tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("text", ["4:2", "0:4", "4:4", "5:4", "-1:4", "a:b", "2:4:1", "", "2"])
def test_bad_patterns_are_named(text):
    with pytest.raises(SparsifyError) as err:
        NMPattern.parse(text)
    assert "N:M" in str(err.value) or "--nm" in str(err.value)


nm_pairs = st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (1, 16)])


@settings(max_examples=60, deadline=None)
@given(
    nm=nm_pairs,
    out=st.integers(1, 6),
    groups=st.integers(1, 4),
    kernel=st.sampled_from([(), (1, 1), (3, 3), (1, 2)]),
    seed=st.integers(0, 2**16),
)
def test_magnitude_mask_holds_exactly_n_per_group(nm, out, groups, kernel, seed):
    n, m = nm
    pattern = NMPattern(n, m)
    w = torch.randn((out, groups * m, *kernel), generator=torch.Generator().manual_seed(seed))
    mask = magnitude_nm_mask(w, pattern)
    kept = mask.numpy()
    moved = np.moveaxis(kept, 1, -1).reshape(-1, m)
    assert (moved.sum(-1) == n).all()
    assert nm_violations((w * mask).numpy(), pattern) == 0
    # every kept weight is at least as large as every dropped one in its group
    mag = np.moveaxis(w.abs().numpy(), 1, -1).reshape(-1, m)
    for row_mag, row_keep in zip(mag, moved, strict=True):
        assert row_mag[row_keep].min() >= row_mag[~row_keep].max()
    # N:M implies constant fan-in
    assert (fan_in(kept) == groups * n * int(np.prod(kernel or (1,)))).all()


@settings(max_examples=30, deadline=None)
@given(nm=nm_pairs, seed=st.integers(0, 2**16))
def test_violations_counted_along_the_given_axis(nm, seed):
    n, m = nm
    w = np.random.default_rng(seed).standard_normal((3, 2 * m)).astype(np.float32)
    mask = magnitude_nm_mask(torch.from_numpy(w), NMPattern(n, m)).numpy()
    sparse = w * mask
    assert nm_violations(sparse.T.copy(), NMPattern(n, m), axis=0) == 0
    assert nm_violations(w, NMPattern(n, m)) == 6  # dense: every group breaks it
