"""A standalone NCHW loss (float32 logits, int64 targets, reduction 'none'), the tile
kernel's steps stripped to the bone, timed beside nbxent's call: what the map's loss
could cost without the kernel's generality.

Tiles of W positions: each class's run copied into a class-major tile, the max taken on
the way and each class's run AHEAD positions on hinted to the cache; the target's logit
gathered from the tile; the exps in blocks of 16 positions whose sum stays in registers;
the finish in float32 (log1p32). MODE=1 stops after the staging (its loss is wrong).
BLOCKS blocks of tiles in a parallel loop (1: one thread's work).

    NUMBA_NUM_THREADS=1 W=64 AHEAD=512 \
        python benchmarks/results/map-loss-prototype.py 8x21x262144
    W=64 AHEAD=512 BLOCKS=2 python benchmarks/results/map-loss-prototype.py 2x150x262144
"""

import os
import sys
import time

import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

import nbxent
from nbxent.cpu.bits import larger_of_numbers, prefetch
from nbxent.cpu.fastexp import exp_nonpositive32, log1p32

FASTMATH = {"nsz", "arcp", "contract", "afn"}
W = int(os.environ.get("W", "256"))
AHEAD = int(os.environ.get("AHEAD", "512"))
MODE = int(os.environ.get("MODE", "0"))
BLOCKS = int(os.environ.get("BLOCKS", "1"))
LANES = 16
PITCH = W + 16
f32, u = np.float32, np.uint64


@intrinsic
def register_array(typingctx, size, dtype):
    """A 1-D array of ``size`` (a literal) elements on the stack, which LLVM keeps in
    registers where a vectorised loop indexes it by constants (6151dd5 had it in
    nbxent.cpu.bits)."""
    if not (isinstance(size, types.IntegerLiteral) and isinstance(dtype, types.NumberClass)):
        return None
    array_type = types.Array(dtype.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        element = context.get_value_type(dtype.dtype)
        data = cgutils.alloca_once(builder, element, size=size.literal_value)
        array = context.make_array(array_type)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(element))
        populate_array(array, data=data,
                       shape=[context.get_constant(types.intp, size.literal_value)],
                       strides=[itemsize], itemsize=itemsize, meminfo=None)
        return array._getvalue()

    return array_type(size, dtype), codegen


@njit(fastmath=FASTMATH, error_model="numpy")
def block_of_tiles(x, t, out, n_outer, n_classes, inner, block, n_blocks):
    tile = np.empty(n_classes * PITCH, f32)
    top, t_logit, sums = np.empty(W, f32), np.empty(W, f32), np.empty(W, f32)
    t_class = np.empty(W, np.int64)
    rest = register_array(LANES, f32)
    per_outer = (inner + W - 1) // W
    n_tiles = n_outer * per_outer
    for tile_index in range(block * n_tiles // n_blocks, (block + 1) * n_tiles // n_blocks):
        o = tile_index // per_outer
        p0 = (tile_index - o * per_outer) * W
        base, t_base, n = o * n_classes * inner + p0, o * inner + p0, min(W, inner - p0)
        for k in range(n):
            t_class[k] = t[u(t_base + k)]
            top[k] = x[u(base + k)]
        for c in range(n_classes):
            run = base + c * inner
            for a in range(0, W, 16):
                prefetch(x, np.int64(run + AHEAD + a))
            for k in range(n):
                value = x[u(run + k)]
                tile[u(c * PITCH + k)] = value
                top[k] = larger_of_numbers(top[k], value)
        for k in range(n):
            t_logit[k] = tile[u(t_class[k] * PITCH + k)]
        if MODE == 1:
            for k in range(n):
                out[u(t_base + k)] = top[k] - t_logit[k]
            continue
        for k0 in range(0, n, LANES):
            for j in range(LANES):
                rest[j] = f32(0.0)
            for c in range(n_classes):
                for j in range(LANES):
                    rest[j] += exp_nonpositive32(tile[u(c * PITCH + k0 + j)] - top[k0 + j])
            for j in range(LANES):
                sums[k0 + j] = rest[j]
        for k in range(n):
            out[u(t_base + k)] = top[k] + log1p32(sums[k] - f32(1.0)) - t_logit[k]


@njit(fastmath=FASTMATH, error_model="numpy", parallel=True)
def map_loss(x, t, out, n_outer, n_classes, inner):
    for block in prange(BLOCKS):
        block_of_tiles(x, t, out, n_outer, n_classes, inner, block, BLOCKS)


def best(call, repeat=15):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return f"best {min(times) * 1e3:.2f} median {np.median(times) * 1e3:.2f} ms"


def main():
    n_outer, n_classes, inner = (int(n) for n in sys.argv[1].split("x"))
    rng = np.random.default_rng(0)
    x3 = rng.standard_normal((n_outer, n_classes, inner), dtype=np.float32)
    t2 = rng.integers(0, n_classes, (n_outer, inner))
    x, t, out = x3.ravel(), t2.ravel(), np.empty(n_outer * inner, np.float32)
    map_loss(x, t, out, n_outer, n_classes, inner)
    expected = nbxent.cross_entropy(x3, t2, axis=1, reduction="none").ravel()
    print(f"W={W} AHEAD={AHEAD} MODE={MODE} BLOCKS={BLOCKS}: largest difference from "
          f"nbxent {np.abs(out - expected).max():.2e}")
    for _ in range(2):
        print("nbxent", best(lambda: nbxent.cross_entropy(x3, t2, axis=1, reduction="none")),
              "| prototype", best(lambda: map_loss(x, t, out, n_outer, n_classes, inner)))


if __name__ == "__main__":
    main()
