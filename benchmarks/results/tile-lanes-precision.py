"""Largest errors against the float64 oracle of the transposed tile kernel (few classes,
and NCHW maps): loss+grad and the loss alone with index targets (nan, +inf and all -inf
rows, ignored targets; plain, smoothing with class weights, z-loss), probability
targets, and the entropy metric: loss relative (rows that count, finite), gradient
absolute over max(1, |value|); the nan pattern asserted equal.

    PYTHONPATH=TREE python benchmarks/results/tile-lanes-precision.py
"""
import numpy as np

import nbxent
from nbxent import reference as R

rng = np.random.default_rng(2)
worst = {}


def note(key, *errors):
    worst[key] = np.maximum(worst.get(key, 0), errors)


def relative(got, want):
    rows = np.isfinite(want) & (want != 0)
    return np.max(np.abs(got - want)[rows] / np.abs(want[rows]))


def absolute(got, want):
    return np.nanmax(np.abs(got - want) / np.maximum(1, np.abs(want)))


cases = [((4000, C), -1) for C in (3, 10, 21, 32, 35, 64, 100)] + [((2, 21, 40, 37), 1),
                                                                   ((1, 150, 30, 31), 1)]
for dt in (np.float32, np.float64):
    for shape, axis in cases:
        C = shape[axis]
        x = (rng.standard_normal(shape) * 3).astype(dt)
        xm = np.moveaxis(x, axis, -1)  # (a view: the poisoned rows below are x's)
        rows_shape = xm.shape[:-1]
        t = rng.integers(0, C, rows_shape)
        t.reshape(-1)[::7] = -100
        xm.reshape(-1, C)[5, 1], xm.reshape(-1, C)[9, :], xm.reshape(-1, C)[11, 2] = \
            np.nan, -np.inf, np.inf
        w = rng.uniform(0.5, 2, C)
        for name, kw in (("plain", {}), ("smooth+weight", dict(label_smoothing=0.1, weight=w)),
                         ("z_loss", dict(z_loss=1e-3))):
            loss, grad = nbxent.cross_entropy_with_grad(x, t, axis=axis, reduction="none", **kw)
            alone = nbxent.cross_entropy(x, t, axis=axis, reduction="none", **kw)
            want = R.cross_entropy(x, t, axis=axis, reduction="none", **kw)
            want_grad = R.cross_entropy_grad(x, t, axis=axis, reduction="none", **kw)
            assert np.array_equal(np.isnan(loss), np.isnan(want))
            assert np.array_equal(np.isnan(alone), np.isnan(want))
            assert np.array_equal(np.isnan(grad), np.isnan(want_grad))
            note((np.dtype(dt).name, name), relative(loss, want), absolute(grad, want_grad),
                 relative(alone, want))
        finite = np.isfinite(xm).all(-1)
        q = R.softmax(rng.standard_normal(shape), axis).astype(dt)
        loss, grad = nbxent.cross_entropy_with_grad(x, q, axis=axis, reduction="none")
        want = R.cross_entropy(x, q, axis=axis, reduction="none")
        want_grad = R.cross_entropy_grad(x, q, axis=axis, reduction="none")
        note((np.dtype(dt).name, "probabilities"), relative(loss[finite], want[finite]),
             absolute(np.moveaxis(grad, axis, -1)[finite], np.moveaxis(want_grad, axis, -1)[finite]),
             0.0)
        _, metrics = nbxent.cross_entropy(x, t, axis=axis, reduction="none",
                                          metrics=("lse", "entropy"))
        want = R.entropy(x, axis=axis)
        note((np.dtype(dt).name, "entropy metric"), relative(metrics["entropy"][finite],
                                                             want[finite]), 0.0, 0.0)
print("dtype    case           loss(rel)  grad(abs)  loss alone(rel)")
for (dtype, name), error in worst.items():
    print(f"{dtype:8s} {name:14s}", " ".join(f"{e:.2e}" for e in np.atleast_1d(error)))
