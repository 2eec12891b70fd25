"""The entropy moment's exp loop with the scale fused into the polynomial's last step
(benchmarks/RESULTS.md, "A slower or busy core..."): "mul" is the kernels' exp_negative32,
"fma" writes e = t * 2**k + 2**k; with and without the moment sum(e * (x - max)).
One thread, 1000 float32 logits in L1, ns per logit, best of 7, three rounds.

    NUMBA_NUM_THREADS=1 python benchmarks/results/entropy-fma-scale.py
"""
import time
import numpy as np
from numba import njit
from nbxent.cpu.fastexp import exp_negative32, negative_floor32, _F32, _reduced32
from nbxent.cpu.bits import bitcast
from nbxent.cpu.row_kernel import FASTMATH

@njit(inline="always")
def exp_neg_fma(x):
    x = negative_floor32(x)
    k, r, kb = _reduced32(x, False)
    q = _F32(1.3813142e-3)
    q = q * r + _F32(8.3694188e-3)
    q = q * r + _F32(4.1668456e-2)
    q = q * r + _F32(1.6666515e-1)
    q = q * r + _F32(4.9999994e-1)
    t = q * (r * r) + r
    s = bitcast(np.int32(kb << 23), np.float32)
    return t * s + s

def make(f, ent):
    @njit(fastmath=FASTMATH, error_model="numpy")
    def run(x, shift, reps):
        tot = np.float32(0); en = np.float32(0)
        for _ in range(reps):
            s = np.float32(0); h = np.float32(0)
            for i in range(x.size):
                fl = negative_floor32(x[i] - shift)
                e = f(x[i] - shift)
                s += e
                if ent:
                    h += e * fl
            tot += s; en += h
        return tot, en
    return run
x = (np.random.default_rng(0).standard_normal(1000) * 2).astype(np.float32)
shift = np.float32(x.max())
runs = {}
for ent in (False, True):
    for name, f in (("mul", exp_negative32), ("fma", exp_neg_fma)):
        run = make(f, ent); print(run(x, shift, 1)); runs[ent, name] = run
for rep in range(3):
  for key, run in runs.items():
        best = 1e9
        for _ in range(7):
            t = time.perf_counter(); run(x, shift, 20000); best = min(best, time.perf_counter() - t)
        print(key, f"{best / 20000 / 1000 * 1e9:.3f} ns/logit")
