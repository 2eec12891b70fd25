"""Views the tile kernel takes through a contiguous copy, beside a contiguous one: loss and
loss+grad, one thread, process time, best of 9 calls, ms.

    python benchmarks/strided_views.py > new.json

Run it with the old and the new tree on ``PYTHONPATH``, alternating. Figures:
benchmarks/RESULTS.md, "Test-suite time: where it goes and what was cut".
"""

import json
import time

import numba
import numpy as np

import nbxent

numba.set_num_threads(1)
rng = np.random.default_rng(0)
res = {}
cases = {"rows x[:, ::3] 100000x10": (lambda: (rng.standard_normal((100000, 30)).astype(np.float32)), lambda b: b[:, ::3], -1),
         "nchw x[..., ::2] 8x21x128x64": (lambda: (rng.standard_normal((8, 21, 128, 128)).astype(np.float32)), lambda b: b[..., ::2], 1),
         "rows contiguous 100000x10": (lambda: (rng.standard_normal((100000, 10)).astype(np.float32)), lambda b: b, -1)}
for name, (make, view, axis) in cases.items():
    x = view(make()); C = x.shape[axis]
    t = rng.integers(0, C, np.delete(np.array(x.shape), axis % x.ndim))
    for op in ("loss", "loss+grad"):
        f = (lambda: nbxent.cross_entropy(x, t, axis=axis)) if op == "loss" else (lambda: nbxent.cross_entropy_with_grad(x, t, axis=axis))
        f(); best = 1e9
        for _ in range(9):
            s = time.process_time(); f(); best = min(best, time.process_time() - s)
        res[f"{name}/{op}"] = best * 1e3
print(json.dumps(res))
