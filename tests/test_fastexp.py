"""The CPU kernels' exp and log polynomials against NumPy, special values included."""

import numpy as np
import pytest
from numba import njit

from nbxent.cpu.fastexp import exp32, exp64, exp_nonpositive32, exp_nonpositive64
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
          (2, np.float32, (-87.3, 0.0), None, -88.0),
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
