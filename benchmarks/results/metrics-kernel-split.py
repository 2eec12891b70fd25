"""The metrics' cost split into the kernel's and the call's (benchmarks/RESULTS.md, the
sections on the metrics of 2026-12-06): float32 random normal logits of SHAPE (class axis
AXIS), every set of metrics called in turn for ROUNDS rounds of CALLS calls each; per set,
the best call and kernel time of each round (the kernel timed as benchmarks/kernel_time.py
does), then their median over the rounds and their best, and the ratios to the loss alone.

    python benchmarks/results/metrics-kernel-split.py 1000000x10 lse correct lse,correct
    NUMBA_NUM_THREADS=1 python benchmarks/results/metrics-kernel-split.py 16384x1000 \
        --rounds 15 --calls 9 correct
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kernel_time import time_kernels  # noqa: E402

kernel_times = time_kernels()
import nbxent  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("shape")
parser.add_argument("sets", nargs="+", help="metric names joined by commas")
parser.add_argument("--axis", type=int, default=-1)
parser.add_argument("--rounds", type=int, default=15)
parser.add_argument("--calls", type=int, default=1)
args = parser.parse_args()
rng = np.random.default_rng(0)
shape = tuple(int(n) for n in args.shape.split("x"))
axis = args.axis % len(shape)
x = rng.standard_normal(shape, dtype=np.float32)
t = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1:])
sets = [None] + [tuple(names.split(",")) for names in args.sets]
found = {m: ([], []) for m in sets}
for m in sets:
    nbxent.cross_entropy(x, t, axis=axis, metrics=m)
for _ in range(args.rounds):
    for m in sets:
        call, kernel = np.inf, np.inf
        for _ in range(args.calls):
            kernel_times.clear()
            start = time.perf_counter()
            nbxent.cross_entropy(x, t, axis=axis, metrics=m)
            call = min(call, time.perf_counter() - start)
            kernel = min(kernel, kernel_times[0])
        found[m][0].append(call)
        found[m][1].append(kernel)
base = [np.median(v) for v in found[None]]
for m in sets:
    calls, kernels = found[m]
    print(f"{','.join(m) if m else 'loss alone':32s} call median {np.median(calls) * 1e3:7.3f} "
          f"best {min(calls) * 1e3:7.3f} ms ({np.median(calls) / base[0]:.3f}x)  kernel median "
          f"{np.median(kernels) * 1e3:7.3f} best {min(kernels) * 1e3:7.3f} ms "
          f"({np.median(kernels) / base[1]:.3f}x)")
