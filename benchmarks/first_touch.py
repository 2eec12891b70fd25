"""The cost of writing a fresh N x C buffer once, by who allocated it (Linux).

A new gradient is written into memory the kernel has not mapped yet: each page faults
in on its first write. NumPy asks for transparent huge pages on large arrays
(madvise(MADV_HUGEPAGE)); PyTorch's CPU allocator does not (unless
THP_MEM_ALLOC_ENABLE=1), nor does plain malloc, which XLA's CPU buffers come from.
Best ms of --repeat, one fill of a 16384 x 1000 float32 buffer (64 MB):

    python benchmarks/first_touch.py [--repeat 9]
"""

import argparse
import ctypes
import time

import numpy as np

SHAPE = (16384, 1000)
N_BYTES = SHAPE[0] * SHAPE[1] * 4
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = (ctypes.c_size_t,)
_libc.free.argtypes = (ctypes.c_void_p,)


def _fill_malloc(advise):
    address = _libc.malloc(N_BYTES)
    if advise:
        from nbxent import _jax_ffi
        _jax_ffi._advise_huge_pages(address, N_BYTES)
    view = np.frombuffer((ctypes.c_char * N_BYTES).from_address(address), np.float32)
    view.fill(1.0)
    del view
    _libc.free(address)


def _best_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    buffer = np.empty(SHAPE, np.float32)
    contenders = {"np.empty, then fill": lambda: np.empty(SHAPE, np.float32).fill(1.0),
                  "malloc (as XLA's buffers), then fill": lambda: _fill_malloc(False),
                  "malloc + nbxent's madvise(MADV_HUGEPAGE), then fill":
                      lambda: _fill_malloc(True),
                  "a buffer already written, fill again": lambda: buffer.fill(1.0)}
    try:
        import torch
        torch.set_num_threads(1)
        contenders["torch.empty, then fill"] = lambda: torch.empty(SHAPE).fill_(1.0)
    except ImportError:
        pass
    for name, fn in contenders.items():
        print(f"| {name} | {_best_ms(fn, args.repeat):.1f} |")


if __name__ == "__main__":
    main()
