"""Per-row max of 100-class float32 rows: LLVM's loop (interleaved by 4: a zmm iteration of
64, a ymm loop, a scalar tail) against 16 partial maxima kept in a small array (one zmm
max per 16 classes, one horizontal reduction, a scalar tail). One thread, best of 20."""
import time
import numpy as np
from numba import njit
from nbxent.cpu.bits import larger_of_numbers, vectors_at_full_width

@njit(fastmath=True)
def plain(x, out):
    vectors_at_full_width()
    n, c = x.shape
    for k in range(n):
        top = np.float32(-np.inf)
        for j in range(c):
            top = larger_of_numbers(top, x[k, j])
        out[k] = top

@njit(fastmath=True)
def lanes16(x, out):
    vectors_at_full_width()
    n, c = x.shape
    part = np.empty(16, np.float32)
    for k in range(n):
        for j in range(16):
            part[j] = np.float32(-np.inf)
        full = c - c % 16
        for c0 in range(0, full, 16):
            for j in range(16):
                part[j] = larger_of_numbers(part[j], x[k, c0 + j])
        top = np.float32(-np.inf)
        for j in range(16):
            top = larger_of_numbers(top, part[j])
        for j in range(full, c):
            top = larger_of_numbers(top, x[k, j])
        out[k] = top

x = np.random.default_rng(0).standard_normal((65536, 100), dtype=np.float32)
a, b = np.empty(65536, np.float32), np.empty(65536, np.float32)
plain(x, a); lanes16(x, b)
assert np.array_equal(a, b) and np.array_equal(a, x.max(1))
for f in (plain, lanes16, plain, lanes16):
    best = 1e9
    for _ in range(20):
        t = time.perf_counter(); f(x, a); best = min(best, time.perf_counter() - t)
    print(f.__name__, round(best * 1e3, 3), "ms")
