"""The exp loop with and without the entropy's moment, standalone (benchmarks/RESULTS.md,
"Top-k's count stops at k", entropy): one thread, 1000 float32 logits in L1, the sum of
exp(x - max) with the max's own term left out as the row kernel takes it
(``exp_negative32``), and beside it the moment sum(e * (x - max)); "mul" scales the
polynomial by 2**k with a multiply (the kernels' exp), "int" adds k to its exponent bits
(an integer add and a max, tried and not kept), "fma" fuses the scale into the
polynomial's last step, e = t * 2**k + 2**k (tried, not kept). Prints ns per logit, best
of 7.

    NUMBA_NUM_THREADS=1 python benchmarks/results/entropy-exp-loop.py
"""
import time

import numpy as np
from numba import njit
from nbxent.cpu.fastexp import (exp_negative32, exp_polynomial32, negative_floor32, _F32,
                                 _reduced32)
from nbxent.cpu.bits import bitcast
from nbxent.cpu.row_kernel import FASTMATH

_R = _F32(12582912.0)  # 1.5*2**23
_FLOOR = np.array([-89.0], np.float32).view(np.int32)[0]

@njit(inline="always")
def exp_neg_int(x):
    x = bitcast(min(bitcast(np.float32(x), np.int32), _FLOOR), np.float32)
    k, r, kb = _reduced32(x, False)
    p = exp_polynomial32(r)
    return bitcast(max(np.int32(bitcast(p, np.int32) + np.int32(np.int32(kb << 23) - np.int32(127 << 23))), np.int32(0)), np.float32)

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
for ent in (False, True):
    for name, f in (("mul", exp_negative32), ("int", exp_neg_int), ("fma", exp_neg_fma)):
        run = make(f, ent); run(x, shift, 1)
        best = 1e9
        for _ in range(7):
            t = time.perf_counter(); run(x, shift, 20000); best = min(best, time.perf_counter() - t)
        print("with the moment" if ent else "sum alone      ", name,
              f"{best / 20000 / 1000 * 1e9:.3f} ns/logit")
