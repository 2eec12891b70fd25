"""The fused head's gradient GEMMs in other arrangements, alternating with the shipped one
in one process (benchmarks/RESULTS.md, "The linear head's kernel on one thread a share" and
"Where the VOC map's loss goes"): the bench's linear case CASE (index into
``nbxent.bench.linear.CASES``, default 0), six rounds of one call each; then each
arrangement's times (s) and its best and median over the best of three calls of the three
GEMMs alone (the first round left out).

- ``shipped``: ``nbxent.linear`` as it is;
- ``split``: d_features whole on one share, d_weight and d_bias whole on the other;
- ``dhalf``: each share d_features' half of the columns (all the tile's rows), then its
  half of d_weight's classes, as shipped;
- ``scratch/32``: a 32nd of the budget for the gradients' scratch instead of an 8th (the
  tile larger, d_weight's blocks smaller).

    python benchmarks/results/linear-arrangements.py [CASE]
"""
import statistics
import sys
import time

import nbxent
import nbxent.linear as linear
from nbxent.bench.linear import CASES, _gemms, make_inputs

case = CASES[int(sys.argv[1]) if len(sys.argv) > 1 else 0]
features, weight, bias, target = make_inputs(case)
shipped = linear._accumulate


def split(xp, grads, grad, features, weight, rows, classes, scratch, *, first_rows,
          first_classes):
    n_rows, n_features = features.shape
    d_features, d_weight = grads[0][rows], grads[1][classes]
    d_bias = None if grads[2] is None else grads[2][classes]
    features_scratch = None if scratch is None else scratch[:n_rows * n_features]
    weight_scratch = None if scratch is None else scratch[n_rows * n_features:]

    def work(k, n_shares):
        if k == 0:
            linear._add_product(xp, d_features, grad, weight, features_scratch, first_classes)
            return
        step = len(d_weight) if scratch is None else weight_scratch.size // n_features
        for start in range(0, len(d_weight), step):
            block = slice(start, min(start + step, len(d_weight)))
            linear._add_product(xp, d_weight[block], grad[:, block].T, features,
                                weight_scratch, first_rows)
        if d_bias is not None:
            d_bias[...] += grad.sum(axis=0)

    linear._in_shares(xp, work)


def dhalf(xp, grads, grad, features, weight, rows, classes, scratch, *, first_rows,
          first_classes):
    n_rows, n_features = features.shape
    d_features, d_weight = grads[0][rows], grads[1][classes]
    d_bias = None if grads[2] is None else grads[2][classes]
    weight_scratch = None if scratch is None else scratch[n_rows * n_features:]
    assert first_classes  # whole rows: d_features written straight

    def work(k, n_shares):
        own = linear._share(n_features, k, n_shares)
        xp.matmul(grad, weight[:, own], out=d_features[:, own])
        own_classes = linear._share(len(d_weight), k, n_shares)
        own_scratch = (None if scratch is None
                       else weight_scratch[linear._share(weight_scratch.size, k, n_shares)])
        step = max(1, own_classes.stop - own_classes.start if scratch is None
                   else own_scratch.size // n_features)
        for start in range(own_classes.start, own_classes.stop, step):
            block = slice(start, min(start + step, own_classes.stop))
            linear._add_product(xp, d_weight[block], grad[:, block].T, features, own_scratch,
                                first_rows)
        if d_bias is not None:
            d_bias[own_classes] += grad[:, own_classes].sum(axis=0)

    linear._in_shares(xp, work)


ARRANGEMENTS = {"shipped": (shipped, 8), "split": (split, 8), "dhalf": (dhalf, 8),
                "scratch/32": (shipped, 32)}
times = {name: [] for name in ARRANGEMENTS}
for _ in range(6):
    for name, (accumulate, scratch_share) in ARRANGEMENTS.items():
        linear._accumulate, linear._SCRATCH_SHARE = accumulate, scratch_share
        start = time.perf_counter()
        nbxent.linear_cross_entropy_with_grad(features, weight, target, bias=bias)
        times[name].append(time.perf_counter() - start)
linear._accumulate, linear._SCRATCH_SHARE = shipped, 8
gemms = _gemms(case, (features, weight, bias, target))
gemms()
gemm_s = []
for _ in range(3):
    start = time.perf_counter()
    gemms()
    gemm_s.append(time.perf_counter() - start)
print(f"{case}: three GEMMs {min(gemm_s):.3f} s")
for name, seconds in times.items():
    kept = seconds[1:]
    print(f"{name:11s} " + " ".join(f"{s:.3f}" for s in seconds)
          + f"  x GEMMs best {min(kept) / min(gemm_s):.3f} median "
          f"{statistics.median(kept) / min(gemm_s):.3f}")
