"""Element access for the CPU kernels: loads and stores in the compute type, tile cells.

Arrays reach the kernels as flat 1-D buffers; float16 buffers arrive as uint16
and are converted in ``bits``. Indices are cast to unsigned: Numba then drops its
negative-index wraparound branch, which otherwise keeps LLVM from vectorising the
class loops.
"""

import numpy as np
from numba import njit

from .bits import float_to_half, half_to_float


def loader(half):
    """``load(buf, idx, ftype)``: ``buf[idx]`` as ``ftype``, through float16 when ``half``.

    One function per flag, chosen in Python rather than by a branch on ``half``:
    Numba inlines a function (``inline="always"``) with all its branches and everything
    they inline, and copies the whole at each call site, before it prunes the branches
    a constant rules out. The float16 conversions copied into every load of a float32
    kernel (and tanh into every logit load of an uncapped one) were a third of its
    compile time.
    """
    return _load_half if half else _load


def storer(half):
    """``store(buf, idx, value)``: ``buf[idx] = value``, rounded to float16 bits when
    ``half`` (one function per flag, as in ``loader``)."""
    return _store_half if half else _store


@njit(inline="always")
def _load(buf, idx, ftype):
    return ftype(buf[np.uint64(idx)])


@njit(inline="always")
def _load_half(buf, idx, ftype):
    return ftype(half_to_float(buf[np.uint64(idx)]))


@njit(inline="always")
def _store(buf, idx, value):
    buf[np.uint64(idx)] = value


@njit(inline="always")
def _store_half(buf, idx, value):
    buf[np.uint64(idx)] = float_to_half(value)


@njit(inline="always")
def cell(row, pitch, k):
    """Index of ``tile[row, k]`` in a flat tile with rows ``pitch`` apart (unsigned)."""
    return np.uint64(row * pitch + k)
