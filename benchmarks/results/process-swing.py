"""The same call's time in one fresh process (benchmarks/RESULTS.md, "A swing of 1.4x
between processes, and inside one"): for each SHAPE in turn (the same shape may come
twice), float32 random normal logits, ``cross_entropy`` 25 times; prints the median call
and kernel time (ms, the kernel timed as benchmarks/kernel_time.py does), the logits' and
targets' offsets in their pages, and the CPU's steal time over the calls (/proc/stat,
ticks stolen / all ticks). Run it in many processes:

    for i in $(seq 10); do NUMBA_NUM_THREADS=2 python benchmarks/results/process-swing.py \
        1000000x10,262144x32,1000000x10 keep; done

``keep`` calls ``nbxent.keep_freed_memory()`` first.
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kernel_time import time_kernels  # noqa: E402

kernel_times = time_kernels()
import nbxent  # noqa: E402


def cpu_ticks():
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


if "keep" in sys.argv:
    nbxent.keep_freed_memory()
rng = np.random.default_rng(0)
found = []
for text in sys.argv[1].split(","):
    shape = tuple(int(v) for v in text.split("x"))
    x = rng.standard_normal(shape, dtype=np.float32)
    t = rng.integers(0, shape[1], shape[0])
    nbxent.cross_entropy(x, t)
    calls, kernels = [], []
    before = cpu_ticks()
    for _ in range(25):
        kernel_times.clear()
        start = time.perf_counter()
        nbxent.cross_entropy(x, t)
        calls.append(time.perf_counter() - start)
        kernels.append(sum(kernel_times))
    ticks = [b - a for a, b in zip(before, cpu_ticks())]
    found.append(f"{text}: call {np.median(calls) * 1e3:.2f} kern {np.median(kernels) * 1e3:.2f}"
                 f" x%4K {x.ctypes.data % 4096} t%4K {t.ctypes.data % 4096}"
                 f" steal {ticks[7]}/{sum(ticks)}")
print(" | ".join(found), flush=True)
