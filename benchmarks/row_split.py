"""Few long rows at 1 and 2 threads: loss and loss+grad (``out=``), wall ms, best of 7.

    python benchmarks/row_split.py > new.json

Run it with the old and the new tree on ``PYTHONPATH``, alternating, and compare the
JSON. Figures: benchmarks/RESULTS.md, "A row's split does not depend on the thread count".
"""

import json
import time

import numba
import numpy as np

import nbxent

SHAPES = [(1, 128256), (4, 128256), (1, 1000000), (8, 128256), (2, 32000)]


def best_ms(f, rounds=7):
    """Best wall time of ``rounds`` batches of calls (each batch about 50 ms), in ms."""
    f()
    start = time.perf_counter()
    f()
    reps = max(3, int(0.05 / max(1e-5, time.perf_counter() - start)))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            f()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def main():
    rng = np.random.default_rng(0)
    results = {}
    for n, c in SHAPES:
        x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
        t = rng.integers(0, c, n)
        out = np.empty_like(x)
        for threads in (1, 2):
            numba.set_num_threads(threads)
            results[f"{n}x{c}/{threads}t/loss"] = best_ms(lambda: nbxent.cross_entropy(x, t))
            results[f"{n}x{c}/{threads}t/loss+grad"] = best_ms(
                lambda: nbxent.cross_entropy_with_grad(x, t, out=out))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
