"""Two source trees' CPU kernel times, interleaved: one worker process per tree (its own
``PYTHONPATH`` and ``NUMBA_CACHE_DIR``, one Numba thread unless ``T`` says otherwise),
asked in turn for one call each, so that both see the same noise; prints each case's
medians and best times (ms) and the median of the rounds' after / before ratios.

    python benchmarks/ab_kernel_time.py ROUNDS TREE_A TREE_B CASE ...

A tree may carry environment variables: ``"/path/to/tree|NBXENT_CPU_TILE_ELEMENTS=6144"``
(several separated by commas; a value may hold commas, as NUMBA_CPU_FEATURES does).
A case is ``SHAPE[:AXIS][@DTYPE]/OP``: SHAPE like 65536x100 or 4x19x512x1024 (class axis
AXIS, default the last), DTYPE float32 (default), float16 or float64, OP ``loss``,
``grad`` (cross_entropy_with_grad with ``out=``) or ``m-loss-acc`` / ``m-loss-topk`` /
``m-loss-argmax`` / ``m-loss-all`` (the loss with metrics lse + correct, those and top_k,
lse + argmax, or all five); OP
``smooth-loss`` / ``smooth-grad`` adds label smoothing 0.1, ``cap-loss`` / ``cap-grad`` a
soft cap of 5, ``prob-loss`` / ``prob-grad`` takes a probability target (a softmax of random values) in place of the class indices. The
kernel is timed as
``benchmarks/kernel_time.py`` does (the target scan and the reduction are not counted);
with ``TIME=call`` the whole call is timed instead (what small calls pay around the kernel).

A process keeps its speed for its life, and processes differ by up to 1.8x on this
VM (benchmarks/RESULTS.md: "a per-process lottery"), so ``P=3`` runs three worker
processes per tree (default one), asked in turn; a tree's time is then the median of its
processes' medians, and each process's median is printed beside it. With ``T`` above 1
the workers run under ``OMP_WAIT_POLICY=passive`` (unless a tree sets it): the idle
workers' OpenMP threads would otherwise spin on the cores of the one being timed
(2 threads, 8x21x512x512 loss: 18 ms a call instead of 12).
"""

import hashlib
import os
import re
import subprocess
import sys
import time

import numpy as np

METRICS = {"acc": ("lse", "correct"), "topk": ("lse", "correct", "top_k"),
           "argmax": ("lse", "argmax"), "all": ("lse", "argmax", "correct", "top_k", "entropy")}


def worker():
    """Answer ``CASE OP`` lines on stdin with the call's time and its kernel's time (s)."""
    import nbxent
    from kernel_time import time_kernels

    kernel_times = time_kernels()
    arrays = {}
    for line in sys.stdin:
        case, op = line.split()
        if case not in arrays:
            shape_axis, _, dtype = case.partition("@")
            shape_text, _, axis_text = shape_axis.partition(":")
            shape = tuple(int(n) for n in shape_text.split("x"))
            axis = int(axis_text) % len(shape) if axis_text else len(shape) - 1
            rng = np.random.default_rng(0)
            x = rng.standard_normal(shape, dtype=np.float32).astype(dtype or np.float32)
            target = rng.integers(0, shape[axis], shape[:axis] + shape[axis + 1:])
            probs = nbxent.softmax(rng.standard_normal(shape, dtype=np.float32), axis=axis)
            arrays[case] = (x, target, probs.astype(x.dtype), axis, np.empty_like(x))
        x, target, probs, axis, grad = arrays[case]
        metrics = METRICS[op.split("-")[2]] if op.startswith("m-") else None
        options = dict(axis=axis)
        if op.startswith("smooth-"):
            options["label_smoothing"] = 0.1
        if op.startswith("cap-"):
            options["softcap"] = 5.0
        if op.startswith("prob-"):
            target = probs
        kernel_times.clear()
        start = time.perf_counter()
        if op.endswith("grad"):
            nbxent.cross_entropy_with_grad(x, target, out=grad, **options)
        else:
            nbxent.cross_entropy(x, target, metrics=metrics, **options)
        print(time.perf_counter() - start, sum(kernel_times), flush=True)


def main():
    rounds, trees, cases = int(sys.argv[1]), sys.argv[2:4], sys.argv[4:]
    workers = [[], []]
    n_processes = int(os.environ.get("P", "1"))
    for i, spec in enumerate(trees):
        tree, _, extra = spec.partition("|")
        # Variables are separated by commas before a NAME=; a value may hold commas
        # (NUMBA_CPU_FEATURES). Each spec gets its own cache directory.
        settings = re.split(r",(?=[A-Z_][A-Z0-9_]*=)", extra)
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in settings if kv))
        cache_key = hashlib.sha1(spec.encode()).hexdigest()[:12]
        env.update(PYTHONPATH=tree, NUMBA_CACHE_DIR="/tmp/nc-" + cache_key)
        env.setdefault("NUMBA_NUM_THREADS", os.environ.get("T", "1"))
        # Idle workers' OpenMP threads spin for a while after each call, on the cores the
        # worker being timed needs: with several threads a worker, they sleep instead.
        if env["NUMBA_NUM_THREADS"] != "1":
            env.setdefault("OMP_WAIT_POLICY", "passive")
        workers[i] += [subprocess.Popen([sys.executable, __file__, "--worker"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True) for _ in range(n_processes)]

    column = 0 if os.environ.get("TIME") == "call" else 1  # the worker's call or kernel time

    def kernel_time(process, case):
        shape, op = case.rsplit("/", 1)
        process.stdin.write(f"{shape} {op}\n")
        process.stdin.flush()
        return float(process.stdout.readline().split()[column]) * 1e3

    for case in cases:  # compile or load, then one warm call
        for process in workers[0] + workers[1]:
            kernel_time(process, case)
            kernel_time(process, case)
    # times[i, p, case]: tree i's process p
    times = {(i, p, case): [] for i in range(2) for p in range(n_processes) for case in cases}
    for r in range(rounds):
        for case in cases:
            for p in range(n_processes):
                for i in ((0, 1) if (r + p) % 2 == 0 else (1, 0)):
                    times[i, p, case].append(kernel_time(workers[i][p], case))
    def listed(values):
        return " ".join(f"{v:.3f}" for v in values)

    for case in cases:
        a, b = (np.array([times[i, p, case] for p in range(n_processes)]) for i in range(2))
        if n_processes == 1:
            a, b = a[0], b[0]
            print(f"{case:28s} A min {a.min():8.3f} med {np.median(a):8.3f} | "
                  f"B min {b.min():8.3f} med {np.median(b):8.3f} | "
                  f"B/A min-ratio {b.min() / a.min():.3f} median of pair ratios "
                  f"{np.median(b / a):.3f}")
            continue
        a_each, b_each = np.median(a, axis=1), np.median(b, axis=1)
        print(f"{case:28s} A med {np.median(a_each):8.3f} ({listed(a_each)}) | "
              f"B med {np.median(b_each):8.3f} ({listed(b_each)}) | "
              f"B/A {np.median(b_each) / np.median(a_each):.3f}")
    for process in workers[0] + workers[1]:
        process.stdin.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
