"""Large results in recycled memory: a dropped result's buffer serves the next result of
its size, and never one that an array still refers to."""

import numpy as np
import pytest

import nbxent
from nbxent import reference as R
from nbxent._config import CPU
from nbxent.cpu import recycling

from conftest import assert_close


@pytest.fixture
def recycle_small():
    """Every result recycled, however small (the tests' arrays are)."""
    with CPU.override(recycle_min_bytes=0, recycled_outputs=2) as settings:
        yield settings


def _inputs(rng, n=40, c=50):
    return rng.standard_normal((n, c)).astype(np.float32), rng.integers(0, c, n)


def _address(array):
    return array.__array_interface__["data"][0]


def test_a_dropped_result_is_reused(rng, recycle_small):
    x, t = _inputs(rng)
    _, grad = nbxent.cross_entropy_with_grad(x, t)
    address = _address(grad)
    del grad
    loss, grad = nbxent.cross_entropy_with_grad(x, t)
    assert _address(grad) == address
    assert_close(grad, R.cross_entropy_grad(x, t), np.float32)
    assert_close(loss, R.cross_entropy(x, t), np.float32)


def test_a_result_still_referred_to_is_not_reused(rng, recycle_small):
    x, t = _inputs(rng)
    _, grad = nbxent.cross_entropy_with_grad(x, t)
    rows = grad[3:]  # a view keeps the buffer, though the result is dropped
    kept = rows.copy()
    del grad
    softmax = nbxent.softmax(-x)
    _, grad = nbxent.cross_entropy_with_grad(2 * x, t)
    assert not np.shares_memory(grad, rows) and not np.shares_memory(softmax, rows)
    np.testing.assert_array_equal(rows, kept)
    assert_close(grad, R.cross_entropy_grad(2 * x, t), np.float32)


def test_only_a_result_of_the_same_size_takes_a_buffer(rng, recycle_small):
    x, t = _inputs(rng)
    address = _address(nbxent.softmax(x))
    assert _address(nbxent.softmax(x[:-1])) != address
    other_shape = nbxent.softmax(x.reshape(50, 40))  # the same bytes
    assert _address(other_shape) == address
    assert_close(other_shape, R.softmax(x.reshape(50, 40)), np.float32)


def test_small_results_and_the_setting_at_zero_keep_nothing(rng):
    x, t = _inputs(rng)
    before = recycling.kept_bytes()
    nbxent.softmax(x)  # 8 kB, under the default's smallest
    with CPU.override(recycle_min_bytes=0, recycled_outputs=0):
        nbxent.softmax(x)
    assert recycling.kept_bytes() == before


def test_at_most_the_setting_s_count_is_kept(rng, recycle_small):
    results = [nbxent.softmax(np.ones((4, k), np.float32)) for k in (100, 200, 300)]
    assert recycling.kept_bytes() == 4 * 4 * (200 + 300)
    del results
