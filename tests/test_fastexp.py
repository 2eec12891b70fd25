"""The CPU kernels' exp, log and tanh polynomials against NumPy, special values included."""

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from nbxent.cpu.fastexp import (exp32, exp64, exp_negative32, exp_nonpositive32,
                                exp_nonpositive64, exp_nonpositive_lanes, log1p32, log1p64,
                                negative_floor32, tanh_for)
from nbxent.cpu.lanes import lanes_for
from nbxent.cpu.row_kernel import FASTMATH


def _apply(x, which):
    out = np.empty_like(x)
    for i in range(x.size):
        if which == 0:
            out[i] = exp32(x[i])
        elif which == 1:
            out[i] = exp64(x[i])
        elif which == 2:
            out[i] = exp_nonpositive32(x[i])
        elif which == 4:
            out[i] = exp_negative32(x[i])
        elif which == 5:
            out[i] = negative_floor32(x[i])
        else:
            out[i] = exp_nonpositive64(x[i])
    return out


# Plain, and inlined in a loop with the kernels' fastmath flags: what LLVM may then
# regroup differs between its versions (an older one lost exp's argument reduction).
# Each with exp32's relative tolerance there (fused multiply-adds move its last bits).
_APPLY = [pytest.param(njit(_apply), 8.1e-8, id="plain"),
          pytest.param(njit(fastmath=FASTMATH, error_model="numpy")(_apply), 1.2e-7,
                       id="fastmath")]

# (function index, dtype, interval checked, relative tolerance (None: exp32's, above),
# flush-to-zero threshold)
_CASES = [(0, np.float32, (-87.3, 88.0), None, -87.34),
          (1, np.float64, (-700.0, 700.0), 2.4e-14, -708.4),
          # (ln2 one constant: the error of k ln2 grows with k; below -20, e**x < 2e-9)
          (2, np.float32, (-20.0, 0.0), 1.2e-7, -88.0),
          (2, np.float32, (-87.3, -20.0), 3.2e-7, -88.0),
          (3, np.float64, (-708.0, 0.0), 2.4e-14, -709.0)]


@pytest.mark.parametrize("apply, rtol32", _APPLY)
@pytest.mark.parametrize("which, dtype, interval, rtol, flush", _CASES)
def test_exp_is_accurate_and_keeps_special_values(apply, rtol32, which, dtype, interval, rtol,
                                                  flush):
    lo, hi = interval
    x = np.concatenate([np.linspace(lo, hi, 200001),
                        np.random.default_rng(0).uniform(lo, hi, 100000)]).astype(dtype)
    got = apply(x, which).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) <= (rtol32 if rtol is None else rtol)
    special = np.array([-np.inf, np.nan, -0.0, 0.0, flush, 2 * flush], dtype)
    got = apply(special, which)
    assert got[0] == 0.0 and np.isnan(got[1]) and got[2] == 1.0 and got[3] == 1.0
    assert got[4] == 0.0 and got[5] == 0.0  # below the flush point: exactly 0


def _lanes_exp(dtype):
    """``exp_nonpositive_lanes`` of an array, a vector at a time (the last one masked)."""
    lanes = lanes_for(dtype)
    width, load, store = lanes.width, lanes.load, lanes.store
    exp = exp_nonpositive_lanes(dtype)

    @njit
    def apply(x):
        out = np.empty_like(x)
        for c in range(0, x.size, width):
            store(out, c, x.size - c, exp(load(x, c, x.size - c, 0.0)))
        return out

    return apply


@pytest.mark.parametrize("which, dtype, interval, rtol, flush",
                         [case for case in _CASES if case[0] in (2, 3)])
def test_exp_of_lanes_keeps_the_nonpositive_exps_bounds(which, dtype, interval, rtol, flush):
    """The vectors' exp (rows tiled as they lie) within the scalar one's bounds, with its
    special values and its flush to 0."""
    lo, hi = interval
    x = np.concatenate([np.linspace(lo, hi, 200001),
                        np.random.default_rng(0).uniform(lo, hi, 100000)]).astype(dtype)
    got = _lanes_exp(dtype)(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) <= rtol
    got = _lanes_exp(dtype)(np.array([-np.inf, np.nan, -0.0, 0.0, flush, 2 * flush], dtype))
    assert got[0] == 0.0 and np.isnan(got[1]) and got[2] == 1.0 and got[3] == 1.0
    assert got[4] == 0.0 and got[5] == 0.0


@pytest.mark.parametrize("apply, rtol32", _APPLY)
def test_exp_negative_leaves_out_plus_zero_and_nan(apply, rtol32):
    """``exp_negative32`` is ``exp_nonpositive32`` bit for bit from -0.0 down, and 0 at
    +0.0, below the floor and for a nan of either sign."""
    x = np.concatenate([-np.geomspace(1e-38, 100.0, 100001), [-0.0, -88.0, -np.inf]])
    x = x.astype(np.float32)
    assert np.array_equal(apply(x, 4), apply(x, 2))
    special = np.array([0.0, np.nan, -np.nan, -88.0, -1e30, -np.inf, -0.0], np.float32)
    assert apply(special, 4).tolist() == [0.0] * 6 + [1.0]


