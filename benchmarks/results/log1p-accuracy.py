"""The tile kernel's log1p against NumPy's float64 log1p (mpmath for the worst case), over
random x from the smallest subnormal to the largest float (log-uniform), uniform x in
[0, 4), and the seams at 1 + x = sqrt(2) and 2; plain, with the tile kernel's fastmath
flags and with the row kernel's (reassociation). Run with a tree on PYTHONPATH, from
outside the repository, to see that tree's:

    cd /tmp && PYTHONPATH=/path/to/tree python /path/to/log1p-accuracy.py [MIN_X]

MIN_X leaves out x below it (but 0): 1.2e-38 keeps float32 normals only.
"""

import sys

import mpmath
import numpy as np
from numba import njit

import nbxent.cpu.fastexp as fastexp
from nbxent.cpu.row_kernel import FASTMATH


def loop_of(log1p, flags):
    def apply(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = log1p(x[i])
        return out

    return njit(apply) if flags is None else njit(fastmath=flags, error_model="numpy")(apply)


def inputs(dtype, min_x):
    rng = np.random.default_rng(0)
    info = np.finfo(dtype)
    eps = float(info.eps)
    x = np.concatenate([
        np.zeros(1), 10.0 ** rng.uniform(np.log10(float(info.smallest_subnormal)),
                                         np.log10(float(info.max)), 2_000_000),
        rng.uniform(0, 4, 2_000_000), np.sqrt(2) - 1 + np.arange(-2000, 2000) * eps / 2,
        1 + np.arange(-2000, 2000) * eps, rng.uniform(0, 1e-6, 300000)]).astype(dtype)
    return x[np.isfinite(x) & ((x == 0) | (x >= min_x))]


def main():
    min_x = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    mpmath.mp.dps = 40
    for name, dtype in (("log1p32", np.float32), ("log1p64", np.float64)):
        if not hasattr(fastexp, name):
            continue
        x = inputs(dtype, min_x)
        want = np.log1p(x.astype(np.float64))
        for flags_name, flags in (("plain", None), ("tile flags", FASTMATH - {"reassoc"}),
                                  ("reassoc", FASTMATH)):
            got = loop_of(getattr(fastexp, name), flags)(x).astype(np.float64)
            rel = np.abs(got - want) / np.where(want == 0, 1, want)
            i = int(np.argmax(rel))
            exact = float(mpmath.log1p(mpmath.mpf(float(x[i]))))
            print(f"{name} {flags_name:10s}: max relative error {rel.max():.3g} at "
                  f"x = {x[i]:.9g} (against mpmath {abs(got[i] - exact) / exact:.3g})")


if __name__ == "__main__":
    main()
