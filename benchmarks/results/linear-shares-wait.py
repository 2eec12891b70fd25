"""Where a fused linear head call's time goes, share by share (benchmarks/RESULTS.md, "The
linear head's kernel on one thread a share"): the bench's linear case CASE (index into
``nbxent.bench.linear.CASES``, default 0), three calls after a warm-up; per call, each
``_in_shares`` step's wall time, each share's own time and the wait for the slower one
(``classes``: the logits' GEMM; ``rows_and_classes``: the gradient's two GEMMs;
``loss_and_gradient``: the kernel, where it runs in shares), and the kernel's time.

    python benchmarks/results/linear-shares-wait.py [CASE]
    OMP_WAIT_POLICY=passive python benchmarks/results/linear-shares-wait.py
"""
import collections
import sys
import time

import nbxent
import nbxent.linear as linear
from nbxent.bench.linear import CASES, make_inputs

case = CASES[int(sys.argv[1]) if len(sys.argv) > 1 else 0]
features, weight, bias, target = make_inputs(case)
spent = collections.defaultdict(float)
run_share = getattr(linear, "_on_one_kernel_thread", lambda work, k, n: work(k, n))


def in_shares(xp, work):
    limit = linear._blas_controller().limit(limits=1, user_api="blas")
    own = {}

    def timed(k, n_shares):
        start = time.perf_counter()
        run_share(work, k, n_shares)
        own[k] = time.perf_counter() - start

    start = time.perf_counter()
    second = linear._worker().submit(timed, 1, 2)
    timed(0, 2)
    first_done = time.perf_counter()
    second.result()
    done = time.perf_counter()
    limit.restore_original_limits()
    name = work.__name__
    spent[f"{name} wall"] += done - start
    spent[f"{name} share0"] += own[0]
    spent[f"{name} share1"] += own[1]
    spent[f"{name} wait"] += done - first_done


def timed_kernel(*args, **kwargs):
    start = time.perf_counter()
    result = kernel(*args, **kwargs)
    spent["kernel"] += time.perf_counter() - start
    return result


kernel = linear.partials.row_cross_entropy
linear._in_shares = in_shares
linear.partials.row_cross_entropy = timed_kernel
nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias)
for _ in range(3):
    spent.clear()
    start = time.perf_counter()
    nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias)
    total = time.perf_counter() - start
    print(f"{case}: call {total:.3f} s; " + ", ".join(f"{k} {v:.3f}" for k, v in spent.items()))
