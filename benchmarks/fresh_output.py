"""The call without ``out=`` against the same call with a preallocated ``out=``: what a
fresh result costs. Best and median ms of --repeat calls each, one process, the
threads Numba has; each result is dropped before the next call.

    python benchmarks/fresh_output.py 16384x1000 4096x32000 1000000x10 65536x100
    NBXENT_CPU_RECYCLED_OUTPUTS=0 python benchmarks/fresh_output.py 16384x1000
"""

import argparse
import time

import numpy as np

import nbxent


def _best_and_median(call, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
        del result
    return min(times) * 1e3, float(np.median(times)) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shapes", nargs="+", help="NxC, float32 rows")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for text in args.shapes:
        n_rows, n_classes = (int(n) for n in text.split("x"))
        x = rng.standard_normal((n_rows, n_classes), dtype=np.float32)
        t = rng.integers(0, n_classes, n_rows)
        out = np.empty_like(x)
        with_out = lambda: nbxent.cross_entropy_with_grad(x, t, out=out)  # noqa: E731
        fresh = lambda: nbxent.cross_entropy_with_grad(x, t)  # noqa: E731
        with_out(), fresh()  # compile or load the kernel
        o_best, o_median = _best_and_median(with_out, args.repeat)
        f_best, f_median = _best_and_median(fresh, args.repeat)
        print(f"{text}: out= best {o_best:.2f} median {o_median:.2f} ms; without out= best "
              f"{f_best:.2f} median {f_median:.2f} ms; out= / without {o_median / f_median:.2f}")


if __name__ == "__main__":
    main()
