"""Kernel time beside call time: cross_entropy, cross_entropy_with_grad(out=) and the
same in place (out= the logits, which then hold gradients: the timing does not depend on
the values) of float32 rows, best of --repeat, ms; the CPU kernel's own share timed by wrapping
``nbxent.cpu.backend.kernel_for`` (the target scan and the reduction are the rest).

    NUMBA_NUM_THREADS=1 python benchmarks/kernel_time.py 1000000 10 [--repeat 41]

Run it with two trees on ``PYTHONPATH`` (separate ``NUMBA_CACHE_DIR``), alternating, to
compare them; for the AVX2 build on an AVX-512 machine set NUMBA_CPU_NAME=znver3 and
NUMBA_CPU_FEATURES to the host's features with every avx512 one turned off.
"""

import argparse
import time

import numpy as np

import nbxent
import nbxent.cpu.backend as backend


def time_kernels():
    """Wrap ``nbxent.cpu.backend.kernel_for`` so that each CPU kernel call appends its
    time (s) to the list returned."""
    kernel_times = []
    kernel_for = backend.kernel_for

    class Timed:
        """The kernel, its calls timed; its attributes (``overloads``, the disk cache's
        lock) are the kernel's."""

        def __init__(self, kernel):
            self.kernel = kernel

        def __getattr__(self, name):
            return getattr(self.kernel, name)

        def __call__(self, *arguments):
            start = time.perf_counter()
            result = self.kernel(*arguments)
            kernel_times.append(time.perf_counter() - start)
            return result

    def timed_kernel_for(variant):
        return Timed(kernel_for(variant))

    backend.kernel_for = timed_kernel_for
    return kernel_times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", type=int)
    parser.add_argument("classes", type=int)
    parser.add_argument("--repeat", type=int, default=41)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
    t = rng.integers(0, args.classes, args.rows)
    grad = np.empty_like(x)
    in_place = x.copy()
    kernel_times = time_kernels()
    for name, call in (("loss", lambda: nbxent.cross_entropy(x, t)),
                       ("loss+grad out=", lambda: nbxent.cross_entropy_with_grad(x, t, out=grad)),
                       ("loss+grad in place",
                        lambda: nbxent.cross_entropy_with_grad(in_place, t, out=in_place))):
        call()
        kernel_times.clear()
        totals = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            call()
            totals.append(time.perf_counter() - start)
        print(f"{args.rows}x{args.classes} {name}: call {min(totals) * 1e3:.2f} ms, "
              f"kernel {min(kernel_times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
