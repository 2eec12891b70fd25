"""Kernel time of one case with the logits on pages advised for huge pages (MADV_HUGEPAGE)
or against them, in one process, and how much of them the kernel made huge (AnonHugePages).

    NUMBA_NUM_THREADS=1 python benchmarks/results/swing-huge-pages.py 65536 100 loss
"""
import ctypes
import mmap
import pathlib
import sys
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # kernel_time.py
import nbxent
from kernel_time import time_kernels

rows, classes, op = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
kt = time_kernels()
n = rows * classes
libc = ctypes.CDLL("libc.so.6")
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15

def array(huge):
    size = (n * 4 + (4 << 20))
    m = mmap.mmap(-1, size)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    aligned = (addr + (2 << 20) - 1) & ~((2 << 20) - 1)
    libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(n * 4), MADV_HUGEPAGE if huge else MADV_NOHUGEPAGE)
    a = np.frombuffer(m, np.float32, count=n, offset=aligned - addr).reshape(rows, classes)
    return m, a

def anon_huge_kb():
    return sum(int(l.split()[1]) for l in open('/proc/self/smaps') if l.startswith('AnonHugePages'))

rng = np.random.default_rng(0)
base = rng.standard_normal((rows, classes), dtype=np.float32)
t = rng.integers(0, classes, rows)
keep = []
xs = {}
for huge in (False, True):
    before = anon_huge_kb()
    m, a = array(huge); a[...] = base; keep.append(m)
    print("huge" if huge else "4k  ", "AnonHugePages gained kB:", anon_huge_kb() - before)
    xs[huge] = a
out = np.empty((rows, classes), np.float32)
res = {False: [], True: []}
for rep in range(7):
    for huge in (False, True):
        best = 1e9
        for _ in range(5):
            kt.clear()
            if op == "grad":
                nbxent.cross_entropy_with_grad(xs[huge], t, out=out)
            else:
                nbxent.cross_entropy(xs[huge], t)
            best = min(best, sum(kt))
        res[huge].append(best * 1e3)
for huge, v in res.items():
    print("huge" if huge else "4k  ", f"best {min(v):.3f} median {np.median(v):.3f} ms")
