"""The CPU measurements of benchmarks/RESULTS.md that `nbxent bench` does not make.

    python benchmarks/cpu_checks.py times        # loss and loss+grad (out=), best of 7, 2 threads
    python benchmarks/cpu_checks.py threads      # 1 against 2 threads in one process, alternating
    python benchmarks/cpu_checks.py first-call   # run twice: the first call of a fresh process
    python benchmarks/cpu_checks.py accuracy     # float32 loss and gradient against the reference
    python benchmarks/cpu_checks.py table RUN.json ...   # the CPU targets table, from bench --json
    python benchmarks/cpu_checks.py plain        # the targets' baseline: a plain fused @njit kernel
    python benchmarks/cpu_checks.py classes      # cost per logit around C = 1024; C = 100 tile/row

Needs nbxent importable (`pip install -e .`, or `PYTHONPATH=.` from the repository root).
To compare two commits, run
``times`` with ``PYTHONPATH`` pointing at a ``git worktree`` of each, one after the other.
"""

import json
import math
import sys
import time

START = time.perf_counter()

import numba  # noqa: E402
import numpy as np  # noqa: E402

import nbxent  # noqa: E402
from nbxent import reference  # noqa: E402
from nbxent._config import CPU  # noqa: E402
from nbxent.bench.cases import Case, Shape, make_inputs  # noqa: E402
from nbxent.bench.roofline import measure  # noqa: E402
from nbxent.bench.timing import steady_state  # noqa: E402

CASES = [((16384, 1000), -1, np.float32), ((4096, 32000), -1, np.float32),
         ((512, 128256), -1, np.float32), ((1000000, 10), -1, np.float32),
         ((8, 21, 512, 512), 1, np.float32), ((262144, 32), -1, np.float32),
         ((65536, 100), -1, np.float32), ((16384, 1000), -1, np.float64),
         ((1000000, 10), -1, np.float16), ((8, 21, 512, 512), 1, np.float16)]


def _inputs(shape, axis, dtype):
    """Standard-normal logits and int64 targets, made as ``nbxent bench`` makes them."""
    return make_inputs(Case(Shape(shape, axis % len(shape)), np.dtype(dtype).name))


def _best(call):
    """Best of 7 timed samples after a warm-up call."""
    return steady_state(call, samples=7).best_s


def _calls(shape, axis, dtype):
    logits, target = _inputs(shape, axis, dtype)
    out = np.empty_like(logits)
    loss = lambda: nbxent.cross_entropy(logits, target, axis=axis)  # noqa: E731
    fused = lambda: nbxent.cross_entropy_with_grad(logits, target, axis=axis, out=out)  # noqa: E731
    loss(), fused()
    return loss, fused


def times():
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    for shape, axis, dtype in CASES:
        loss, fused = _calls(shape, axis, dtype)
        print(f"{shape} axis={axis} {np.dtype(dtype).name}: loss {_best(loss) * 1e3:.2f} ms, "
              f"loss+grad out= {_best(fused) * 1e3:.2f} ms")


def threads():
    for shape, axis, dtype in CASES[:5]:
        loss, fused = _calls(shape, axis, dtype)
        best = {}
        for _ in range(3):
            for n in (1, 2):
                numba.set_num_threads(n)
                for name, call in (("loss", loss), ("loss+grad", fused)):
                    best[n, name] = min(best.get((n, name), np.inf), _best(call))
        print(f"{shape} axis={axis}: " + ", ".join(
            f"{name} {best[1, name] * 1e3:.2f} -> {best[2, name] * 1e3:.2f} ms "
            f"({best[1, name] / best[2, name]:.2f}x)" for name in ("loss", "loss+grad")))


def first_call():
    logits, target = _inputs((16384, 1000), -1, np.float32)
    ready = time.perf_counter()
    nbxent.cross_entropy_with_grad(logits, target)
    done = time.perf_counter()
    print(f"first call {done - ready:.2f} s, returned {done - START:.2f} s after start")


def accuracy():
    worst_loss = worst_grad = 0.0
    for shape, axis in (((4096, 10), -1), ((2048, 100), -1), ((2, 21, 64, 64), 1),
                        ((64, 1000), -1), ((8, 32000), -1), ((2, 262144), -1)):
        for offset in (0.0, 1e4):
            logits, target = _inputs(shape, axis, np.float64)
            logits = (logits * (3.0 if offset == 0 else 1.0) + offset).astype(np.float32)
            loss, grad = nbxent.cross_entropy_with_grad(logits, target, axis=axis,
                                                        reduction="none")
            expected = reference.cross_entropy(logits, target, axis=axis, reduction="none")
            expected_grad = reference.cross_entropy_grad(logits, target, axis=axis,
                                                         reduction="none")
            loss_error = np.max(np.abs(loss - expected) / np.abs(expected))
            grad_error = np.max(np.abs(grad - expected_grad))
            worst_loss, worst_grad = max(worst_loss, loss_error), max(worst_grad, grad_error)
            print(f"{shape} logits around {offset:g}: loss {loss_error:.2e} relative, "
                  f"gradient {grad_error:.2e} absolute")
    print(f"worst: loss {worst_loss:.2e} relative, gradient {worst_grad:.2e} absolute")


