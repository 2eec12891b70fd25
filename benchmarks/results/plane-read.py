"""What reading an NCHW map class plane by class plane costs, against one stream: the sum of
every logit of (outer, classes, inner) float32, read in runs of V positions of each
class in turn (a tile kernel's staging order), without cache hints and with each run
hinted one and two runs ahead in its own plane. One thread.

    NUMBA_NUM_THREADS=1 python benchmarks/results/plane-read.py 8x21x262144
"""

import sys
import time

import numpy as np
from numba import njit

from nbxent.cpu.bits import prefetch

u = np.uint64


@njit(fastmath=True)
def one_stream(x):
    total = np.float32(0)
    for i in range(x.size):
        total += x[u(i)]
    return total


@njit(fastmath=True)
def by_planes(x, n_outer, n_classes, inner, run, ahead):
    total = np.float32(0)
    for o in range(n_outer):
        for p0 in range(0, inner, run):
            for c in range(n_classes):
                start = o * n_classes * inner + c * inner + p0
                if ahead:
                    for a in range(0, run, 16):
                        prefetch(x, np.int64(start + ahead + a))
                for j in range(run):
                    total += x[u(start + j)]
    return total


def best(call, repeat=10):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(min(times) * 1e3, 2)


def main():
    n_outer, n_classes, inner = (int(n) for n in sys.argv[1].split("x"))
    x = np.random.default_rng(0).standard_normal(n_outer * n_classes * inner,
                                                 dtype=np.float32)
    one_stream(x)
    by_planes(x, n_outer, n_classes, inner, 16, 0)
    print("one stream", best(lambda: one_stream(x)), "ms")
    for run in (64, 256, 1024, 4096):
        print(f"runs of {run}: no hints", best(lambda: by_planes(x, n_outer, n_classes, inner,
                                                                   run, 0)),
              "| one run ahead",
              best(lambda: by_planes(x, n_outer, n_classes, inner, run, run)),
              "| two runs ahead", best(lambda: by_planes(x, n_outer, n_classes, inner, run,
                                                         2 * run)), "ms")


if __name__ == "__main__":
    main()
