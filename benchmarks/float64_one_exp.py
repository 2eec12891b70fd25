"""float64 loss+grad and softmax on long rows, one thread, process time (best of 7 calls).

    python benchmarks/float64_one_exp.py LABEL

Run it with the old and the new tree on ``PYTHONPATH``, alternating; the NumPy
log_softmax (``x - log(sum(exp(x - max)))``) is timed beside for scale. Figures:
benchmarks/RESULTS.md, "float64: one exp per logit on long rows".
"""

import sys
import time

import numba
import numpy as np

import nbxent


def best_of(f, n=7):
    f()
    times = []
    for _ in range(n):
        t0 = time.process_time()
        f()
        times.append(time.process_time() - t0)
    return min(times)


def main():
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    results = []
    for shape in ((16384, 1000), (1024, 32000)):
        x = rng.standard_normal(shape)
        t = rng.integers(0, shape[1], shape[0])
        out = np.empty_like(x)
        for name, f in (
                ("loss+grad out=", lambda: nbxent.cross_entropy_with_grad(x, t, out=out)),
                ("softmax out=", lambda: nbxent.softmax(x, out=out)),
                ("numpy log_softmax", lambda: x - np.log(
                    np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)))):
            results.append(f"{shape[0]}x{shape[1]} {name} {best_of(f) * 1e3:.1f} ms")
    print(sys.argv[1] if len(sys.argv) > 1 else "", " | ".join(results))


if __name__ == "__main__":
    main()