@pytest.mark.parametrize("apply, rtol32", _APPLY)
def test_negative_floor_keeps_minus_zero_to_minus_88(apply, rtol32):
    """``negative_floor32`` (what ``exp_negative32`` evaluates, and the entropy moment's
    factor beside it) keeps [-88, -0.0] bit for bit and gives -88 for anything else."""
    kept = np.concatenate([-np.geomspace(1e-38, 88.0, 1001), [-0.0]]).astype(np.float32)
    assert np.array_equal(apply(kept, 5).view(np.int32), kept.view(np.int32))
    special = np.array([0.0, np.nan, -np.nan, -88.00001, -1e30, -np.inf, np.inf, 1.0],
                       np.float32)
    assert apply(special, 5).tolist() == [-88.0] * 8


def _log1p_loop(log1p, fastmath):
    def loop(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = log1p(x[i])
        return out

    return njit(fastmath=fastmath, error_model="numpy")(loop) if fastmath else njit(loop)


# A fresh process whose first log1p is compiled in a reassociating loop.
_LOG1P_FIRST_UNDER_REASSOCIATION = """
import numpy as np
from numba import njit
from nbxent.cpu.fastexp import log1p32
from nbxent.cpu.row_kernel import FASTMATH

@njit(fastmath=FASTMATH)
def log1p(x):
    return log1p32(x)

for x in (1e-10, 1e-30):
    x = np.float32(x)
    assert abs(log1p(x) - x) <= 2e-7 * x, (x, log1p(x))
"""


def test_log1p_keeps_tiny_x_when_a_reassociating_caller_compiles_it_first(tmp_path):
    """The exact term of ``log1p32`` (``_dropped_from_one_plus``, log1p64's too) is
    compiled apart without fastmath: a function that leaves its flags unset inherits
    those of the caller that compiles it first, for every caller after, and under
    reassociation the term folds to 0 (a tiny x's log1p then 0, a confident row's loss 0).
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", _LOG1P_FIRST_UNDER_REASSOCIATION], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


# (log1p64 never under reassociation: its callers do not reassociate, see its docstring)
@pytest.mark.parametrize("log1p, dtype, rtol", [
    (_log1p_loop(log1p32, None), np.float32, 2e-7),
    (_log1p_loop(log1p32, FASTMATH), np.float32, 2e-7),
    (_log1p_loop(log1p64, None), np.float64, 4e-16),
    (_log1p_loop(log1p64, FASTMATH - {"reassoc"}), np.float64, 4e-16)],
    ids=["float32-plain", "float32-fastmath", "float64-plain", "float64-kernel-flags"])
def test_log1p_is_accurate_from_subnormals_up(log1p, dtype, rtol):
    """``log1p32`` and ``log1p64`` within their tolerances of the exact log1p over their
    type's range: tiny and subnormal x to their last digits (where 1 + x rounds to 1),
    the seams at 1 + x = sqrt(2) and 2; 0, inf and nan kept."""
    rng = np.random.default_rng(0)
    tiny = np.log10(np.finfo(dtype).smallest_subnormal)
    huge = np.log10(np.finfo(dtype).max)
    eps = np.finfo(dtype).eps
    x = np.concatenate([10.0 ** rng.uniform(tiny, huge, 200000), rng.uniform(0.0, 4.0, 200000),
                        np.sqrt(2.0) - 1.0 + np.arange(-500, 500) * eps / 2,
                        1.0 + np.arange(-500, 500) * eps]).astype(dtype)
    x = x[np.isfinite(x)]
    # Against long double where it is wider than float64 (x86): NumPy's float64 log1p is
    # itself off by up to 1.7 ulp in some versions (1.24), more than the budget here.
    wide = np.longdouble if np.finfo(np.longdouble).eps < np.finfo(np.float64).eps else None
    want = np.log1p(x.astype(wide or np.float64))
    error = np.max(np.abs(log1p(x).astype(want.dtype) - want) / want)
    assert error <= rtol + (0.0 if wide else 4e-16)
    special = log1p(np.array([0.0, np.inf, np.nan], dtype))
    assert special[0] == 0.0 and special[1] == np.inf and np.isnan(special[2])


def _tanh_loop(use64):
    tanh = tanh_for(use64)

    @njit(fastmath=FASTMATH, error_model="numpy")
    def loop(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = tanh(x[i])
        return out

    return loop


@pytest.mark.parametrize("dtype, use64, rtol", [(np.float64, True, 2e-15),
                                                (np.float32, False, 4e-7)])
def test_tanh_is_accurate_monotonic_and_keeps_special_values(dtype, use64, rtol):
    """Across the switch from the series to (1 - e) / (1 + e) too: relative error, no
    step down between neighbouring inputs (the kernels take the capped max as the max
    of the capped logits; float32 tanh serves float16 logits, so their neighbours),
    odd, and tanh(+-inf) = +-1, nan through."""
    rng = np.random.default_rng(0)
    tanh = _tanh_loop(use64)
    switch = 0.02 if use64 else 0.15
    near = np.nextafter(dtype(switch), dtype(0.0)) + np.arange(-20000, 20000) * np.spacing(
        dtype(switch))
    x = np.unique(np.concatenate([np.geomspace(1e-30, 40.0, 200001), near,
                                  rng.uniform(0.0, 20.0, 100000)]).astype(dtype))
    got = tanh(x)
    want = np.tanh(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) <= rtol
    inputs = x if use64 else np.unique(x.astype(np.float16)).astype(dtype)
    assert np.all(np.diff(tanh(inputs)) >= 0.0)
    assert np.array_equal(tanh(-x), -got)
    special = tanh(np.array([np.inf, -np.inf, np.nan, 0.0], dtype))
    assert special[0] == 1.0 and special[1] == -1.0 and np.isnan(special[2])
    assert special[3] == 0.0
