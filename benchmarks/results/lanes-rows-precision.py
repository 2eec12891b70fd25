"""Largest errors against the float64 oracle of rows tiled as they lie (loss+grad, 60 to
200 classes, 3000 rows with nan, +inf and all -inf rows and ignored targets), and of
log_softmax and softmax: loss relative (rows that count, finite), gradient and
normalisations absolute over max(1, |value|); the nan pattern asserted equal.

    PYTHONPATH=TREE python benchmarks/results/lanes-rows-precision.py
"""
import numpy as np

import nbxent
from nbxent import reference as R

rng = np.random.default_rng(1)
worst = {}
for dt in (np.float32, np.float64):
    for C in (60, 64, 100, 113, 150, 176, 200):
        x = (rng.standard_normal((3000, C)) * 3).astype(dt)
        t = rng.integers(0, C, 3000)
        t[::7] = -100
        x[5, 3], x[9, :], x[11, 7] = np.nan, -np.inf, np.inf
        w = rng.uniform(0.5, 2, C)
        for name, kw in (("plain", {}), ("smooth+weight", dict(label_smoothing=0.1, weight=w)),
                         ("z_loss", dict(z_loss=1e-3))):
            loss, grad = nbxent.cross_entropy_with_grad(x, t, reduction="none", **kw)
            want = R.cross_entropy(x, t, reduction="none", **kw)
            want_grad = R.cross_entropy_grad(x, t, reduction="none", **kw)
            assert np.array_equal(np.isnan(loss), np.isnan(want))
            assert np.array_equal(np.isnan(grad), np.isnan(want_grad))
            rows = np.isfinite(want) & (want != 0)
            errors = (np.max(np.abs(loss - want)[rows] / np.abs(want[rows])),
                      np.nanmax(np.abs(grad - want_grad) / np.maximum(1, np.abs(want_grad))))
            key = (np.dtype(dt).name, name)
            worst[key] = np.maximum(worst.get(key, 0), errors)
        for f, oracle in ((nbxent.log_softmax, R.log_softmax), (nbxent.softmax, R.softmax)):
            got, want = f(x), oracle(x, -1)
            assert np.array_equal(np.isnan(got), np.isnan(want))
            finite = np.isfinite(want)
            key = (np.dtype(dt).name, f.__name__)
            worst[key] = np.maximum(worst.get(key, 0), np.max(
                np.abs(got - want)[finite] / np.maximum(1, np.abs(want[finite]))))
for (dtype, name), error in worst.items():
    print(f"{dtype:8s} {name:14s}", " ".join(f"{e:.2e}" for e in np.atleast_1d(error)))
