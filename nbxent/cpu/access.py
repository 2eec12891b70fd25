"""Element access for the CPU kernels: loads and stores in the compute type, tile cells.

Arrays reach the kernels as flat 1-D buffers; float16 buffers arrive as uint16
and are converted in ``bits``. Indices are cast to unsigned: Numba then drops its
negative-index wraparound branch, which otherwise keeps LLVM from vectorising the
class loops.
"""

import numpy as np
from numba import njit

from .bits import float_to_half, half_to_float


@njit(inline="always")
def load(buf, idx, half, ftype):
    """``buf[idx]`` as ``ftype`` (through float16 when ``half``)."""
    if half:
        return ftype(half_to_float(buf[np.uint64(idx)]))
    return ftype(buf[np.uint64(idx)])


@njit(inline="always")
def store(buf, idx, value, half):
    """``buf[idx] = value`` (rounded to float16 bits when ``half``)."""
    if half:
        buf[np.uint64(idx)] = float_to_half(value)
    else:
        buf[np.uint64(idx)] = value


@njit(inline="always")
def cell(row, pitch, k):
    """Index of ``tile[row, k]`` in a flat tile with rows ``pitch`` apart (unsigned)."""
    return np.uint64(row * pitch + k)
