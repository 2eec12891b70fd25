# What a parfor costs Numba to lower, for a trivial prange body (RESULTS.md, first section,
# "run_blocks' loops ... tried"): python benchmarks/results/parfor-lowering-cost.py
import time, numpy as np
from numba import njit, prange
@njit(parallel=True)
def small(a, n):
    for t in prange(n):
        a[t] += 1.0
@njit(parallel=True)
def many(a, b, c, d, e, f, g, h, i, j, k, n):
    for t in prange(n):
        a[t] += b[t] + c[t] + d[t] + e[t] + f[t] + g[t] + h[t] + i[t] + j[t] + k[t]
x = np.zeros(8)
t0 = time.perf_counter(); small(x, 4); print("small", round(time.perf_counter() - t0, 2))
t0 = time.perf_counter(); many(*([x] * 11), 4); print("many", round(time.perf_counter() - t0, 2))
for d in (small, many):
    for cres in d.overloads.values():
        for passes in cres.metadata["pipeline_times"].values():
            print(sorted(((round(v.run, 2), n) for n, v in passes.items()), reverse=True)[:3])