def table(*paths):
    """The table of RESULTS.md's "CPU targets" section (GB/s and % of the run's bandwidth,
    each implementation) from ``nbxent bench --json`` files."""
    for op, bandwidth in (("loss+grad", "copy_GBps"), ("loss", "read_GBps")):
        impls = ("numpy", "torch", "jax", "nbxent") + (
            ("nbxent out=",) if op == "loss+grad" else ())
        print(f"\n{op} (GB/s, % of the {bandwidth[:4]} bandwidth of the same run)\n")
        print("| case | dtype | " + " | ".join(impls) + " |")
        print("|---|---|" + "---:|" * len(impls))
        for path in paths:
            with open(path) as file:
                run = json.load(file)
            rows = {}
            for r in run["results"]:
                if r["op"] == op and r["status"] == "ok":
                    rows.setdefault((r["case"], r["dtype"]), {})[r["impl"]] = r
            peak = run["bandwidth"]["cpu"][bandwidth]
            for (case, dtype), by_impl in rows.items():
                cells = [f"{by_impl[i]['GBps']:.1f} ({by_impl[i]['GBps'] / peak:.0%})"
                         if i in by_impl else "" for i in impls]
                print(f"| {case} | {dtype} | " + " | ".join(cells) + " |")


@numba.njit(parallel=True, fastmath=True)
def _plain_loss_and_grad(logits, target, grad):
    """The baseline of RESULTS.md's "CPU targets", a fused kernel written plainly: per row a max,
    the exps (kept in ``grad``) and their sum, then softmax minus one-hot ('mean'
    reduction). ``logits`` is (outer, C, inner), the class axis in the middle."""
    outer, n_classes, inner = logits.shape
    n_rows = outer * inner
    losses = np.empty(n_rows)
    for r in numba.prange(n_rows):
        o, i = r // inner, r % inner
        row_max = logits[o, 0, i]  # in the logits' dtype: float32 rows take expf
        for c in range(1, n_classes):
            row_max = max(row_max, logits[o, c, i])
        total = 0.0
        for c in range(n_classes):
            e = math.exp(logits[o, c, i] - row_max)
            grad[o, c, i] = e
            total += e
        t = target[o, i]
        losses[r] = math.log(total) + row_max - logits[o, t, i]
        scale = 1.0 / (total * n_rows)
        for c in range(n_classes):
            grad[o, c, i] *= scale
        grad[o, t, i] -= 1.0 / n_rows
    return losses.mean()


def plain():
    """GB/s of the plain kernel on the CPU targets' shapes, against the copy bandwidth of this
    run."""
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    copy = measure("cpu").copy_GBps
    print(f"copy bandwidth {copy:.1f} GB/s; plain fused kernel, 2 threads, best of 7:")
    for shape, axis, dtype in CASES[:5] + CASES[6:8]:
        logits, target = _inputs(shape, axis, dtype)
        view = logits.reshape(int(np.prod(shape[:axis % len(shape)])), shape[axis], -1)
        rows = target.reshape(view.shape[0], view.shape[2])
        grad = np.empty_like(view)
        seconds = _best(lambda: _plain_loss_and_grad(view, rows, grad))  # noqa: B023
        gbps = (2 * logits.nbytes + target.nbytes) / seconds / 1e9
        print(f"{shape} axis={axis} {np.dtype(dtype).name}: {seconds * 1e3:.2f} ms, "
              f"{gbps:.1f} GB/s ({gbps / copy:.0%} of copy)")


def classes():
    """Picoseconds per logit of the row kernel at C around 1024 (its vector loops' scalar
    remainder), and the tile kernel against the row kernel at C = 100."""
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    sizes = (1000, 1008, 1016, 1024, 1040)
    best = {}
    for _ in range(3):  # fresh arrays each round, best over the rounds
        for n_classes in sizes:
            for name, call in zip(("loss", "loss+grad"), _calls((16384, n_classes), -1,
                                                                np.float32)):
                best[n_classes, name] = min(best.get((n_classes, name), np.inf), _best(call))
    for n_classes in sizes:
        per_logit = 1e12 / (16384 * n_classes)
        print(f"C = {n_classes}: loss {best[n_classes, 'loss'] * per_logit:.0f} ps per logit, "
              f"loss+grad out= {best[n_classes, 'loss+grad'] * per_logit:.0f}")
    loss, fused = _calls((65536, 100), -1, np.float32)
    for kernel, max_tile_classes in (("tile", 128), ("row", 64)):
        with CPU.override(tile_max_classes=max_tile_classes):
            print(f"65536x100, {kernel} kernel: loss {_best(loss) * 1e3:.2f} ms, "
                  f"loss+grad out= {_best(fused) * 1e3:.2f} ms")


if __name__ == "__main__":
    commands = {"times": times, "threads": threads, "first-call": first_call,
                "accuracy": accuracy, "table": table, "plain": plain, "classes": classes}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python {sys.argv[0]} {{{','.join(commands)}}} [args]")
    commands[sys.argv[1]](*sys.argv[2:])
