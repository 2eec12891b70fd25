"""Staging short rows into the tile kernel's class-major tile: scalar against vector blocks.

The tile kernel copies each tile of short rows (C classes, contiguous) into a
class-major scratch tile. This measures that copy alone, one logit at a time against
the kernel's own blocked copy (``nbxent.cpu.bits.copy_transposed``: 8 x 8 float32
blocks loaded as vectors, transposed with LLVM's generic ``shufflevector``, stored as
vectors; the edges element by element), one thread, best of --repeat, ns per logit:
from memory (1000000 x C rows, 40 MB at C = 10) and from cache (20000 rows)::

    python benchmarks/short_row_staging.py [--classes 10 32 100] [--repeat 21]

For the AVX2 build on an AVX-512 machine, set NUMBA_CPU_NAME=znver3 and
NUMBA_CPU_FEATURES to the host's features with every avx512 one turned off.

benchmarks/results/short-row-transpose.patch is an earlier prototype of the blocked
staging (measured in RESULTS.md, not merged).
"""

import argparse
import time

import numpy as np
from numba import njit

from nbxent.cpu.bits import copy_transposed


@njit
def _stage_blocked(x, n_rows, n_classes, tile, width, pitch):
    for t0 in range(0, n_rows, width):
        copy_transposed(x, t0 * n_classes, n_classes, tile, 0, pitch, min(width, n_rows - t0),
                        n_classes)
    return tile[0]


@njit
def _stage_scalar(x, n_rows, n_classes, tile, width, pitch):
    for t0 in range(0, n_rows, width):
        for k in range(min(width, n_rows - t0)):
            for c in range(n_classes):
                tile[np.uint64(c * pitch + k)] = x[np.uint64((t0 + k) * n_classes + c)]
    return tile[0]


def _best_ns_per_logit(stage, x, n_rows, n_classes, repeat):
    width = min(4096, max(8, 16384 // n_classes))  # the tile kernel's tile width
    pitch = (width + 15) // 16 * 16 + 16
    tile = np.zeros(n_classes * pitch, np.float32)
    stage(x, n_rows, n_classes, tile, width, pitch)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        stage(x, n_rows, n_classes, tile, width, pitch)
        times.append(time.perf_counter() - start)
    return min(times) * 1e9 / (n_rows * n_classes), tile


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 32, 100])
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    print("| C | rows | scalar ns/logit | blocked ns/logit | scalar / blocked |")
    print("|---|---|---:|---:|---:|")
    for n_classes in args.classes:
        for n_rows in (1_000_000, 20_000):
            x = np.random.default_rng(0).random(n_rows * n_classes, np.float32)
            scalar, tile = _best_ns_per_logit(_stage_scalar, x, n_rows, n_classes, args.repeat)
            blocked, same = _best_ns_per_logit(_stage_blocked, x, n_rows, n_classes, args.repeat)
            assert np.array_equal(tile, same), "the blocked copy staged other values"
            print(f"| {n_classes} | {n_rows} | {scalar:.3f} | {blocked:.3f} | "
                  f"{scalar / blocked:.2f}x |")


if __name__ == "__main__":
    main()
