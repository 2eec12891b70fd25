"""Error against a common offset of the logits: loss, gradient and log_softmax.

Softmax is shift-invariant, so none of these may depend on how large the logits
are. For each offset, rows of 3, 100 and 2000 classes of ``N(0, 2) + offset``
(rounded to the dtype) go through nbxent and through an exact float64 answer on
the same rounded logits: PyTorch's when it is installed, else nbxent's oracle
(``nbxent.reference``). Prints a Markdown table of the worst error per offset.

    python benchmarks/offset_error.py [--dtype float64] [--axis -1]
"""

import argparse

import numpy as np

import nbxent
from nbxent import reference

OFFSETS = [0.0, 1e4, 1e6, 1e7, 1e8, 1e12, 1e16, 1e30, 1e300]


def _exact(logits, target, axis):
    """(loss, grad, log_softmax) in float64, by PyTorch if installed, else the oracle."""
    x = logits.astype(np.float64)
    try:
        import torch
    except ImportError:
        return (reference.cross_entropy(x, target, axis=axis),
                reference.cross_entropy_grad(x, target, axis=axis),
                reference.log_softmax(x, axis))
    xt = torch.tensor(np.moveaxis(x, axis, 1) if axis != 1 else x, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(xt, torch.tensor(target))
    loss.backward()
    grad = np.moveaxis(xt.grad.numpy(), 1, axis) if axis != 1 else xt.grad.numpy()
    return loss.item(), grad, torch.log_softmax(torch.tensor(x), dim=axis).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--axis", type=int, default=-1, choices=[-1, 0])
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    print(f"{dtype}, class axis {args.axis}")
    print("| offset | loss, relative error | gradient, absolute error | "
          "log_softmax, absolute error |\n| --- | --- | --- | --- |")
    for offset in OFFSETS:
        if offset >= float(np.finfo(dtype).max) / 100:
            continue
        worst = [0.0, 0.0, 0.0]
        for n_classes in (3, 100, 2000):
            logits = (rng.normal(0, 2, (64, n_classes)) + offset).astype(dtype)
            target = rng.integers(0, n_classes, 64)
            if args.axis == 0:
                logits = np.ascontiguousarray(logits.T)
            loss, grad = nbxent.cross_entropy_with_grad(logits, target, axis=args.axis)
            log_probs = nbxent.log_softmax(logits, axis=args.axis)
            exact_loss, exact_grad, exact_log_probs = _exact(logits, target, args.axis)
            worst[0] = max(worst[0], abs(float(loss) / exact_loss - 1))
            worst[1] = max(worst[1], float(np.abs(grad - exact_grad).max()))
            worst[2] = max(worst[2], float(np.abs(log_probs - exact_log_probs).max()))
        print(f"| {offset:g} | {worst[0]:.1e} | {worst[1]:.1e} | {worst[2]:.1e} |")


if __name__ == "__main__":
    main()
