"""What metrics in the same pass cost: each call without metrics, with accuracy's
("lse", "correct"), with top-k's ("lse", "correct", "top_k") and with all five, taken in
turn, best of --repeat rounds (ms) and the ratios to the call without; float32 logits of
the given shapes, random normal (so the argmax is searched on almost every row).

    python benchmarks/metrics_cost.py 16384x1000 65536x100 8x21x512x512:1 [--repeat 15] [--split]

A shape ``AxBxC:axis`` puts the classes on ``axis`` (default the last). Run with
NUMBA_NUM_THREADS=1 for one thread.
"""

import argparse
import time

import numpy as np

import nbxent

SETS = {"accuracy": ("lse", "correct"), "top-k": ("lse", "correct", "top_k"),
        "all five": ("lse", "argmax", "correct", "top_k", "entropy")}
# --split: what each metric adds to "lse", and all five less the entropy.
SPLIT_SETS = {"lse": ("lse",), "entropy": ("lse", "entropy"), "argmax": ("lse", "argmax"),
              "all but entropy": ("lse", "argmax", "correct", "top_k")}


def _case(text, rng):
    shape_text, _, axis_text = text.partition(":")
    shape = tuple(int(n) for n in shape_text.split("x"))
    axis = int(axis_text) if axis_text else -1
    x = rng.standard_normal(shape, dtype=np.float32)
    rows_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    t = rng.integers(0, shape[axis], rows_shape)
    return x, t, axis


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shapes", nargs="+")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--split", action="store_true",
                        help="also each metric's own cost (SPLIT_SETS)")
    args = parser.parse_args()
    sets = {**SETS, **SPLIT_SETS} if args.split else SETS
    rng = np.random.default_rng(0)
    for text in args.shapes:
        x, t, axis = _case(text, rng)
        grad = np.empty_like(x)
        calls = {
            "loss": lambda m: nbxent.cross_entropy(x, t, axis=axis, metrics=m),
            "loss+grad out=": lambda m: nbxent.cross_entropy_with_grad(x, t, axis=axis,
                                                                       out=grad, metrics=m),
        }
        for name, call in calls.items():
            best = {None: np.inf, **{names: np.inf for names in sets.values()}}
            for metrics in best:
                call(metrics)  # compile or load the kernel
            for _ in range(args.repeat):
                for metrics in best:
                    start = time.perf_counter()
                    call(metrics)
                    best[metrics] = min(best[metrics], time.perf_counter() - start)
            ratios = ", ".join(f"{label} {best[names] * 1e3:.2f} ms "
                               f"({best[names] / best[None]:.2f}x)"
                               for label, names in sets.items())
            print(f"{text} {name}: without {best[None] * 1e3:.2f} ms; {ratios}")


if __name__ == "__main__":
    main()
