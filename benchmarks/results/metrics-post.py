"""What turning the kernel's metric rows into the caller's arrays costs on the VOC map's
2.1 million rows (benchmarks/RESULTS.md, the closing lines of "The computer-vision suite
and the linear head at d6d402d"): ``nbxent._metrics.metric_arrays`` of float32 rows, all
five metrics together, then each alone; best and median ms of 15 calls. ``keep`` calls
``nbxent.keep_freed_memory()`` first.

    python benchmarks/results/metrics-post.py [keep]
"""
import sys
import time

import numpy as np

import nbxent
from nbxent import _metrics

if "keep" in sys.argv:
    nbxent.keep_freed_memory()
SHAPE = (8, 512, 512)
rows = np.random.default_rng(0).standard_normal((5, int(np.prod(SHAPE)))).astype(np.float32)
rows[1] = np.floor(np.abs(rows[1]) * 5)
rows[2] = np.floor(np.abs(rows[2]) * 3)


def best_and_median(names, calls=15):
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        arrays = _metrics.metric_arrays(np, rows, names, top_k=5, result_shape=SHAPE,
                                        loss_dtype=np.float32)
        times.append(time.perf_counter() - start)
        del arrays
    return f"best {min(times) * 1e3:.2f} median {np.median(times) * 1e3:.2f} ms"


print("all five", best_and_median(_metrics.METRICS))
for name in _metrics.METRICS:
    print(name, best_and_median((name,)))
