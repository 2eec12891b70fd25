"""nbxent's fused classifier head against the float64 oracle on random calls, for a while:
the logits materialised (``features @ weight.T + bias`` in float64), ``nbxent.reference``'s
loss and gradient on them, then the two products and the bias's sum.

    python benchmarks/linear_fuzz.py SEED SECONDS

Each case draws N (0 to 400 rows, sometimes one unbatched row), d (1 to 48), C (1 to
3000), a dtype (float32, float64), a scale of the logits, index targets with ignored
rows (or probability targets), a bias or none, and options (class weights, label
smoothing, z-loss, soft cap, the three reductions, a ``grad_output`` of the loss's shape
for 'none'); and the tiles: the default budget, whole rows a few at a time
(``chunk=rows``: tiles of one row to all of them, so that a tile's two shares of rows
may hold none), split classes (``chunk=(rows, classes)``), or a small ``memory_budget``.
It checks ``linear_cross_entropy_with_grad``'s loss and three gradients, and
``linear_cross_entropy``'s loss, and that no input array (bias, class weights and
``grad_output`` too) was modified. Tolerances (absolute and relative, times the largest
expected magnitude): 1e-9 for float64; for float32, 2e-4 relative and 2e-5 absolute (the
GEMMs round each product at about d * 2**-24). Prints each failing case and the count of
cases.
"""

import sys

import numpy as np

import nbxent
from fuzzing import options_text, search
from nbxent import reference as R

TOLERANCE = {np.float32: (2e-4, 2e-5), np.float64: (1e-9, 1e-9)}


def draw_case(rng):
    """(features, weight, target, keyword arguments) of one random call."""
    n = int(rng.choice([0, 1, 2, 3, 5, 17, 64, 257, 400]))
    d = int(rng.integers(1, 49))
    c = int(rng.choice([1, 2, 3, 10, 33, 100, 1000, 3000]))
    dtype = rng.choice([np.float32, np.float64])
    scale = float(rng.choice([1.0, 3.0, 30.0]))
    features = rng.standard_normal((n, d)).astype(dtype)
    weight = (rng.standard_normal((c, d)) * scale / np.sqrt(d)).astype(dtype)
    options = {"reduction": str(rng.choice(["mean", "sum", "none"]))}
    if rng.random() < 0.6:
        options["bias"] = rng.standard_normal(c).astype(dtype)
    if rng.random() < 0.4:
        options["class_weight"] = rng.uniform(0.1, 2.0, c)
    for name, values in (("label_smoothing", [0.1, 0.5]), ("z_loss", [1e-3, 0.1]),
                         ("softcap", [2.0, 30.0])):
        if rng.random() < 0.25:
            options[name] = float(rng.choice(values))
    if rng.random() < 0.2:
        target = rng.dirichlet(np.ones(c), n).astype(dtype)
    else:
        ignore_index = int(rng.choice([-100, 0, c - 1]))
        target = rng.integers(0, c, n)
        target[rng.random(n) < 0.2] = ignore_index
        options["ignore_index"] = ignore_index
    tiles = rng.integers(0, 4)
    if tiles == 1:
        options["chunk"] = int(rng.integers(1, max(n, 1) + 1))
    elif tiles == 2:
        options["chunk"] = (int(rng.integers(1, max(n, 1) + 1)), int(rng.integers(1, c + 1)))
    elif tiles == 3:
        options["memory_budget"] = int(rng.choice([1 << 12, 1 << 16, 1 << 20]))
    if options["reduction"] == "none":
        options["grad_output"] = rng.standard_normal(n)
    if n == 1 and rng.random() < 0.5:  # one unbatched row
        features, target = features[0], target[0]
        if "grad_output" in options:
            options["grad_output"] = options["grad_output"][0]
    return features, weight, target, options


def expected(features, weight, target, options):
    """(loss, d_features, d_weight, d_bias) in float64 from the materialised logits."""
    batched = features.ndim == 2
    x = np.atleast_2d(features).astype(np.float64)
    w = weight.astype(np.float64)
    bias = options.get("bias")
    logits = x @ w.T + (0.0 if bias is None else bias.astype(np.float64))
    t = target if batched else np.asarray(target)[None]
    keywords = {k: v for k, v in options.items()
                if k in ("reduction", "ignore_index", "label_smoothing", "z_loss", "softcap")}
    keywords["weight"] = options.get("class_weight")
    grad_output = np.reshape(options.get("grad_output", 1.0), (-1,) if
                             options["reduction"] == "none" else ())
    loss = R.cross_entropy(logits, t, **keywords)
    g = R.cross_entropy_grad(logits, t, grad_output=grad_output, **keywords)
    d_features = g @ w
    if not batched:
        loss = np.reshape(loss, ())
        d_features = d_features[0]
    return loss, d_features, g.T @ x, None if bias is None else g.sum(axis=0)


def check(features, weight, target, options):
    """A disagreement's text, else None."""
    arrays = [a for a in (features, weight, target, *options.values())
              if isinstance(a, np.ndarray)]
    inputs = [a.copy() for a in arrays]
    want = expected(features, weight, target, options)
    got = nbxent.linear_cross_entropy_with_grad(features, weight, target, **options)
    loss_only = nbxent.linear_cross_entropy(
        features, weight, target, **{k: v for k, v in options.items() if k != "grad_output"})
    rtol, atol = TOLERANCE[features.dtype.type]
    names = ("loss", "d_features", "d_weight", "d_bias", "loss alone")
    for name, a, e in zip(names, (*got, loss_only), (*want, want[0])):
        if e is None or a is None:
            if (a is None) != (e is None):
                return f"{name}: {a is None and 'None' or 'an array'} against the oracle's"
            continue
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        if a.shape != e.shape:
            return f"{name}: shape {a.shape} against {e.shape}"
        scale = max(1.0, float(np.abs(e[np.isfinite(e)]).max(initial=0.0)))
        bad = ~np.isclose(a, e, rtol=rtol, atol=atol * scale, equal_nan=True)
        if bad.any():
            return f"{name}: {a[bad][:3]} against the oracle's {e[bad][:3]}"
    if any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(arrays, inputs)):
        return "an input was modified"
    return None


def describe(case):
    features, weight, target, options = case
    return (f"features {features.shape} {features.dtype} weight {weight.shape} target "
            f"{np.shape(target)} {np.asarray(target).dtype} "
            f"{options_text(options)}")


if __name__ == "__main__":
    sys.exit(search(int(sys.argv[1]), float(sys.argv[2]), draw_case,
                    lambda rng, case: check(*case), describe))
