"""A tile's d_weight product of the fused linear head (298 rows, C = 32768, d = 512, one
BLAS thread), accumulated as the head does (a product into scratch, a block of 2800
classes at a time, then ``+=``) against SciPy's sgemm with beta=1 into the destination's
transpose, by the same blocks and whole, and the bare product (benchmarks/RESULTS.md,
"Tried, not kept", d6d402d). Best ms of 7, two rounds. Needs SciPy and threadpoolctl.

    python benchmarks/results/dweight-beta.py
"""
import time

import numpy as np
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

rng = np.random.default_rng(0)
M, C, D, STEP = 298, 32768, 512, 2800
G = rng.standard_normal((M, C), dtype=np.float32)
X = rng.standard_normal((M, D), dtype=np.float32)
d_weight = rng.standard_normal((C, D), dtype=np.float32)
scratch = np.empty(STEP * D, np.float32)


def blocks():
    return [slice(s, min(s + STEP, C)) for s in range(0, C, STEP)]


def via_scratch():
    for b in blocks():
        part = scratch[:(b.stop - b.start) * D].reshape(b.stop - b.start, D)
        np.matmul(G[:, b].T, X, out=part)
        d_weight[b] += part


def beta_blocks():
    for b in blocks():
        blas.sgemm(1.0, X.T, G[:, b].T, beta=1.0, c=d_weight[b].T, trans_b=True,
                   overwrite_c=True)


def beta_whole():
    blas.sgemm(1.0, X.T, G.T, beta=1.0, c=d_weight.T, trans_b=True, overwrite_c=True)


def bare():
    np.matmul(G.T, X, out=d_weight)


def best_ms(f):
    times = []
    for _ in range(7):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return f"{1e3 * min(times):.1f}"


before = d_weight.copy()
beta_blocks()
by_beta = d_weight.copy()
d_weight[:] = before
via_scratch()
print("same result:", np.allclose(by_beta, d_weight, rtol=1e-4, atol=1e-3))
with threadpool_limits(1, user_api="blas"):
    for _ in range(2):
        print("bare", best_ms(bare), "scratch and +=", best_ms(via_scratch),
              "beta=1 blocks", best_ms(beta_blocks), "beta=1 whole", best_ms(beta_whole))
