"""Call times with the logits (and ``out``) placed at byte offsets from a 64-byte cache
line, in one process: what a vector load that straddles two lines costs each kernel.

NumPy's large arrays start 16 bytes past a page (glibc serves them by mmap, after its
chunk header); arrays from the heap start wherever the heap has room, so without
this script a process draws its offset by chance. Best ms of 7 samples after a warm-up
(``nbxent.bench.timing.steady_state``: a sample averages calls under 2 ms), loss /
loss+grad with ``out=``, for each offset in turn (repeated offsets show the noise):

    python benchmarks/alignment.py 8x21x512x512:1,65536x100 [--offsets 0,16,32,48,0,16]

Another tree's kernels: ``PYTHONPATH=/path/to/tree NUMBA_CACHE_DIR=/tmp/other``, run
from outside this checkout.
"""

import argparse

import numpy as np

import nbxent
from nbxent.bench.timing import steady_state


def best_ms(call):
    return steady_state(call, samples=7).best_s * 1e3


def placed(buffer, n, offset):
    """``n`` elements of ``buffer`` starting ``offset`` bytes past a 4 KiB boundary."""
    start = (-buffer.ctypes.data % 4096 + offset) // buffer.itemsize
    return buffer[start:start + n]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", help="comma-separated SHAPE[:AXIS], e.g. 8x21x512x512:1")
    parser.add_argument("--offsets", default="0,16,32,48,0,16")
    args = parser.parse_args()
    nbxent.keep_freed_memory()
    rng = np.random.default_rng(0)
    offsets = [int(o) for o in args.offsets.split(",")]
    for case in args.cases.split(","):
        shape_text, _, axis_text = case.partition(":")
        shape = tuple(int(n) for n in shape_text.split("x"))
        axis = int(axis_text or -1) % len(shape)
        size = int(np.prod(shape))
        target = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1:])
        source = rng.standard_normal(shape, dtype=np.float32)
        x_buffer, out_buffer = np.empty(size + 1024, np.float32), np.empty(size + 1024,
                                                                             np.float32)
        times = []
        for offset in offsets:
            x = placed(x_buffer, size, offset).reshape(shape)
            x[...] = source
            out = placed(out_buffer, size, offset).reshape(shape)
            loss = best_ms(lambda: nbxent.cross_entropy(x, target, axis=axis))
            both = best_ms(lambda: nbxent.cross_entropy_with_grad(x, target, axis=axis,
                                                                  out=out))
            times.append(f"+{offset}: {loss:.2f} / {both:.2f}")
        print(f"{case:18s} loss / loss+grad ms  " + "   ".join(times), flush=True)


if __name__ == "__main__":
    main()
