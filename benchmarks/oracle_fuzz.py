"""nbxent's CPU functions against its float64 oracle (``nbxent.reference``) on random
calls, for a while: shapes that reach every kernel path, and memory layouts the
parametrised tests' small shapes do not.

    python benchmarks/oracle_fuzz.py SEED SECONDS

Each case draws a shape (1 to 3 axes, C from 1 to 3000, rows up to a few thousand so
that the tile kernel's short-row and map paths and the row kernel's split rows are all
reached), a class axis, a dtype (float16, float32, float64), a scale of the logits, a
memory layout (contiguous, the class axis first in memory, the axes reversed in memory,
every other element of a larger array, or reversed strides), index targets with ignored
positions, or probability targets, and options (class weights, label smoothing, z-loss,
soft cap, per-row sample weights, a denominator, the three reductions). It then checks
one of: ``cross_entropy`` (with metrics for index targets), ``cross_entropy_with_grad``
(the gradient into a fresh array, into ``out=`` of another layout, or in place),
``softmax`` and ``log_softmax`` (fresh or ``out=``), ``logsumexp``, ``entropy`` and
``kl_divergence_with_grad`` (probability or log-probability targets in any layout).
Tolerances (absolute and relative, times 1 + max|logit| / 1000): 2e-2 for float16,
2e-4 for float32, 1e-9 for float64; the metrics' argmax, correct and top_k exactly (ties
included: ``nbxent.reference.metrics`` defines one order). Prints each failing case and
the count of cases.
"""

import sys

import numpy as np

import nbxent
from fuzzing import options_text, search
from nbxent import reference as R

TOLERANCE = {np.float16: 2e-2, np.float32: 2e-4, np.float64: 1e-9}
CLASSES = [1, 2, 3, 7, 10, 16, 24, 31, 32, 33, 37, 64, 100, 129, 192, 193, 257, 1000, 3000]
LAYOUTS = ("contiguous", "classes-first", "reversed-axes", "strided", "flipped")


def laid_out(rng, x, axis, layout):
    """``x``'s values in a view of the given memory layout (the same shape)."""
    if layout == "classes-first":
        return np.moveaxis(np.moveaxis(x, axis, 0).copy(), 0, axis)
    if layout == "reversed-axes":
        return x.T.copy().T
    if layout == "strided":
        big = np.zeros(tuple(2 * n for n in x.shape), x.dtype)
        view = big[tuple(slice(None, None, 2) for _ in x.shape)]
        view[...] = x
        return view
    if layout == "flipped":
        flips = tuple(slice(None, None, -1) if rng.random() < 0.5 else slice(None)
                      for _ in x.shape)
        return x[flips].copy()[flips]
    return x


def draw_case(rng):
    """(function name, logits, target or None, keyword arguments), or None."""
    n_axes = int(rng.integers(1, 4))
    n_classes = int(rng.choice(CLASSES))
    budget = int(rng.choice([2e3, 3e4, 3e5])) // n_classes
    others = [int(rng.integers(1, max(2, budget ** (1 / max(1, n_axes - 1))) + 1))
              for _ in range(n_axes - 1)]
    axis = int(rng.integers(0, n_axes))
    shape = others[:axis] + [n_classes] + others[axis:]
    if np.prod(shape) > 4e5:
        return None
    dtype = rng.choice([np.float16, np.float32, np.float64])
    scale = float(rng.choice([1.0, 10.0, 100.0]))
    x = rng.standard_normal(shape) * scale
    if rng.random() < 0.2:
        x = np.round(x / scale)  # ties
    x = laid_out(rng, np.clip(x, -6e4, 6e4).astype(dtype), axis,
                 str(rng.choice(LAYOUTS)))
    name = str(rng.choice(["cross_entropy", "cross_entropy_with_grad", "softmax",
                           "log_softmax", "logsumexp", "entropy", "kl_divergence_with_grad"]))
    if name in ("softmax", "log_softmax", "logsumexp"):
        return name, x, None, dict(axis=axis)
    rows_shape = tuple(shape[:axis] + shape[axis + 1:])
    options = {"axis": axis, "reduction": str(rng.choice(["mean", "sum", "none"]))}
    if rng.random() < 0.3:
        options["sample_weight"] = rng.uniform(0.0, 2.0, rows_shape)
    if name == "entropy":
        return name, x, None, options
    if name == "kl_divergence_with_grad":
        options["log_target"] = bool(rng.random() < 0.5)
        target = rng.standard_normal(shape)  # log-probabilities up to a constant
        if not options["log_target"]:
            target = np.exp(target - target.max(axis=axis, keepdims=True))
            target /= target.sum(axis=axis, keepdims=True)
        if rng.random() < 0.3:
            options["weight"] = rng.random(n_classes) + 0.1
        target = laid_out(rng, target.astype(dtype), axis, str(rng.choice(LAYOUTS)))
        return name, x, target, options
    if rng.random() < 0.3:
        options["weight"] = rng.random(n_classes) + 0.1
    if rng.random() < 0.3:
        options["label_smoothing"] = float(rng.choice([0.1, 0.5, 1.0]))
    if rng.random() < 0.2:
        options["z_loss"] = 1e-3
    if rng.random() < 0.1:
        options["softcap"] = float(rng.choice([5.0, 30.0]))
    if options["reduction"] == "mean" and rng.random() < 0.2:
        options["denominator"] = float(rng.uniform(1.0, 100.0))
    if rng.random() < 0.2:
        target = rng.random(shape)
        target /= target.sum(axis=axis, keepdims=True)
        return name, x, target.astype(dtype), options
    target = rng.integers(0, n_classes, rows_shape)
    ignore_index = int(rng.choice([-100, 0, n_classes - 1]))
    target[rng.random(rows_shape) < 0.2] = ignore_index
    options["ignore_index"] = ignore_index
    return name, x, target.astype(rng.choice([np.int64, np.int32, np.int16])), options


