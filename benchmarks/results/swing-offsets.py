"""Kernel time of one case with the logits at offsets of 0-16 floats into one buffer, in one
process: whether the per-process swing follows the logits' alignment.

    NUMBA_NUM_THREADS=1 python benchmarks/results/swing-offsets.py 65536 100 loss
"""
import pathlib
import sys
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # kernel_time.py
import nbxent
from kernel_time import time_kernels

rows, classes, op = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
kt = time_kernels()
rng = np.random.default_rng(0)
n = rows * classes
buf = np.empty(n + 64, np.float32)
print("buffer address mod 4096:", buf.ctypes.data % 4096)
t = rng.integers(0, classes, rows)
base = rng.standard_normal(n, dtype=np.float32)
out = np.empty((rows, classes), np.float32)
res = {}
for rep in range(5):
    for off in (0, 1, 4, 8, 12, 16):
        x = buf[off:off + n].reshape(rows, classes)
        x[...] = base.reshape(rows, classes)
        best = 1e9
        for _ in range(5):
            kt.clear()
            if op == "grad":
                nbxent.cross_entropy_with_grad(x, t, out=out)
            else:
                nbxent.cross_entropy(x, t)
            best = min(best, sum(kt))
        res.setdefault(off, []).append(best * 1e3)
for off, v in res.items():
    print(f"offset {off:3d} floats ({(buf.ctypes.data + 4*off) % 64:2d} B into a line): best {min(v):.3f} median {np.median(v):.3f} ms")
