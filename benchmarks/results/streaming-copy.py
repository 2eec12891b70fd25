"""A copy of float32 values by plain stores against one by streaming stores
(``nbxent.cpu.bits.copy_streaming``), and NumPy's copy, on Numba's threads: what skipping
each cache line's read before its write saves where memory is the limit.

    python benchmarks/results/streaming-copy.py [N]   (default 16384000: 65.5 MB each way)
"""

import sys
import time

import numpy as np
from numba import njit, prange, get_num_threads

from nbxent.cpu.bits import copy_streaming, store_fence


@njit(parallel=True)
def streamed(x, out, n_blocks):
    n = x.size
    for b in prange(n_blocks):
        lo, hi = b * n // n_blocks, (b + 1) * n // n_blocks
        copy_streaming(x, lo, out, lo, hi - lo)
        store_fence()


@njit(parallel=True)
def plain(x, out, n_blocks):
    n = x.size
    for b in prange(n_blocks):
        lo, hi = b * n // n_blocks, (b + 1) * n // n_blocks
        for i in range(lo, hi):
            out[np.uint64(i)] = x[np.uint64(i)]


def best_ms(function, repeat=30):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16384000
    x = np.random.default_rng(0).random(n, dtype=np.float32)
    out = np.empty_like(x)
    blocks = get_num_threads()
    for copy in (plain, streamed):
        out[:] = 0
        copy(x, out, blocks)
        assert np.array_equal(out, x)
    for _ in range(3):
        a = best_ms(lambda: plain(x, out, blocks))
        b = best_ms(lambda: streamed(x, out, blocks))
        c = best_ms(lambda: np.copyto(out, x))
        print(f"{n} float32, {blocks} threads: plain stores {a:.2f} ms, streaming stores "
              f"{b:.2f} ms (plain / streaming {a / b:.2f}), np.copyto {c:.2f} ms")


if __name__ == "__main__":
    main()