def differs(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return f"shape {got.shape} against {want.shape}"
    bad = ~np.isclose(got, want, rtol=tol, atol=tol, equal_nan=True)
    return f"{got[bad][:3]} against {want[bad][:3]}" if bad.any() else None


def check(rng, name, x, target, options):
    """A disagreement's text, else None."""
    tol = TOLERANCE[x.dtype.type] * (1 + np.abs(x.astype(np.float64)).max(initial=0) * 1e-3)
    wide = x.astype(np.float64)
    axis = options["axis"]
    if name in ("softmax", "log_softmax"):
        fresh = rng.random() < 0.5
        out = None if fresh else laid_out(rng, np.full(x.shape, np.nan, x.dtype), axis,
                                          str(rng.choice(LAYOUTS)))
        got = getattr(nbxent, name)(x, axis=axis, out=out)
        return differs(got, getattr(R, name)(wide, axis), tol)
    if name == "logsumexp":
        return differs(nbxent.logsumexp(x, axis=axis), R.logsumexp(wide, axis), tol)
    if name == "entropy":
        return differs(nbxent.entropy(x, **options), R.entropy(wide, **options), tol)
    if name == "kl_divergence_with_grad":
        loss, grad = nbxent.kl_divergence_with_grad(x, target, **options)
        wide_target = target.astype(np.float64)
        return (differs(loss, R.kl_divergence(wide, wide_target, **options), tol)
                or differs(grad, R.kl_divergence_grad(wide, wide_target, **options), tol))
    want = R.cross_entropy(wide, target, **options)
    if name == "cross_entropy":
        if target.dtype.kind != "i" or "softcap" in options:
            return differs(nbxent.cross_entropy(x, target, **options), want, tol)
        loss, found = nbxent.cross_entropy(x, target, metrics=("lse", "argmax", "correct",
                                                               "top_k"), top_k=3, **options)
        expected = R.metrics(wide, target, axis=axis, ignore_index=options["ignore_index"],
                             top_k=3)
        for metric in ("argmax", "correct", "top_k"):  # (ties too: one order, exactly)
            if not np.array_equal(found[metric], expected[metric]):
                return f"metric {metric}"
        return differs(loss, want, tol) or differs(found["lse"], expected["lse"], tol)
    grad_want = R.cross_entropy_grad(wide, target, **options)
    how = str(rng.choice(["fresh", "out", "in place"]))
    work = x.copy() if how == "in place" else x
    out = {"fresh": None, "in place": work,
           "out": laid_out(rng, np.full(x.shape, np.nan, x.dtype), axis,
                           str(rng.choice(LAYOUTS)))}[how]
    loss, grad = nbxent.cross_entropy_with_grad(work, target, out=out, **options)
    problem = differs(loss, want, tol) or differs(grad, grad_want, tol)
    return problem and f"({how}) {problem}"


def describe(case):
    name, x, target, options = case
    return (f"{name} {x.shape} {x.dtype} strides {x.strides} "
            f"{None if target is None else target.dtype} "
            f"{options_text(options)}")


if __name__ == "__main__":
    sys.exit(search(int(sys.argv[1]), float(sys.argv[2]), draw_case,
                    lambda rng, case: check(rng, *case), describe))
