"""Staging short rows into the tile kernel's class-major tile: scalar against vector blocks.

The tile kernel copies each tile of short rows (C classes, contiguous) into a
class-major scratch tile, one logit at a time. This measures that copy alone against
a blocked one (8 x 8 float32 blocks loaded as vectors, transposed with LLVM's generic
``shufflevector`` in the pattern of the classic AVX transpose, stored as vectors; a row's last block overlaps the one before it
when 8 does not divide C), one thread, best of --repeat, ns per logit: from memory
(1000000 x C rows, 40 MB at C = 10) and from cache (20000 rows)::

    python benchmarks/short_row_staging.py [--classes 10 32 100] [--repeat 21]

For the AVX2 build on an AVX-512 machine, set NUMBA_CPU_NAME=znver3 and
NUMBA_CPU_FEATURES to the host's features with every avx512 one turned off.

benchmarks/results/short-row-transpose.patch is the tile kernel that used the blocked
copy (measured in RESULTS.md, not merged).
"""

import argparse
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

SIDE = 8  # float32 lanes of a 256-bit vector


@intrinsic
def _transpose_block(typingctx, src, src_index, src_stride, dst, dst_index, dst_stride):
    """dst[dst_index + c*dst_stride + r] = src[src_index + r*src_stride + c], r, c < 8."""
    if not (isinstance(src, types.Array) and src.dtype == types.float32 and dst == src):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        vector_pointer = ir.VectorType(ir.FloatType(), SIDE).as_pointer()

        def address(array, index, stride, k):
            data = context.make_array(signature.args[0])(context, builder, array).data
            at = builder.add(index, builder.mul(stride, ir.Constant(i64, k)))
            return builder.bitcast(builder.gep(data, [at]), vector_pointer)

        rows = [builder.load(address(args[0], args[1], args[2], r), align=1)
                for r in range(SIDE)]

        def shuffle(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8),
                                                            mask))

        # The classic AVX 8 x 8 transpose: unpack and shuffle within 128-bit halves,
        # then exchange the halves.
        t = [shuffle(rows[j], rows[j + 1], mask) for j in range(0, 8, 2)
             for mask in ([0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15])]
        s = [shuffle(a, b, mask) for lo_a, hi_a, lo_b, hi_b in (t[0:4], t[4:8])
             for a, b in ((lo_a, lo_b), (hi_a, hi_b))
             for mask in ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15])]
        rows = ([shuffle(s[c], s[c + 4], [0, 1, 2, 3, 8, 9, 10, 11]) for c in range(4)]
                + [shuffle(s[c], s[c + 4], [4, 5, 6, 7, 12, 13, 14, 15]) for c in range(4)])
        for c, column in enumerate(rows):
            builder.store(column, address(args[3], args[4], args[5], c), align=1)
        return context.get_dummy_value()

    return types.void(src, types.int64, types.int64, dst, types.int64, types.int64), codegen


@njit
def _stage_blocked(x, n_rows, n_classes, tile, width, pitch):
    for t0 in range(0, n_rows, width):
        n = min(width, n_rows - t0)
        blocked = n - n % SIDE if n_classes >= SIDE else 0
        for k0 in range(0, blocked, SIDE):
            for c0 in range(0, n_classes, SIDE):
                c = min(c0, n_classes - SIDE)
                _transpose_block(x, np.int64((t0 + k0) * n_classes + c), np.int64(n_classes),
                                 tile, np.int64(c * pitch + k0), np.int64(pitch))
        for k in range(blocked, n):
            for c in range(n_classes):
                tile[np.uint64(c * pitch + k)] = x[np.uint64((t0 + k) * n_classes + c)]
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
