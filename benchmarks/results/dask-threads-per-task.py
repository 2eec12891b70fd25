"""nbxent on Dask's threaded scheduler with each task's kernels on Numba's threads or on one
(benchmarks/RESULTS.md, "... Numba's spinning worker beside other libraries"): float32
random normal logits N x C in CHUNKS row chunks, ``cross_entropy_with_grad`` computed, 12
rounds, the two ways in turn (one Numba thread a task: ``numba.set_num_threads(1)`` around
the Dask chunks' kernel call); best and median ms.

    python benchmarks/results/dask-threads-per-task.py 262144 32 8
"""
import sys
import time

import dask
import dask.array as da
import numba
import numpy as np

import nbxent
from nbxent.dask import partials

n, c, chunks = (int(v) for v in sys.argv[1:4])
rng = np.random.default_rng(0)
x = rng.standard_normal((n, c), dtype=np.float32)
t = rng.integers(0, c, n)
dx, dt = da.from_array(x, chunks=(n // chunks, c)), da.from_array(t, chunks=n // chunks)
on_numba_threads = partials.row_cross_entropy


def on_one_thread(*args, **kwargs):
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return on_numba_threads(*args, **kwargs)
    finally:
        numba.set_num_threads(previous)


ways = {"Numba's threads": on_numba_threads, "one thread a task": on_one_thread}
seconds = {name: [] for name in ways}
for _ in range(12):
    for name, way in ways.items():
        partials.row_cross_entropy = way
        dask.compute(*nbxent.cross_entropy_with_grad(dx, dt))
        start = time.perf_counter()
        dask.compute(*nbxent.cross_entropy_with_grad(dx, dt))
        seconds[name].append(time.perf_counter() - start)
for name, times in seconds.items():
    print(f"{n}x{c} in {chunks} chunks, {name}: best {min(times) * 1e3:.1f} ms, "
          f"median {np.median(times) * 1e3:.1f}")
