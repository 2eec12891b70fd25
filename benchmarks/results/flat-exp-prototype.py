# The flat-exp prototype of benchmarks/RESULTS.md ("Short rows tiled as they lie"): one
# thread, times (best of 21, ms) of its passes cumulated: max, shift, exps, sums and loss,
# gradient; R rows at a time.  NUMBA_NUM_THREADS=1 python benchmarks/results/flat-exp-prototype.py
import sys, time, numpy as np
from numba import njit
sys.path.insert(0, ".")  # run from the repository root
from nbxent.cpu.fastexp import exp_nonpositive32, log32
from nbxent.cpu.bits import larger_of_numbers
F32 = np.float32
FM = {"nsz", "arcp", "contract", "afn", "reassoc"}

@njit(fastmath=FM, error_model="numpy")
def flat(x, t, g, loss, R, upto):
    N, C = x.shape
    buf = np.empty(R * C, F32)
    m = np.empty(R, F32); inv = np.empty(R, F32)
    for r0 in range(0, N, R):
        n = min(R, N - r0)
        for k in range(n):
            top = F32(-np.inf)
            for c in range(C):
                top = larger_of_numbers(top, x[r0 + k, c])
            m[k] = top
        if upto >= 2:
          for k in range(n):
            for c in range(C):
                buf[k * C + c] = x[r0 + k, c] - m[k]
        if upto >= 3:
          for i in range(n * C):
            buf[i] = exp_nonpositive32(buf[i])
        if upto >= 4:
          for k in range(n):
            s = F32(0.0)
            for c in range(C):
                s += buf[k * C + c]
            loss[r0 + k] = float(log32(s)) + float(m[k]) - float(x[r0 + k, t[r0 + k]])
            inv[k] = F32(1.0) / s
        if upto >= 5:
            for k in range(n):
                for c in range(C):
                    g[r0 + k, c] = buf[k * C + c] * inv[k]
                g[r0 + k, t[r0 + k]] -= F32(1.0)

def best(f, n=21):
    ts = []
    for _ in range(n):
        s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
    return min(ts) * 1e3

for N, C in [(65536, 100), (262144, 32), (1000000, 10)]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C), dtype=F32); t = rng.integers(0, C, N)
    g = np.empty_like(x); loss = np.empty(N)
    for R in (8, 16, 48, 96):
        flat(x, t, g, loss, R, 5)
        print(N, C, R, " ".join(f"{best(lambda: flat(x, t, g, loss, R, u)):.2f}" for u in range(1, 6)))
