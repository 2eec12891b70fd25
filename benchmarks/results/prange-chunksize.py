"""Whether numba.parallel_chunksize changes who runs a prange loop's iterations
(benchmarks/RESULTS.md, "A slower or busy core..."): a loop of 8 iterations, the first one
slow, printing the thread that ran each; without and with a chunk size of 1.

    NUMBA_NUM_THREADS=2 python benchmarks/results/prange-chunksize.py
"""
import numba, time, sys
from numba import njit, prange
import numpy as np
@njit(parallel=True)
def f(n, x):
    s = np.zeros(n)
    for i in prange(n):
        t = 0.0
        for j in range(3000000 if i == 0 else 10):
            t = np.sqrt(t + x[j % 7])
        s[i] = numba.get_thread_id() + t * 0
    return s
x = np.random.rand(7)
print(f(8, x))
with numba.parallel_chunksize(1):
    print(f(8, x))
print(numba.threading_layer())
