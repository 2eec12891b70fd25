"""The CPU kernels' vector helpers: transposed copies in blocks of shuffles, and the
running maximum kept in memory."""

import numpy as np
import pytest
from numba import njit

from nbxent.cpu.bits import copy_transposed, larger


@njit
def _copy_transposed(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols):
    copy_transposed(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols)


@njit
def _running_max(tile, n_rows, n_cols):
    top = tile[:n_cols].copy()
    for r in range(n_rows):
        for k in range(n_cols):
            top[k] = larger(top[k], tile[r * n_cols + k])
    return top


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows, n_cols", [(8, 8), (4, 4), (3, 5), (19, 100), (17, 9),
                                            (64, 10), (1, 1), (0, 7)])
def test_copy_transposed_matches_numpy(dtype, n_rows, n_cols):
    """Whole blocks and the edges around them, between strided windows of flat
    buffers; nothing outside the destination window is written."""
    src_start, src_stride, dst_start, dst_stride = 5, n_cols + 3, 2, n_rows + 7
    src = np.arange(src_start + max(n_rows, 1) * src_stride, dtype=dtype)
    dst = np.full(dst_start + max(n_cols, 1) * dst_stride, -1.0, dtype)
    before = src.copy()
    _copy_transposed(src, src_start, src_stride, dst, dst_start, dst_stride, n_rows, n_cols)
    window = src[src_start:src_start + n_rows * src_stride].reshape(n_rows, src_stride)
    copied = dst[dst_start:dst_start + n_cols * dst_stride].reshape(n_cols, dst_stride)
    np.testing.assert_array_equal(copied[:, :n_rows], window[:, :n_cols].T)
    assert (copied[:, n_rows:] == -1).all() and (dst[:dst_start] == -1).all()
    np.testing.assert_array_equal(src, before)


def test_larger_is_a_running_max_that_skips_nan():
    tile = np.array([1.0, -np.inf, np.nan, 2.0,
                     np.nan, -3.0, 5.0, 7.0,
                     0.5, -np.inf, 4.0, np.inf], np.float32)
    np.testing.assert_array_equal(_running_max(tile, 3, 4),
                                  np.array([1.0, -3.0, 5.0, np.inf], np.float32))
