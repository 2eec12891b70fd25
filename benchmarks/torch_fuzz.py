"""nbxent's CPU loss and gradient against PyTorch's on random calls, for a while.

    python benchmarks/torch_fuzz.py SEED SECONDS

Each case draws a shape (1 to 4 axes, C from 1 to 3000, some axes of length 0), a class
axis, a dtype (float16, float32, float64), a scale of the logits (1 to 1e4, sometimes
rounded to whole numbers, for ties), a layout (contiguous, or the class axis moved in
memory), index targets of a random integer dtype with ignored positions, or probability
targets, class weights, label smoothing and a reduction; then compares
``cross_entropy_with_grad`` and ``cross_entropy`` with ``torch.nn.functional.cross_entropy``
and its autograd gradient, computed in float64 from the same values. Tolerances (absolute
and relative, times 1 + max|logit| / 1000): 2e-2 for float16, 2e-4 for float32, 1e-9 for
float64. Prints each failing case and the count of cases. Needs torch.
"""

import pathlib
import sys

import numpy as np

import nbxent
from fuzzing import options_text, search

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from _torch_oracle import torch_loss_and_grad  # noqa: E402

TOLERANCE = {np.float16: 2e-2, np.float32: 2e-4, np.float64: 1e-9}


def draw_case(rng):
    """(logits, target, axis, keyword arguments) of one random call, or None."""
    n_axes = int(rng.integers(1, 5))
    n_classes = int(rng.choice([1, 2, 3, 7, 10, 16, 33, 100, 129, 193, 257, 1000, 3000]))
    others = [int(rng.integers(0, 6)) if rng.random() < 0.1 else int(rng.integers(1, 40))
              for _ in range(n_axes - 1)]
    axis = int(rng.integers(0, n_axes))
    shape = others[:axis] + [n_classes] + others[axis:]
    if np.prod(shape) > 3e5:
        return None
    dtype = rng.choice([np.float16, np.float32, np.float64])
    scale = float(rng.choice([1.0, 10.0, 100.0, 1e4]))
    x = rng.standard_normal(shape) * scale
    if rng.random() < 0.2:
        x = np.round(x / scale)
    x = np.clip(x, -6e4, 6e4).astype(dtype)
    if rng.random() < 0.3:  # the class axis first in memory
        x = np.moveaxis(np.moveaxis(x, axis, 0).copy(), 0, axis)
    options = {"reduction": str(rng.choice(["mean", "sum", "none"]))}
    if rng.random() < 0.4:
        options["weight"] = rng.random(n_classes) + 0.1
    smoothing = float(rng.choice([0.0, 0.0, 0.1, 0.5, 1.0]))
    if smoothing:
        options["label_smoothing"] = smoothing
    if rng.random() < 0.25:
        target = rng.random(shape)
        target /= target.sum(axis=axis, keepdims=True)
        if rng.random() < 0.5:
            target = target.astype(dtype)
        return x, target, axis, options
    target = rng.integers(0, n_classes, shape[:axis] + shape[axis + 1:])
    ignore_index = int(rng.choice([-100, 0, n_classes - 1, 5]))
    if rng.random() < 0.5:
        target[rng.random(target.shape) < 0.3] = ignore_index
    options["ignore_index"] = ignore_index
    small = np.uint8 if n_classes < 256 and ignore_index >= 0 else np.int16
    return x, target.astype(rng.choice([np.int64, np.int32, small])), axis, options


def check(x, target, axis, options):
    """An AssertionError's text for a disagreement, else None."""
    want_loss, want_grad = torch_loss_and_grad(x, target, axis=axis, **options)
    loss, grad = nbxent.cross_entropy_with_grad(x, target, axis=axis, **options)
    loss_only = nbxent.cross_entropy(x, target, axis=axis, **options)
    tol = TOLERANCE[x.dtype.type] * (1 + np.abs(x.astype(np.float64)).max(initial=0) * 1e-3)
    for name, got, want in (("loss", loss, want_loss), ("loss alone", loss_only, want_loss),
                            ("gradient", grad, want_grad)):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            return f"{name}: shape {got.shape} against {want.shape}"
        bad = ~np.isclose(got, want, rtol=tol, atol=tol, equal_nan=True)
        if bad.any():
            return f"{name}: {got[bad][:3]} against torch's {want[bad][:3]}"
    return None


def describe(case):
    x, target, axis, options = case
    return (f"{x.shape} {x.dtype} axis {axis} {target.dtype} "
            f"{options_text(options)}")


if __name__ == "__main__":
    sys.exit(search(int(sys.argv[1]), float(sys.argv[2]), draw_case,
                    lambda rng, case: check(*case), describe))
