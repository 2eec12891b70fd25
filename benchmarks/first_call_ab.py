"""Two source trees' first calls (compile from an empty Numba cache), alternating: each
call in a fresh process with a fresh ``NUMBA_CACHE_DIR``; prints each case's seconds.

    python benchmarks/first_call_ab.py ROUNDS TREE_A TREE_B CASE ...

A case is ``KIND/OP``: KIND ``row`` (64 x 1000 float32, the row kernel), ``tile``
(4 x 7 x 5 x 6 float32, axis 1, the tile kernel), ``tile16`` (the same in float16) or
``short`` (1024 x 100 float32: the tile kernel's rows as they lie); OP
``loss``, ``grad`` (cross_entropy_with_grad), ``smooth-grad`` (with label_smoothing=0.1),
``metrics`` or ``metrics-grad`` (with all five metrics), ``prob-loss`` or ``prob-grad``
(probability targets: a softmax of random values).
"""

import os
import subprocess
import sys
import tempfile
import time

METRICS = ("lse", "argmax", "correct", "top_k", "entropy")


def first_call(case):
    """Seconds of the first call of ``case`` in this process."""
    import numpy as np

    import nbxent

    kind, op = case.split("/")
    rng = np.random.default_rng(0)
    if kind == "row":
        x, t, keywords = rng.standard_normal((64, 1000)), rng.integers(0, 1000, 64), {}
    elif kind == "short":
        x, t, keywords = rng.standard_normal((1024, 100)), rng.integers(0, 100, 1024), {}
    else:
        x, t, keywords = (rng.standard_normal((4, 7, 5, 6)), rng.integers(0, 7, (4, 5, 6)),
                          {"axis": 1})
    x = x.astype(np.float16 if kind == "tile16" else np.float32)
    if op.startswith("prob-"):
        axis = keywords.get("axis", -1)
        t = nbxent.softmax(rng.standard_normal(x.shape).astype(x.dtype), axis=axis)
    keywords.update({"smooth-grad": {"label_smoothing": 0.1}, "metrics": {"metrics": METRICS},
                     "metrics-grad": {"metrics": METRICS}}.get(op, {}))
    function = nbxent.cross_entropy if op in ("loss", "metrics", "prob-loss") else \
        nbxent.cross_entropy_with_grad
    start = time.perf_counter()
    function(x, t, **keywords)
    return time.perf_counter() - start


def main():
    rounds, trees, cases = int(sys.argv[1]), sys.argv[2:4], sys.argv[4:]
    for case in cases:
        seconds = [[], []]
        for _ in range(rounds):
            for i, tree in enumerate(trees):
                with tempfile.TemporaryDirectory() as cache:
                    env = dict(os.environ, PYTHONPATH=tree, NUMBA_CACHE_DIR=cache)
                    done = subprocess.run([sys.executable, __file__, "--case", case], env=env,
                                          cwd=tempfile.gettempdir(), capture_output=True,
                                          text=True, check=True)
                    seconds[i].append(float(done.stdout.split()[-1]))
        print(f"{case:18s} " + " | ".join(
            f"{label} {tree}: " + ", ".join(f"{s:.2f}" for s in times)
            for label, tree, times in zip("AB", trees, seconds)))


if __name__ == "__main__":
    if sys.argv[1] == "--case":
        print(f"{first_call(sys.argv[2]):.2f}")
    else:
        main()
