"""NumPy's own float64 log1p against mpmath (40 digits): the largest relative error over
20000 log-uniform x in [1e-300, 1e300] and 20000 uniform in [0, 4), and that of long
double's log1p rounded to float64. Run in each environment to compare NumPy versions:

    python benchmarks/results/numpy-log1p-error.py
"""

import mpmath
import numpy as np


def main():
    mpmath.mp.dps = 40
    rng = np.random.default_rng(0)
    x = np.concatenate([10.0 ** rng.uniform(-300, 300, 20000), rng.uniform(0, 4, 20000)])
    exact = np.array([float(mpmath.log1p(mpmath.mpf(float(v)))) for v in x])
    wide = np.log1p(x.astype(np.longdouble)).astype(np.float64)
    print(f"numpy {np.__version__}: float64 log1p {np.max(np.abs(np.log1p(x) - exact) / exact):.3g}, "
          f"long double's rounded {np.max(np.abs(wide - exact) / exact):.3g}")


if __name__ == "__main__":
    main()
