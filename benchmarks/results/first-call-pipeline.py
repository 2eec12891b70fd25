"""Numba's own pipeline times of one first call (run it with an empty NUMBA_CACHE_DIR):
each compiled function's total and its three longest passes (``cres.metadata``'s
``pipeline_times``), float32 random logits of SHAPE, class axis last.

    NUMBA_CACHE_DIR=$(mktemp -d) python benchmarks/results/first-call-pipeline.py 1024x100 loss
"""
import gc
import sys
import time

import numpy as np
from numba.core.registry import CPUDispatcher

import nbxent

rng = np.random.default_rng(0)
shape = tuple(int(v) for v in sys.argv[1].split("x"))
x = rng.standard_normal(shape).astype(np.float32)
t = rng.integers(0, shape[-1], shape[0])
start = time.perf_counter()
if sys.argv[2] == "grad":
    nbxent.cross_entropy_with_grad(x, t)
else:
    nbxent.cross_entropy(x, t)
print("first call", round(time.perf_counter() - start, 2), "s")
for d in gc.get_objects():
    if isinstance(d, CPUDispatcher) and d.overloads:
        for cres in d.overloads.values():
            for passes in (cres.metadata or {}).get("pipeline_times", {}).values():
                total = sum(v.run for v in passes.values())
                if total >= 0.15:
                    top = sorted(passes.items(), key=lambda kv: -kv[1].run)[:3]
                    print(f"{d.py_func.__qualname__.split('.')[-1][:40]:40s} {total:5.2f}  "
                          + ", ".join(f"{n.split('_', 1)[1]} {v.run:.2f}" for n, v in top))
