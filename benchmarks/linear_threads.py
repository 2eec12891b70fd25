"""How the thread pools of ``linear_cross_entropy_with_grad`` meet: one case of the
linear suite, timed as shipped and in two other arrangements, in turn, each round also
timing the three GEMMs alone (``nbxent.bench.linear``'s baseline).

- ``side by side``: as shipped (each GEMM of a tile in two equal shares at once, one
  BLAS thread each, through threadpoolctl);
- ``in turn``: each product whole, one after the other, on all the BLAS's threads;
- ``in turn, kernel on one thread``: the same, and the fused kernel between the GEMMs
  on the calling thread only (``numba.set_num_threads(1)`` around it).

    python benchmarks/linear_threads.py 4096 512 32768 --rounds 5
    python benchmarks/linear_threads.py 16384 128 65536 --budget 1073741824 --rounds 3

Prints, per arrangement, the median and best seconds and the median over rounds of the
ratio to that round's GEMMs. Patches the module's private helpers: a development tool.
"""

import argparse
import time

import numba
import numpy as np

import nbxent.linear as linear_module
from nbxent.bench import linear
from nbxent.dask import partials


def _kernel_on_one_thread(row_cross_entropy):
    def call(*args, **kwargs):
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return row_cross_entropy(*args, **kwargs)
        finally:
            numba.set_num_threads(threads)
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sizes", nargs=3, type=int, metavar="N d C")
    parser.add_argument("--budget", type=int, default=None, help="the case's budget, bytes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    case = linear.LinearCase(*args.sizes, budget=args.budget)
    arrays = linear.make_inputs(case)
    features, weight, bias, target = arrays
    shipped = (linear_module._blas_controller, partials.row_cross_entropy)
    arrangements = {
        "side by side": shipped,
        "in turn": (lambda: None, shipped[1]),
        "in turn, kernel on one thread": (lambda: None, _kernel_on_one_thread(shipped[1])),
    }
    gemms = linear.contender(case, "3 GEMMs", arrays)
    fused = linear.contender(case, "nbxent", arrays)
    fused(), gemms()
    times = {name: [] for name in [*arrangements, "3 GEMMs"]}
    try:
        for _ in range(args.rounds):
            for name in times:
                if name in arrangements:
                    linear_module._blas_controller, partials.row_cross_entropy = arrangements[name]
                start = time.perf_counter()
                (gemms if name == "3 GEMMs" else fused)()
                times[name].append(time.perf_counter() - start)
    finally:
        linear_module._blas_controller, partials.row_cross_entropy = shipped
    base = np.array(times.pop("3 GEMMs"))
    print(f"{case.label}, budget {case.budget}, {args.rounds} rounds, "
          f"numba threads {numba.get_num_threads()}: 3 GEMMs median {np.median(base):.3f} s, "
          f"best {base.min():.3f} s")
    for name, seconds in times.items():
        seconds = np.array(seconds)
        print(f"{name:31s} median {np.median(seconds):.3f} s, best {seconds.min():.3f} s, "
              f"x GEMMs {np.median(seconds / base):.3f}")


if __name__ == "__main__":
    main()
